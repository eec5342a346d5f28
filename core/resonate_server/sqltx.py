"""One implementation of :class:`~resonate_server.store.StoreTx` for SQL databases.

SQL stores subclass :class:`SqlTx` and supply three primitives (``_rows``, ``_row``,
``_exec``) plus the few dialect differences as class attributes. Statements are written with
``?`` placeholders; :meth:`SqlTx.sql` converts them for the driver once per statement.
The tables are those of :mod:`resonate_server.schema`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson

from .records import PENDING, Promise, Schedule, Task
from .schema import TABLES, promises
from .store import Message, Snapshot, StoreTx

_dumps = orjson.dumps
_loads = orjson.loads

PROMISE_COLS = "id, state, param, value, tags, timeout_at, created_at, settled_at"
TASK_COLS = "id, state, version, timeout_at, timeout_type, pid, ttl"
_N_PROMISE_COLS = len(PROMISE_COLS.split(", "))
#: A promise's columns qualified by the table alias ``p`` (for joins).
PROMISE_COLS_AS_P = ", ".join(f"p.{c}" for c in PROMISE_COLS.split(", "))
#: A promise's columns (as ``p``) then its task's (as ``t``); split with :func:`promise_task_row`.
_PROMISE_TASK_COLS = ", ".join([PROMISE_COLS_AS_P] + [f"t.{c}" for c in TASK_COLS.split(", ")])
SCHEDULE_COLS = (
    "id, cron, promise_id, promise_timeout, promise_param, promise_tags, created_at, "
    "next_run_at, last_run_at"
)


#: The columns of a promise insert (every column of the table), in the order of
#: :func:`promise_insert_args`.
PROMISE_INSERT_COLS = tuple(c.name for c in promises.columns)


def promise_insert_args(p: Promise) -> tuple[Any, ...]:
    """The values of :data:`PROMISE_INSERT_COLS` for ``p``, in the table's column order (JSON
    columns as compact text)."""
    return (
        p.id,
        p.state,
        _dumps(p.param).decode(),
        _dumps(p.value).decode(),
        _dumps(p.tags).decode(),
        p.target,
        p.branch,
        p.timeout_at,
        p.created_at,
        p.settled_at,
    )


def _json(value: Any) -> Any:
    return _loads(value) if isinstance(value, (str, bytes)) else value


def promise_row(r: Sequence[Any]) -> Promise:
    return Promise(r[0], r[1], _loads(r[2]), _loads(r[3]), _json(r[4]), r[5], r[6], r[7])


def task_row(r: Sequence[Any]) -> Task:
    return Task(r[0], r[1], r[2], r[3], r[4], r[5], r[6])


def promise_task_row(r: Sequence[Any]) -> tuple[Promise, Task]:
    return promise_row(r[:_N_PROMISE_COLS]), task_row(r[_N_PROMISE_COLS:])


def schedule_row(r: Sequence[Any]) -> Schedule:
    return Schedule(r[0], r[1], r[2], r[3], _loads(r[4]), _json(r[5]), r[6], r[7], r[8])


#: Rows of one table: column/value pairs that every row a statement reads or writes has (for a
#: write that may wait in a buffer with others, both before and after it; for a statement sent
#: together with writes buffered before it, before it); ``()`` is any row. Two such sets may
#: share a row unless they name a column with different values.
Rows = tuple[tuple[str, Any], ...]


class SqlTx(StoreTx):
    """Every store operation as SQL; subclasses run it."""

    __slots__ = ()

    #: Appended to reads of rows the engine may then update (``" FOR UPDATE"`` where rows lock).
    LOCK: ClassVar[str] = ""
    #: Appended to outbox claims so concurrent claimers skip each other's rows.
    SKIP_LOCKED: ClassVar[str] = ""
    #: ``{col}`` contains every key/value of the JSON parameter.
    TAG_MATCH: ClassVar[str] = (
        "NOT EXISTS (SELECT key, value FROM json_each(?) EXCEPT "
        "SELECT key, value FROM json_each({col}))"
    )
    #: Cast applied to a JSON text parameter written into a JSON column.
    JSON_PARAM: ClassVar[str] = "?"

    #: The insert of one promise (:func:`promise_insert_args`) that leaves an existing id alone.
    INSERT_PROMISE: ClassVar[str]
    #: The locking reads of one promise, and of a promise joined with its task, by id (``?``);
    #: each row starts with the id.
    GET_PROMISE: ClassVar[str]
    GET_PROMISE_TASK: ClassVar[str]
    #: Mark the callbacks on a promise (``?``) ready, returning their awaiters. Only callbacks
    #: not yet ready: a ready callback on a promise exists only once it is settled, and was
    #: counted then.
    READY_CALLBACKS: ClassVar[str] = (
        "UPDATE callbacks SET ready = TRUE WHERE awaited = ? AND NOT ready RETURNING awaiter"
    )
    #: Delete the callbacks a task (``?``) registered.
    DROP_CALLBACKS: ClassVar[str] = "DELETE FROM callbacks WHERE awaiter = ?"

    _cache: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._cache = {}
        values = ", ".join(cls.JSON_PARAM if c == "tags" else "?" for c in PROMISE_INSERT_COLS)
        cls.INSERT_PROMISE = (
            f"INSERT INTO promises ({', '.join(PROMISE_INSERT_COLS)}) VALUES ({values}) "
            "ON CONFLICT DO NOTHING"
        )
        cls.GET_PROMISE = f"SELECT {PROMISE_COLS} FROM promises WHERE id = ?{cls.LOCK}"
        cls.GET_PROMISE_TASK = (
            f"SELECT {_PROMISE_TASK_COLS} FROM promises p JOIN tasks t ON t.id = p.id "
            f"WHERE p.id = ?{cls.LOCK}"
        )

    @classmethod
    def convert(cls, sql: str) -> str:
        """Placeholders for the driver; ``?`` (sqlite3) unless a subclass overrides."""
        return sql

    @classmethod
    def sql(cls, sql: str) -> str:
        converted = cls._cache.get(sql)
        if converted is None:
            converted = cls._cache[sql] = cls.convert(sql)
        return converted

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        raise NotImplementedError

    async def _row(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Any] | None:
        raise NotImplementedError

    async def _exec(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        raise NotImplementedError

    async def _write(self, table: str, sql: str, args: Sequence[Any], rows: Rows = ()) -> None:
        """Run a write whose outcome nobody reads, on ``table`` only, and on ``rows`` of it.

        A store may defer it, and send it together with other statements on other rows (see
        the PostgreSQL store); this one runs it at once.
        """
        await self._exec(sql, args)

    def _wrote(self, id: str | None) -> None:
        """The promise or task row ``id`` (None: any row) is about to be written; a store that
        reads rows ahead of a transaction function (see the PostgreSQL store) listens here."""

    # --- promises ------------------------------------------------------------------------------

    async def get_promise(self, id: str) -> Promise | None:
        r = await self._row(self.GET_PROMISE, (id,))
        return None if r is None else promise_row(r)

    async def insert_promise(self, p: Promise) -> bool:
        self._wrote(p.id)
        return await self._exec(self.INSERT_PROMISE, promise_insert_args(p)) == 1

    async def update_promise(self, p: Promise) -> None:
        self._wrote(p.id)
        await self._write(
            "promises",
            "UPDATE promises SET state = ?, value = ?, settled_at = ? WHERE id = ?",
            (p.state, _dumps(p.value).decode(), p.settled_at, p.id),
            (("id", p.id),),
        )

    def _filters(
        self,
        cursor: str | None,
        state: str | None,
        tags: Mapping[str, str],
        tag_col: str,
        id_col: str = "id",
        state_col: str = "state",
    ) -> tuple[str, list[Any]]:
        where, args = ["TRUE"], []
        if cursor is not None:
            where.append(f"{id_col} > ?")
            args.append(cursor)
        if state is not None:
            where.append(f"{state_col} = ?")
            args.append(state)
        if tags:
            where.append(self.TAG_MATCH.format(col=tag_col))
            args.append(_dumps(tags).decode())
        return " AND ".join(where), args

    async def search_promises(
        self, state: str | None, tags: Mapping[str, str], limit: int, cursor: str | None
    ) -> list[Promise]:
        where, args = self._filters(cursor, state, tags, "tags")
        rows = await self._rows(
            f"SELECT {PROMISE_COLS} FROM promises WHERE {where} ORDER BY id LIMIT ?", (*args, limit)
        )
        return [promise_row(r) for r in rows]

    async def branch_promises(self, branch: str, exclude_id: str) -> list[Promise]:
        rows = await self._rows(
            f"SELECT {PROMISE_COLS} FROM promises WHERE branch = ? AND id != ? ORDER BY id",
            (branch, exclude_id),
        )
        return [promise_row(r) for r in rows]

    async def due_promises(self, now: int, limit: int) -> list[Promise]:
        # The state is a literal: a partial index (ix_promises_due) serves a prepared
        # statement's generic plan only when its condition is spelled out.
        rows = await self._rows(
            f"SELECT {PROMISE_COLS} FROM promises WHERE state = '{PENDING}' "
            "AND target IS NOT NULL AND timeout_at <= ? ORDER BY timeout_at "
            f"LIMIT ?{self.LOCK}{self.SKIP_LOCKED}",
            (now, limit),
        )
        return [promise_row(r) for r in rows]

    # --- tasks ---------------------------------------------------------------------------------

    async def get_task(self, id: str) -> Task | None:
        r = await self._row(f"SELECT {TASK_COLS} FROM tasks WHERE id = ?{self.LOCK}", (id,))
        return None if r is None else task_row(r)

    async def get_promise_task(self, id: str) -> tuple[Promise | None, Task | None]:
        r = await self._row(self.GET_PROMISE_TASK, (id,))
        if r is None:
            return await self.get_promise(id), None
        return promise_task_row(r)

    async def insert_task(self, t: Task) -> None:
        self._wrote(t.id)
        await self._write(
            "tasks",
            f"INSERT INTO tasks ({TASK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (t.id, t.state, t.version, t.timeout_at, t.timeout_type, t.pid, t.ttl),
            (("id", t.id),),
        )

    async def update_task(self, t: Task) -> None:
        self._wrote(t.id)
        await self._write(
            "tasks",
            "UPDATE tasks SET state = ?, version = ?, timeout_at = ?, timeout_type = ?, "
            "pid = ?, ttl = ? WHERE id = ?",
            (t.state, t.version, t.timeout_at, t.timeout_type, t.pid, t.ttl, t.id),
            (("id", t.id),),
        )

    async def search_tasks(self, state: str | None, limit: int, cursor: str | None) -> list[Task]:
        where, args = self._filters(cursor, state, {}, "")
        rows = await self._rows(
            f"SELECT {TASK_COLS} FROM tasks WHERE {where} ORDER BY id LIMIT ?", (*args, limit)
        )
        return [task_row(r) for r in rows]

    async def due_tasks(self, now: int, limit: int) -> list[tuple[Task, Promise]]:
        rows = await self._rows(
            f"SELECT {_PROMISE_TASK_COLS} FROM tasks t JOIN promises p ON p.id = t.id "
            "WHERE t.timeout_at IS NOT NULL AND t.timeout_at <= ? "
            f"ORDER BY t.timeout_at LIMIT ?{self.LOCK}{self.SKIP_LOCKED}",
            (now, limit),
        )
        return [(task, prom) for prom, task in map(promise_task_row, rows)]

    async def resumes(self, task_id: str) -> int:
        r = await self._row(
            "SELECT COUNT(*) FROM callbacks WHERE awaiter = ? AND ready", (task_id,)
        )
        return int(r[0]) if r is not None else 0

    # --- callbacks and listeners ---------------------------------------------------------------

    async def insert_callback(self, awaited: str, awaiter: str, ready: bool) -> None:
        await self._write(
            "callbacks",
            "INSERT INTO callbacks (awaited, awaiter, ready) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (awaited, awaiter, ready),
            (("awaited", awaited), ("awaiter", awaiter)),
        )

    async def ready_callbacks(self, awaited: str) -> list[str]:
        rows = await self._rows(self.READY_CALLBACKS, (awaited,))
        return [r[0] for r in rows]

    async def delete_callbacks(self, awaiter: str, ready_only: bool) -> None:
        if ready_only:
            await self._write(
                "callbacks",
                f"{self.DROP_CALLBACKS} AND ready",
                (awaiter,),
                (("awaiter", awaiter), ("ready", True)),
            )
        else:
            await self._write("callbacks", self.DROP_CALLBACKS, (awaiter,), (("awaiter", awaiter),))

    async def insert_listener(self, promise_id: str, address: str) -> None:
        await self._write(
            "listeners",
            "INSERT INTO listeners (promise_id, address) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (promise_id, address),
            (("promise_id", promise_id), ("address", address)),
        )

    async def unblock_listeners(self, promise_id: str) -> bool:
        rows = await self._rows(
            "DELETE FROM listeners WHERE promise_id = ? RETURNING address", (promise_id,)
        )
        for (address,) in rows:
            await self._exec(
                "INSERT INTO outgoing_unblock (promise_id, address) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (promise_id, address),
            )
        return bool(rows)

    # --- outbox --------------------------------------------------------------------------------

    async def put_execute(self, task_id: str, version: int, address: str) -> None:
        await self._write(
            "outgoing_execute",
            "INSERT INTO outgoing_execute (task_id, version, address) VALUES (?, ?, ?) "
            "ON CONFLICT (task_id) DO UPDATE SET version = excluded.version, "
            "address = excluded.address",
            (task_id, version, address),
            (("task_id", task_id),),
        )

    async def take_messages(self, limit: int) -> list[Message]:
        executes = await self._rows(
            "DELETE FROM outgoing_execute WHERE task_id IN (SELECT task_id FROM outgoing_execute "
            f"LIMIT ?{self.LOCK}{self.SKIP_LOCKED}) RETURNING task_id, version, address",
            (limit,),
        )
        out = [Message(r[2], "execute", task_id=r[0], version=r[1]) for r in executes]
        out.extend(await self._take_unblocks(limit))
        return out

    async def _take_unblocks(self, limit: int) -> list[Message]:
        """Delete and return up to ``limit`` unblock messages, each with its promise."""
        unblocks = await self._rows(
            "DELETE FROM outgoing_unblock WHERE (promise_id, address) IN (SELECT promise_id, "
            f"address FROM outgoing_unblock LIMIT ?{self.LOCK}{self.SKIP_LOCKED}) "
            "RETURNING promise_id, address",
            (limit,),
        )
        out: list[Message] = []
        for promise_id, address in unblocks:
            r = await self._row(f"SELECT {PROMISE_COLS} FROM promises WHERE id = ?", (promise_id,))
            if r is not None:
                out.append(Message(address, "unblock", promise=promise_row(r)))
        return out

    # --- schedules -----------------------------------------------------------------------------

    async def get_schedule(self, id: str) -> Schedule | None:
        r = await self._row(f"SELECT {SCHEDULE_COLS} FROM schedules WHERE id = ?{self.LOCK}", (id,))
        return None if r is None else schedule_row(r)

    async def insert_schedule(self, s: Schedule) -> bool:
        n = await self._exec(
            f"INSERT INTO schedules ({SCHEDULE_COLS}) VALUES (?, ?, ?, ?, ?, {self.JSON_PARAM}, "
            "?, ?, ?) ON CONFLICT DO NOTHING",
            (
                s.id,
                s.cron,
                s.promise_id,
                s.promise_timeout,
                _dumps(s.promise_param).decode(),
                _dumps(s.promise_tags).decode(),
                s.created_at,
                s.next_run_at,
                s.last_run_at,
            ),
        )
        return n == 1

    async def update_schedule(self, s: Schedule) -> None:
        await self._write(
            "schedules",
            "UPDATE schedules SET next_run_at = ?, last_run_at = ? WHERE id = ?",
            (s.next_run_at, s.last_run_at, s.id),
            (("id", s.id),),
        )

    async def delete_schedule(self, id: str) -> bool:
        return await self._exec("DELETE FROM schedules WHERE id = ?", (id,)) == 1

    async def search_schedules(
        self, tags: Mapping[str, str], limit: int, cursor: str | None
    ) -> list[Schedule]:
        where, args = self._filters(cursor, None, tags, "promise_tags")
        rows = await self._rows(
            f"SELECT {SCHEDULE_COLS} FROM schedules WHERE {where} ORDER BY id LIMIT ?",
            (*args, limit),
        )
        return [schedule_row(r) for r in rows]

    async def due_schedules(self, now: int, limit: int) -> list[Schedule]:
        rows = await self._rows(
            f"SELECT {SCHEDULE_COLS} FROM schedules WHERE next_run_at <= ? "
            f"ORDER BY next_run_at LIMIT ?{self.LOCK}{self.SKIP_LOCKED}",
            (now, limit),
        )
        return [schedule_row(r) for r in rows]

    async def count_states(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for table in ("promises", "tasks"):
            rows = await self._rows(f"SELECT state, COUNT(*) FROM {table} GROUP BY state")
            out[table] = {r[0]: int(r[1]) for r in rows}
        r = await self._row("SELECT COUNT(*) FROM schedules")
        out["schedules"] = {"active": int(r[0]) if r is not None else 0}
        return out

    # --- debug ---------------------------------------------------------------------------------

    async def reset(self) -> None:
        self._wrote(None)
        for table in TABLES:
            await self._exec(f"DELETE FROM {table}")

    async def snapshot(self) -> Snapshot:
        return Snapshot(
            promises=[
                promise_row(r)
                for r in await self._rows(f"SELECT {PROMISE_COLS} FROM promises ORDER BY id")
            ],
            tasks=[
                task_row(r) for r in await self._rows(f"SELECT {TASK_COLS} FROM tasks ORDER BY id")
            ],
            callbacks=[
                (r[0], r[1], bool(r[2]))
                for r in await self._rows(
                    "SELECT awaited, awaiter, ready FROM callbacks ORDER BY awaiter, awaited"
                )
            ],
            listeners=[
                (r[0], r[1])
                for r in await self._rows(
                    "SELECT promise_id, address FROM listeners ORDER BY promise_id, address"
                )
            ],
            executes=[
                (r[0], r[1], r[2])
                for r in await self._rows(
                    "SELECT task_id, version, address FROM outgoing_execute ORDER BY task_id"
                )
            ],
            unblocks=[
                (r[0], r[1])
                for r in await self._rows(
                    "SELECT promise_id, address FROM outgoing_unblock ORDER BY promise_id, address"
                )
            ],
        )
