"""Promise and task state machines over a :class:`~resonate_server.store.StoreTx`.

The one owner of Resonate semantics (protocol.md §1.5, §2, §3.1). Every operation is split in
two: ``parse_*`` validates request data outside any transaction (raising
:class:`~resonate_server.protocol.RpcError`), and ``run_*`` runs inside one transaction and
returns ``(status, data)``. 4xx outcomes found inside the transaction are returned, not raised,
so that ghost timeouts applied on the way still commit.

Lock order (where the store locks rows, PostgreSQL): an awaited promise before its awaiters,
and a promise before its own task. The settlement chain runs in that order (settled promise,
its task, then each awaiter's promise and task), so every operation that touches several rows
reads them in that order too; otherwise two transactions wait on each other until the
database aborts one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import cron, ids
from . import protocol as p
from .addresses import is_routable
from .records import (
    LEASE,
    PENDING,
    PROMISE_STATES,
    REJECTED_TIMEDOUT,
    RESOLVED,
    RETRY,
    SETTLE_STATES,
    TAG_BRANCH,
    TAG_DELAY,
    TAG_ORIGIN,
    TAG_PARENT,
    TAG_PREFIX,
    TAG_SCHEDULE,
    TAG_TARGET,
    TASK_ACQUIRED,
    TASK_FULFILLED,
    TASK_HALTED,
    TASK_PENDING,
    TASK_STATES,
    TASK_SUSPENDED,
    Promise,
    Schedule,
    Task,
    execute_message,
    unblock_message,
)
from .store import StoreTx

Reply = tuple[int, Any]
OK = 200


@dataclass(slots=True)
class Ctx:
    """What an operation knows besides its data: the request time and server settings."""

    now: int
    retry_timeout: int
    schemes: frozenset[str]
    corr_id: str = "0"
    changes: list[StateChange] | None = None
    outbox: bool = False  # set when the operation queued a message

    def changed(self, entity: str, id: str, before: str | None, after: str) -> None:
        """Record a transition for observers (only when someone observes)."""
        if self.changes is not None and before != after:
            self.changes.append(StateChange(entity, id, before, after))


@dataclass(frozen=True, slots=True)
class StateChange:
    """One promise or task transition; ``before`` is None for a creation."""

    entity: str
    id: str
    before: str | None
    after: str


# --- the settlement chain (§2.8) ------------------------------------------------------------


def timeout_state(promise: Promise) -> str:
    return RESOLVED if promise.timer else REJECTED_TIMEDOUT


async def settle_all(
    tx: StoreTx, c: Ctx, settled: list[Promise], known: dict[str, Task] | None = None
) -> None:
    """Persist already-settled ``settled`` promises and run the chain for them as one batch.

    Their tasks are fulfilled first; awaiters fulfilled in this batch are not resumed.
    ``known`` holds tasks the caller already read (and locked), by id; they are not read again.
    """
    fulfilled: set[str] = set()
    for prom in settled:
        await tx.update_promise(prom)
        c.changed("promise", prom.id, PENDING, prom.state)
        if prom.target is not None:
            task = known.get(prom.id) if known else None
            if task is None:
                task = await tx.get_task(prom.id)
            if task is not None and task.state != TASK_FULFILLED:
                c.changed("task", task.id, task.state, TASK_FULFILLED)
                task.state = TASK_FULFILLED
                task.set_timeout(None)
                await tx.update_task(task)
                fulfilled.add(prom.id)
    for prom in settled:
        # One call: a store may send it as one statement, with the writes above.
        queued, awaiters = await tx.release_waiters(prom.id, prom.id in fulfilled)
        if queued:
            c.outbox = True
        for awaiter in awaiters:
            if awaiter not in fulfilled:
                await _resume(tx, c, awaiter)


async def _resume(tx: StoreTx, c: Ctx, task_id: str) -> None:
    """A suspended task goes back to pending with a retry timer and an execute message."""
    owner, task = await tx.get_promise_task(task_id)
    if task is None or task.state != TASK_SUSPENDED:
        return
    await _make_pending(tx, c, task, owner)


async def _make_pending(tx: StoreTx, c: Ctx, task: Task, owner: Promise | None) -> None:
    """``owner`` is the task's promise, read (and locked) by the caller before the task."""
    c.changed("task", task.id, task.state, TASK_PENDING)
    task.state = TASK_PENDING
    task.set_timeout(c.now + c.retry_timeout, RETRY, ttl=c.retry_timeout)
    await tx.update_task(task)
    if owner is not None and owner.target is not None:
        await tx.put_execute(task.id, task.version, owner.target)
        c.outbox = True


async def try_timeout(tx: StoreTx, c: Ctx, promise_ids: Iterable[str]) -> dict[str, Promise | None]:
    """The ghost timeout: settle every named pending promise whose time has come.

    Returns the promises as they stand afterwards (``None`` for missing ids).
    """
    found: dict[str, Promise | None] = {}
    for pid in promise_ids:
        if pid not in found:
            found[pid] = await tx.get_promise(pid)
    await expire_due(tx, c, [x for x in found.values() if x is not None])
    return found


