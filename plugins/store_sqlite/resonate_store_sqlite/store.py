"""SQLite store: one connection owned by one writer thread, with group commit.

Requests queue their transaction functions; the writer takes every queued one (up to
``batch_size``), runs them one after another in one ``BEGIN IMMEDIATE`` transaction, commits
once, and only then completes the callers' futures. Every acknowledged write is therefore on
disk (``synchronous=FULL`` by default), while concurrent requests share one fsync. Should any
function raise, the batch is rolled back and run again with each function in its own SAVEPOINT,
so one failure never undoes another caller's work.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from resonate_server import schema
from resonate_server.records import Promise
from resonate_server.sqltx import PROMISE_COLS_AS_P, SqlTx, promise_row
from resonate_server.store import (
    Store,
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
    """The shared SQL on the writer's connection; never suspends."""

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

    def __init__(self, path: str, synchronous: str = "FULL", batch_size: int = 256) -> None:
        self.path = path
        self.synchronous = synchronous
        self.batch_size = batch_size
        self._queue: queue.SimpleQueue[Job | RawJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._migrate = True
        self._transactions = 0  # written by the writer thread only
        self._commits = 0

    def stats(self) -> StoreStats:
        return StoreStats(self._queue.qsize(), self._transactions, self._commits)

    async def start(self, migrate: bool = True) -> None:
        self._migrate = migrate
        self._loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name="sqlite-writer", daemon=True
        )
        self._thread.start()
        await opened

    async def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    async def ping(self) -> None:
        if self._thread is None or not self._thread.is_alive():
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
        """Run ``fn`` on the writer's connection outside any batch transaction."""
        assert self._loop is not None
        fut: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(RawJob(fn, fut))
        return await fut

    async def transact(self, fn: Callable[[StoreTx], Awaitable[T]], key: str | None = None) -> T:
        if self._thread is None or not self._thread.is_alive():
            raise StoreUnavailable("the SQLite store is closed")
        assert self._loop is not None
        fut: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((fn, fut))
        return await fut

    # --- the writer thread ---------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA busy_timeout = 5000")
        if self._migrate:
            migrate(conn)
        return conn

    def _run(self, opened: asyncio.Future[None]) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            conn = self._open()
        except Exception as e:  # reported to start()
            err = StoreError(f"cannot open SQLite database {self.path!r}: {e}")
            loop.call_soon_threadsafe(_fail, opened, err)
            return
        loop.call_soon_threadsafe(_resolve, opened, None)
        tx = SqliteTx(conn)
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                break
            if isinstance(job, RawJob):
                self._run_raw(conn, job)
                continue
            batch = [job]
            while len(batch) < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if isinstance(nxt, RawJob):
                    outcomes = self._commit(conn, tx, batch)
                    loop.call_soon_threadsafe(_deliver, outcomes)
                    batch = []
                    self._run_raw(conn, nxt)
                    continue
                batch.append(nxt)
            if not batch:
                continue
            outcomes = self._commit(conn, tx, batch)
            loop.call_soon_threadsafe(_deliver, outcomes)
        conn.close()

    def _run_raw(self, conn: sqlite3.Connection, job: RawJob) -> None:
        assert self._loop is not None
        try:
            outcome = (job.fut, job.fn(conn), None)
        except Exception as e:
            outcome = (job.fut, None, StoreError(f"SQLite error: {e}"))
        self._loop.call_soon_threadsafe(_deliver, [outcome])

    def _commit(self, conn: sqlite3.Connection, tx: SqliteTx, batch: list[Job]) -> list[Outcome]:
        """Run ``batch`` in one transaction without savepoints; if any job raises, roll back
        and run the batch again with each job isolated (:meth:`_commit_isolated`)."""
        live = [(fn, fut) for fn, fut in batch if not fut.cancelled()]
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            err = StoreUnavailable(f"SQLite database unavailable: {e}")
            return [(fut, None, err) for _, fut in live]
        outcomes: list[Outcome] = []
        try:
            for fn, fut in live:
                outcomes.append((fut, run_to_completion(fn(tx)), None))
        except BaseException:
            conn.execute("ROLLBACK")
            return self._commit_isolated(conn, tx, live)
        return self._finish(conn, outcomes)

    def _commit_isolated(
        self, conn: sqlite3.Connection, tx: SqliteTx, batch: list[Job]
    ) -> list[Outcome]:
        """Each job in its own SAVEPOINT: a failing one is rolled back alone."""
        outcomes: list[Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
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
        return self._finish(conn, outcomes)

    def _finish(self, conn: sqlite3.Connection, outcomes: list[Outcome]) -> list[Outcome]:
        """Commit; when the commit fails every caller gets the failure."""
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            log.error("SQLite commit failed: %s", e)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = StoreUnavailable(f"SQLite commit failed: {e}")
            return [(fut, None, err) for fut, _, _ in outcomes]
        self._commits += 1
        self._transactions += sum(1 for _, _, err in outcomes if err is None)
        return outcomes


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)


def _deliver(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, err in outcomes:
        if fut.done():
            continue
        if err is None:
            fut.set_result(result)
        else:
            fut.set_exception(err)
