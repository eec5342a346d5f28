"""SQLite store: one connection; transactions run on the event loop, the commit in a thread.

Requests queue their transaction functions. The store's writer task takes every queued one (up
to ``batch_size``), runs them one after another in one ``BEGIN IMMEDIATE`` transaction on the
event loop, hands ``COMMIT`` (the fsync) to its I/O thread, and completes the callers' futures
only once the commit returned. Every acknowledged write is therefore on disk
(``synchronous=FULL`` by default), concurrent requests share one fsync, and requests arriving
during a commit form the next batch. Should any function raise, the batch is rolled back and
run again with each function in its own SAVEPOINT, so one failure never undoes another caller's
work.

Statements run on the loop because SQLite answers them from its cache in microseconds, while a
second thread running them would contend for the GIL at every statement (``sqlite3`` releases
it around each step). What can wait on the disk or on another process stays off the loop: the
commit, opening and migrating, and a ``BEGIN`` that finds the database locked (the loop tries
it without waiting; the I/O thread then waits up to the busy timeout). Searches, which may scan
much of the database, run on a second, read-only connection in a thread of their own
(:meth:`SqliteStore.read`): WAL lets them read committed state while the writer goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

from resonate_server import schema
from resonate_server.records import Promise
from resonate_server.sqltx import PROMISE_COLS_AS_P, SqlTx, promise_row
from resonate_server.store import (
    Store,
    StoreBusy,
    StoreError,
    StoreStats,
    StoreTx,
    StoreUnavailable,
    run_to_completion,
)
from sqlalchemy.dialects import sqlite as sqlite_dialect

T = TypeVar("T")
log = logging.getLogger("resonate.store.sqlite")


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply pending schema migrations, one transaction each; return the versions applied.

    ``BEGIN IMMEDIATE`` makes concurrent starters take turns; each re-reads what is applied.
    """
    import time

    dialect = sqlite_dialect.dialect()
    conn.execute(schema.bootstrap(dialect))
    done = []
    for migration in schema.MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            applied = {r[0] for r in conn.execute("SELECT version FROM resonate_schema")}
            if migration.version not in applied:
                for statement in migration.statements(dialect):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO resonate_schema (version, description, applied_at) "
                    "VALUES (?, ?, ?)",
                    (migration.version, migration.description, int(time.time() * 1000)),
                )
                done.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return done


#: A tag search counts the promises of each searched tag up to this many; beyond, tags count
#: as equally common.
_COUNT_CAP = 100_000