async def load_task(tx: StoreTx, c: Ctx, tid: str) -> tuple[Promise | None, Task | None]:
    """A task and its promise, read in one statement, after the promise's ghost timeout."""
    prom, task = await tx.get_promise_task(tid)
    if prom is not None:
        await expire_due(tx, c, [prom], None if task is None else {tid: task})
    return prom, task


async def expire_due(
    tx: StoreTx, c: Ctx, promises: list[Promise], known: dict[str, Task] | None = None
) -> None:
    """Settle, as one batch, those of ``promises`` that are pending past their timeout."""
    expired = [x for x in promises if x.pending and c.now >= x.timeout_at]
    for prom in expired:
        prom.state = timeout_state(prom)
        prom.settled_at = prom.timeout_at
    if expired:
        await settle_all(tx, c, expired, known)


async def settle(
    tx: StoreTx,
    c: Ctx,
    prom: Promise,
    state: str,
    value: dict[str, Any],
    task: Task | None = None,
) -> None:
    """Settle ``prom`` now; ``task`` is its task when the caller already holds it."""
    prom.state = state
    prom.value = value
    prom.settled_at = c.now
    await settle_all(tx, c, [prom], None if task is None else {prom.id: task})


async def preload(tx: StoreTx, prom: Promise | None) -> list[dict[str, Any]]:
    if prom is None or prom.branch is None:
        return []
    return [x.to_wire() for x in await tx.branch_promises(prom.branch, prom.id)]


# --- promise creation (§2.1.2) ---------------------------------------------------------------


@dataclass(slots=True)
class CreateReq:
    id: str
    timeout_at: int
    param: dict[str, Any]
    tags: dict[str, str]


def parse_create_data(d: dict[str, Any], schemes: frozenset[str], where: str = "") -> CreateReq:
    """Validate ``promise.create`` data: types first, then the rules of §1.5 in order."""
    pid = p.req_str(d, "id", where)
    timeout_at = p.req_int(d, "timeoutAt", where)
    param = p.value(d, "param", where)
    tags = p.str_map(d, "tags", where)
    errors = []
    if pid == "":
        errors.append("Promise ID is required")
    if timeout_at < 0:
        errors.append("TimeoutAt must be a non-negative integer")
    if errors:
        raise p.bad_request("; ".join(errors))
    if "\x00" in pid:
        raise p.bad_request("Promise ID must not contain null bytes")
    origin = tags.get(TAG_ORIGIN)
    if origin is not None:
        if not ids.valid_root_tag(origin):
            raise p.bad_request(f"resonate:origin must not contain '{ids.ORIGIN_SEPARATOR}'")
        if not ids.extends(pid, origin):
            raise p.bad_request("Promise ID must be prefixed by resonate:origin")
    for tag, name in ((TAG_BRANCH, "resonate:branch"), (TAG_PARENT, "resonate:parent")):
        ancestor = tags.get(tag)
        if ancestor is not None and not ids.extends(pid, ancestor):
            raise p.bad_request(f"Promise ID must be prefixed by {name}")
    prefix = tags.get(TAG_PREFIX)
    if prefix is not None and not ids.valid_root_tag(prefix):
        raise p.bad_request(f"resonate:prefix must not contain '{ids.ORIGIN_SEPARATOR}'")
    delay = tags.get(TAG_DELAY)
    if delay is not None:
        if not (delay.isascii() and delay.isdigit()) or int(delay) > p.I64_MAX:
            raise p.bad_request("resonate:delay must be a non-negative integer")
        if int(delay) >= timeout_at:
            raise p.bad_request("resonate:delay must be less than timeoutAt")
        if TAG_TARGET not in tags:
            raise p.bad_request("resonate:delay requires a resonate:target tag")
    target = tags.get(TAG_TARGET)
    if target is not None and not is_routable(target, schemes):
        raise p.bad_request("Invalid resonate:target address")
    return CreateReq(pid, timeout_at, param, tags)


def new_promise(req: CreateReq, now: int, created_at: int | None = None) -> Promise:
    """The record a create would insert at ``now`` (born settled when already timed out).

    A promise born timed out is created at its timeout unless ``created_at`` says otherwise
    (a schedule's promise is created at its occurrence, §3.1).
    """
    prom = Promise(
        req.id,
        PENDING,
        req.param,
        {},
        req.tags,
        req.timeout_at,
        now if created_at is None else created_at,
        None,
    )
    if now >= req.timeout_at:
        prom.state = timeout_state(prom)
        prom.settled_at = req.timeout_at
        if created_at is None:
            prom.created_at = req.timeout_at
    return prom


