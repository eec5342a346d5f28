"""Small helpers shared by the conformance tests (protocol.md §8).

Every call carries ``resonate:debug_time``; snapshots are normalised so that list order (which
the protocol leaves open for everything except ``promises``) does not matter.
"""

from __future__ import annotations

import json
from typing import Any

T = 1_700_000_000_000
"""Base time (ms) used by every test."""

R = 30_000
"""Default task retry timeout (ms)."""

VERSION = "2026-04-01"

TARGET_DEFAULT = "poll://any@default"

SNAP_LISTS = (
    "promises",
    "promiseTimeouts",
    "callbacks",
    "listeners",
    "tasks",
    "taskTimeouts",
    "messages",
)
"""The lists of a debug.snap (the v0.9.8 shape); only ``promises`` has an order (by id)."""


def ok(reply: Any, status: int = 200) -> Any:
    """Assert a successful reply with ``status`` and return its ``data``."""
    assert reply.status == status, reply
    assert reply.body is not None, reply
    assert reply.body["head"]["status"] == status, reply
    return reply.body["data"]


def err(reply: Any, status: int, message: str | None = None, *, prefix: str | None = None) -> str:
    """Assert an error reply: HTTP ``status``, envelope status, and a JSON-string ``data``."""
    assert reply.status == status, reply
    assert reply.body is not None, reply
    assert reply.body["head"]["status"] == status, reply
    data = reply.body["data"]
    assert isinstance(data, str), reply
    if message is not None:
        assert data == message, reply
    if prefix is not None:
        assert data.startswith(prefix), reply
    return data


def envelope(
    kind: Any,
    data: Any,
    *,
    corr_id: str = "c-1",
    version: str = VERSION,
    time: int | None = T,
    **head: Any,
) -> dict[str, Any]:
    """Build a raw request envelope (for tests that bypass ``Client.call``)."""
    h: dict[str, Any] = {"corrId": corr_id, "version": version, **head}
    if time is not None:
        h["resonate:debug_time"] = time
    return {"kind": kind, "head": h, "data": data}


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def create(
    rpc: Any,
    id: str,
    timeout_at: int,
    *,
    tags: dict[str, str] | None = None,
    param: dict[str, Any] | None = None,
    time: int = T,
) -> Any:
    """Send promise.create and return the reply (no assertion)."""
    data: dict[str, Any] = {"id": id, "timeoutAt": timeout_at}
    if tags is not None:
        data["tags"] = tags
    if param is not None:
        data["param"] = param
    return rpc.call("promise.create", data, time=time)


def create_ok(
    rpc: Any,
    id: str,
    timeout_at: int,
    *,
    tags: dict[str, str] | None = None,
    param: dict[str, Any] | None = None,
    time: int = T,
) -> dict[str, Any]:
    """promise.create that must succeed; returns the promise record."""
    return ok(create(rpc, id, timeout_at, tags=tags, param=param, time=time))["promise"]


def get(rpc: Any, id: str, *, time: int = T) -> Any:
    return rpc.call("promise.get", {"id": id}, time=time)


def get_ok(rpc: Any, id: str, *, time: int = T) -> dict[str, Any]:
    return ok(get(rpc, id, time=time))["promise"]


def settle(
    rpc: Any, id: str, state: str, *, value: dict[str, Any] | None = None, time: int = T
) -> Any:
    data: dict[str, Any] = {"id": id, "state": state}
    if value is not None:
        data["value"] = value
    return rpc.call("promise.settle", data, time=time)


def settle_ok(
    rpc: Any, id: str, state: str, *, value: dict[str, Any] | None = None, time: int = T
) -> dict[str, Any]:
    return ok(settle(rpc, id, state, value=value, time=time))["promise"]


def listen(rpc: Any, awaited: str, address: str, *, time: int = T) -> Any:
    return rpc.call(
        "promise.register_listener", {"awaited": awaited, "address": address}, time=time
    )


def callback(rpc: Any, awaited: str, awaiter: str, *, time: int = T) -> Any:
    return rpc.call(
        "promise.register_callback", {"awaited": awaited, "awaiter": awaiter}, time=time
    )


def search(rpc: Any, *, time: int = T, **data: Any) -> Any:
    return rpc.call("promise.search", data, time=time)


def tick(rpc: Any, time: int) -> None:
    """debug.tick to ``time``; v0.9.8 always answers ``[]``."""
    assert ok(rpc.call("debug.tick", {"time": time}, time=time)) == []