class SqliteTx(SqlTx):
    """The shared SQL on the store's connection; never suspends."""

    __slots__ = ("c",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return self.c.execute(sql, args).fetchall()

    async def _row(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Any] | None:
        return self.c.execute(sql, args).fetchone()  # type: ignore[no-any-return]

    async def _exec(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.c.execute(sql, args).rowcount

    async def search_promises(
        self, state: str | None, tags: Mapping[str, str], limit: int, cursor: str | None
    ) -> list[Promise]:
        """With tags, walk the tag index for the rarest of them (in id order, so ``limit``
        stops the walk early) and check the rest on each promise; without, the shared SQL."""
        if not tags:
            return await super().search_promises(state, tags, limit, cursor)
        key, value = await self._rarest(tags) if len(tags) > 1 else next(iter(tags.items()))
        others = {k: v for k, v in tags.items() if k != key}
        where, args = self._filters(cursor, state, others, "p.tags", "t.promise_id", "p.state")
        rows = await self._rows(
            f"SELECT {PROMISE_COLS_AS_P} FROM {schema.TAG_INDEX} t CROSS JOIN promises p "
            f"ON p.id = t.promise_id WHERE t.key = ? AND t.value = ? AND {where} "
            "ORDER BY t.promise_id LIMIT ?",
            (key, value, *args, limit),
        )
        return [promise_row(r) for r in rows]

    async def _rarest(self, tags: Mapping[str, str]) -> tuple[str, str]:
        """The tag with the fewest promises, counting each only up to :data:`_COUNT_CAP`."""
        items = list(tags.items())
        count = (
            f"(SELECT count(*) FROM (SELECT 1 FROM {schema.TAG_INDEX} "
            f"WHERE key = ? AND value = ? LIMIT {_COUNT_CAP}))"
        )
        row = await self._row(
            "SELECT " + ", ".join([count] * len(items)), [v for kv in items for v in kv]
        )
        assert row is not None
        return min(zip(row, items, strict=True), key=lambda pair: pair[0])[1]

    async def reset(self) -> None:
        await super().reset()
        await self._exec(f"DELETE FROM {schema.TAG_INDEX}")


Job = tuple[Callable[[SqliteTx], Awaitable[Any]], "asyncio.Future[Any]"]
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class RawJob(NamedTuple):
    """Work on the connection itself, outside any batch transaction (migrations)."""

    fn: Callable[[sqlite3.Connection], Any]
    fut: asyncio.Future[Any]


class SqliteStore(Store):
    """The store; see the module docstring for the concurrency model."""

    #: How long a ``BEGIN`` or ``COMMIT`` waits for another process's lock (ms).
    BUSY_TIMEOUT_MS = 5000

    def __init__(self, path: str, synchronous: str = "FULL", batch_size: int = 256) -> None:
        self.path = path
        self.synchronous = synchronous
        self.batch_size = batch_size
        self._pending: collections.deque[Job | RawJob] = collections.deque()
        self._conn: sqlite3.Connection | None = None
        self._io: ThreadPoolExecutor | None = None
        self._reads: ThreadPoolExecutor | None = None
        self._reader: sqlite3.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._migrate = True
        self._transactions = 0
        self._commits = 0

    def stats(self) -> StoreStats:
        return StoreStats(len(self._pending), self._transactions, self._commits)

    async def start(self, migrate: bool = True) -> None:
        self._migrate = migrate
        self._loop = asyncio.get_running_loop()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="sqlite-io")
        try:
            self._conn = await self._loop.run_in_executor(self._io, self._open)
        except Exception as e:
            self._io.shutdown(wait=False)
            self._io = None
            raise StoreError(f"cannot open SQLite database {self.path!r}: {e}") from None
        self._closing = False
        self._writer = self._loop.create_task(self._write_loop(), name="sqlite-writer")

    async def close(self) -> None:
        """Finish the queued transactions, then close the connection."""
        if self._writer is None:
            return
        self._closing = True
        self._notify()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
        if self._reads is not None:
            await asyncio.get_running_loop().run_in_executor(self._reads, self._close_reader)
            self._reads.shutdown(wait=True)
            self._reads = None
        assert self._io is not None and self._conn is not None
        await asyncio.get_running_loop().run_in_executor(self._io, self._conn.close)
        self._io.shutdown(wait=True)
        self._conn = self._io = None

    async def ping(self) -> None:
        if self._writer is None or self._writer.done():
            raise StoreUnavailable("the SQLite writer is not running")

        async def probe(tx: StoreTx) -> None:
            assert isinstance(tx, SqliteTx)
            tx.c.execute("SELECT 1").fetchone()

        await self.transact(probe)

    async def schema_versions(self) -> tuple[list[int], list[int]]:
        async def read(tx: StoreTx) -> list[int]:
            assert isinstance(tx, SqliteTx)
            exists = tx.c.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'resonate_schema'"
            ).fetchone()
            if exists is None:
                return []
            return [r[0] for r in tx.c.execute("SELECT version FROM resonate_schema")]

        applied = sorted(await self.transact(read))
        return applied, [m.version for m in schema.pending(set(applied))]

    async def apply_migrations(self) -> list[int]:
        return await self._raw(migrate)

    async def _raw(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the connection in the I/O thread, outside any batch transaction."""
        return await self._enqueue(RawJob(fn, self._new_future()))  # type: ignore[no-any-return]

    async def transact(self, fn: Callable[[StoreTx], Awaitable[T]], key: str | None = None) -> T:
        return await self._enqueue((fn, self._new_future()))  # type: ignore[no-any-return]

    async def read(self, fn: Callable[[StoreTx], Awaitable[T]]) -> T:
        """Run ``fn`` in a read transaction on the reader connection, in the reader thread.

        An in-memory database has no second connection to it, so there ``fn`` joins the
        writer's batches like any transaction.
        """
        if self.path in ("", ":memory:"):
            return await self.transact(fn)
        self._check_open()
        assert self._loop is not None
        if self._reads is None:
            self._reads = ThreadPoolExecutor(1, thread_name_prefix="sqlite-read")
        try:
            return await self._loop.run_in_executor(self._reads, self._read, fn)
        except sqlite3.Error as e:
            if _busy(e):
                raise StoreBusy(f"SQLite database busy: {e}") from None
            raise StoreError(f"SQLite error: {e}") from None

    def _read(self, fn: Callable[[StoreTx], Awaitable[T]]) -> T:
        if self._reader is None:
            self._reader = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, cached_statements=64
            )
            self._reader.execute("PRAGMA query_only = 1")
            self._reader.execute(f"PRAGMA busy_timeout = {self.BUSY_TIMEOUT_MS}")
        conn = self._reader
        conn.execute("BEGIN")
        try:
            return run_to_completion(fn(SqliteTx(conn)))
        finally:
            conn.execute("ROLLBACK")

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _check_open(self) -> None:
        if self._writer is None or self._writer.done() or self._closing:
            raise StoreUnavailable("the SQLite store is closed")

    def _new_future(self) -> asyncio.Future[Any]:
        self._check_open()
        assert self._loop is not None
        return self._loop.create_future()

    async def _enqueue(self, job: Job | RawJob) -> Any:
        self._pending.append(job)
        self._notify()
        return await job[1]

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # --- the connection and the writer task ---------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout = {self.BUSY_TIMEOUT_MS}")
        if self._migrate:
            migrate(conn)
        conn.execute("PRAGMA busy_timeout = 0")
        return conn

    async def _write_loop(self) -> None:
        assert self._loop is not None and self._conn is not None
        loop, conn = self._loop, self._conn
        tx = SqliteTx(conn)
        pending = self._pending
        while True:
            if not pending:
                if self._closing:
                    return
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
                continue
            if isinstance(pending[0], RawJob):
                raw = pending.popleft()
                assert isinstance(raw, RawJob)
                await self._run_raw(raw)
                continue
            batch: list[Job] = []
            while pending and len(batch) < self.batch_size and not isinstance(pending[0], RawJob):
                batch.append(pending.popleft())  # type: ignore[arg-type]
            try:
                outcomes = await self._commit(conn, tx, batch)
            except Exception as e:
                log.exception("SQLite batch failed")
                err = StoreError(f"SQLite error: {e}")
                outcomes = [(fut, None, err) for _, fut in batch]
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
            _deliver(outcomes)

    async def _run_raw(self, job: RawJob) -> None:
        assert self._loop is not None and self._conn is not None
        try:
            result = await self._in_thread(_patient, self._conn, job.fn, self.BUSY_TIMEOUT_MS)
            outcome = (job.fut, result, None)
        except Exception as e:
            outcome = (job.fut, None, StoreError(f"SQLite error: {e}"))
        _deliver([outcome])

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._io, fn, *args)

    async def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE`` on the loop; if another connection holds the lock, wait for it
        in the I/O thread."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if not _busy(e):
                raise
            await self._in_thread(_waiting, conn, "BEGIN IMMEDIATE", self.BUSY_TIMEOUT_MS)

    async def _commit(
        self, conn: sqlite3.Connection, tx: SqliteTx, batch: list[Job]
    ) -> list[Outcome]:
        """Run ``batch`` in one transaction without savepoints; if any job raises, roll back
        and run the batch again with each job isolated (:meth:`_commit_isolated`)."""
        live = [(fn, fut) for fn, fut in batch if not fut.cancelled()]
        if not live:
            return []
        try:
            await self._begin(conn)
        except sqlite3.Error as e:
            err = StoreUnavailable(f"SQLite database unavailable: {e}")
            return [(fut, None, err) for _, fut in live]
        outcomes: list[Outcome] = []
        try:
            for fn, fut in live:
                outcomes.append((fut, run_to_completion(fn(tx)), None))
        except BaseException:
            conn.execute("ROLLBACK")
            return await self._commit_isolated(conn, tx, live)
        return await self._finish(conn, outcomes)

    async def _commit_isolated(
        self, conn: sqlite3.Connection, tx: SqliteTx, batch: list[Job]
    ) -> list[Outcome]:
        """Each job in its own SAVEPOINT: a failing one is rolled back alone."""
        outcomes: list[Outcome] = []
        try:
            await self._begin(conn)
        except sqlite3.Error as e:
            err = StoreUnavailable(f"SQLite database unavailable: {e}")
            return [(fut, None, err) for _, fut in batch]
        for fn, fut in batch:
            conn.execute("SAVEPOINT op")
            try:
                result = run_to_completion(fn(tx))
            except BaseException as e:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                if isinstance(e, sqlite3.Error):
                    log.error("SQLite statement failed: %s", e)
                    e = StoreError(f"SQLite error: {e}")
                outcomes.append((fut, None, e))
            else:
                conn.execute("RELEASE op")
                outcomes.append((fut, result, None))
        return await self._finish(conn, outcomes)

    async def _finish(self, conn: sqlite3.Connection, outcomes: list[Outcome]) -> list[Outcome]:
        """Commit in the I/O thread; when the commit fails every caller gets the failure."""
        try:
            await self._in_thread(_waiting, conn, "COMMIT", self.BUSY_TIMEOUT_MS)
        except sqlite3.Error as e:
            log.error("SQLite commit failed: %s", e)
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            err = StoreUnavailable(f"SQLite commit failed: {e}")
            return [(fut, None, err) for fut, _, _ in outcomes]
        self._commits += 1
        self._transactions += sum(1 for _, _, err in outcomes if err is None)
        return outcomes


def _busy(e: sqlite3.Error) -> bool:
    """Another connection holds a lock this statement needs."""
    return (e.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _waiting(conn: sqlite3.Connection, sql: str, busy_timeout_ms: int) -> None:
    """Run ``sql``; if another connection holds the lock, wait up to ``busy_timeout_ms``."""
    try:
        conn.execute(sql)
    except sqlite3.OperationalError as e:
        if not _busy(e):
            raise
        _patient(conn, lambda c: c.execute(sql), busy_timeout_ms)


def _patient(
    conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], busy_timeout_ms: int
) -> T:
    """``fn(conn)`` with the busy timeout set, so that it waits for other connections' locks."""
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    try:
        return fn(conn)
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


def _deliver(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, err in outcomes:
        if fut.done():
            continue
        if err is None:
            fut.set_result(result)
        else:
            fut.set_exception(err)
