"""Randomized differential test (protocol.md §8 scenario 78).

A seeded generator in the style of the upstream ``diff/differential.rs`` sends random requests to a
real server (in debug mode, background loops paused) and to the reference model in ``model.py``,
and compares the status and data of every reply and the ``debug.snap`` after every step. Every
snapshot of both sides must also satisfy the §2.9 invariants.

Ids follow the colon scheme of §9.1: roots ``p0``..``p2``, each with children ``pN:1``..``pN:4``
and a grandchild ``pN:3.1``; lineage tags (origin, parent, branch) are set the way the SDK sets
them, so that preload, same-origin checks and tag validation are exercised.
"""

from __future__ import annotations

import json
import os
import random
from collections import deque
from typing import Any

import pytest

from .model import SETTLE_STATES, Model

T0 = 1_000_000_000
"""Start time (ms) of every run, as in the upstream generator."""

WORKER = "http://diff-test-worker:9999"
LISTENERS = (WORKER, "http://diff-test-listener:9999")
PID = "diff-test-pid"
TTL = 60_000

SEEDS = tuple(int(x, 0) for x in os.environ.get("DIFF_SEEDS", "0xC0FFEE,7,2026").split(","))
"""Seeds to run; ``DIFF_SEEDS=1,2,3`` overrides them (e.g. to hunt with many more)."""
STEPS = int(os.environ.get("DIFF_STEPS", "400"))
BATCH = int(os.environ.get("DIFF_BATCH", "100"))
"""Both sides are reset (``debug.reset``) and time goes back to ``T0`` every ``BATCH`` steps, as
upstream does, so that the small id pool does not fill up with settled promises."""
SNAP_EVERY = 1
"""Compare snapshots after every this many steps (and always at the end)."""

ROOTS = ("p0", "p1", "p2")
RPC_SUFFIXES = ("", ":3", ":4")
LOCAL_SUFFIXES = (":1", ":2", ":3.1")
IDS = tuple(r + s for r in ROOTS for s in (*RPC_SUFFIXES, *LOCAL_SUFFIXES))
SCHEDULES = ("s0", "s1", "s2", "s3")
TEMPLATES = ("sched-{{.id}}-{{.timestamp}}",) * 6 + ("{{.id}}-job", "{{.id}}:{{.timestamp}}")
"""Promise id templates; ``{{.id}}-job`` makes every firing after the first collide."""

VALUES: tuple[dict[str, Any], ...] = (
    {},
    {"data": "aGk="},
    {"headers": {"k": "v"}, "data": "eA=="},
    {"headers": {}},
)

OPS: dict[str, int] = {
    "promise.create": 12,
    "promise.get": 5,
    "promise.settle": 5,
    "promise.register_callback": 4,
    "promise.register_listener": 3,
    "promise.search": 2,
    "task.create": 12,
    "task.get": 2,
    "task.acquire": 6,
    "task.release": 3,
    "task.fulfill": 4,
    "task.suspend": 5,
    "task.fence": 4,
    "task.heartbeat": 3,
    "task.halt": 3,
    "task.continue": 3,
    "task.search": 2,
    "schedule.create": 4,
    "schedule.get": 2,
    "schedule.delete": 2,
    "schedule.search": 2,
    "debug.tick": 14,
}
"""Relative weights of the operation kinds (close to the upstream generator's)."""

NEEDS = {
    "task.acquire": "pending",
    "task.release": "acquired",
    "task.fulfill": "acquired",
    "task.suspend": "acquired",
    "task.fence": "acquired",
    "task.continue": "halted",
}
"""The task state an op's success path needs."""


# --- ids ---------------------------------------------------------------------------------------


def parent_of(pid: str) -> str:
    """Direct parent in the id tree (a root is its own parent, as the SDK tags it)."""
    if "." in pid:
        return pid.rsplit(".", 1)[0]
    return pid.split(":", 1)[0]


