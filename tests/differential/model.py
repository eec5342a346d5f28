"""An independent in-memory reference model ("oracle") of the server, written from protocol.md.

It accepts the same request envelopes as the server (``kind``, ``head``, ``data``) and returns
``(status, data)``. Time is explicit: every request carries ``head["resonate:debug_time"]``; the
model never reads a clock. Background work happens only in ``debug.tick`` (§3.1); message
delivery (§3.2) never happens, as if the server ran under ``debug.start``.

Section numbers in comments refer to protocol.md. Ids follow the colon scheme of §9.1.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

RETRY = 30_000
"""``tasks.retry_timeout`` default (ms)."""

VERSION = "2026-04-01"

PROMISE_STATES = ("pending", "resolved", "rejected", "rejected_canceled", "rejected_timedout")
SETTLE_STATES = ("resolved", "rejected", "rejected_canceled")
TASK_STATES = ("pending", "acquired", "suspended", "halted", "fulfilled")

Json = Any
Reply = tuple[int, Json]


class Reject(Exception):
    """An error reply: ``status`` and the human message that becomes ``data``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- ids (§9.1, colon scheme) and addresses (§1.7) ------------------------------------------


def origin(pid: str) -> str:
    """The root of ``pid``: the text before the first ``:``."""
    return pid.split(":", 1)[0]


def extends(pid: str, ancestor: str) -> bool:
    """``pid`` equals ``ancestor`` or extends it with the separator the colon scheme uses."""
    sep = "." if ":" in ancestor else ":"
    return pid == ancestor or pid.startswith(ancestor + sep)


def routable(address: str) -> bool:
    """§1.7: whether an address can be delivered to (a close approximation of the URL rules)."""
    try:
        parts = urlsplit(address)
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return bool(parts.hostname)
    if scheme == "poll":
        return parts.username in ("uni", "any") and bool(parts.hostname)
    if scheme == "gcps":
        return bool(parts.hostname) and len(parts.path) > 1
    return scheme == "bash"


