"""The storage interface the engine runs on. Stores implement storage, never semantics.

A store plugin returns a :class:`StoreBackend` from the ``resonate_store_backends`` hook; the
server builds one :class:`Store` from it. Every engine operation runs as a function of a
:class:`StoreTx` inside :meth:`Store.transact`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .records import Promise, Schedule, Task

T = TypeVar("T")


class StoreError(Exception):
    """A storage failure the client did not cause (answered 500)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now (answered 503; the server keeps running)."""


class StoreBusy(StoreError):
    """Too contended to answer now: conflicts outlasted the retries, or a statement waited past
    its timeout (answered 503; the client retries)."""


class StoreDataError(StoreError):
    """The database cannot store a value the client sent (answered 400)."""


@dataclass(frozen=True, slots=True)
class Message:
    """An outbox message claimed for delivery."""

    address: str
    kind: str  # "execute" | "unblock"
    task_id: str | None = None
    version: int | None = None
    promise: Promise | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every row, for ``debug.snap`` (ordered by id)."""

    promises: list[Promise]
    tasks: list[Task]
    callbacks: list[tuple[str, str, bool]]  # (awaited, awaiter, ready)
    listeners: list[tuple[str, str]]  # (promise id, address)
    executes: list[tuple[str, int, str]]  # (task id, version, address)
    unblocks: list[tuple[str, str]]  # (promise id, address)


class StoreTx(ABC):
    """Reads and writes inside one transaction.

    Methods are coroutines so that async drivers can implement them; a store that runs the
    engine in its own thread may implement them without ever suspending. The engine awaits
    nothing but these methods inside a transaction.
    """

    # promises
    @abstractmethod
    async def get_promise(self, id: str) -> Promise | None: ...

    @abstractmethod
    async def insert_promise(self, p: Promise) -> bool:
        """Insert ``p``; False (and no change) when the id exists."""

    @abstractmethod
    async def update_promise(self, p: Promise) -> None:
        """Write ``p``'s state, value and settled_at."""

    @abstractmethod
    async def search_promises(
        self, state: str | None, tags: Mapping[str, str], limit: int, cursor: str | None
    ) -> list[Promise]:
        """Promises with ``id > cursor`` matching state and every tag, by id, at most ``limit``."""

    @abstractmethod
    async def branch_promises(self, branch: str, exclude_id: str) -> list[Promise]:
        """Promises tagged ``resonate:branch == branch`` except ``exclude_id``, by id."""

    @abstractmethod
    async def due_promises(self, now: int, limit: int) -> list[Promise]:
        """Pending promises with a target and ``timeout_at <= now``."""

    # tasks
    @abstractmethod
    async def get_task(self, id: str) -> Task | None: ...

    @abstractmethod
    async def get_promise_task(self, id: str) -> tuple[Promise | None, Task | None]:
        """The promise ``id`` and its task, each None when absent (both read to update)."""

    @abstractmethod
    async def insert_task(self, t: Task) -> None: ...

    @abstractmethod
    async def update_task(self, t: Task) -> None:
        """Write ``t``'s state, version and timer."""

    @abstractmethod
    async def search_tasks(
        self, state: str | None, limit: int, cursor: str | None
    ) -> list[Task]: ...

    @abstractmethod
    async def due_tasks(self, now: int, limit: int) -> list[tuple[Task, Promise]]:
        """Tasks whose timer (retry or lease) is at or before ``now``, each with its promise.

        Where rows lock, both rows are locked and a pair with either row busy is skipped.
        """

    @abstractmethod
    async def resumes(self, task_id: str) -> int:
        """Number of ready callbacks whose awaiter is ``task_id``."""

    # callbacks and listeners
    @abstractmethod
    async def insert_callback(self, awaited: str, awaiter: str, ready: bool) -> None:
        """Insert unless ``(awaited, awaiter)`` exists."""

    @abstractmethod
    async def ready_callbacks(self, awaited: str) -> list[str]:
        """Mark every callback on ``awaited`` ready; return their awaiters."""

    @abstractmethod
    async def delete_callbacks(self, awaiter: str, ready_only: bool) -> None: ...

    @abstractmethod
    async def insert_listener(self, promise_id: str, address: str) -> None: ...

    @abstractmethod
    async def unblock_listeners(self, promise_id: str) -> bool:
        """Move every listener of ``promise_id`` into the outbox as an unblock message.

        True when a message was queued.
        """

    async def release_waiters(self, promise_id: str, fulfilled: bool) -> tuple[bool, list[str]]:
        """What follows the settlement of ``promise_id``: when its task was just fulfilled,
        delete the callbacks that task registered; move its listeners into the outbox
        (:meth:`unblock_listeners`); mark the callbacks on it ready (:meth:`ready_callbacks`).

        Returns whether an unblock message was queued, and the awaiters of those callbacks.
        A store may do it all in one statement (the rows are disjoint: no promise awaits
        itself); by default it calls the three methods.
        """
        if fulfilled:
            await self.delete_callbacks(promise_id, ready_only=False)
        queued = await self.unblock_listeners(promise_id)
        return queued, await self.ready_callbacks(promise_id)

    # outbox
    @abstractmethod
    async def put_execute(self, task_id: str, version: int, address: str) -> None:
        """Upsert the task's one pending execute message."""

    @abstractmethod
    async def take_messages(self, limit: int) -> list[Message]:
        """Delete and return up to ``limit`` executes and ``limit`` unblocks (promise joined)."""

    # schedules
    @abstractmethod
    async def get_schedule(self, id: str) -> Schedule | None: ...

    @abstractmethod
    async def insert_schedule(self, s: Schedule) -> bool: ...

    @abstractmethod
    async def update_schedule(self, s: Schedule) -> None:
        """Write ``s``'s next_run_at and last_run_at."""

    @abstractmethod
    async def delete_schedule(self, id: str) -> bool: ...

    @abstractmethod
    async def search_schedules(
        self, tags: Mapping[str, str], limit: int, cursor: str | None
    ) -> list[Schedule]: ...

    @abstractmethod
    async def due_schedules(self, now: int, limit: int) -> list[Schedule]: ...

    @abstractmethod
    async def count_states(self) -> dict[str, dict[str, int]]:
        """Rows per state: ``{"promises": {state: n}, "tasks": {state: n}, "schedules":
        {"active": n}}``. A full count: for start-up, not for every scrape."""

    # debug
    @abstractmethod
    async def reset(self) -> None:
        """Delete every row of every table."""

    @abstractmethod
    async def snapshot(self) -> Snapshot: ...