def is_rpc(pid: str) -> bool:
    """Ids that normally carry a target (roots and rpc children)."""
    return ":" not in pid or ("." not in pid and pid.endswith((":3", ":4")))


def lineage(pid: str, target: bool) -> dict[str, str]:
    """SDK-style tags: origin, parent, and branch (own id with a target, else the parent's)."""
    root, parent = pid.split(":", 1)[0], parent_of(pid)
    branch = pid if target or parent == pid else parent
    tags = {"resonate:origin": root, "resonate:parent": parent, "resonate:branch": branch}
    if target:
        tags["resonate:target"] = WORKER
    return tags


# --- generator ---------------------------------------------------------------------------------


class Generator:
    """Builds the next request from a seeded RNG and the model's current state."""

    def __init__(self, seed: int, model: Model) -> None:
        self.rng = random.Random(seed)
        self.model = model
        self.now = T0
        self.covered: set[str] = set()

    def pick(self, items: Any, default: Any = None) -> Any:
        """A random element of ``items`` (any iterable), or ``default`` when it is empty."""
        items = list(items)
        return self.rng.choice(items) if items else default

    def chance(self, p: float) -> bool:
        """True with probability ``p``."""
        return self.rng.random() < p

    def same_origin(self, pid: str) -> list[str]:
        """Pool ids with the origin of ``pid`` (children ``:1``/``:2`` for scheduled roots)."""
        root = pid.split(":", 1)[0]
        family = [i for i in IDS if i.split(":", 1)[0] == root]
        family = family or [root, f"{root}:1", f"{root}:2"]
        return [i for i in family if i != pid]

    def next(self) -> tuple[str, dict[str, Any]]:
        """The next ``(kind, data)``; ``self.now`` is the time to send it at."""
        kind = self.pick_kind()
        if kind != "debug.tick":
            self.advance()
        data = getattr(self, "gen_" + kind.replace(".", "_"))()
        return kind, data

    def pick_kind(self) -> str:
        """A weighted random op kind, now and then steered to an op not yet seen to succeed."""
        m = self.model
        # Like the upstream generator: steer towards each op's success path until it is seen
        # (only some of the time, so that an op that keeps failing cannot take over).
        kinds = list(OPS)
        if not self.chance(0.3):
            for _ in range(3):
                kind = self.rng.choices(kinds, weights=[OPS[k] for k in kinds])[0]
                # Mostly skip ops whose subject does not exist (they could only fail).
                needs = NEEDS.get(kind)
                if needs is None or m.tasks_in(needs) or self.chance(0.2):
                    break
            return kind
        wanted = [
            ("task.suspend", bool(self.suspendable())),
            ("task.continue", bool(m.tasks_in("halted"))),
            ("task.release", bool(m.tasks_in("acquired"))),
            ("task.fulfill", bool(m.tasks_in("acquired"))),
            ("task.halt", bool(m.tasks_in("pending", "acquired", "suspended"))),
            ("task.acquire", bool(m.tasks_in("pending"))),
            ("schedule.get", bool(m.schedules)),
            ("promise.register_callback", bool(self.suspendable())),
            ("schedule.delete", bool(m.schedules)),
            ("task.fence", bool(m.tasks_in("acquired"))),
        ]
        for kind, ready in wanted:
            if ready and kind not in self.covered:
                return kind
        return self.rng.choices(kinds, weights=[OPS[k] for k in kinds])[0]

    def suspendable(self, *states: str) -> list[tuple[str, int]]:
        """Tasks (acquired by default) with a pending promise of the same origin to wait on."""
        pending = self.model.pending_promises()
        return [
            (tid, v)
            for tid, v in self.model.tasks_in(*(states or ("acquired",)))
            if any(p in self.same_origin(tid) for p in pending)
        ]

    def advance(self) -> None:
        """Move time a little before some requests, sometimes exactly onto a promise timeout."""
        if self.chance(0.05):
            dues = [p.timeout_at for p in self.model.promises.values() if p.state == "pending"]
            dues = [t for t in dues if t >= self.now]
            if dues:
                self.now = self.rng.choice(dues)
                return
        if self.chance(0.15):
            self.now += self.rng.randrange(0, 5_000)

    def any_id(self) -> str:
        return str(self.rng.choice(IDS))

    def timeout(self, lo: int, hi: int) -> int:
        """A timeoutAt in ``now + [lo, hi)``; sometimes already past (born timed out)."""
        if self.chance(0.05):
            return self.now - self.rng.randrange(0, 10_000)
        return self.now + self.rng.randrange(lo, hi)

    # promise.*

    def gen_promise_create(self) -> dict[str, Any]:
        pid = self.any_id()
        target = self.chance(0.8 if is_rpc(pid) else 0.15)
        tags = (
            lineage(pid, target)
            if self.chance(0.85)
            else ({"resonate:target": WORKER} if target else {})
        )
        if self.chance(0.1):
            tags["resonate:timer"] = "true"
        timeout_at = self.timeout(30_000, 300_000)
        if target and self.chance(0.08):
            tags["resonate:delay"] = str(self.now + self.rng.randrange(1_000, 20_000))
        elif self.chance(0.02):
            tags["resonate:delay"] = self.pick(("abc", "-1"))
        if self.chance(0.03):
            tags["resonate:origin"] = self.pick(r for r in ROOTS if r != pid.split(":")[0])
        if self.chance(0.02):
            tags["resonate:target"] = "poll://g"  # no cast: not routable (§1.7)
        data: dict[str, Any] = {"id": pid, "timeoutAt": timeout_at}
        if self.chance(0.9):
            data["param"] = self.pick(VALUES)
        if tags or self.chance(0.5):
            data["tags"] = tags
        return data

    def gen_promise_get(self) -> dict[str, Any]:
        return {"id": self.pick(self.model.promises, self.any_id())}

    def gen_promise_settle(self) -> dict[str, Any]:
        pid = self.pick(self.model.pending_promises(), self.any_id())
        if self.chance(0.1):
            pid = self.any_id()
        state = self.pick(SETTLE_STATES) if not self.chance(0.02) else "rejected_timedout"
        return {"id": pid, "state": state, "value": self.pick(VALUES)}

    def gen_promise_register_callback(self) -> dict[str, Any]:
        m = self.model
        live = ("pending", "acquired", "suspended", "halted")
        awaiter = self.pick([t for t, _ in m.tasks_in(*live)], self.any_id())
        options = self.suspendable(*live)
        if options and self.chance(0.6):
            awaiter = self.pick(options)[0]
        elif self.chance(0.1):
            awaiter = self.any_id()
        candidates = [p for p in m.pending_promises() if p in self.same_origin(awaiter)]
        awaited = self.pick(candidates) if candidates and self.chance(0.7) else None
        awaited = awaited or self.pick(self.same_origin(awaiter))
        if self.chance(0.04):
            awaited = awaiter
        elif self.chance(0.04):
            awaited = self.pick(i for i in IDS if i.split(":")[0] != awaiter.split(":")[0])
        return {"awaited": awaited, "awaiter": awaiter}

    def gen_promise_register_listener(self) -> dict[str, Any]:
        pid = self.pick(self.model.pending_promises(), self.any_id())
        if self.chance(0.15):
            pid = self.any_id()
        address = self.pick(LISTENERS) if not self.chance(0.03) else "poll://g"
        return {"awaited": pid, "address": address}

    def gen_promise_search(self) -> dict[str, Any]:
        data: dict[str, Any] = {"limit": self.pick((2, 5, 10, 100))}
        if self.chance(0.03):
            data["limit"] = self.pick((0, 1001))
        elif self.chance(0.1):
            del data["limit"]  # default 100
        if self.chance(0.5):
            data["state"] = self.pick(("pending", "resolved", "rejected", "rejected_timedout"))
        if self.chance(0.3):
            data["tags"] = {"resonate:origin": self.pick(ROOTS)}
        if self.chance(0.3):
            data["cursor"] = self.any_id()
        return data

    # task.*

    def gen_task_create(self) -> dict[str, Any]:
        pid = self.any_id() if self.chance(0.5) else self.pick(r for r in IDS if is_rpc(r))
        tags = lineage(pid, True) if self.chance(0.85) else {"resonate:target": WORKER}
        if self.chance(0.05):
            tags["resonate:timer"] = "true"
        if self.chance(0.03):
            del tags["resonate:target"]
        elif self.chance(0.03):
            tags["resonate:delay"] = str(self.now + 1_000)
        action = {
            "kind": "promise.create",
            "head": {},
            "data": {
                "id": pid,
                "timeoutAt": self.timeout(60_000, 600_000),
                "param": self.pick(VALUES),
                "tags": tags,
            },
        }
        return {"pid": PID, "ttl": TTL, "action": action}

    def live_task(self, *states: str) -> tuple[str, int]:
        """A task in one of ``states`` (any task id and version when there is none)."""
        picked = self.pick(self.model.tasks_in(*states))
        if picked is None or self.chance(0.08):
            return self.any_id(), self.rng.randrange(0, 3)
        tid, version = picked
        if self.chance(0.08):
            version = max(0, version + self.pick((-1, 1)))
        return tid, version

    def gen_task_get(self) -> dict[str, Any]:
        return {"id": self.live_task("pending", "acquired", "suspended", "halted", "fulfilled")[0]}

    def gen_task_acquire(self) -> dict[str, Any]:
        tid, version = self.live_task("pending")
        if self.chance(0.05):
            tid, version = self.live_task("acquired", "suspended", "halted", "fulfilled")
        return {"id": tid, "version": version, "pid": PID, "ttl": TTL}

    def gen_task_release(self) -> dict[str, Any]:
        tid, version = self.live_task("acquired")
        return {"id": tid, "version": version}

    def gen_task_fulfill(self) -> dict[str, Any]:
        tid, version = self.live_task("acquired")
        aid = tid if not self.chance(0.03) else tid + "x"
        data = {"id": aid, "state": self.pick(SETTLE_STATES), "value": self.pick(VALUES)}
        action = {"kind": "promise.settle", "head": {}, "data": data}
        return {"id": tid, "version": version, "action": action}

    def gen_task_suspend(self) -> dict[str, Any]:
        tid, version = self.live_task("acquired")
        options = self.suspendable()
        if options and self.chance(0.7):
            tid, version = self.pick(options)
        family = self.same_origin(tid)
        pending = [p for p in self.model.pending_promises() if p in family]
        awaited = [
            self.pick(pending) if pending and self.chance(0.75) else self.pick(family)
            for _ in range(self.rng.choice((1, 1, 2, 3)))
        ]
        if self.chance(0.03):
            awaited.append(tid)  # 400: a task cannot wait on itself
        actions = [
            {
                "kind": "promise.register_callback",
                "head": {},
                "data": {"awaited": a, "awaiter": tid},
            }
            for a in awaited
        ]
        return {"id": tid, "version": version, "actions": actions}

    def gen_task_fence(self) -> dict[str, Any]:
        tid, version = self.live_task("acquired")
        family = self.same_origin(tid)
        pending = [p for p in self.model.pending_promises() if p != tid]
        if pending and self.chance(0.4):
            data = {"id": self.pick(pending), "state": self.pick(SETTLE_STATES)}
            if self.chance(0.1):
                data["id"] = self.any_id()
            return self.fence(tid, version, "promise.settle", data)
        child = self.pick(family)
        target = self.chance(0.6 if is_rpc(child) else 0.1)
        data = {
            "id": child,
            "timeoutAt": self.timeout(30_000, 300_000),
            "param": self.pick(VALUES),
            "tags": lineage(child, target),
        }
        kind = "promise.create"
        if self.chance(0.03):
            data["id"] = tid  # 400: the action names the task itself
        elif self.chance(0.03):
            kind = "promise.get"  # 400: not a fence action kind
        elif self.chance(0.03):
            data["tags"]["resonate:origin"] = "elsewhere"  # 400 from the create rules
        return self.fence(tid, version, kind, data)

    @staticmethod
    def fence(tid: str, version: int, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"id": tid, "version": version, "action": {"kind": kind, "head": {}, "data": data}}

    def gen_task_heartbeat(self) -> dict[str, Any]:
        acquired = self.model.tasks_in("acquired")
        self.rng.shuffle(acquired)
        tasks = [
            {"id": tid, "version": v - 1 if self.chance(0.25) else v} for tid, v in acquired[:3]
        ]
        if not tasks:
            tasks = [{"id": self.any_id(), "version": self.rng.randrange(0, 3)}]
        if self.chance(0.03):
            tasks = []
        pid = PID if not self.chance(0.15) else self.pick(("wrong-pid", ""))
        # Batches span origins on purpose (the heartbeat decision at the top of protocol.md).
        return {"pid": pid, "tasks": tasks}

    def gen_task_halt(self) -> dict[str, Any]:
        states = ("pending", "acquired", "suspended")
        if self.chance(0.1):
            states = ("halted", "fulfilled")
        return {"id": self.live_task(*states)[0]}

    def gen_task_continue(self) -> dict[str, Any]:
        return {"id": self.live_task("halted")[0]}

    def gen_task_search(self) -> dict[str, Any]:
        data: dict[str, Any] = {"limit": self.pick((2, 5, 10))}
        if self.chance(0.1):
            del data["limit"]  # default 100
        if self.chance(0.6):
            data["state"] = self.pick(("pending", "acquired", "suspended", "halted", "fulfilled"))
        if self.chance(0.2):
            data["cursor"] = self.any_id()
        return data

    # schedule.*

    def gen_schedule_create(self) -> dict[str, Any]:
        tags: dict[str, str] = {"resonate:target": WORKER}
        if self.chance(0.1):
            tags["resonate:timer"] = "true"
        if self.chance(0.04):
            tags = {}
        data = {
            "id": self.pick(SCHEDULES),
            "cron": "* * * * *" if not self.chance(0.04) else "bad",
            "promiseId": self.pick(TEMPLATES),
            "promiseTimeout": self.pick((0, 30_000, 90_000, 300_000)),
            "promiseParam": self.pick(VALUES),
            "promiseTags": tags,
        }
        if self.chance(0.03):
            data["id"] = "s:bad"
        elif self.chance(0.02):
            data["promiseTimeout"] = -1
        return data

    def gen_schedule_get(self) -> dict[str, Any]:
        return {"id": self.pick(self.model.schedules, self.pick(SCHEDULES))}

    def gen_schedule_delete(self) -> dict[str, Any]:
        return {"id": self.pick(self.model.schedules, self.pick(SCHEDULES))}

    def gen_schedule_search(self) -> dict[str, Any]:
        data: dict[str, Any] = {"limit": self.pick((1, 2, 10))}
        if self.chance(0.2):
            del data["limit"]  # default 10
        if self.chance(0.3):
            data["tags"] = {"resonate:timer": "true"}
        if self.chance(0.2):
            data["cursor"] = self.pick(SCHEDULES)
        return data

    # debug.tick

    def gen_debug_tick(self) -> dict[str, Any]:
        """Advance time: a random step, or exactly onto the next due timeout of any kind."""
        m = self.model
        dues = [
            *m.promise_timeouts.values(),
            *(tt.at for tt in m.task_timeouts.values()),
            *m.schedule_timeouts.values(),
        ]
        dues = [t for t in dues if t >= self.now]
        if self.chance(0.03):
            return {"time": self.now + 1}  # 400: head time differs from data.time
        if dues and self.chance(0.3):
            self.now = max(self.now, min(dues) + self.pick((0, 0, -1, 1)))
        elif self.chance(0.7):
            self.now += self.rng.randrange(0, 15_000)
        else:
            self.now += self.rng.randrange(15_000, 90_000)
        return {"time": self.now}