async def insert_new(
    tx: StoreTx, c: Ctx, prom: Promise, *, task: Task | None = None, retry_at: int | None = None
) -> Promise:
    """Insert ``prom`` with its task, timers and execute message; return the stored record.

    ``task`` overrides the default pending task (``task.create`` claims it at once);
    ``retry_at`` overrides the first retry deadline (schedules use ``now + retry``).
    """
    if not await tx.insert_promise(prom):
        existing = await tx.get_promise(prom.id)
        assert existing is not None
        return existing
    c.changed("promise", prom.id, None, prom.state)
    target = prom.target
    if target is None:
        return prom
    if not prom.pending:
        await tx.insert_task(Task(prom.id, TASK_FULFILLED, 0))
        c.changed("task", prom.id, None, TASK_FULFILLED)
        return prom
    if task is not None:
        await tx.insert_task(task)
        c.changed("task", prom.id, None, task.state)
        return prom
    c.changed("task", prom.id, None, TASK_PENDING)
    delay = prom.tags.get(TAG_DELAY)
    if delay is not None and c.now < int(delay):
        await tx.insert_task(
            Task(prom.id, TASK_PENDING, 0, int(delay), RETRY, None, c.retry_timeout)
        )
        return prom
    first = prom.created_at + c.retry_timeout if retry_at is None else retry_at
    await tx.insert_task(Task(prom.id, TASK_PENDING, 0, first, RETRY, None, c.retry_timeout))
    await tx.put_execute(prom.id, 0, target)
    c.outbox = True
    return prom


async def create_promise(tx: StoreTx, c: Ctx, req: CreateReq) -> Promise:
    """Create ``req`` unless it exists (first write wins); return the record after ghost timeout.

    Inserting first costs one statement for a new id; an existing one is read back and given
    its ghost timeout, which is what reading it first would have done.
    """
    prom = new_promise(req, c.now)
    stored = await insert_new(tx, c, prom)
    if stored is not prom:
        await expire_due(tx, c, [stored])
    return stored


# --- promise operations ----------------------------------------------------------------------


def _nonempty(d: dict[str, Any], key: str, message: str) -> str:
    v = p.req_str(d, key)
    if v == "":
        raise p.bad_request(message)
    return v


def parse_promise_get(d: dict[str, Any], c: Ctx) -> str:
    return _nonempty(d, "id", "Promise ID is required")


async def run_promise_get(tx: StoreTx, c: Ctx, pid: str) -> Reply:
    prom = (await try_timeout(tx, c, [pid]))[pid]
    if prom is None:
        return 404, "Promise not found"
    return OK, {"promise": prom.to_wire()}


def parse_promise_create(d: dict[str, Any], c: Ctx) -> CreateReq:
    return parse_create_data(d, c.schemes)


async def run_promise_create(tx: StoreTx, c: Ctx, req: CreateReq) -> Reply:
    return OK, {"promise": (await create_promise(tx, c, req)).to_wire()}


@dataclass(slots=True)
class SettleReq:
    id: str
    state: str
    value: dict[str, Any]


def parse_settle_data(d: dict[str, Any], where: str = "") -> SettleReq:
    pid = p.req_str(d, "id", where)
    state = p.enum(d, "state", SETTLE_STATES, required=True)
    val = p.value(d, "value", where)
    if pid == "":
        raise p.bad_request("Promise ID is required")
    assert state is not None
    return SettleReq(pid, state, val)


def parse_promise_settle(d: dict[str, Any], c: Ctx) -> SettleReq:
    return parse_settle_data(d)


async def settle_if_pending(tx: StoreTx, c: Ctx, req: SettleReq) -> Promise | None:
    prom = (await try_timeout(tx, c, [req.id]))[req.id]
    if prom is not None and prom.pending:
        await settle(tx, c, prom, req.state, req.value)
    return prom


async def run_promise_settle(tx: StoreTx, c: Ctx, req: SettleReq) -> Reply:
    prom = await settle_if_pending(tx, c, req)
    if prom is None:
        return 404, "Promise not found"
    return OK, {"promise": prom.to_wire()}


def parse_register_callback(d: dict[str, Any], c: Ctx) -> tuple[str, str]:
    awaited = p.req_str(d, "awaited")
    awaiter = p.req_str(d, "awaiter")
    _check_callback(awaited, awaiter)
    return awaited, awaiter


def _check_callback(awaited: str, awaiter: str) -> None:
    if awaited == "" or awaiter == "":
        raise p.bad_request("Awaited and awaiter promise IDs are required")
    if awaited == awaiter:
        raise p.bad_request("Awaited and awaiter must be different promises")
    if ids.origin(awaited) != ids.origin(awaiter):
        raise p.bad_request("Awaiter and awaited must belong to the same origin")


async def run_register_callback(tx: StoreTx, c: Ctx, req: tuple[str, str]) -> Reply:
    awaited_id, awaiter_id = req
    found = await try_timeout(tx, c, [awaited_id, awaiter_id])
    awaited, awaiter = found[awaited_id], found[awaiter_id]
    if awaited is None:
        return 404, "Awaited promise not found"
    if awaiter is None:
        return 422, "Awaiter promise not found"
    if awaiter.target is None:
        return 422, "Awaiter promise has no resonate:target tag"
    if awaited.pending:
        if awaiter.pending:
            await tx.insert_callback(awaited_id, awaiter_id, ready=False)
    else:
        task = await tx.get_task(awaiter_id)
        if task is not None:
            if task.state == TASK_SUSPENDED:
                await _make_pending(tx, c, task, awaiter)
            elif task.state in (TASK_PENDING, TASK_ACQUIRED):
                await tx.insert_callback(awaited_id, awaiter_id, ready=True)
    return OK, {"promise": awaited.to_wire()}