def _key(item: Any) -> str:
    return json.dumps(item, sort_keys=True)


def snap(rpc: Any, time: int = T) -> dict[str, Any]:
    """debug.snap with every list except ``promises`` sorted canonically."""
    data = ok(rpc.call("debug.snap", {}, time=time))
    assert isinstance(data, dict), data
    for name in SNAP_LISTS:
        assert isinstance(data.get(name), list), (name, data)
    ids = [p["id"] for p in data["promises"]]
    assert ids == sorted(ids), "snap promises must be ordered by id"
    for name in SNAP_LISTS[1:]:
        data[name] = sorted(data[name], key=_key)
    return data


def sorted_items(items: list[Any]) -> list[Any]:
    """The canonical order used by :func:`snap`, for building expected lists."""
    return sorted(items, key=_key)


def execute_msg(address: str, id: str, version: int) -> dict[str, Any]:
    """A snapshot execute message (no ``serverUrl`` in snapshots)."""
    return {
        "address": address,
        "message": {
            "kind": "execute",
            "head": {},
            "data": {"task": {"id": id, "version": version}},
        },
    }


def unblock_msg(address: str, promise: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": address,
        "message": {"kind": "unblock", "head": {}, "data": {"promise": promise}},
    }


def task(id: str, state: str, version: int, resumes: int = 0, **lease: Any) -> dict[str, Any]:
    """A TaskRecord; pass ``ttl=`` and ``pid=`` only for acquired tasks."""
    return {"id": id, "state": state, "version": version, "resumes": resumes, **lease}


