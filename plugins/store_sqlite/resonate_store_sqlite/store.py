"""SQLite store: one connection owned by one writer thread, with group commit.

Requests queue their transaction functions; the writer takes every queued one (up to
``batch_size``), runs each inside its own SAVEPOINT within one ``BEGIN IMMEDIATE`` transaction,
commits once, and only then completes the callers' futures. Every acknowledged write is
therefore on disk (``synchronous=FULL`` by default), while concurrent requests share one fsync.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from resonate_server import schema
from resonate_server.records import PENDING, Promise, Schedule, Task
from resonate_server.store import (
    Message,
    Snapshot,
    Store,
    StoreError,
    StoreTx,
    StoreUnavailable,
    run_to_completion,
)
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

T = TypeVar("T")
log = logging.getLogger("resonate.store.sqlite")

_dumps = orjson.dumps
_loads = orjson.loads

PROMISE_COLS = "id, state, param, value, tags, timeout_at, created_at, settled_at"
TASK_COLS = "id, state, version, timeout_at, timeout_type, pid, ttl"
SCHEDULE_COLS = (
    "id, cron, promise_id, promise_timeout, promise_param, promise_tags, created_at, "
    "next_run_at, last_run_at"
)
TAG_MATCH = (
    "NOT EXISTS (SELECT key, value FROM json_each(?) EXCEPT "
    "SELECT key, value FROM json_each({col}))"
)


def _promise(r: tuple[Any, ...]) -> Promise:
    return Promise(r[0], r[1], _loads(r[2]), _loads(r[3]), _loads(r[4]), r[5], r[6], r[7])


def _task(r: tuple[Any, ...]) -> Task:
    return Task(r[0], r[1], r[2], r[3], r[4], r[5], r[6])


def _schedule(r: tuple[Any, ...]) -> Schedule:
    return Schedule(r[0], r[1], r[2], r[3], _loads(r[4]), _loads(r[5]), r[6], r[7], r[8])


class SqliteTx(StoreTx):
    """Statements on the writer's connection; never suspends."""

    __slots__ = ("c",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn

    async def get_promise(self, id: str) -> Promise | None:
        r = self.c.execute(f"SELECT {PROMISE_COLS} FROM promises WHERE id = ?", (id,)).fetchone()
        return None if r is None else _promise(r)

    async def insert_promise(self, p: Promise) -> bool:
        cur = self.c.execute(
            "INSERT INTO promises (id, state, param, value, tags, target, branch, timeout_at, "
            "created_at, settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                p.id,
                p.state,
                _dumps(p.param),
                _dumps(p.value),
                _dumps(p.tags),
                p.target,
                p.branch,
                p.timeout_at,
                p.created_at,
                p.settled_at,
            ),
        )
        return cur.rowcount == 1

    async def update_promise(self, p: Promise) -> None:
        self.c.execute(
            "UPDATE promises SET state = ?, value = ?, settled_at = ? WHERE id = ?",
            (p.state, _dumps(p.value), p.settled_at, p.id),
        )

    async def search_promises(
        self, state: str | None, tags: Mapping[str, str], limit: int, cursor: str | None
    ) -> list[Promise]:
        where, args = ["1"], []
        if cursor is not None:
            where.append("id > ?")
            args.append(cursor)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if tags:
            where.append(TAG_MATCH.format(col="tags"))
            args.append(_dumps(tags))
        sql = f"SELECT {PROMISE_COLS} FROM promises WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        return [_promise(r) for r in self.c.execute(sql, (*args, limit))]

    async def branch_promises(self, branch: str, exclude_id: str) -> list[Promise]:
        return [
            _promise(r)
            for r in self.c.execute(
                f"SELECT {PROMISE_COLS} FROM promises WHERE branch = ? AND id != ? ORDER BY id",
                (branch, exclude_id),
            )
        ]

    async def due_promises(self, now: int, limit: int) -> list[Promise]:
        return [
            _promise(r)
            for r in self.c.execute(
                f"SELECT {PROMISE_COLS} FROM promises WHERE state = ? AND target IS NOT NULL "
                "AND timeout_at <= ? ORDER BY timeout_at LIMIT ?",
                (PENDING, now, limit),
            )
        ]

    async def get_task(self, id: str) -> Task | None:
        r = self.c.execute(f"SELECT {TASK_COLS} FROM tasks WHERE id = ?", (id,)).fetchone()
        return None if r is None else _task(r)

    async def insert_task(self, t: Task) -> None:
        self.c.execute(
            f"INSERT INTO tasks ({TASK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (t.id, t.state, t.version, t.timeout_at, t.timeout_type, t.pid, t.ttl),
        )

    async def update_task(self, t: Task) -> None:
        self.c.execute(
            "UPDATE tasks SET state = ?, version = ?, timeout_at = ?, timeout_type = ?, pid = ?, "
            "ttl = ? WHERE id = ?",
            (t.state, t.version, t.timeout_at, t.timeout_type, t.pid, t.ttl, t.id),
        )

    async def search_tasks(self, state: str | None, limit: int, cursor: str | None) -> list[Task]:
        where, args = ["1"], []
        if cursor is not None:
            where.append("id > ?")
            args.append(cursor)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        sql = f"SELECT {TASK_COLS} FROM tasks WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        return [_task(r) for r in self.c.execute(sql, (*args, limit))]

    async def due_tasks(self, now: int, limit: int) -> list[Task]:
        return [
            _task(r)
            for r in self.c.execute(
                f"SELECT {TASK_COLS} FROM tasks WHERE timeout_at IS NOT NULL AND timeout_at <= ? "
                "ORDER BY timeout_at LIMIT ?",
                (now, limit),
            )
        ]

    async def resumes(self, task_id: str) -> int:
        r = self.c.execute(
            "SELECT COUNT(*) FROM callbacks WHERE awaiter = ? AND ready", (task_id,)
        ).fetchone()
        return int(r[0])

    async def insert_callback(self, awaited: str, awaiter: str, ready: bool) -> None:
        self.c.execute(
            "INSERT INTO callbacks (awaited, awaiter, ready) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (awaited, awaiter, ready),
        )

    async def ready_callbacks(self, awaited: str) -> list[str]:
        return [
            r[0]
            for r in self.c.execute(
                "UPDATE callbacks SET ready = 1 WHERE awaited = ? RETURNING awaiter", (awaited,)
            )
        ]

    async def delete_callbacks(self, awaiter: str, ready_only: bool) -> None:
        sql = "DELETE FROM callbacks WHERE awaiter = ?" + (" AND ready" if ready_only else "")
        self.c.execute(sql, (awaiter,))

    async def insert_listener(self, promise_id: str, address: str) -> None:
        self.c.execute(
            "INSERT INTO listeners (promise_id, address) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (promise_id, address),
        )

    async def pop_listeners(self, promise_id: str) -> list[str]:
        return [
            r[0]
            for r in self.c.execute(
                "DELETE FROM listeners WHERE promise_id = ? RETURNING address", (promise_id,)
            )
        ]

    async def put_execute(self, task_id: str, version: int, address: str) -> None:
        self.c.execute(
            "INSERT INTO outgoing_execute (task_id, version, address) VALUES (?, ?, ?) "
            "ON CONFLICT (task_id) DO UPDATE SET version = excluded.version, "
            "address = excluded.address",
            (task_id, version, address),
        )

    async def put_unblock(self, promise_id: str, address: str) -> None:
        self.c.execute(
            "INSERT INTO outgoing_unblock (promise_id, address) VALUES (?, ?) "
            "ON CONFLICT DO NOTHING",
            (promise_id, address),
        )

    async def take_messages(self, limit: int) -> list[Message]:
        out = [
            Message(r[2], "execute", task_id=r[0], version=r[1])
            for r in self.c.execute(
                "DELETE FROM outgoing_execute WHERE task_id IN "
                "(SELECT task_id FROM outgoing_execute LIMIT ?) "
                "RETURNING task_id, version, address",
                (limit,),
            ).fetchall()
        ]
        rows = self.c.execute(
            "DELETE FROM outgoing_unblock WHERE rowid IN (SELECT rowid FROM outgoing_unblock "
            "LIMIT ?) RETURNING promise_id, address",
            (limit,),
        ).fetchall()
        for promise_id, address in rows:
            prom = await self.get_promise(promise_id)
            if prom is not None:
                out.append(Message(address, "unblock", promise=prom))
        return out

    async def get_schedule(self, id: str) -> Schedule | None:
        r = self.c.execute(f"SELECT {SCHEDULE_COLS} FROM schedules WHERE id = ?", (id,)).fetchone()
        return None if r is None else _schedule(r)

    async def insert_schedule(self, s: Schedule) -> bool:
        cur = self.c.execute(
            f"INSERT INTO schedules ({SCHEDULE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                s.id,
                s.cron,
                s.promise_id,
                s.promise_timeout,
                _dumps(s.promise_param),
                _dumps(s.promise_tags),
                s.created_at,
                s.next_run_at,
                s.last_run_at,
            ),
        )
        return cur.rowcount == 1

    async def update_schedule(self, s: Schedule) -> None:
        self.c.execute(
            "UPDATE schedules SET next_run_at = ?, last_run_at = ? WHERE id = ?",
            (s.next_run_at, s.last_run_at, s.id),
        )

    async def delete_schedule(self, id: str) -> bool:
        return self.c.execute("DELETE FROM schedules WHERE id = ?", (id,)).rowcount == 1

    async def search_schedules(
        self, tags: Mapping[str, str], limit: int, cursor: str | None
    ) -> list[Schedule]:
        where, args = ["1"], []
        if cursor is not None:
            where.append("id > ?")
            args.append(cursor)
        if tags:
            where.append(TAG_MATCH.format(col="promise_tags"))
            args.append(_dumps(tags))
        sql = (
            f"SELECT {SCHEDULE_COLS} FROM schedules WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        )
        return [_schedule(r) for r in self.c.execute(sql, (*args, limit))]

    async def due_schedules(self, now: int, limit: int) -> list[Schedule]:
        return [
            _schedule(r)
            for r in self.c.execute(
                f"SELECT {SCHEDULE_COLS} FROM schedules WHERE next_run_at <= ? "
                "ORDER BY next_run_at LIMIT ?",
                (now, limit),
            )
        ]

    async def reset(self) -> None:
        for table in schema.TABLES:
            self.c.execute(f"DELETE FROM {table}")

    async def snapshot(self) -> Snapshot:
        c = self.c
        return Snapshot(
            promises=[
                _promise(r) for r in c.execute(f"SELECT {PROMISE_COLS} FROM promises ORDER BY id")
            ],
            tasks=[_task(r) for r in c.execute(f"SELECT {TASK_COLS} FROM tasks ORDER BY id")],
            callbacks=[
                (a, w, bool(r))
                for a, w, r in c.execute(
                    "SELECT awaited, awaiter, ready FROM callbacks ORDER BY awaiter, awaited"
                )
            ],
            listeners=list(
                c.execute("SELECT promise_id, address FROM listeners ORDER BY promise_id, address")
            ),
            executes=list(
                c.execute("SELECT task_id, version, address FROM outgoing_execute ORDER BY task_id")
            ),
            unblocks=list(
                c.execute(
                    "SELECT promise_id, address FROM outgoing_unblock ORDER BY promise_id, address"
                )
            ),
            schedules=[
                _schedule(r)
                for r in c.execute(f"SELECT {SCHEDULE_COLS} FROM schedules ORDER BY id")
            ],
        )


Job = tuple[Callable[[SqliteTx], Awaitable[Any]], "asyncio.Future[Any]"]


class SqliteStore(Store):
    """The store; see the module docstring for the concurrency model."""

    def __init__(self, path: str, synchronous: str = "FULL", batch_size: int = 256) -> None:
        self.path = path
        self.synchronous = synchronous
        self.batch_size = batch_size
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed: BaseException | None = None

    async def start(self) -> None:
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

    async def transact(self, fn: Callable[[StoreTx], Awaitable[T]]) -> T:
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
        dialect = sqlite_dialect.dialect()
        conn.execute("BEGIN IMMEDIATE")
        for table in schema.metadata.sorted_tables:
            conn.execute(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
            for index in table.indexes:
                conn.execute(str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)))
        conn.execute(
            "INSERT INTO resonate_schema (version) VALUES (?) ON CONFLICT DO NOTHING",
            (schema.SCHEMA_VERSION,),
        )
        conn.execute("COMMIT")
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
            batch = [job]
            while len(batch) < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            outcomes = self._commit(conn, tx, batch)
            loop.call_soon_threadsafe(_deliver, outcomes)
        conn.close()

    def _commit(
        self, conn: sqlite3.Connection, tx: SqliteTx, batch: list[Job]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            err = StoreUnavailable(f"SQLite database unavailable: {e}")
            return [(fut, None, err) for _, fut in batch]
        for fn, fut in batch:
            if fut.cancelled():
                continue
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