def parse_register_listener(d: dict[str, Any], c: Ctx) -> tuple[str, str]:
    awaited = _nonempty(d, "awaited", "Awaited promise ID is required")
    address = _nonempty(d, "address", "Address is required")
    if not is_routable(address, c.schemes):
        raise p.bad_request("Invalid listener address")
    return awaited, address


async def run_register_listener(tx: StoreTx, c: Ctx, req: tuple[str, str]) -> Reply:
    awaited_id, address = req
    prom = (await try_timeout(tx, c, [awaited_id]))[awaited_id]
    if prom is None:
        return 404, "Awaited promise not found"
    if prom.pending:
        await tx.insert_listener(awaited_id, address)
    return OK, {"promise": prom.to_wire()}


@dataclass(slots=True)
class SearchReq:
    state: str | None
    tags: dict[str, str]
    limit: int
    cursor: str | None


def parse_promise_search(d: dict[str, Any], c: Ctx) -> SearchReq:
    state = p.enum(d, "state", PROMISE_STATES, required=False)
    tags = p.str_map(d, "tags", nullable=True)
    return SearchReq(state, tags, p.search_limit(d, 100), p.opt_str(d, "cursor"))


def page(
    items: list[Any], limit: int, key: Callable[[Any], str], render: Callable[[Any], Any]
) -> tuple[list[Any], str | None]:
    """Items beyond ``limit`` (the store returns ``limit + 1``) mean there is a next page."""
    if len(items) > limit:
        items = items[:limit]
        return [render(x) for x in items], key(items[-1])
    return [render(x) for x in items], None


async def run_promise_search(tx: StoreTx, c: Ctx, req: SearchReq) -> Reply:
    found = await tx.search_promises(req.state, req.tags, req.limit + 1, req.cursor)
    items, cursor = page(found, req.limit, lambda x: x.id, lambda x: x.to_wire())
    out: dict[str, Any] = {"promises": items}
    if cursor is not None:
        out["cursor"] = cursor
    return OK, out


# --- task operations -------------------------------------------------------------------------


async def task_wire(tx: StoreTx, task: Task) -> dict[str, Any]:
    return task.to_wire(await tx.resumes(task.id))


def _lease(task: Task, c: Ctx, pid: str, ttl: int) -> None:
    task.state = TASK_ACQUIRED
    task.version += 1
    task.set_timeout(min(c.now + ttl, p.I64_MAX), LEASE, pid, ttl)


async def _claim(tx: StoreTx, c: Ctx, task: Task, prom: Promise, pid: str, ttl: int) -> Reply:
    c.changed("task", task.id, task.state, TASK_ACQUIRED)
    _lease(task, c, pid, ttl)
    await tx.update_task(task)
    await tx.delete_callbacks(task.id, ready_only=True)
    return OK, {
        "task": task.to_wire(0),
        "promise": prom.to_wire(),
        "preload": await preload(tx, prom),
    }


def _pid_ttl(d: dict[str, Any]) -> tuple[str, int]:
    pid = p.req_str(d, "pid")
    ttl = p.req_int(d, "ttl")
    if pid == "":
        raise p.bad_request("Process ID is required")
    if ttl < 1:
        raise p.bad_request("TTL must be a positive integer")
    return pid, ttl


def _id_version(d: dict[str, Any]) -> tuple[str, int]:
    tid = p.req_str(d, "id")
    version = p.req_int(d, "version")
    if tid == "":
        raise p.bad_request("Task ID is required")
    if version < 0:
        raise p.bad_request("Version must be a non-negative integer")
    return tid, version


@dataclass(slots=True)
class TaskCreateReq:
    pid: str
    ttl: int
    create: CreateReq


def parse_task_create(d: dict[str, Any], c: Ctx) -> TaskCreateReq:
    action = p.req_obj(d, "action")
    p.req_str(action, "kind", "action.")
    if "head" not in action:
        raise p.bad_request("Invalid request: missing field `action.head`")
    data = p.req_obj(action, "data", "action.")
    pid, ttl = _pid_ttl(d)
    create = parse_create_data(data, c.schemes, "action.data.")
    if TAG_TARGET not in create.tags:
        raise p.bad_request("Action must have a resonate:target tag")
    if TAG_DELAY in create.tags:
        raise p.bad_request("Action must not have a resonate:delay tag")
    return TaskCreateReq(pid, ttl, create)


async def run_task_create(tx: StoreTx, c: Ctx, req: TaskCreateReq) -> Reply:
    pid = req.create.id
    prom = (await try_timeout(tx, c, [pid]))[pid]
    if prom is None:
        prom = new_promise(req.create, c.now)
        if prom.pending:
            task = Task(pid, TASK_PENDING, 0)
            _lease(task, c, req.pid, req.ttl)
            stored = await insert_new(tx, c, prom, task=task)
            if stored is prom:
                return OK, {
                    "task": task.to_wire(0),
                    "promise": prom.to_wire(),
                    "preload": await preload(tx, prom),
                }
            prom = stored
        else:
            await insert_new(tx, c, prom)
    task = await tx.get_task(pid)
    if task is None:
        return 422, "The promise does not have a resonate:target tag"
    if task.state == TASK_FULFILLED:
        return OK, {"task": task.to_wire(0), "promise": prom.to_wire(), "preload": []}
    if task.state == TASK_PENDING:
        return await _claim(tx, c, task, prom, req.pid, req.ttl)
    return 409, "Already exists"