def next_cron(cron: str, t: int) -> int:
    """§2.6 ``next_cron`` for the all-wildcard crons the generator uses (every minute, at :00)."""
    if not cron_valid(cron):
        return t + 60_000
    return (t // 1000 // 60 + 1) * 60_000


def cron_valid(cron: str) -> bool:
    """Only all-``*`` expressions of 5, 6 or 7 fields are understood; ``bad`` etc. are invalid."""
    fields = cron.split()
    return len(fields) in (5, 6, 7) and all(f == "*" for f in fields)


# --- request parsing (serde-like strictness, §1.4 step 9) ------------------------------------


def _bad(message: str) -> Reject:
    return Reject(400, f"Invalid request: {message}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def _req_str(d: dict[str, Any], key: str) -> str:
    if key not in d:
        raise _bad(f"missing field `{key}`")
    if not isinstance(d[key], str):
        raise _bad(f"invalid type for `{key}`, expected a string")
    return str(d[key])


def _req_int(d: dict[str, Any], key: str) -> int:
    if key not in d:
        raise _bad(f"missing field `{key}`")
    if not _is_int(d[key]):
        raise _bad(f"invalid type for `{key}`, expected i64")
    return int(d[key])


def _opt(d: dict[str, Any], key: str) -> Any:
    return d.get(key)


def _str_map(v: Any, key: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise _bad(f"invalid type for `{key}`, expected a map of strings")
    return dict(v)


def _tags(d: dict[str, Any], key: str) -> dict[str, str]:
    return _str_map(d[key], key) if key in d else {}


def _value(d: dict[str, Any], key: str) -> dict[str, Any]:
    """A Value (§1.5): only ``headers`` and ``data`` are kept, and only when not null."""
    if key not in d:
        return {}
    v = d[key]
    if not isinstance(v, dict):
        raise _bad(f"invalid type for `{key}`, expected a Value")
    out: dict[str, Any] = {}
    if v.get("headers") is not None:
        out["headers"] = _str_map(v["headers"], "headers")
    if v.get("data") is not None:
        if not isinstance(v["data"], str):
            raise _bad("invalid type for `data`, expected a string")
        out["data"] = v["data"]
    return out


def _obj(v: Any, key: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(f"invalid type for `{key}`, expected a map")
    return v


def _limit(d: dict[str, Any], default: int) -> int:
    raw = _opt(d, "limit")
    if raw is None:
        return default
    if not _is_int(raw):
        raise _bad("invalid type for `limit`, expected i64")
    if raw < 1:
        raise Reject(400, "Limit must be a positive integer")
    if raw > 1000:
        raise Reject(400, "Invalid 'limit' — must be between 1 and 1000")
    return int(raw)


def _cursor(d: dict[str, Any]) -> str | None:
    raw = _opt(d, "cursor")
    if raw is not None and not isinstance(raw, str):
        raise _bad("invalid type for `cursor`, expected a string")
    return raw


@dataclass
class CreateData:
    """A parsed PromiseCreateData."""

    id: str
    timeout_at: int
    param: dict[str, Any]
    tags: dict[str, str]


def parse_create(d: dict[str, Any]) -> CreateData:
    """Parse and validate PromiseCreateData (§1.5 promise.create, rules 1–8, colon scheme)."""
    c = CreateData(
        _req_str(d, "id"), _req_int(d, "timeoutAt"), _value(d, "param"), _tags(d, "tags")
    )
    field_errors = []
    if c.id == "":
        field_errors.append("Promise ID is required")
    if c.timeout_at < 0:
        field_errors.append("TimeoutAt must be a non-negative integer")
    if field_errors:
        raise Reject(400, "; ".join(field_errors))
    if "\x00" in c.id:
        raise Reject(400, "Promise ID must not contain null bytes")
    tags = c.tags
    if "resonate:origin" in tags:
        o = tags["resonate:origin"]
        if ":" in o:
            raise Reject(400, "resonate:origin must not contain ':'")
        if not extends(c.id, o):
            raise Reject(400, "Promise ID must be prefixed by resonate:origin")
    for tag, name in (("resonate:branch", "branch"), ("resonate:parent", "parent")):
        if tag in tags and not extends(c.id, tags[tag]):
            raise Reject(400, f"Promise ID must be prefixed by resonate:{name}")
    if ":" in tags.get("resonate:prefix", ""):
        raise Reject(400, "resonate:prefix must not contain ':'")
    if "resonate:delay" in tags:
        raw = tags["resonate:delay"]
        if not re.fullmatch(r"\+?[0-9]+", raw) or int(raw) >= 2**63:
            raise Reject(400, "resonate:delay must be a non-negative integer")
        if int(raw) >= c.timeout_at:
            raise Reject(400, "resonate:delay must be less than timeoutAt")
        if "resonate:target" not in tags:
            raise Reject(400, "resonate:delay requires a resonate:target tag")
    if "resonate:target" in tags and not routable(tags["resonate:target"]):
        raise Reject(400, "Invalid resonate:target address")
    return c


# --- state ------------------------------------------------------------------------------------


@dataclass
class Promise:
    id: str
    state: str
    param: dict[str, Any]
    value: dict[str, Any]
    tags: dict[str, str]
    timeout_at: int
    created_at: int
    settled_at: int | None = None

    @property
    def target(self) -> str | None:
        return self.tags.get("resonate:target")

    def record(self) -> dict[str, Any]:
        """The wire PromiseRecord (§1.5)."""
        r: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "param": copy.deepcopy(self.param),
            "value": copy.deepcopy(self.value),
            "tags": dict(self.tags),
            "timeoutAt": self.timeout_at,
            "createdAt": self.created_at,
        }
        if self.settled_at is not None:
            r["settledAt"] = self.settled_at
        return r


@dataclass
class Task:
    state: str
    version: int


@dataclass
class TaskTimeout:
    """A ``task_timeouts`` row: type 0 = retry, 1 = lease (with ``pid`` and ``ttl``)."""

    type: int
    at: int
    pid: str | None = None
    ttl: int | None = None


@dataclass
class Schedule:
    id: str
    cron: str
    promise_id: str
    promise_timeout: int
    promise_param: dict[str, Any]
    promise_tags: dict[str, str]
    created_at: int
    next_run_at: int
    last_run_at: int | None = None

    def record(self) -> dict[str, Any]:
        r: dict[str, Any] = {
            "id": self.id,
            "cron": self.cron,
            "promiseId": self.promise_id,
            "promiseTimeout": self.promise_timeout,
            "promiseParam": copy.deepcopy(self.promise_param),
            "promiseTags": dict(self.promise_tags),
            "createdAt": self.created_at,
            "nextRunAt": self.next_run_at,
        }
        if self.last_run_at is not None:
            r["lastRunAt"] = self.last_run_at
        return r


@dataclass
class Model:
    """The reference model: the tables of §4.1 as plain dicts and sets.

    ``apply`` is the public surface; each ``op_<kind>`` implements the §1.5 entry of that kind,
    and the query helpers at the end are for generators.
    """

    promises: dict[str, Promise] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    callbacks: dict[tuple[str, str], bool] = field(default_factory=dict)
    """(awaited, awaiter) -> ready."""
    listeners: set[tuple[str, str]] = field(default_factory=set)
    """(promise id, address)."""
    promise_timeouts: dict[str, int] = field(default_factory=dict)
    task_timeouts: dict[str, TaskTimeout] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    schedule_timeouts: dict[str, int] = field(default_factory=dict)
    executes: dict[str, tuple[int, str]] = field(default_factory=dict)
    """task id -> (version, address): at most one pending execute per task (§2.5)."""
    unblocks: set[tuple[str, str]] = field(default_factory=set)
    """(promise id, address)."""
    coalesce: bool = True
    """Schedule catch-up: fire only the latest due occurrence (else one occurrence per tick)."""

    # --- entry point --------------------------------------------------------------------------

    def apply(self, kind: str, head: dict[str, Any], data: Any) -> Reply:
        """Run one request (envelope already valid) and return ``(status, data)``."""
        if not isinstance(data, dict):
            return 400, "Invalid 'data' field — must be an object"
        now = head.get("resonate:debug_time")
        assert _is_int(now), "the model needs resonate:debug_time on every request"
        handler = getattr(self, "op_" + kind.replace(".", "_"), None)
        if handler is None:
            return 400, f"Unknown operation: {kind}"
        try:
            return handler(data, now, head)  # type: ignore[no-any-return]
        except Reject as e:
            return e.status, e.message

    # --- records --------------------------------------------------------------------------------

    def resumes(self, tid: str) -> int:
        return sum(1 for (_, w), ready in self.callbacks.items() if ready and w == tid)

    def task_record(self, tid: str) -> dict[str, Any]:
        t = self.tasks[tid]
        r: dict[str, Any] = {
            "id": tid,
            "state": t.state,
            "version": t.version,
            "resumes": self.resumes(tid),
        }
        tt = self.task_timeouts.get(tid)
        if tt is not None and tt.type == 1:
            r["ttl"] = tt.ttl
            r["pid"] = tt.pid
        return r

    def preload(self, pid: str) -> list[dict[str, Any]]:
        """§2.3 compute_preload: same ``resonate:branch``, other ids, by id, stored state."""
        branch = self.promises[pid].tags.get("resonate:branch")
        if branch is None:
            return []
        return [
            self.promises[i].record()
            for i in sorted(self.promises)
            if i != pid and self.promises[i].tags.get("resonate:branch") == branch
        ]

    # --- the settlement chain and timeouts (§2.8) ---------------------------------------------

    def _fulfill_task(self, pid: str) -> bool:
        """SettlementEnqueued: fulfil the task of ``pid`` (if any, and not yet fulfilled)."""
        t = self.tasks.get(pid)
        if t is None or t.state == "fulfilled":
            return False
        t.state = "fulfilled"
        self.task_timeouts.pop(pid, None)
        for key in [k for k in self.callbacks if k[1] == pid]:
            del self.callbacks[key]
        return True

    def _resume(self, pid: str, now: int, skip: set[str]) -> None:
        """ResumptionEnqueued: mark callbacks on ``pid`` ready and wake suspended awaiters."""
        for key in [k for k in self.callbacks if k[0] == pid]:
            self.callbacks[key] = True
            awaiter = key[1]
            t = self.tasks.get(awaiter)
            if awaiter in skip or t is None or t.state != "suspended":
                continue
            self._make_pending(awaiter, now)

    def _make_pending(self, tid: str, now: int) -> None:
        """Task -> pending (version kept), retry timeout now+R, execute(v) upserted."""
        t = self.tasks[tid]
        t.state = "pending"
        self.task_timeouts[tid] = TaskTimeout(0, now + RETRY)
        target = self.promises[tid].target
        assert target is not None
        self.executes[tid] = (t.version, target)

    def _unblock_listeners(self, pid: str) -> None:
        """ListenerUnblocked: listeners move to the unblock outbox."""
        for key in [k for k in self.listeners if k[0] == pid]:
            self.unblocks.add(key)
            self.listeners.discard(key)

    def _settle(self, pid: str, state: str, value: dict[str, Any], now: int) -> None:
        """settle(p, state, value, settled_at=now, now), only if pending (§2.8 steps 1–5)."""
        p = self.promises[pid]
        if p.state != "pending":
            return
        p.state, p.value, p.settled_at = state, value, now
        self.promise_timeouts.pop(pid, None)
        fulfilled = {pid} if self._fulfill_task(pid) else set()
        self._resume(pid, now, fulfilled)
        self._unblock_listeners(pid)

    def _expire(self, ids: list[str], now: int) -> None:
        """A batch of timeouts: ``try_timeout`` (ghost) and tick step 1 share it (§2.8, §3.1)."""
        expired = []
        for pid in dict.fromkeys(ids):
            p = self.promises.get(pid)
            if p is None or p.state != "pending" or p.timeout_at > now:
                continue
            timer = p.tags.get("resonate:timer") == "true"
            p.state = "resolved" if timer else "rejected_timedout"
            p.settled_at = p.timeout_at
            self.promise_timeouts.pop(pid, None)
            expired.append(pid)
        fulfilled = {pid for pid in expired if self._fulfill_task(pid)}
        for pid in expired:
            self._resume(pid, now, fulfilled)
            self._unblock_listeners(pid)

    # --- creation (§2.1.2) ------------------------------------------------------------------

    def _create(self, c: CreateData, now: int) -> Promise:
        """Create a promise that does not exist yet (promise.create, fenced create)."""
        target = c.tags.get("resonate:target")
        if now >= c.timeout_at:
            timer = c.tags.get("resonate:timer") == "true"
            state = "resolved" if timer else "rejected_timedout"
            p = Promise(c.id, state, c.param, {}, c.tags, c.timeout_at, c.timeout_at, c.timeout_at)
            self.promises[c.id] = p
            if target is not None:
                self.tasks[c.id] = Task("fulfilled", 0)
            return p
        p = Promise(c.id, "pending", c.param, {}, c.tags, c.timeout_at, now)
        self.promises[c.id] = p
        if target is not None:
            self.promise_timeouts[c.id] = c.timeout_at
            self.tasks[c.id] = Task("pending", 0)
            delay = int(c.tags["resonate:delay"]) if "resonate:delay" in c.tags else None
            if delay is not None and now < delay:
                # Decision (protocol.md top, §9.3): resonate:delay defers the first execute.
                self.task_timeouts[c.id] = TaskTimeout(0, delay)
            else:
                self.task_timeouts[c.id] = TaskTimeout(0, now + RETRY)
                self.executes[c.id] = (0, target)
        return p

    def _acquire(self, tid: str, pid: str, ttl: int, now: int) -> None:
        """Pending -> acquired(v+1), lease now+ttl, ready callbacks dropped."""
        t = self.tasks[tid]
        t.state = "acquired"
        t.version += 1
        self.task_timeouts[tid] = TaskTimeout(1, now + ttl, pid, ttl)
        self._drop_ready(tid)

    def _drop_ready(self, tid: str) -> None:
        for key in [k for k, ready in self.callbacks.items() if ready and k[1] == tid]:
            del self.callbacks[key]

    # --- promise.* ------------------------------------------------------------------------------

    def op_promise_get(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        pid = _req_str(d, "id")
        self._expire([pid], now)
        if pid not in self.promises:
            return 404, "Promise not found"
        return 200, {"promise": self.promises[pid].record()}

    def op_promise_create(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        c = parse_create(d)
        self._expire([c.id], now)
        p = self.promises.get(c.id) or self._create(c, now)
        return 200, {"promise": p.record()}

    def op_promise_settle(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        pid = _req_str(d, "id")
        state = _req_str(d, "state")
        if state not in SETTLE_STATES:
            raise _bad(f"unknown variant `{state}`")
        value = _value(d, "value")
        self._expire([pid], now)
        if pid not in self.promises:
            return 404, "Promise not found"
        self._settle(pid, state, value, now)
        return 200, {"promise": self.promises[pid].record()}

    def op_promise_register_callback(
        self, d: dict[str, Any], now: int, head: dict[str, Any]
    ) -> Reply:
        awaited, awaiter = _req_str(d, "awaited"), _req_str(d, "awaiter")
        if awaited == awaiter:
            return 400, "Awaited and awaiter must be different promises"
        if origin(awaited) != origin(awaiter):
            return 400, "Awaiter and awaited must belong to the same origin"
        self._expire([awaited, awaiter], now)
        if awaited not in self.promises:
            return 404, "Awaited promise not found"
        if awaiter not in self.promises:
            return 422, "Awaiter promise not found"
        if self.promises[awaiter].target is None:
            return 422, "Awaiter promise has no resonate:target tag"
        a, w = self.promises[awaited], self.promises[awaiter]
        if a.state == "pending" and w.state == "pending":
            self.callbacks.setdefault((awaited, awaiter), False)
        elif a.state != "pending":
            t = self.tasks[awaiter]
            if t.state == "suspended":
                self._make_pending(awaiter, now)
            elif t.state in ("pending", "acquired"):
                self.callbacks.setdefault((awaited, awaiter), True)
        return 200, {"promise": a.record()}

    def op_promise_register_listener(
        self, d: dict[str, Any], now: int, head: dict[str, Any]
    ) -> Reply:
        awaited, address = _req_str(d, "awaited"), _req_str(d, "address")
        if not routable(address):
            return 400, "Invalid listener address"
        self._expire([awaited], now)
        p = self.promises.get(awaited)
        if p is None:
            return 404, "Awaited promise not found"
        if p.state == "pending":
            self.listeners.add((awaited, address))
        return 200, {"promise": p.record()}

    def op_promise_search(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        state = _opt(d, "state")
        if state is not None and state not in PROMISE_STATES:
            raise _bad(f"unknown variant `{state}`")
        tags = _str_map(d["tags"], "tags") if d.get("tags") is not None else {}
        limit, cursor = _limit(d, 100), _cursor(d)
        rows = [
            p
            for pid, p in sorted(self.promises.items())
            if (cursor is None or pid > cursor)
            and (state is None or p.state == state)
            and all(p.tags.get(k) == v for k, v in tags.items())
        ]
        out: dict[str, Any] = {"promises": [p.record() for p in rows[:limit]]}
        if len(rows) > limit:
            out["cursor"] = rows[limit - 1].id
        return 200, out

    # --- task.* ---------------------------------------------------------------------------------

    def op_task_get(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        tid = _req_str(d, "id")
        self._expire([tid], now)
        if tid not in self.tasks:
            return 404, "Task not found"
        return 200, {"task": self.task_record(tid)}

    def op_task_create(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        pid, ttl = _req_str(d, "pid"), _req_int(d, "ttl")
        action = _obj(d.get("action"), "action") if "action" in d else None
        if action is None:
            raise _bad("missing field `action`")
        _req_str(action, "kind")
        if "head" not in action:
            raise _bad("missing field `head`")
        c = parse_create(_obj(action.get("data"), "data"))
        errors = []
        if pid == "":
            errors.append("Process ID is required")
        if ttl < 1:
            errors.append("TTL must be a positive integer")
        if errors:
            return 400, "; ".join(errors)
        if "resonate:target" not in c.tags:
            return 400, "Action must have a resonate:target tag"
        if "resonate:delay" in c.tags:
            return 400, "Action must not have a resonate:delay tag"
        self._expire([c.id], now)
        p = self.promises.get(c.id)
        if p is None:
            p = self._create(c, now)
            if p.state != "pending":
                return 200, {"task": self.task_record(c.id), "promise": p.record(), "preload": []}
            # task.create claims the new task itself: acquired v1 with a lease and no execute.
            self.task_timeouts[c.id] = TaskTimeout(1, now + ttl, pid, ttl)
            self.executes.pop(c.id, None)
            self.tasks[c.id] = Task("acquired", 1)
            return 200, {
                "task": self.task_record(c.id),
                "promise": p.record(),
                "preload": self.preload(c.id),
            }
        t = self.tasks.get(c.id)
        if t is None:
            return 422, "The promise does not have a resonate:target tag"
        if t.state == "fulfilled":
            return 200, {"task": self.task_record(c.id), "promise": p.record(), "preload": []}
        if t.state != "pending":
            return 409, "Already exists"
        self._acquire(c.id, pid, ttl, now)
        return 200, {
            "task": self.task_record(c.id),
            "promise": p.record(),
            "preload": self.preload(c.id),
        }

    def op_task_acquire(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        tid, version = _req_str(d, "id"), _req_int(d, "version")
        pid, ttl = _req_str(d, "pid"), _req_int(d, "ttl")
        self._expire([tid], now)
        t = self.tasks.get(tid)
        if t is None or tid not in self.promises:
            return 404, "Task not found"
        if t.state != "pending":
            return 409, "Task is not pending"
        if t.version != version:
            return 409, "Version mismatch"
        self._acquire(tid, pid, ttl, now)
        return 200, {
            "task": self.task_record(tid),
            "promise": self.promises[tid].record(),
            "preload": self.preload(tid),
        }

    def op_task_release(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        tid, version = _req_str(d, "id"), _req_int(d, "version")
        self._expire([tid], now)
        t = self.tasks.get(tid)
        if t is None:
            return 404, "Task not found"
        if t.state != "acquired" or t.version != version:
            return 409, "Task version mismatch or invalid state"
        self._make_pending(tid, now)
        return 200, {}

    def op_task_fulfill(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        tid, version = _req_str(d, "id"), _req_int(d, "version")
        action = _obj(d.get("action"), "action")
        _req_str(action, "kind")
        ad = _obj(action.get("data"), "data")
        aid, state = _req_str(ad, "id"), _req_str(ad, "state")
        if state not in SETTLE_STATES:
            raise _bad(f"unknown variant `{state}`")
        value = _value(ad, "value")
        if aid != tid:
            return 400, "Action ID must match the task ID"
        self._expire([tid], now)
        t = self.tasks.get(tid)
        if t is None:
            return 404, "Task not found"
        if t.state != "acquired" or t.version != version:
            return 409, "Task version mismatch or invalid state"
        self._fulfill_task(tid)
        self._settle(tid, state, value, now)
        return 200, {"promise": self.promises[tid].record()}

    def op_task_suspend(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        tid, version = _req_str(d, "id"), _req_int(d, "version")
        actions = d.get("actions")
        if not isinstance(actions, list):
            raise _bad("invalid type for `actions`, expected a sequence")
        if not actions:
            return 400, "Actions array cannot be empty"
        pairs = []
        for a in actions:
            ad = _obj(_obj(a, "action").get("data"), "data")
            pairs.append((_req_str(ad, "awaited"), _req_str(ad, "awaiter")))
        for awaited, awaiter in pairs:
            if awaited == awaiter:
                return 400, "Awaited and awaiter must be different promises"
            if origin(awaited) != origin(awaiter):
                return 400, "Awaiter and awaited must belong to the same origin"
        if any(w != tid for _, w in pairs):
            return 400, "All action awaiter IDs must match the task ID"
        if any(a == tid for a, _ in pairs):
            return 400, "Action awaited promise must not equal the task ID"
        if any(origin(a) != origin(tid) for a, _ in pairs):
            return 400, "Awaited promise must belong to the same origin as the task"
        existed = tid in self.tasks
        awaited_ids = list(dict.fromkeys(a for a, _ in pairs))
        self._expire([tid, *awaited_ids], now)
        t = self.tasks.get(tid)
        if t is None or t.state != "acquired" or t.version != version:
            if not existed:
                return 404, "Task not found"
            return 409, "Task is not acquired or version mismatch"
        if any(a not in self.promises for a in awaited_ids):
            return 422, "Awaited promise not found"
        self._drop_ready(tid)
        if any(self.promises[a].state != "pending" for a in awaited_ids):
            return 300, {"preload": self.preload(tid)}
        for a in awaited_ids:
            self.callbacks.setdefault((a, tid), False)
        t.state = "suspended"
        self.task_timeouts.pop(tid, None)
        return 200, {}

    def op_task_fence(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        tid, version = _req_str(d, "id"), _req_int(d, "version")
        action = _obj(d.get("action"), "action")
        kind = _req_str(action, "kind")
        if "data" not in action:
            raise _bad("missing field `data`")
        ad = action["data"]
        inner_id = ad.get("id") if isinstance(ad, dict) else None
        if isinstance(inner_id, str) and inner_id == tid:
            return 400, "Action ID must not equal the task ID"
        # §1.5 task.fence: the ghost timeout runs first, and commits even if the action turns
        # out to be invalid below (§2.8: 4xx replies are returned from inside the transaction).
        self._expire([tid, *([inner_id] if isinstance(inner_id, str) else [])], now)
        if kind not in ("promise.create", "promise.settle"):
            return 400, "Invalid fence action kind"
        try:
            if kind == "promise.create":
                c = parse_create(_obj(ad, "data"))
            else:
                ad = _obj(ad, "data")
                sid, state = _req_str(ad, "id"), _req_str(ad, "state")
                if state not in SETTLE_STATES:
                    raise _bad(f"unknown variant `{state}`")
                value = _value(ad, "value")
        except Reject as e:
            prefix = "Invalid request: "
            if e.message.startswith(prefix):
                return 400, "Invalid action data: " + e.message[len(prefix) :]
            raise
        t = self.tasks.get(tid)
        if t is None:
            return 404, "Task not found"
        if t.state != "acquired" or t.version != version:
            return 409, "Version mismatch"
        inner_status = 200
        inner: Any
        if kind == "promise.create":
            p = self.promises.get(c.id) or self._create(c, now)
            inner = {"promise": p.record()}
        elif sid not in self.promises:
            inner_status, inner = 404, "Promise not found"
        else:
            self._settle(sid, state, value, now)
            inner = {"promise": self.promises[sid].record()}
        inner_head = {"corrId": head.get("corrId"), "status": inner_status, "version": VERSION}
        return 200, {
            "action": {"kind": kind, "head": inner_head, "data": inner},
            "preload": self.preload(tid),
        }

    def op_task_heartbeat(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        pid = _req_str(d, "pid")
        tasks = d.get("tasks")
        if not isinstance(tasks, list):
            raise _bad("invalid type for `tasks`, expected a sequence")
        refs = [(_req_str(_obj(x, "task"), "id"), _req_int(x, "version")) for x in tasks]
        if pid == "":
            return 400, "Process ID is required"
        if not refs:
            return 400, "Tasks array must not be empty"
        # Decision (protocol.md top): a batch may span origins. No ghost timeout here.
        for tid, version in refs:
            t, tt = self.tasks.get(tid), self.task_timeouts.get(tid)
            if t is None or tt is None or tt.type != 1 or tt.pid != pid:
                continue
            if t.state == "acquired" and t.version == version:
                assert tt.ttl is not None
                tt.at = now + tt.ttl
        return 200, {}

    def op_task_halt(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        tid = _req_str(d, "id")
        self._expire([tid], now)
        t = self.tasks.get(tid)
        if t is None:
            return 404, "Task not found"
        if t.state == "fulfilled":
            return 409, "Task is fulfilled"
        if t.state != "halted":
            t.state = "halted"
            self.task_timeouts.pop(tid, None)
        return 200, {}

    def op_task_continue(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        tid = _req_str(d, "id")
        self._expire([tid], now)
        t = self.tasks.get(tid)
        if t is None:
            return 404, "Task not found"
        if t.state != "halted":
            return 409, "Task is not halted"
        self._make_pending(tid, now)
        return 200, {}

    def op_task_search(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        state = _opt(d, "state")
        if state is not None and state not in TASK_STATES:
            raise _bad(f"unknown variant `{state}`")
        limit, cursor = _limit(d, 100), _cursor(d)
        rows = [
            tid
            for tid, t in sorted(self.tasks.items())
            if (cursor is None or tid > cursor) and (state is None or t.state == state)
        ]
        out: dict[str, Any] = {"tasks": [self.task_record(tid) for tid in rows[:limit]]}
        if len(rows) > limit:
            out["cursor"] = rows[limit - 1]
        return 200, out

    # --- schedule.* -----------------------------------------------------------------------------

    def op_schedule_get(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        sid = _req_str(d, "id")
        if sid not in self.schedules:
            return 404, "Schedule not found"
        return 200, {"schedule": self.schedules[sid].record()}

    def op_schedule_create(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        sid, cron = _req_str(d, "id"), _req_str(d, "cron")
        template, timeout = _req_str(d, "promiseId"), _req_int(d, "promiseTimeout")
        param, tags = _value(d, "promiseParam"), _tags(d, "promiseTags")
        errors = []
        if sid == "":
            errors.append("Schedule ID is required")
        if cron == "":
            errors.append("Cron expression is required")
        if template == "":
            errors.append("Promise ID template is required")
        if timeout < 0:
            errors.append("Promise timeout must be a non-negative integer")
        if errors:
            return 400, "; ".join(errors)
        if ":" in sid:
            # §1.5 forbids '.' under the v0.9.8 dot scheme; with the colon scheme (§9.1) the
            # separator it protects is ':'. The server reads it that way too (a question).
            return 400, "Schedule ID must not contain ':'"
        if "resonate:target" not in tags:
            return 400, "promiseTags must include a resonate:target tag"
        if not cron_valid(cron):
            return 400, "Invalid cron expression"
        if sid not in self.schedules:
            nxt = next_cron(cron, now)
            self.schedules[sid] = Schedule(sid, cron, template, timeout, param, tags, now, nxt)
            self.schedule_timeouts[sid] = nxt
        return 200, {"schedule": self.schedules[sid].record()}

    def op_schedule_delete(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        sid = _req_str(d, "id")
        if sid not in self.schedules:
            return 404, "Schedule not found"
        del self.schedules[sid]
        self.schedule_timeouts.pop(sid, None)
        return 200, {}

    def op_schedule_search(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        tags = _str_map(d["tags"], "tags") if d.get("tags") is not None else {}
        limit, cursor = _limit(d, 10), _cursor(d)
        rows = [
            s
            for sid, s in sorted(self.schedules.items())
            if (cursor is None or sid > cursor)
            and all(s.promise_tags.get(k) == v for k, v in tags.items())
        ]
        out: dict[str, Any] = {"schedules": [s.record() for s in rows[:limit]]}
        if len(rows) > limit:
            out["cursor"] = rows[limit - 1].id
        return 200, out

    # --- debug.* and background work (§3.1) ------------------------------------------------------

    def op_debug_start(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        return 200, {}

    op_debug_stop = op_debug_start

    def op_debug_reset(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        self.__init__(coalesce=self.coalesce)  # type: ignore[misc]
        return 200, {}

    def op_debug_tick(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        t = d.get("time")
        if not _is_int(t):
            return 400, "Missing or invalid 'time' field"
        if head.get("resonate:debug_time") is not None and head["resonate:debug_time"] != t:
            return 400, "resonate:debug_time must equal data.time"
        self.tick(t)
        return 200, []

    def op_debug_snap(self, d: dict[str, Any], now: int, head: dict[str, Any]) -> Reply:
        return 200, self.snap()

    def tick(self, now: int) -> None:
        """``process_all_timeouts(now)``: §3.1 steps 1–4, in order."""
        self._expire([pid for pid, at in sorted(self.promise_timeouts.items()) if at <= now], now)
        for tid, tt in list(self.task_timeouts.items()):
            if tt.type == 0 and tt.at <= now and self.tasks[tid].state == "pending":
                self._make_pending(tid, now)
        for tid, tt in list(self.task_timeouts.items()):
            if tt.type == 1 and tt.at <= now and self.tasks[tid].state == "acquired":
                self._make_pending(tid, now)
        for sid, fired_at in sorted(self.schedule_timeouts.items()):
            if fired_at <= now:
                self._fire(self.schedules[sid], fired_at, now)

    def _fire(self, s: Schedule, fired_at: int, now: int) -> None:
        """§3.1 step 4: fire one occurrence of ``s``.

        With ``coalesce`` (the project's documented choice, docs/schedules.md; §8 scenario 59
        leaves catch-up open) the occurrence is the latest one due, not the stored
        ``nextRunAt``, so missed occurrences collapse into one firing.
        """
        if self.coalesce:
            while next_cron(s.cron, fired_at) <= now:
                fired_at = next_cron(s.cron, fired_at)
        pid = s.promise_id.replace("{{.id}}", s.id).replace("{{.timestamp}}", str(fired_at))
        tags = {**s.promise_tags, "resonate:schedule": s.id}
        for tag in ("resonate:origin", "resonate:branch", "resonate:parent", "resonate:prefix"):
            tags[tag] = pid
        timeout_at = fired_at + s.promise_timeout
        if pid not in self.promises:
            target = tags["resonate:target"]
            param = copy.deepcopy(s.promise_param)
            if now >= timeout_at:
                timer = tags.get("resonate:timer") == "true"
                state = "resolved" if timer else "rejected_timedout"
                # §3.1 step 4 (and docs/schedules.md): createdAt = fired_at even for a promise
                # born timed out; only state and settledAt follow §2.1.2.
                p = Promise(pid, state, param, {}, tags, timeout_at, fired_at, timeout_at)
                self.promises[pid] = p
                self.tasks[pid] = Task("fulfilled", 0)
            else:
                p = Promise(pid, "pending", param, {}, tags, timeout_at, fired_at)
                self.promises[pid] = p
                self.promise_timeouts[pid] = timeout_at
                self.tasks[pid] = Task("pending", 0)
                self.task_timeouts[pid] = TaskTimeout(0, now + RETRY)
                self.executes[pid] = (0, target)
        s.last_run_at = fired_at
        s.next_run_at = next_cron(s.cron, fired_at)
        self.schedule_timeouts[s.id] = s.next_run_at

    # --- snapshot (§1.5 debug.snap) -------------------------------------------------------------

    def snap(self) -> dict[str, Any]:
        """The ``debug.snap`` data; lists other than ``promises`` come in no particular order."""
        messages: list[dict[str, Any]] = [
            {
                "address": address,
                "message": {
                    "kind": "execute",
                    "head": {},
                    "data": {"task": {"id": tid, "version": version}},
                },
            }
            for tid, (version, address) in sorted(self.executes.items())
        ]
        messages += [
            {
                "address": address,
                "message": {
                    "kind": "unblock",
                    "head": {},
                    "data": {"promise": self.promises[pid].record()},
                },
            }
            for pid, address in sorted(self.unblocks)
        ]
        return {
            "promises": [self.promises[pid].record() for pid in sorted(self.promises)],
            "promiseTimeouts": [
                {"id": pid, "timeout": at} for pid, at in sorted(self.promise_timeouts.items())
            ],
            "callbacks": [
                {"awaiter": w, "awaited": a}
                for (a, w), ready in sorted(self.callbacks.items())
                if not ready
            ],
            "listeners": [{"id": pid, "address": a} for pid, a in sorted(self.listeners)],
            "tasks": [self.task_record(tid) for tid in sorted(self.tasks)],
            "taskTimeouts": [
                {"id": tid, "type": tt.type, "timeout": tt.at}
                for tid, tt in sorted(self.task_timeouts.items())
            ],
            "messages": messages,
        }

    # --- queries for the generator ----------------------------------------------------------

    def pending_promises(self) -> list[str]:
        """Ids whose stored state is pending (some may already be past their timeout)."""
        return sorted(pid for pid, p in self.promises.items() if p.state == "pending")

    def tasks_in(self, *states: str) -> list[tuple[str, int]]:
        return sorted((tid, t.version) for tid, t in self.tasks.items() if t.state in states)