class Store(ABC):
    """A database the server runs on."""

    @abstractmethod
    async def start(self, migrate: bool = True) -> None:
        """Connect; with ``migrate``, apply pending schema migrations first.

        Without ``migrate`` the store only connects (``resonate migrate status`` uses this).
        """

    async def schema_versions(self) -> tuple[list[int], list[int]]:
        """(applied, pending) migration versions of :data:`resonate_server.schema.MIGRATIONS`."""
        raise StoreError(f"{type(self).__name__} does not report schema versions")

    async def apply_migrations(self) -> list[int]:
        """Apply pending migrations (safe when several servers do it at once); return them."""
        raise StoreError(f"{type(self).__name__} does not apply migrations")

    @abstractmethod
    async def close(self) -> None:
        """Finish or abandon queued work and release every resource."""

    def stats(self) -> StoreStats:
        """Counters of the store's own work, read without touching the database."""
        return StoreStats()

    @abstractmethod
    async def ping(self) -> None:
        """Return when the database answers; raise :class:`StoreUnavailable` otherwise."""

    @abstractmethod
    async def transact(self, fn: Callable[[StoreTx], Awaitable[T]], key: str | None = None) -> T:
        """Run ``fn`` in one transaction and return its result once the commit is durable.

        If ``fn`` raises, none of its writes persist and the exception propagates. A store may
        commit the transactions of concurrent callers together (group commit); each caller still
        sees its own all-or-nothing outcome. ``key`` says what the transaction is about (see
        :func:`resonate_server.engine.lock_key`): a store may keep transactions with equal keys
        apart from each other's batches and spread the others.
        """

    async def read(self, fn: Callable[[StoreTx], Awaitable[T]]) -> T:
        """Run ``fn``, which only reads, against committed state and return its result.

        The default runs it as a transaction. A store may serve reads elsewhere (another
        connection) so that a long read holds up neither writes nor the event loop.
        """
        return await self.transact(fn)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What a store reports about its own work (zeros when it keeps no account).

    ``queued``: transactions waiting for a batch now. ``transactions``: transactions committed
    since start. ``commits``: database commits since start; with group commit several
    transactions share one, so ``transactions / commits`` is the average batch. ``lanes``:
    connections new transactions go to now, for a store that spreads them over several.
    """

    queued: int = 0
    transactions: int = 0
    commits: int = 0
    lanes: int = 0


@dataclass(frozen=True, slots=True)
class StoreBackend:
    """How a store plugin describes itself.

    ``name`` selects it (``aio.store.<name>.enable``); ``factory`` builds the store from the
    store's own config section (``aio.store.<name>``) and the whole settings mapping.
    """

    name: str
    description: str
    factory: Callable[[Mapping[str, Any], Mapping[str, Any]], Store]


def run_to_completion(awaitable: Awaitable[T]) -> T:
    """Run a coroutine that never suspends (its awaits all complete at once) without a loop.

    A store that executes transactions in its own thread with a synchronous driver uses this to
    run the engine's coroutines there. Raises ``RuntimeError`` if the coroutine suspends.
    """
    coro = awaitable.__await__()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a store transaction awaited something other than the store")