@dataclass(slots=True)
class AcquireReq:
    id: str
    version: int
    pid: str
    ttl: int


def parse_task_acquire(d: dict[str, Any], c: Ctx) -> AcquireReq:
    tid, version = _id_version(d)
    pid, ttl = _pid_ttl(d)
    return AcquireReq(tid, version, pid, ttl)


async def run_task_acquire(tx: StoreTx, c: Ctx, req: AcquireReq) -> Reply:
    prom, task = await load_task(tx, c, req.id)
    if task is None or prom is None:
        return 404, "Task not found"
    if task.state != TASK_PENDING:
        return 409, "Task is not pending"
    if task.version != req.version:
        return 409, "Version mismatch"
    return await _claim(tx, c, task, prom, req.pid, req.ttl)


def parse_task_release(d: dict[str, Any], c: Ctx) -> tuple[str, int]:
    return _id_version(d)


async def run_task_release(tx: StoreTx, c: Ctx, req: tuple[str, int]) -> Reply:
    tid, version = req
    owner, task = await load_task(tx, c, tid)
    if task is None:
        return 404, "Task not found"
    if task.state != TASK_ACQUIRED or task.version != version:
        return 409, "Task version mismatch or invalid state"
    await _make_pending(tx, c, task, owner)
    return OK, {}


@dataclass(slots=True)
class FulfillReq:
    id: str
    version: int
    settle: SettleReq


def parse_task_fulfill(d: dict[str, Any], c: Ctx) -> FulfillReq:
    tid, version = _id_version(d)
    action = p.req_obj(d, "action")
    settle_req = parse_settle_data(p.req_obj(action, "data", "action."), "action.data.")
    if settle_req.id != tid:
        raise p.bad_request("Action ID must match the task ID")
    return FulfillReq(tid, version, settle_req)


async def run_task_fulfill(tx: StoreTx, c: Ctx, req: FulfillReq) -> Reply:
    prom, task = await load_task(tx, c, req.id)
    if task is None or prom is None:
        return 404, "Task not found"
    if task.state != TASK_ACQUIRED or task.version != req.version:
        return 409, "Task version mismatch or invalid state"
    if prom.pending:
        await settle(tx, c, prom, req.settle.state, req.settle.value, task)
    return OK, {"promise": prom.to_wire()}


@dataclass(slots=True)
class SuspendReq:
    id: str
    version: int
    awaited: list[str]


def parse_task_suspend(d: dict[str, Any], c: Ctx) -> SuspendReq:
    tid, version = _id_version(d)
    actions = p.req_list(d, "actions")
    if not actions:
        raise p.bad_request("Actions array cannot be empty")
    awaited: list[str] = []
    for i, action in enumerate(actions):
        if not isinstance(action, dict):
            raise p.bad_request(f"Invalid request: invalid type, expected a map at `actions[{i}]`")
        data = p.req_obj(action, "data", f"actions[{i}].")
        a = p.req_str(data, "awaited", f"actions[{i}].data.")
        w = p.req_str(data, "awaiter", f"actions[{i}].data.")
        _check_callback(a, w)
        if w != tid:
            raise p.bad_request("All action awaiter IDs must match the task ID")
        if a == tid:
            raise p.bad_request("Action awaited promise must not equal the task ID")
        if ids.origin(a) != ids.origin(tid):
            raise p.bad_request("Awaited promise must belong to the same origin as the task")
        if a not in awaited:
            awaited.append(a)
    return SuspendReq(tid, version, awaited)


async def run_task_suspend(tx: StoreTx, c: Ctx, req: SuspendReq) -> Reply:
    found = await try_timeout(tx, c, [*sorted(req.awaited), req.id])
    task = await tx.get_task(req.id)
    if task is None:
        return 404, "Task not found"
    if task.state != TASK_ACQUIRED or task.version != req.version:
        return 409, "Task is not acquired or version mismatch"
    awaited = [found[a] for a in req.awaited]
    if any(x is None for x in awaited):
        return 422, "Awaited promise not found"
    await tx.delete_callbacks(req.id, ready_only=True)
    if any(not x.pending for x in awaited if x is not None):
        return 300, {"preload": await preload(tx, found[req.id])}
    for a in req.awaited:
        await tx.insert_callback(a, req.id, ready=False)
    c.changed("task", task.id, task.state, TASK_SUSPENDED)
    task.state = TASK_SUSPENDED
    task.set_timeout(None)
    await tx.update_task(task)
    return OK, {}