def pending_record(
    id: str,
    timeout_at: int,
    *,
    created_at: int = T,
    param: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The exact PromiseRecord of a freshly created pending promise."""
    return {
        "id": id,
        "state": "pending",
        "param": param or {},
        "value": {},
        "tags": tags or {},
        "timeoutAt": timeout_at,
        "createdAt": created_at,
    }


# --- task, schedule and invariant helpers (test_tasks/test_timeouts/test_schedules/test_outbox) --

WORKER_PID = "w"
"""Process id used by the task helpers."""

LEASE_TTL = 10_000
"""Lease ttl (ms) used by the task helpers."""


def task_create_data(
    id: str,
    timeout_at: int,
    *,
    target: str | None = "poll://any@g",
    tags: dict[str, str] | None = None,
    param: dict[str, Any] | None = None,
    pid: str = WORKER_PID,
    ttl: int = LEASE_TTL,
) -> dict[str, Any]:
    """The ``data`` of a task.create request (``target`` is added to ``tags`` unless None)."""
    all_tags = dict(tags or {})
    if target is not None:
        all_tags["resonate:target"] = target
    action_data: dict[str, Any] = {"id": id, "timeoutAt": timeout_at, "tags": all_tags}
    if param is not None:
        action_data["param"] = param
    return {
        "pid": pid,
        "ttl": ttl,
        "action": {"kind": "promise.create", "head": {}, "data": action_data},
    }


def task_create(
    rpc: Any,
    id: str,
    timeout_at: int,
    *,
    target: str | None = "poll://any@g",
    tags: dict[str, str] | None = None,
    param: dict[str, Any] | None = None,
    pid: str = WORKER_PID,
    ttl: int = LEASE_TTL,
    time: int = T,
) -> Any:
    """Send task.create and return the reply (no assertion)."""
    data = task_create_data(id, timeout_at, target=target, tags=tags, param=param, pid=pid, ttl=ttl)
    return rpc.call("task.create", data, time=time)


def task_create_ok(
    rpc: Any,
    id: str,
    timeout_at: int,
    *,
    target: str = "poll://any@g",
    tags: dict[str, str] | None = None,
    pid: str = WORKER_PID,
    ttl: int = LEASE_TTL,
    time: int = T,
) -> dict[str, Any]:
    """task.create of a new promise that must be claimed at once; returns the reply data."""
    out = ok(
        task_create(rpc, id, timeout_at, target=target, tags=tags, pid=pid, ttl=ttl, time=time)
    )
    assert out["task"] == task(id, "acquired", 1, ttl=ttl, pid=pid), out
    return out  # type: ignore[no-any-return]


def acquire(
    rpc: Any,
    id: str,
    version: int,
    *,
    pid: str = WORKER_PID,
    ttl: int = LEASE_TTL,
    time: int = T,
) -> Any:
    return rpc.call(
        "task.acquire", {"id": id, "version": version, "pid": pid, "ttl": ttl}, time=time
    )


def release(rpc: Any, id: str, version: int, *, time: int = T) -> Any:
    return rpc.call("task.release", {"id": id, "version": version}, time=time)


def fulfill(
    rpc: Any,
    id: str,
    version: int,
    state: str = "resolved",
    *,
    value: dict[str, Any] | None = None,
    action_id: str | None = None,
    time: int = T,
) -> Any:
    """task.fulfill; ``action_id`` defaults to ``id``."""
    data: dict[str, Any] = {"id": action_id if action_id is not None else id, "state": state}
    if value is not None:
        data["value"] = value
    action = {"kind": "promise.settle", "head": {}, "data": data}
    return rpc.call("task.fulfill", {"id": id, "version": version, "action": action}, time=time)


def suspend(
    rpc: Any,
    id: str,
    version: int,
    awaited: list[str],
    *,
    awaiter: str | None = None,
    time: int = T,
) -> Any:
    """task.suspend on ``awaited`` (each action's awaiter defaults to ``id``)."""
    actions = [
        {
            "kind": "promise.register_callback",
            "head": {},
            "data": {"awaited": a, "awaiter": awaiter if awaiter is not None else id},
        }
        for a in awaited
    ]
    return rpc.call("task.suspend", {"id": id, "version": version, "actions": actions}, time=time)


def fence(
    rpc: Any,
    id: str,
    version: int,
    kind: str,
    data: Any,
    *,
    time: int = T,
    corr_id: str | None = None,
) -> Any:
    """task.fence wrapping the action ``{kind, head: {}, data}``."""
    action = {"kind": kind, "head": {}, "data": data}
    return rpc.call(
        "task.fence", {"id": id, "version": version, "action": action}, time=time, corr_id=corr_id
    )


def heartbeat(rpc: Any, pid: str, tasks: list[tuple[str, int]], *, time: int = T) -> Any:
    data = {"pid": pid, "tasks": [{"id": i, "version": v} for i, v in tasks]}
    return rpc.call("task.heartbeat", data, time=time)


def task_get(rpc: Any, id: str, *, time: int = T) -> Any:
    return rpc.call("task.get", {"id": id}, time=time)


def task_get_ok(rpc: Any, id: str, *, time: int = T) -> dict[str, Any]:
    return ok(task_get(rpc, id, time=time))["task"]  # type: ignore[no-any-return]


def halt(rpc: Any, id: str, *, time: int = T) -> Any:
    return rpc.call("task.halt", {"id": id}, time=time)


def continue_(rpc: Any, id: str, *, time: int = T) -> Any:
    return rpc.call("task.continue", {"id": id}, time=time)


def schedule_create(
    rpc: Any,
    id: str,
    cron: str,
    promise_id: str,
    promise_timeout: int,
    *,
    tags: dict[str, str] | None = None,
    param: dict[str, Any] | None = None,
    time: int = T,
) -> Any:
    """schedule.create; ``tags`` are the promiseTags (omitted when None)."""
    data: dict[str, Any] = {
        "id": id,
        "cron": cron,
        "promiseId": promise_id,
        "promiseTimeout": promise_timeout,
    }
    if tags is not None:
        data["promiseTags"] = tags
    if param is not None:
        data["promiseParam"] = param
    return rpc.call("schedule.create", data, time=time)


def schedule_get(rpc: Any, id: str, *, time: int = T) -> Any:
    return rpc.call("schedule.get", {"id": id}, time=time)


def schedule_get_ok(rpc: Any, id: str, *, time: int = T) -> dict[str, Any]:
    return ok(schedule_get(rpc, id, time=time))["schedule"]  # type: ignore[no-any-return]


SETTLED_STATES = frozenset({"resolved", "rejected", "rejected_canceled", "rejected_timedout"})


def assert_invariants(s: dict[str, Any]) -> None:
    """Check the cheap invariants of protocol.md §2.9 on a :func:`snap` result.

    Assumes the delivery loop is paused (debug.start), as in every conformance test.
    """
    promises = {p["id"]: p for p in s["promises"]}
    tasks = {t["id"]: t for t in s["tasks"]}
    assert len(tasks) == len(s["tasks"]), "duplicate task rows"
    timeouts: dict[str, dict[str, Any]] = {}
    for tt in s["taskTimeouts"]:
        assert tt["id"] not in timeouts, f"two task timeouts for {tt['id']}"
        assert tt["type"] in (0, 1), tt
        timeouts[tt["id"]] = tt

    def target(pid: str) -> str | None:
        return promises[pid]["tags"].get("resonate:target") if pid in promises else None

    # P7/P8: has target <=> has task
    for pid, prom in promises.items():
        assert (target(pid) is not None) == (pid in tasks), f"P7/P8 target <=> task: {prom}"
    assert set(tasks) <= set(promises), "task without promise"

    # P9: pending and target <=> promise timeout row, at timeoutAt
    expected_pt = {
        pid: p["timeoutAt"]
        for pid, p in promises.items()
        if p["state"] == "pending" and target(pid) is not None
    }
    got_pt = {x["id"]: x["timeout"] for x in s["promiseTimeouts"]}
    assert len(got_pt) == len(s["promiseTimeouts"]), "duplicate promise timeouts"
    assert got_pt == expected_pt, f"P9 promiseTimeouts {got_pt} != {expected_pt}"

    for pid, prom in promises.items():
        assert prom["state"] in SETTLED_STATES | {"pending"}, prom
        # settledAt present <=> settled; P18 timed out => settledAt = timeoutAt
        assert ("settledAt" in prom) == (prom["state"] != "pending"), prom
        if prom["state"] == "rejected_timedout":
            assert prom["settledAt"] == prom["timeoutAt"], f"P18: {prom}"
        # P16/P17, T13/T14: settled and target <=> task fulfilled
        if pid in tasks:
            settled = prom["state"] != "pending"
            assert settled == (tasks[pid]["state"] == "fulfilled"), (prom, tasks[pid])

    for tid, t in tasks.items():
        tt = timeouts.get(tid)
        state = t["state"]
        assert t["version"] >= 0 and t["resumes"] >= 0, t
        if state == "acquired":
            # T8/T10/T12: acquired <=> lease timeout, ttl and pid present
            assert tt is not None and tt["type"] == 1, f"T8 acquired without lease: {t} {tt}"
            assert isinstance(t.get("ttl"), int) and t["ttl"] >= 1, t
            assert isinstance(t.get("pid"), str) and t["pid"], t
            assert t["version"] >= 1, t
        else:
            assert "ttl" not in t and "pid" not in t, f"T10/T12 ttl/pid on {state}: {t}"
        if state == "pending":
            assert tt is not None and tt["type"] == 0, f"T6 pending without retry: {t} {tt}"
        if state in ("suspended", "fulfilled", "halted"):
            assert tt is None, f"no task timeout for {state}: {t} {tt}"
        if state in ("suspended", "fulfilled"):
            assert t["resumes"] == 0, f"T18/T19 resumes on {state}: {t}"
    assert set(timeouts) <= set(tasks), "task timeout without task"

    # callbacks (not-ready rows): awaiter has a task, awaited is pending (P13)
    for cb in s["callbacks"]:
        assert cb["awaiter"] in tasks, f"callback awaiter without task: {cb}"
        assert cb["awaited"] in promises, cb
        assert promises[cb["awaited"]]["state"] == "pending", f"P13 settled awaited: {cb}"
        assert tasks[cb["awaiter"]]["state"] != "fulfilled", f"callback of fulfilled task: {cb}"
    # P14: listeners only on pending promises
    for ln in s["listeners"]:
        assert ln["id"] in promises and promises[ln["id"]]["state"] == "pending", ln

    # M1/M2: message uniqueness; M3 (weakened: acquire leaves the older execute in place)
    executes: dict[str, dict[str, Any]] = {}
    unblocks: set[tuple[str, str]] = set()
    for m in s["messages"]:
        msg = m["message"]
        if msg["kind"] == "execute":
            assert msg["head"] == {}, m
            tid = msg["data"]["task"]["id"]
            assert tid not in executes, f"M1 two executes for {tid}"
            executes[tid] = m
            assert tid in tasks, m
            assert m["address"] == target(tid), m
            assert msg["data"]["task"]["version"] <= tasks[tid]["version"], (m, tasks[tid])
        else:
            assert msg["kind"] == "unblock", m
            prom = msg["data"]["promise"]
            key = (prom["id"], m["address"])
            assert key not in unblocks, f"M2 duplicate unblock {key}"
            unblocks.add(key)
            assert prom["state"] != "pending" and prom == promises[prom["id"]], m
    # T5 (delivery paused, no delay tag): pending <=> execute of the current version
    for tid, t in tasks.items():
        if t["state"] == "pending" and "resonate:delay" not in promises[tid]["tags"]:
            assert tid in executes, f"T5 pending task without execute: {t}"
            assert executes[tid]["message"]["data"]["task"]["version"] == t["version"], t