# --- comparison --------------------------------------------------------------------------------


def _key(item: Any) -> str:
    """A total order for JSON values (used to sort unordered snapshot lists)."""
    return json.dumps(item, sort_keys=True)


def normalize_reply(status: int, data: Any) -> Any:
    """Serde's wording of type errors is not part of the contract (§10 "Parsing"): keep the
    prefix only. The generator sends well-typed requests, so this is a safety net."""
    if status == 400 and isinstance(data, str):
        for prefix in ("Invalid request: ", "Invalid action data: "):
            if data.startswith(prefix):
                return prefix + "<serde message>"
    return data


def normalize_snap(snap: dict[str, Any]) -> dict[str, Any]:
    """Sort every snapshot list but ``promises`` (the only list whose order §1.5 fixes)."""
    ids = [p["id"] for p in snap["promises"]]
    assert ids == sorted(ids), "debug.snap promises must be ordered by id (§1.5)"
    return {k: v if k == "promises" else sorted(v, key=_key) for k, v in snap.items()}


def check_invariants(snap: dict[str, Any], prev: dict[str, Any] | None) -> None:
    """§2.9 invariants on one snapshot (delivery paused); ``prev`` is the snapshot one step back."""
    promises = {p["id"]: p for p in snap["promises"]}
    tasks = {t["id"]: t for t in snap["tasks"]}
    assert len(tasks) == len(snap["tasks"])
    ptimeouts = {x["id"]: x["timeout"] for x in snap["promiseTimeouts"]}
    assert len(ptimeouts) == len(snap["promiseTimeouts"])
    ttimeouts = {x["id"]: x for x in snap["taskTimeouts"]}
    assert len(ttimeouts) == len(snap["taskTimeouts"]), "two task timeouts for one task"
    assert set(tasks) <= set(promises) and set(ttimeouts) <= set(tasks)
    waiting = {cb["awaited"] for cb in snap["callbacks"]}
    listening = {ln["id"] for ln in snap["listeners"]}
    for pid, p in promises.items():
        target = p["tags"].get("resonate:target")
        pending = p["state"] == "pending"
        assert (target is not None) == (pid in tasks), f"P7/P8 target <=> task: {p}"
        assert (pending and target is not None) == (pid in ptimeouts), f"P9: {p}"
        if pid in ptimeouts:
            assert ptimeouts[pid] == p["timeoutAt"], p
        assert pending == ("settledAt" not in p), p
        if not pending:
            assert pid not in waiting and pid not in listening, f"P13/P14: {p}"
        if p["state"] == "rejected_timedout":
            assert p["settledAt"] == p["timeoutAt"], f"P18: {p}"
        if pid in tasks:
            assert (not pending) == (tasks[pid]["state"] == "fulfilled"), f"P16/P17: {p}"
    for tid, t in tasks.items():
        tt, state = ttimeouts.get(tid), t["state"]
        assert (state == "pending") == (tt is not None and tt["type"] == 0), f"T6: {t} {tt}"
        assert (state == "acquired") == (tt is not None and tt["type"] == 1), f"T8: {t} {tt}"
        assert (state == "acquired") == ("ttl" in t) == ("pid" in t), f"T10/T12: {t}"
        if state in ("suspended", "fulfilled"):
            assert t["resumes"] == 0, f"T18/T19: {t}"
    executes: dict[str, int] = {}
    unblocks: set[tuple[str, str]] = set()
    for m in snap["messages"]:
        msg = m["message"]
        if msg["kind"] == "execute":
            tid = msg["data"]["task"]["id"]
            assert tid not in executes, f"M1: two executes for {tid}"
            executes[tid] = msg["data"]["task"]["version"]
            # M3, weakened: an acquire leaves the older execute in the outbox (scenario 33).
            assert executes[tid] <= tasks[tid]["version"], (m, tasks[tid])
        else:
            key = (msg["data"]["promise"]["id"], m["address"])
            assert key not in unblocks, f"M2: duplicate unblock {key}"
            unblocks.add(key)
    for tid, t in tasks.items():
        if t["state"] == "pending" and "resonate:delay" not in promises[tid]["tags"]:
            assert executes.get(tid) == t["version"], f"T5: pending task without execute: {t}"
    if prev is not None:
        for old in prev["tasks"]:
            new = tasks.get(old["id"])
            if new is not None and new["version"] != old["version"]:
                # TT3/TT5: versions change only on claim, by exactly one.
                assert new["state"] == "acquired", (old, new)
                assert new["version"] == old["version"] + 1, (old, new)