@dataclass(slots=True)
class FenceReq:
    id: str
    version: int
    kind: str
    action_id: str | None  # action.data.id when it is a string
    create: CreateReq | None = None
    settle: SettleReq | None = None
    error: p.RpcError | None = None  # a bad action, answered after the ghost timeout (§1.5)


def parse_task_fence(d: dict[str, Any], c: Ctx) -> FenceReq:
    tid, version = _id_version(d)
    action = p.req_obj(d, "action")
    kind = p.req_str(action, "kind", "action.")
    if "data" not in action:
        raise p.bad_request("Invalid request: missing field `action.data`")
    data = action["data"]
    action_id = data.get("id") if isinstance(data, dict) else None
    if action_id == tid:
        raise p.bad_request("Action ID must not equal the task ID")
    req = FenceReq(tid, version, kind, action_id if isinstance(action_id, str) else None)
    try:
        if kind not in ("promise.create", "promise.settle"):
            raise p.bad_request("Invalid fence action kind")
        if not isinstance(data, dict):
            raise p.bad_request("Invalid action data: invalid type, expected a map")
        if kind == "promise.create":
            req.create = parse_create_data(data, c.schemes)
        else:
            req.settle = parse_settle_data(data)
    except p.RpcError as e:
        prefix = "Invalid request: "
        if e.message.startswith(prefix):
            e = p.bad_request("Invalid action data: " + e.message[len(prefix) :])
        req.error = e
    return req


async def run_task_fence(tx: StoreTx, c: Ctx, req: FenceReq) -> Reply:
    found = await try_timeout(tx, c, [req.id] if req.action_id is None else [req.action_id, req.id])
    task = await tx.get_task(req.id)
    if req.error is not None:
        return req.error.status, req.error.message
    if task is None:
        return 404, "Task not found"
    if task.state != TASK_ACQUIRED or task.version != req.version:
        return 409, "Version mismatch"
    status: int = OK
    data: Any
    if req.create is not None:
        prom = found[req.create.id] or await insert_new(tx, c, new_promise(req.create, c.now))
        data = {"promise": prom.to_wire()}
    else:
        assert req.settle is not None
        prom = found[req.settle.id]
        if prom is None:
            status, data = 404, "Promise not found"
        else:
            if prom.pending:
                await settle(tx, c, prom, req.settle.state, req.settle.value)
            data = {"promise": prom.to_wire()}
    head = {"corrId": c.corr_id, "status": status, "version": p.VERSION}
    return OK, {
        "action": {"kind": req.kind, "head": head, "data": data},
        "preload": await preload(tx, await tx.get_promise(req.id)),
    }


def parse_task_heartbeat(d: dict[str, Any], c: Ctx) -> tuple[str, list[tuple[str, int]]]:
    pid = p.req_str(d, "pid")
    tasks = p.req_list(d, "tasks")
    if pid == "":
        raise p.bad_request("Process ID is required")
    if not tasks:
        raise p.bad_request("Tasks array must not be empty")
    out = []
    for i, t in enumerate(tasks):
        if not isinstance(t, dict):
            raise p.bad_request(f"Invalid request: invalid type, expected a map at `tasks[{i}]`")
        out.append((p.req_str(t, "id", f"tasks[{i}]."), p.req_int(t, "version", f"tasks[{i}].")))
    return pid, out


async def run_task_heartbeat(tx: StoreTx, c: Ctx, req: tuple[str, list[tuple[str, int]]]) -> Reply:
    pid, tasks = req
    for tid, version in tasks:
        if tid == "":
            continue
        task = await tx.get_task(tid)
        if (
            task is not None
            and task.state == TASK_ACQUIRED
            and task.version == version
            and task.timeout_type == LEASE
            and task.pid == pid
            and task.ttl is not None
        ):
            task.timeout_at = min(c.now + task.ttl, p.I64_MAX)
            await tx.update_task(task)
    return OK, {}


def parse_task_id(d: dict[str, Any], c: Ctx) -> str:
    return _nonempty(d, "id", "Task ID is required")


async def run_task_get(tx: StoreTx, c: Ctx, tid: str) -> Reply:
    _, task = await load_task(tx, c, tid)
    if task is None:
        return 404, "Task not found"
    return OK, {"task": await task_wire(tx, task)}


async def run_task_halt(tx: StoreTx, c: Ctx, tid: str) -> Reply:
    _, task = await load_task(tx, c, tid)
    if task is None:
        return 404, "Task not found"
    if task.state == TASK_FULFILLED:
        return 409, "Task is fulfilled"
    if task.state != TASK_HALTED:
        c.changed("task", task.id, task.state, TASK_HALTED)
        task.state = TASK_HALTED
        task.set_timeout(None)
        await tx.update_task(task)
    return OK, {}


async def run_task_continue(tx: StoreTx, c: Ctx, tid: str) -> Reply:
    owner, task = await load_task(tx, c, tid)
    if task is None:
        return 404, "Task not found"
    if task.state != TASK_HALTED:
        return 409, "Task is not halted"
    await _make_pending(tx, c, task, owner)
    return OK, {}


def parse_task_search(d: dict[str, Any], c: Ctx) -> SearchReq:
    state = p.enum(d, "state", TASK_STATES, required=False)
    return SearchReq(state, {}, p.search_limit(d, 100), p.opt_str(d, "cursor"))


async def run_task_search(tx: StoreTx, c: Ctx, req: SearchReq) -> Reply:
    found = await tx.search_tasks(req.state, req.limit + 1, req.cursor)
    rendered = [(t, await task_wire(tx, t)) for t in found]
    items, cursor = page(rendered, req.limit, lambda x: x[0].id, lambda x: x[1])
    out: dict[str, Any] = {"tasks": items}
    if cursor is not None:
        out["cursor"] = cursor
    return OK, out


# --- schedules (§2.6; missed occurrences are coalesced, see docs/schedules.md) ---------------


@dataclass(slots=True)
class ScheduleReq:
    id: str
    cron: str
    promise_id: str
    promise_timeout: int
    promise_param: dict[str, Any]
    promise_tags: dict[str, str]


def parse_schedule_create(d: dict[str, Any], c: Ctx) -> ScheduleReq:
    sid = p.req_str(d, "id")
    expr = p.req_str(d, "cron")
    template = p.req_str(d, "promiseId")
    timeout = p.req_int(d, "promiseTimeout")
    param = p.value(d, "promiseParam")
    tags = p.str_map(d, "promiseTags")
    errors = []
    if sid == "":
        errors.append("Schedule ID is required")
    if expr.strip() == "":
        errors.append("Cron expression is required")
    if template == "":
        errors.append("Promise ID template is required")
    if timeout < 0:
        errors.append("Promise timeout must be a non-negative integer")
    if errors:
        raise p.bad_request("; ".join(errors))
    if ids.ORIGIN_SEPARATOR in sid:
        raise p.bad_request(f"Schedule ID must not contain '{ids.ORIGIN_SEPARATOR}'")
    if TAG_TARGET not in tags:
        raise p.bad_request("promiseTags must include a resonate:target tag")
    if not cron.valid(expr):
        raise p.bad_request("Invalid cron expression")
    return ScheduleReq(sid, expr, template, timeout, param, tags)


async def run_schedule_create(tx: StoreTx, c: Ctx, req: ScheduleReq) -> Reply:
    existing = await tx.get_schedule(req.id)
    if existing is None:
        sched = Schedule(
            req.id,
            req.cron,
            req.promise_id,
            req.promise_timeout,
            req.promise_param,
            req.promise_tags,
            c.now,
            cron.next_after(req.cron, c.now),
            None,
        )
        if await tx.insert_schedule(sched):
            c.changed("schedule", sched.id, None, "active")
            return OK, {"schedule": sched.to_wire()}
        existing = await tx.get_schedule(req.id)
        assert existing is not None
    return OK, {"schedule": existing.to_wire()}


def parse_schedule_id(d: dict[str, Any], c: Ctx) -> str:
    return _nonempty(d, "id", "Schedule ID is required")


async def run_schedule_get(tx: StoreTx, c: Ctx, sid: str) -> Reply:
    sched = await tx.get_schedule(sid)
    if sched is None:
        return 404, "Schedule not found"
    return OK, {"schedule": sched.to_wire()}


async def run_schedule_delete(tx: StoreTx, c: Ctx, sid: str) -> Reply:
    if not await tx.delete_schedule(sid):
        return 404, "Schedule not found"
    c.changed("schedule", sid, "active", "deleted")
    return OK, {}


def parse_schedule_search(d: dict[str, Any], c: Ctx) -> SearchReq:
    tags = p.str_map(d, "tags", nullable=True)
    return SearchReq(None, tags, p.search_limit(d, 10), p.opt_str(d, "cursor"))


async def run_schedule_search(tx: StoreTx, c: Ctx, req: SearchReq) -> Reply:
    found = await tx.search_schedules(req.tags, req.limit + 1, req.cursor)
    items, cursor = page(found, req.limit, lambda x: x.id, lambda x: x.to_wire())
    out: dict[str, Any] = {"schedules": items}
    if cursor is not None:
        out["cursor"] = cursor
    return OK, out


def schedule_promise_id(sched: Schedule, fired_at: int) -> str:
    return sched.promise_id.replace("{{.id}}", sched.id).replace("{{.timestamp}}", str(fired_at))


async def fire_schedule(tx: StoreTx, c: Ctx, sched: Schedule) -> Promise | None:
    """Create the promise of ``sched``'s latest due occurrence and move it to the next one.

    Occurrences missed while the server was down are coalesced into this one firing.
    Returns the new promise, or None when a promise with that id already existed.
    """
    fired_at = max(sched.next_run_at, cron.latest_at_or_before(sched.cron, c.now) or 0)
    pid = schedule_promise_id(sched, fired_at)
    tags = {
        **sched.promise_tags,
        TAG_SCHEDULE: sched.id,
        TAG_ORIGIN: pid,
        TAG_BRANCH: pid,
        TAG_PARENT: pid,
        TAG_PREFIX: pid,
    }
    req = CreateReq(
        pid, min(fired_at + sched.promise_timeout, p.I64_MAX), sched.promise_param, tags
    )
    prom = new_promise(req, c.now, created_at=fired_at)
    stored = await insert_new(tx, c, prom, retry_at=c.now + c.retry_timeout)
    sched.last_run_at = fired_at
    sched.next_run_at = cron.next_after(sched.cron, c.now)
    await tx.update_schedule(sched)
    c.changed("schedule", sched.id, "active", "fired")
    return prom if stored is prom else None