def diff_lines(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as short ``path: a != b`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff_lines(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            line
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for line in diff_lines(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path or '.'}: server={json.dumps(a)} model={json.dumps(b)}"]


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{s}" for s in SEEDS])
def test_differential(rpc: Any, seed: int) -> None:
    """Scenario 78: the server and the model agree on every reply and every snapshot.

    Nothing is normalized but list order in ``debug.snap`` (only ``promises`` has a fixed order)
    and serde's wording after ``Invalid request:``; every time is explicit debug time, so every
    timestamp, version and message must match exactly.
    """
    model = Model()
    gen = Generator(seed, model)
    history: deque[str] = deque(maxlen=12)
    prev: dict[str, Any] | None = None

    def send(kind: str, data: dict[str, Any], step: int) -> tuple[int, Any, int, Any]:
        corr = f"diff-{seed}-{step}"
        reply = rpc.call(kind, data, time=gen.now, corr_id=corr)
        head = {"corrId": corr, "version": "2026-04-01", "resonate:debug_time": gen.now}
        status, mdata = model.apply(kind, head, data)
        server = normalize_reply(reply.status, reply.body["data"])
        return reply.status, server, status, normalize_reply(status, mdata)

    def context(step: int) -> str:
        return (
            f"seed={seed} step={step} now={gen.now} (rerun: DIFF_SEEDS={seed} pytest {__file__})\n"
            "last requests:\n" + "\n".join(history)
        )

    def compare_snaps(step: int) -> None:
        nonlocal prev
        _, server_raw, _, model_raw = send("debug.snap", {}, step)
        server, mine = normalize_snap(server_raw), normalize_snap(model_raw)
        check_invariants(mine, prev)
        try:
            check_invariants(server, prev)
        except AssertionError as e:
            raise AssertionError(f"server snapshot breaks §2.9: {e}\n{context(step)}") from e
        if server != mine:
            lines = "\n".join(diff_lines(server, mine))
            raise AssertionError(f"snapshot mismatch\n{lines}\n{context(step)}")
        prev = server

    for step in range(STEPS):
        if step % BATCH == 0:
            for kind in ("debug.start", "debug.reset"):
                s_status, _, m_status, _ = send(kind, {}, step)
                assert s_status == m_status == 200, kind
            gen.now, prev = T0, None
            history.append(f"  [{step}] --- debug.reset, time back to {T0} ---")
        kind, data = gen.next()
        s_status, s_data, m_status, m_data = send(kind, data, step)
        history.append(
            f"  [{step}] t={gen.now} {kind} {json.dumps(data)} -> {s_status} {json.dumps(s_data)}"
        )
        if s_status != m_status or s_data != m_data:
            lines = "\n".join(diff_lines(s_data, m_data))
            raise AssertionError(
                f"reply mismatch: server {s_status}, model {m_status}\n{lines}\n"
                f"model reply: {json.dumps(m_data)}\n{context(step)}"
            )
        if s_status < 300:
            gen.covered.add(kind)
        if step % SNAP_EVERY == 0:
            compare_snaps(step)
    compare_snaps(STEPS)
    missing = set(OPS) - gen.covered
    assert not missing, f"seed {seed}: these ops never succeeded: {sorted(missing)}"