# --- background work (§3.1) ------------------------------------------------------------------


async def process_timeouts(tx: StoreTx, c: Ctx, limit: int = 1000) -> bool:
    """Expire due promises, re-send due retries, expire due leases, fire due schedules.

    Handles at most ``limit`` of each; returns True when a limit was reached (more may be due).
    """
    due = await tx.due_promises(c.now, limit)
    await expire_due(tx, c, due)
    tasks = await tx.due_tasks(c.now, limit)
    for task, owner in tasks:
        expected = TASK_PENDING if task.timeout_type == RETRY else TASK_ACQUIRED
        if task.state == expected:
            await _make_pending(tx, c, task, owner)
        else:
            task.set_timeout(None)
            await tx.update_task(task)
    schedules = await tx.due_schedules(c.now, limit)
    for sched in schedules:
        await fire_schedule(tx, c, sched)
    return limit in (len(due), len(tasks), len(schedules))


async def snapshot(tx: StoreTx) -> dict[str, Any]:
    """``debug.snap``: every row in wire shape (§1.5)."""
    snap = await tx.snapshot()
    resumes: dict[str, int] = {}
    for _awaited, awaiter, ready in snap.callbacks:
        if ready:
            resumes[awaiter] = resumes.get(awaiter, 0) + 1
    by_id = {x.id: x for x in snap.promises}
    messages = [{"address": a, "message": execute_message(t, v)} for t, v, a in snap.executes]
    messages += [
        {"address": a, "message": unblock_message(by_id[pid])}
        for pid, a in snap.unblocks
        if pid in by_id
    ]
    return {
        "promises": [x.to_wire() for x in snap.promises],
        "promiseTimeouts": [
            {"id": x.id, "timeout": x.timeout_at}
            for x in snap.promises
            if x.pending and x.target is not None
        ],
        "callbacks": [{"awaiter": w, "awaited": a} for a, w, ready in snap.callbacks if not ready],
        "listeners": [{"id": pid, "address": a} for pid, a in snap.listeners],
        "tasks": [t.to_wire(resumes.get(t.id, 0)) for t in snap.tasks],
        "taskTimeouts": [
            {"id": t.id, "type": t.timeout_type, "timeout": t.timeout_at}
            for t in snap.tasks
            if t.timeout_at is not None
        ],
        "messages": messages,
    }


# --- the operation table ---------------------------------------------------------------------

Parse = Callable[[dict[str, Any], Ctx], Any]
Run = Callable[[StoreTx, Ctx, Any], Awaitable[Reply]]

OPERATIONS: dict[str, tuple[Parse, Run]] = {
    "promise.get": (parse_promise_get, run_promise_get),
    "promise.create": (parse_promise_create, run_promise_create),
    "promise.settle": (parse_promise_settle, run_promise_settle),
    "promise.register_callback": (parse_register_callback, run_register_callback),
    "promise.register_listener": (parse_register_listener, run_register_listener),
    "promise.search": (parse_promise_search, run_promise_search),
    "task.get": (parse_task_id, run_task_get),
    "task.create": (parse_task_create, run_task_create),
    "task.acquire": (parse_task_acquire, run_task_acquire),
    "task.release": (parse_task_release, run_task_release),
    "task.fulfill": (parse_task_fulfill, run_task_fulfill),
    "task.suspend": (parse_task_suspend, run_task_suspend),
    "task.fence": (parse_task_fence, run_task_fence),
    "task.heartbeat": (parse_task_heartbeat, run_task_heartbeat),
    "task.halt": (parse_task_id, run_task_halt),
    "task.continue": (parse_task_id, run_task_continue),
    "task.search": (parse_task_search, run_task_search),
    "schedule.create": (parse_schedule_create, run_schedule_create),
    "schedule.get": (parse_schedule_id, run_schedule_get),
    "schedule.delete": (parse_schedule_id, run_schedule_delete),
    "schedule.search": (parse_schedule_search, run_schedule_search),
}

#: Operations that never write, whatever they find; the server runs them with
#: :meth:`Store.read`. (``promise.get`` is not one: it settles a promise whose timeout passed.)
READ_ONLY: frozenset[str] = frozenset({"promise.search", "task.search", "schedule.search"})


def lock_key(data: dict[str, Any]) -> str | None:
    """The origin of the promise or task a request is about, for :meth:`Store.transact`.

    Requests about one execution tree share it (the rows they lock belong to one origin);
    None when the request names no single id.
    """
    target = data.get("id", data.get("awaited"))
    if target is None:
        action = data.get("action")
        if isinstance(action, dict) and isinstance(action.get("data"), dict):
            target = action["data"].get("id")
    return ids.origin(target) if isinstance(target, str) else None
