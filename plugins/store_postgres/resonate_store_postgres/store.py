"""PostgreSQL store: group commit on lanes of long-lived asyncpg connections, row locks.

The store keeps ``pool_size`` lanes. A lane holds one connection (opened through SQLAlchemy's
async engine) and a queue: its task takes every queued transaction function (up to
``batch_size``), runs them one after another in one transaction with the shared
:class:`~resonate_server.sqltx.SqlTx` statements (prepared and cached per connection), commits
once, and only then completes the callers' futures. Concurrent requests so share ``BEGIN`` and
``COMMIT`` and never wait for a pool checkout; a commit made while more work is queued opens
the next transaction in the same round trip (``COMMIT; BEGIN``). The promise inserts that
open a batch's creates go to the database as one multi-row insert (:func:`run_functions`).

New transactions go to the first few of the lanes only: a controller (:func:`lanes_wanted`)
drops a lane while the event loop is busy, since fewer lanes make larger batches and each
request then costs less CPU here and in the database, and adds lanes back while the loop has
room and transactions wait in batches (the lanes are waiting on the database's round trips).
Reads (:meth:`PostgresStore.read`: the searches) take no lane; they run on up to
:data:`READERS` connections of their own.

Callers pass a key (the origin of the ids involved): while the number of lanes in use stays
the same, the same key maps to the same lane, so requests about one execution tree run one
after another and do not wait on each other's row locks across batches. Under PostgreSQL's
default READ COMMITTED isolation, rows the engine may change are read ``FOR UPDATE``, so
requests racing on one promise or task serialize and exactly one wins. Deadlocks and
serialization failures (possible between lanes when keys differ but rows are shared, or
while the number of lanes in use changes) are retried; when a function raises, the batch is
rolled back and each function runs again alone. A broken connection is replaced and the batch
retried when nothing was committed; while the database is down, requests fail fast with
:class:`StoreUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from itertools import combinations
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl

import asyncpg
from resonate_server import schema
from resonate_server.sqltx import (
    PROMISE_COLS_AS_P,
    PROMISE_INSERT_COLS,
    Rows,
    SqlTx,
    promise_row,
)
from resonate_server.store import (
    Message,
    Store,
    StoreBusy,
    StoreDataError,
    StoreError,
    StoreStats,
    StoreTx,
    StoreUnavailable,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")
log = logging.getLogger("resonate.store.postgres")

MIGRATION_LOCK = 0x7265736F6E617465  # "resonate": the advisory lock migrations hold
RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
DISCONNECTED = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InternalClientError,  # a connection left mid-protocol by a server shutdown
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)
BAD_TEXT = (asyncpg.UntranslatableCharacterError, asyncpg.CharacterNotInRepertoireError)


class PgTx(SqlTx):
    """The shared SQL on one asyncpg connection inside a transaction.

    Writes nobody reads the outcome of (:meth:`SqlTx._write`) wait in a buffer
    (:class:`_Writes`) and go to the database together, as data-modifying ``WITH`` clauses: at
    :meth:`flush`, or in front of the next statement, which they join when it touches none of
    their rows, else they go just before it. A run of writes so costs at most one round trip,
    often none of its own. The clauses and the statement of one round trip all see the same
    snapshot and may not touch one row twice, which is why they share no row (each write names
    its rows, :data:`~resonate_server.sqltx.Rows`): a write to rows the buffer may already
    write first flushes the buffer, and a statement joined to the buffer reads and writes what
    it would have after a flush. A statement's rows are any row of each table it names, unless
    the caller says which (:meth:`release_waiters` does). The functions of a batch share one
    buffer once they take their turns (:meth:`share`).

    A transaction created ``priming`` holds back its first statement (see
    :func:`run_functions`): it suspends there, yielding :data:`_HELD`, until the lane resumes
    it with ``held_result``, the statement's outcome, or :data:`_RUN` to run the statement
    itself. ``written``, shared by the transactions of a batch, collects the ids of the promise
    and task rows they write (``None``: any row).
    """

    __slots__ = (
        "c",
        "held",
        "held_result",
        "priming",
        "read_ahead",
        "writes",
        "written",
    )

    LOCK = " FOR UPDATE"
    SKIP_LOCKED = " SKIP LOCKED"
    TAG_MATCH = "{col} @> ?::jsonb"
    JSON_PARAM = "?::jsonb"

    def __init__(
        self,
        conn: asyncpg.Connection,
        priming: bool = False,
        written: set[str | None] | None = None,
    ) -> None:
        self.c = conn
        self.writes = _Writes()
        self.priming = priming
        self.held: tuple[str, Sequence[Any]] | None = None
        self.held_result: Any = _RUN
        self.read_ahead: str | None = None
        self.written = written

    def _wrote(self, id: str | None) -> None:
        if self.written is not None:
            self.written.add(id)

    def held_insert(self) -> Sequence[Any] | None:
        """The arguments of the held statement when it is a promise insert with nothing before
        it; else None."""
        if self.held is None or self.writes or self.held[0] != self.INSERT_PROMISE:
            return None
        return self.held[1]

    def held_read(self) -> tuple[str, str] | None:
        """The held statement and its id when it is a by-id read that many ids can share
        (:data:`_READS_BY_IDS`) with nothing before it; else None."""
        if self.held is None or self.writes or self.held[0] not in _READS_BY_IDS:
            return None
        return self.held[0], self.held[1][0]

    @classmethod
    def convert(cls, sql: str) -> str:
        parts = sql.split("?")
        return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        if self.priming:
            await self._hold(sql, args)
        if self.writes:
            sql, args = await self._join_writes(sql, args)
        return await self.c.fetch(self.sql(sql), *args)  # type: ignore[no-any-return]

    async def _row(
        self, sql: str, args: Sequence[Any] = (), rows: Sequence[tuple[str, Rows]] | None = None
    ) -> Sequence[Any] | None:
        if self.priming:
            got = await self._hold(sql, args)
            if got is not _RUN:
                return got  # type: ignore[no-any-return]
        if self.writes:
            sql, args = await self._join_writes(sql, args, rows)
        return await self.c.fetchrow(self.sql(sql), *args)  # type: ignore[no-any-return]

    async def _exec(self, sql: str, args: Sequence[Any] = ()) -> int:
        if self.priming:
            done = await self._hold(sql, args)
            if done is not _RUN:
                return int(done)
        if self.writes:
            sql, args = await self._join_writes(sql, args)
        status: str = await self.c.execute(self.sql(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    def _hold(self, sql: str, args: Sequence[Any]) -> _Hold:
        self.priming = False
        self.held = (sql, args)
        return _Hold(self)

    async def _write(self, table: str, sql: str, args: Sequence[Any], rows: Rows = ()) -> None:
        if self.writes.blocks(table, rows, sql):
            await self.flush()
        self.writes.add(table, rows, sql, args)

    async def flush(self) -> None:
        """Send the buffered writes (one statement); a no-op when there are none."""
        await self.writes.send(self.c)

    async def share(self, batch: _Writes) -> None:
        """From now on, buffer into ``batch`` (the writes of the functions that ran before this
        one in its batch), after moving this function's writes there; should they share rows
        with ``batch``'s, ``batch``'s go first."""
        mine, self.writes = self.writes, batch
        if not mine:
            return
        if batch.blocks_any(mine):
            await batch.send(self.c)
        batch.take(mine)

    async def _join_writes(
        self, sql: str, args: Sequence[Any], rows: Sequence[tuple[str, Rows]] | None = None
    ) -> tuple[str, Sequence[Any]]:
        """The statement to send for ``sql``, which touches ``rows`` (pairs of table and rows;
        default: any row of each table it names): with the buffered writes in front when it
        touches none of their rows (and is no ``WITH RECURSIVE``, which cannot follow other
        clauses); else the writes are sent first and ``sql`` is returned alone."""
        touched = rows if rows is not None else [(t, ()) for t in tables_of(sql)]
        if sql.startswith("WITH RECURSIVE") or any(self.writes.may_touch(t, r) for t, r in touched):
            await self.flush()
            return sql, args
        return self.writes.take_into(sql, args)

    async def release_waiters(self, promise_id: str, fulfilled: bool) -> tuple[bool, list[str]]:
        """In one statement, which the writes buffered before it join when they touch none of
        its rows (a settlement's promise and task updates, and most writes of the functions
        before it in its batch).

        The callbacks it marks ready are not ready yet (``SqlTx.READY_CALLBACKS``), so a
        buffered delete of ready callbacks (a claimed task's) never shares a row with it.
        """
        mine: Rows = (("promise_id", promise_id),)
        rows = [
            ("listeners", mine),
            ("outgoing_unblock", mine),
            ("callbacks", (("awaited", promise_id), ("ready", False))),
        ]
        if fulfilled:
            rows.append(("callbacks", (("awaiter", promise_id),)))
            r = await self._row(_RELEASE_FULFILLED, (promise_id,) * 3, rows)
        else:
            r = await self._row(_RELEASE, (promise_id,) * 2, rows)
        assert r is not None
        return r[0] > 0, list(r[1])

    async def unblock_listeners(self, promise_id: str) -> bool:
        moved = await self._exec(f"WITH {_LISTENERS_GONE} {_QUEUE_UNBLOCKS}", (promise_id,))
        return moved > 0

    async def _take_unblocks(self, limit: int) -> list[Message]:
        """Claim unblocks with their promises in one statement whose plan the statistics cannot
        turn into a scan of ``promises``: the claimed rows are deleted by ``ctid`` and each
        promise is one primary-key probe (a ``LATERAL ... LIMIT 1`` is always a nested loop).

        A plain join let the planner, misled by the queue's dead rows, hash all of
        ``promises`` for each claim. The ``ctid`` of a claimed row cannot change before the
        delete: the row stays locked, and queued unblocks are never updated.
        """
        rows = await self._rows(
            "WITH gone AS (DELETE FROM outgoing_unblock WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM outgoing_unblock LIMIT ? FOR UPDATE SKIP LOCKED)) "
            f"RETURNING promise_id, address) SELECT gone.address, {PROMISE_COLS_AS_P} "
            "FROM gone CROSS JOIN LATERAL "
            "(SELECT * FROM promises WHERE id = gone.promise_id LIMIT 1) p",
            (limit,),
        )
        return [Message(r[0], "unblock", promise=promise_row(r[1:])) for r in rows]


#: A promise's (``?``) listeners, deleted, as the ``WITH`` clause ``gone``.
_LISTENERS_GONE = (
    "gone AS (DELETE FROM listeners WHERE promise_id = ? RETURNING promise_id, address)"
)
#: The unblock messages for the listeners in ``gone``.
_QUEUE_UNBLOCKS = (
    "INSERT INTO outgoing_unblock (promise_id, address) SELECT promise_id, address FROM gone "
    "ON CONFLICT DO NOTHING"
)
#: :meth:`PgTx.release_waiters` in one statement: the unblock messages queued, the awaiters.
_RELEASE = (
    f"WITH {_LISTENERS_GONE}, moved AS ({_QUEUE_UNBLOCKS} RETURNING 1), "
    f"woken AS ({PgTx.READY_CALLBACKS}) "
    "SELECT (SELECT count(*) FROM moved), ARRAY(SELECT awaiter FROM woken)"
)
#: :data:`_RELEASE` for a promise whose task was just fulfilled: its task's own callbacks go
#: too (callbacks with it as awaiter: never the rows the update marks, on it as awaited).
_RELEASE_FULFILLED = f"WITH dropped AS ({PgTx.DROP_CALLBACKS}), {_RELEASE.removeprefix('WITH ')}"

_TABLE_NAMES = re.compile(r"\b(" + "|".join(schema.TABLES) + r")\b")
_tables_of: dict[str, frozenset[str]] = {}


def tables_of(sql: str) -> frozenset[str]:
    """The tables of :data:`resonate_server.schema.TABLES` that ``sql`` names."""
    found = _tables_of.get(sql)
    if found is None:
        found = _tables_of[sql] = frozenset(_TABLE_NAMES.findall(sql))
    return found


#: How many writes of one text with no bulk form (:func:`_bulk`) one statement may carry.
REPEATS = 4


class _Writes:
    """Buffered writes (see :class:`PgTx`), no two of which may share a row.

    Each write's rows (:data:`~resonate_server.sqltx.Rows`) are kept by table and by the
    columns they name, with their values on every subset of those columns, so that whether
    new rows may share one with them (they may unless the two name a column with different
    values) takes one set lookup per kind of write.
    """

    __slots__ = ("_seen", "items", "texts")

    def __init__(self) -> None:
        #: table, rows, statement, arguments
        self.items: list[tuple[str, Rows, str, Sequence[Any]]] = []
        self.texts: dict[str, int] = {}
        self._seen: dict[str, dict[tuple[str, ...], dict[tuple[str, ...], set[Any]]]] = {}

    def __bool__(self) -> bool:
        return bool(self.items)

    def may_touch(self, table: str, rows: Rows) -> bool:
        """Whether a buffered write may touch a row of ``rows`` in ``table``."""
        seen = self._seen.get(table)
        if not seen:
            return False
        columns = tuple(c for c, _ in rows)
        for kind, values in seen.items():
            common, at = _common(kind, columns)
            if not common or tuple(rows[i][1] for i in at) in values[common]:
                return True
        return False

    def blocks(self, table: str, rows: Rows, sql: str) -> bool:
        """Whether a write ``sql`` on ``rows`` of ``table`` must wait until these are sent: it
        may touch one of their rows, or :data:`REPEATS` writes of its text, which has no bulk
        form (:func:`_bulk`), are here already (so that the statements stay few kinds)."""
        return self.may_touch(table, rows) or (
            self.texts.get(sql, 0) >= REPEATS and _bulk(sql) is None
        )

    def add(self, table: str, rows: Rows, sql: str, args: Sequence[Any]) -> None:
        self.items.append((table, rows, sql, args))
        texts = self.texts
        texts[sql] = texts.get(sql, 0) + 1
        seen = self._seen.get(table)
        if seen is None:
            seen = self._seen[table] = {}
        if len(rows) == 1:
            (column, value), *_ = rows
            columns: tuple[str, ...] = (column,)
            values = seen.get(columns)
            if values is None:
                seen[columns] = {columns: {(value,)}}
            else:
                values[columns].add((value,))
            return
        columns = tuple([c for c, _ in rows])
        values = seen.get(columns)
        if values is None:
            values = seen[columns] = {subset: set() for subset, _ in _subsets(columns)}
        for subset, at in _subsets(columns):
            values[subset].add(tuple([rows[i][1] for i in at]))

    def blocks_any(self, other: _Writes) -> bool:
        """Whether any of ``other``'s writes must wait until these are sent (:meth:`blocks`)."""
        return any(self.blocks(table, rows, sql) for table, rows, sql, _ in other.items)

    def take(self, other: _Writes) -> None:
        """Move ``other``'s writes here (none of which :meth:`blocks`)."""
        for item in other.items:
            self.add(*item)
        other.clear()

    def clear(self) -> None:
        self.items.clear()
        self.texts.clear()
        self._seen.clear()

    def take_into(self, sql: str, args: Sequence[Any]) -> tuple[str, list[Any]]:
        """Empty the buffer into ``WITH`` clauses in front of ``sql`` (which may have its own).

        Writes with the same text become one clause on arrays (:func:`_bulk`) where they can,
        so that how many there were does not change the statement.
        """
        groups: dict[str, list[Sequence[Any]]] = {}
        for _, _, text, some in self.items:
            group = groups.get(text)
            if group is None:
                groups[text] = [some]
            else:
                group.append(some)
        self.clear()
        clauses: list[str] = []
        values: list[Any] = []
        for text in sorted(groups):
            rows = groups[text]
            bulk = _bulk(text)
            if bulk is not None:
                clauses.append(bulk.sql)
                values.extend(bulk.arrays(rows))
                continue
            for some in rows:
                clauses.append(text)
                values.extend(some)
        values.extend(args)
        return _joined(tuple(clauses), sql), values

    async def send(self, conn: asyncpg.Connection) -> None:
        """Send the writes as one statement; a no-op when there are none."""
        if not self.items:
            return
        if len(self.items) == 1:
            _, _, sql, args = self.items[0]
            self.clear()
        else:
            sql, args = self.take_into("SELECT 1", ())
        await conn.execute(PgTx.sql(sql), *args)


@functools.lru_cache(maxsize=4096)
def _joined(clauses: tuple[str, ...], sql: str) -> str:
    """``sql`` with ``clauses`` in front, as ``WITH`` clauses (``sql`` may have its own)."""
    with_ = ", ".join(f"w{i} AS ({text})" for i, text in enumerate(clauses))
    rest = f", {sql[5:]}" if sql.startswith("WITH ") else f" {sql}"
    return f"WITH {with_}{rest}"


@functools.cache
def _subsets(columns: tuple[str, ...]) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """Every non-empty subset of ``columns`` (in their order), with the positions it takes."""
    return [
        (tuple(columns[i] for i in at), at)
        for n in range(1, len(columns) + 1)
        for at in combinations(range(len(columns)), n)
    ]


@functools.cache
def _common(
    kind: tuple[str, ...], columns: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The columns of ``kind`` that ``columns`` names too (in ``kind``'s order), and their
    positions in ``columns``."""
    common = tuple(c for c in kind if c in columns)
    return common, tuple(columns.index(c) for c in common)


class _Bulk(NamedTuple):
    """A write statement for many rows at once: ``sql`` takes one array per parameter, and
    parameter ``i`` holds argument ``order[i]`` of each row's own statement."""

    sql: str
    order: tuple[int, ...]

    def arrays(self, rows: list[Sequence[Any]]) -> list[list[Any]]:
        return [[row[i] for row in rows] for i in self.order]


_INSERT = re.compile(r"INSERT INTO (\w+) \(([\w, ]+)\) VALUES \(([?, ]+)\)(.*)")
_UPDATE = re.compile(r"UPDATE (\w+) SET ([\w ?=,]+) WHERE (\w+) = \?")
_bulks: dict[str, _Bulk | None] = {}


def _bulk(sql: str) -> _Bulk | None:
    """The many-row form of a one-row write of :class:`~resonate_server.sqltx.SqlTx`, or None.

    Inserts read their rows from ``unnest``. An update that sets every column of its row by
    the primary key becomes an insert that updates on conflict, whose rows are found through
    the key's index whatever plan the statement got (an update joined to ``unnest``, or
    matching ``= ANY``, kept a scan of the whole table when first planned on a small one). It
    would insert a row that is not there; the engine updates only rows it has read and locked.
    Other writes (deletes, partial updates) have no bulk form.
    """
    if sql in _bulks:
        return _bulks[sql]
    bulk = None
    if m := _INSERT.fullmatch(sql):
        table, cols, tail = m[1], m[2].split(", "), m[4]
        if m[3].split(", ") == ["?"] * len(cols):
            bulk = _Bulk(
                f"INSERT INTO {table} ({m[2]}) SELECT * FROM unnest({_arrays(table, cols)}){tail}",
                tuple(range(len(cols))),
            )
    elif m := _UPDATE.fullmatch(sql):
        table, key = m[1], m[3]
        sets = [part.split(" = ") for part in m[2].split(", ")]
        cols = [col for col, _ in sets]
        table_cols = [c.name for c in schema.metadata.tables[table].c]
        if (
            all(value == "?" for _, value in sets)
            and sorted([*cols, key]) == sorted(table_cols)
            and [c.name for c in schema.metadata.tables[table].primary_key] == [key]
        ):
            assign = ", ".join(f"{col} = excluded.{col}" for col in cols)
            bulk = _Bulk(
                f"INSERT INTO {table} ({', '.join([*cols, key])}) SELECT * FROM "
                f"unnest({_arrays(table, [*cols, key])}) "
                f"ON CONFLICT ({key}) DO UPDATE SET {assign}",
                tuple(range(len(cols) + 1)),
            )
    _bulks[sql] = bulk
    return bulk


def _arrays(table: str, cols: list[str]) -> str:
    """One array parameter per column of ``table``, typed as the column."""
    columns = schema.metadata.tables[table].c
    dialect = postgresql.dialect()
    return ", ".join(f"?::{columns[col].type.compile(dialect=dialect)}[]" for col in cols)


_HELD = object()  #: what a priming transaction function yields at its held first statement
_RUN = object()  #: a held statement's outcome that tells the function to run it itself


class _Hold:
    """The suspension of a priming :class:`PgTx` at its first statement."""

    __slots__ = ("tx",)

    def __init__(self, tx: PgTx) -> None:
        self.tx = tx

    def __await__(self) -> Generator[Any, None, Any]:
        yield _HELD
        return self.tx.held_result


class _Rest:
    """Awaits the rest of a coroutine that was started by hand and last yielded ``yielded``.

    A coroutine suspended at :data:`_HELD` is resumed at once; anything else it yields (an
    asyncpg future) goes to the running task, and what the task sends or throws back goes in.
    """

    __slots__ = ("it", "yielded")

    def __init__(self, it: Generator[Any, Any, Any], yielded: Any) -> None:
        self.it = it
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        it, yielded = self.it, self.yielded
        while True:
            sent: Any = None
            error: BaseException | None = None
            if yielded is not _HELD:
                try:
                    sent = yield yielded
                except BaseException as e:
                    error = e
            try:
                yielded = it.send(sent) if error is None else it.throw(error)
            except StopIteration as done:
                return done.value


_ARRAYS = ", ".join(
    f"${i}::{schema.promises.c[name].type.compile(dialect=postgresql.dialect())}[]"
    for i, name in enumerate(PROMISE_INSERT_COLS, 1)
)
#: Many promise inserts at once: one array per column (types from the schema); the new ids.
_INSERT_PROMISES = (
    f"INSERT INTO promises ({', '.join(PROMISE_INSERT_COLS)}) SELECT * FROM unnest({_ARRAYS}) "
    "ON CONFLICT DO NOTHING RETURNING id"
)


def _read_by_ids(sql: str) -> str:
    """The by-id locking read ``sql`` for an array of ids: one primary-key probe per id, a plan
    that no statistics can turn into a scan (``= ANY`` could, prepared on an empty table)."""
    probe = sql.removesuffix(PgTx.LOCK).replace("id = ?", "id = w.id")
    return (
        "SELECT x.* FROM unnest($1::text[]) AS w(id) "
        f"CROSS JOIN LATERAL ({probe} LIMIT 1{PgTx.LOCK}) x"
    )


#: The by-id locking reads, each with the statement that reads the rows of many ids at once.
_READS_BY_IDS = {sql: _read_by_ids(sql) for sql in (PgTx.GET_PROMISE, PgTx.GET_PROMISE_TASK)}


async def run_functions(
    conn: asyncpg.Connection, fns: Sequence[Callable[[StoreTx], Awaitable[Any]]]
) -> list[Any]:
    """Run a batch's transaction functions one after another in the open transaction; their
    results in order.

    With more than one, each first runs up to its first statement, which is held back (one that
    suspends on anything else, such as the connection itself, runs to completion right then).
    When two or more held statements insert promises with distinct ids, one multi-row insert
    does them all. Then two or more held by-id reads of the same kind (:data:`_READS_BY_IDS`)
    read all their rows, locked, in one statement. Then each function resumes in turn with its
    statement's outcome; the others run their held statement themselves, and so does a read
    whose row any function of the batch has written before its turn (``PgTx.written``, which
    also holds the writes made or buffered while priming), so every function sees what it
    would have read in its turn. A batch of creates, or of task operations, so costs one round
    trip for those statements instead of one each.

    From its turn on, each function buffers its writes into one buffer of the batch
    (:meth:`PgTx.share`), which the next statement of any function joins or follows and the
    batch's end sends, so the writes of many functions go out together. A function's writes
    buffered while priming go in first, after the batch's when they may share a row.
    """
    if len(fns) == 1:
        tx = PgTx(conn)
        result = await fns[0](tx)
        await tx.flush()
        return [result]
    written: set[str | None] = set()
    txs = [PgTx(conn, priming=True, written=written) for _ in fns]
    its: list[Generator[Any, Any, Any] | None] = [None] * len(fns)
    results: list[Any] = [None] * len(fns)
    try:
        for i, fn in enumerate(fns):
            it = fn(txs[i]).__await__()
            try:
                yielded = it.send(None)
            except StopIteration as done:
                results[i] = done.value
                await txs[i].flush()
                continue
            if yielded is _HELD:
                its[i] = it
                continue
            txs[i].priming = False
            its[i] = it
            results[i] = await _Rest(it, yielded)
            its[i] = None
            await txs[i].flush()
        held = [txs[i] for i, it in enumerate(its) if it is not None]
        await _insert_held(conn, held)
        await _read_held(conn, held)
        shared = _Writes()
        for i, it in enumerate(its):
            if it is None:
                continue
            tx = txs[i]
            if tx.read_ahead is not None and (tx.read_ahead in written or None in written):
                tx.held_result = _RUN
            await tx.share(shared)
            results[i] = await _Rest(it, _HELD)
            its[i] = None
        await shared.send(conn)
        return results
    finally:
        for it in its:
            if it is not None:
                it.close()


async def _insert_held(conn: asyncpg.Connection, held: list[PgTx]) -> None:
    """One multi-row insert for the held promise inserts, when two or more have distinct ids."""
    inserts = {tx: args for tx in held if (args := tx.held_insert()) is not None}
    ids = [args[0] for args in inserts.values()]
    if len(inserts) < 2 or len(set(ids)) != len(ids):
        return
    columns = list(zip(*inserts.values(), strict=True))
    inserted = {r[0] for r in await conn.fetch(_INSERT_PROMISES, *columns)}
    for tx, args in inserts.items():
        tx.held_result = 1 if args[0] in inserted else 0


async def _read_held(conn: asyncpg.Connection, held: list[PgTx]) -> None:
    """One locking read for each kind of held by-id read that two or more functions hold."""
    reads: dict[str, list[tuple[PgTx, str]]] = {}
    for tx in held:
        read = tx.held_read()
        if read is not None:
            reads.setdefault(read[0], []).append((tx, read[1]))
    for sql, wanted in reads.items():
        if len(wanted) < 2:
            continue
        ids = sorted({id for _, id in wanted})  # one lock order for every lane
        rows = {r[0]: r for r in await conn.fetch(_READS_BY_IDS[sql], ids)}
        for tx, id in wanted:
            tx.held_result = rows.get(id)
            tx.read_ahead = id


def connection_url(
    host: str, port: int, database: str, username: str, password: str, query: str
) -> URL:
    """The SQLAlchemy URL; libpq's ``sslmode`` becomes asyncpg's ``ssl``."""
    params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    if "sslmode" in params:
        params["ssl"] = params.pop("sslmode")
    return URL.create(
        "postgresql+asyncpg",
        username=username or None,
        password=password or None,
        host=host,
        port=port,
        database=database,
        query=params,
    )


#: Lanes the store keeps using however busy the event loop is: with fewer, one batch that
#: waits on a row lock would hold up all the work; with more, batches are smaller, and since a
#: batch's writes go out together, each request then costs more round trips.
MIN_LANES = 2
#: Connections the store opens besides the lanes, for reads (:meth:`PostgresStore.read`).
READERS = 2
#: Seconds between two decisions of the lane controller (:func:`lanes_wanted`).
TUNE_EVERY = 0.1
#: The event loop's busy fraction (:func:`loop_thread_clock`) at or above which the store drops
#: a lane, and at or below which it adds one back (when transactions waited in batches behind
#: others).
BUSY_HIGH = 0.8
BUSY_LOW = 0.5


def loop_thread_clock() -> Callable[[], float]:
    """A clock, in seconds, of the time the calling thread ran or was ready to run.

    On Linux it reads the thread's schedstat: a thread that waits for a CPU (the database or
    other processes have them) is busy too, since what it waits for is the machine. Elsewhere
    it is the thread's CPU time.
    """
    path = f"/proc/self/task/{threading.get_native_id()}/schedstat"

    def ran_or_waited() -> float:
        with open(path, "rb") as f:
            ran, waited, _ = f.read().split()
        return (int(ran) + int(waited)) / 1e9

    try:
        ran_or_waited()
    except (OSError, ValueError):
        return time.thread_time
    return ran_or_waited


def lanes_wanted(active: int, total: int, busy: float, waited: int) -> int:
    """How many of the ``total`` lanes to use next, given the event loop's busy fraction over
    the last period and how many transactions ran in a batch behind another one (each waited
    for the statements of those before it).

    A busy loop is the bottleneck: fewer lanes make larger batches, and every request then
    costs less CPU, here and in the database. A loop with room while transactions wait in
    batches means the lanes are waiting on the database (round trips across a network): more
    lanes hide that.
    """
    floor = min(MIN_LANES, total)
    if busy >= BUSY_HIGH:
        return max(floor, active - 1)
    if busy <= BUSY_LOW and waited:
        return min(total, active + 1)
    return active


class PostgresStore(Store):
    """See the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        database: str,
        username: str,
        password: str,
        query: str = "",
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        migrate: bool = True,
        retries: int = 5,
        batch_size: int = 64,
    ) -> None:
        self.url = connection_url(host, port, database, username, password, query)
        self.where = f"{host}:{port}/{database}"
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.migrate = migrate
        self.retries = retries
        self.batch_size = batch_size
        self._engine: AsyncEngine | None = None
        self._lanes: list[_Lane] = []
        self._active: list[_Lane] = []
        self._waited = 0
        self._reading = asyncio.Semaphore(READERS)
        self._tuner: asyncio.Task[None] | None = None
        self._transactions = 0
        self._commits = 0

    def stats(self) -> StoreStats:
        queued = sum(len(lane.jobs) for lane in self._lanes)
        return StoreStats(queued, self._transactions, self._commits, self.lanes_in_use)

    @property
    def lanes_in_use(self) -> int:
        """How many lanes new transactions go to now (see :func:`lanes_wanted`)."""
        return len(self._active)

    async def start(self, migrate: bool = True) -> None:
        self._engine = create_async_engine(
            self.url,
            pool_size=self.pool_size + READERS,
            max_overflow=0,
            pool_timeout=30,
            connect_args={
                "timeout": self.connect_timeout,
                "server_settings": {
                    "application_name": "resonate-server",
                    "statement_timeout": str(int(self.statement_timeout * 1000)),
                },
            },
        )
        self._lanes = [_Lane() for _ in range(self.pool_size)]
        for lane in self._lanes:
            lane.task = asyncio.create_task(self._serve(lane), name="resonate-pg-lane")
        self._active = list(self._lanes)
        self._tuner = asyncio.create_task(self._tune_lanes(), name="resonate-pg-lanes")
        try:
            if migrate and self.migrate:
                applied = await self.apply_migrations()
                if applied:
                    log.info("applied schema migrations %s on %s", applied, self.where)
            elif migrate:
                _, pending = await self.schema_versions()
                if pending:
                    raise StoreError(
                        f"the database schema needs migrations {pending}: run "
                        "`resonate migrate apply` (or set aio.store.postgres.migrate)"
                    )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._tuner is not None:
            self._tuner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tuner
            self._tuner = None
        lanes, self._lanes, self._active = self._lanes, [], []
        for lane in lanes:
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
            _fail(list(lane.jobs), StoreUnavailable("the PostgreSQL store is closed"))
            lane.jobs.clear()
            await lane.drop()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def ping(self) -> None:
        async def probe(tx: StoreTx) -> None:
            assert isinstance(tx, PgTx)
            await tx.c.fetchval("SELECT 1")

        await self.transact(probe)

    async def schema_versions(self) -> tuple[list[int], list[int]]:
        async def read(tx: StoreTx) -> list[int]:
            assert isinstance(tx, PgTx)
            if await tx.c.fetchval("SELECT to_regclass('resonate_schema')") is None:
                return []
            return [r[0] for r in await tx.c.fetch("SELECT version FROM resonate_schema")]

        applied = sorted(await self.transact(read))
        return applied, [m.version for m in schema.pending(set(applied))]

    async def apply_migrations(self) -> list[int]:
        dialect = postgresql.dialect()

        async def apply(tx: StoreTx) -> list[int]:
            assert isinstance(tx, PgTx)
            await tx.c.execute("SET LOCAL statement_timeout = 0")
            await tx.c.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await tx.c.execute(schema.bootstrap(dialect))
            applied = {r[0] for r in await tx.c.fetch("SELECT version FROM resonate_schema")}
            done = []
            for migration in schema.pending(applied):
                for statement in migration.statements(dialect):
                    await tx.c.execute(statement)
                await tx.c.execute(
                    "INSERT INTO resonate_schema (version, description, applied_at) "
                    "VALUES ($1, $2, $3)",
                    migration.version,
                    migration.description,
                    int(time.time() * 1000),
                )
                done.append(migration.version)
            return done

        return await self.transact(apply)

    def _open_lanes(self) -> list[_Lane]:
        """The lanes new transactions go to; raises :class:`StoreUnavailable` once closed."""
        if self._engine is None or not self._active:
            raise StoreUnavailable("the PostgreSQL store is closed")
        return self._active

    async def transact(self, fn: Callable[[StoreTx], Awaitable[T]], key: str | None = None) -> T:
        lanes = self._open_lanes()
        if key is None:
            lane = min(lanes, key=lambda x: len(x.jobs))
        else:
            lane = lanes[hash(key) % len(lanes)]
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        lane.jobs.append(_Job(fn, fut))
        lane.wake.set()
        return await fut

    async def read(self, fn: Callable[[StoreTx], Awaitable[T]]) -> T:
        """Run ``fn`` in a read-only transaction on a connection of its own, off the lanes, so
        that a long search holds up no lane's batch; at most :data:`READERS` at once."""
        self._open_lanes()
        async with self._reading:
            sa_conn, conn = await self._checkout()
            try:
                async with conn.transaction(readonly=True):
                    return await fn(PgTx(conn))
            except DISCONNECTED as e:
                with contextlib.suppress(Exception):
                    await sa_conn.invalidate()
                raise StoreUnavailable(f"connection to PostgreSQL lost: {_reason(e)}") from None
            except asyncpg.PostgresError as e:
                raise self._store_error(e) from None
            finally:
                with contextlib.suppress(Exception):
                    await sa_conn.close()

    async def _serve(self, lane: _Lane) -> None:
        """A lane's loop: run whatever is queued as one batch, until the store closes."""
        while True:
            while not lane.jobs:
                if lane.open:
                    await self._end_idle_transaction(lane)
                lane.wake.clear()
                await lane.wake.wait()
            batch: list[_Job] = []
            while lane.jobs and len(batch) < self.batch_size:
                job = lane.jobs.popleft()
                if not job.fut.done():
                    batch.append(job)
            if not batch:
                continue
            self._waited += len(batch) - 1
            try:
                await self._run_batch(lane, batch)
            except Exception as e:  # a bug must not stop the lane and strand its callers
                log.exception("PostgreSQL lane failed a batch")
                _fail(batch, StoreError(f"internal store error: {type(e).__name__}"))

    async def _tune_lanes(self) -> None:
        """Every :data:`TUNE_EVERY` seconds, set how many lanes new transactions go to
        (:func:`lanes_wanted`), from how busy the event loop's thread was."""
        loop = asyncio.get_running_loop()
        clock = loop_thread_clock()
        wall, cpu = loop.time(), clock()
        while True:
            await asyncio.sleep(TUNE_EVERY)
            now, used = loop.time(), clock()
            busy = (used - cpu) / max(now - wall, 1e-6)
            wall, cpu = now, used
            n = lanes_wanted(len(self._active), len(self._lanes), busy, self._waited)
            self._waited = 0
            if n != len(self._active):
                self._active = self._lanes[:n]

    async def _run_batch(self, lane: _Lane, batch: list[_Job]) -> None:
        """Commit ``batch`` as one transaction, or settle each job's future with its failure.

        Conflicts are retried with backoff; should any function raise, the batch is rolled back
        and each job runs again alone, so that one failure never undoes another caller's work.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                results = await self._attempt(lane, [job.fn for job in batch])
            except RETRYABLE as e:
                if attempt <= self.retries:
                    await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
                    continue
                if len(batch) > 1:
                    break
                reason = f"{_reason(e)}, {attempt} attempts"
                _fail(batch, StoreBusy(f"transaction kept conflicting ({reason}); retry"))
                return
            except _Stale:
                if attempt <= 2:
                    continue
                _fail(batch, StoreUnavailable(f"PostgreSQL at {self.where} is unreachable"))
                return
            except StoreUnavailable as e:
                _fail(batch, e)
                return
            except asyncio.CancelledError:
                _fail(batch, StoreUnavailable("the PostgreSQL store is closing"))
                raise
            except Exception as e:
                if len(batch) > 1:
                    break
                _fail(batch, e)
                return
            self._commits += 1
            self._transactions += len(batch)
            for job, result in zip(batch, results, strict=True):
                if not job.fut.done():
                    job.fut.set_result(result)
            return
        for job in batch:
            await self._run_batch(lane, [job])

    async def _attempt(
        self, lane: _Lane, fns: list[Callable[[StoreTx], Awaitable[Any]]]
    ) -> list[Any]:
        conn = await self._connect(lane)
        committing = False
        try:
            if not lane.open:
                await conn.execute("BEGIN")
                lane.open = True
            try:
                results = await run_functions(conn, fns)
                committing = True
                lane.open = False
                if lane.jobs:
                    await conn.execute("COMMIT; BEGIN")
                    lane.open = True
                else:
                    await conn.execute("COMMIT")
                return results
            except BaseException:
                lane.open = False
                if not committing and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
        except DISCONNECTED as e:
            await lane.drop()
            if committing:
                raise StoreUnavailable(
                    f"connection to PostgreSQL lost while committing: {_reason(e)}"
                ) from None
            raise _Stale() from None
        except asyncpg.PostgresError as e:
            if isinstance(e, RETRYABLE):
                raise
            raise self._store_error(e) from None
        except BaseException:
            if conn.is_closed() or conn.is_in_transaction():
                await lane.drop()
            raise

    async def _end_idle_transaction(self, lane: _Lane) -> None:
        """Roll back the transaction a commit opened for work that was then canceled."""
        lane.open = False
        if lane.conn is not None and not lane.conn.is_closed():
            try:
                await lane.conn.execute("ROLLBACK")
            except Exception:
                await lane.drop()

    async def _connect(self, lane: _Lane) -> asyncpg.Connection:
        """The lane's connection, opened through the SQLAlchemy pool when there is none."""
        if lane.conn is not None and not lane.conn.is_closed():
            return lane.conn
        await lane.drop()
        sa_conn, conn = await self._checkout()
        lane.sa_conn, lane.conn = sa_conn, conn
        return conn

    async def _checkout(self) -> tuple[AsyncConnection, asyncpg.Connection]:
        """A connection from SQLAlchemy's pool, with the asyncpg connection inside it."""
        assert self._engine is not None
        try:
            sa_conn = await self._engine.connect()
            raw = await sa_conn.get_raw_connection()
        except (sa_exc.DBAPIError, *DISCONNECTED) as e:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self.where}: {_reason(e)}"
            ) from None
        conn = raw.driver_connection
        assert conn is not None
        return sa_conn, conn  # type: ignore[return-value]

    def _store_error(self, e: asyncpg.PostgresError) -> StoreError:
        """What a failed statement (other than a retryable conflict) means for its caller."""
        if isinstance(e, BAD_TEXT):
            return StoreDataError(f"text the database cannot store: {_reason(e)}")
        if isinstance(e, asyncpg.QueryCanceledError):
            log.warning("PostgreSQL canceled a statement: %s", _reason(e))
            return StoreBusy(
                f"a statement was canceled after aio.store.postgres.statement_timeout "
                f"({self.statement_timeout:g}s): {_reason(e)}"
            )
        log.error("PostgreSQL error: %s", e)
        return StoreError(f"PostgreSQL error: {_reason(e)}")


class _Job(NamedTuple):
    fn: Callable[[StoreTx], Awaitable[Any]]
    fut: asyncio.Future[Any]


class _Lane:
    """One connection, its queue of transaction functions, and the task that runs them.

    ``open``: the connection is inside a transaction, the running batch's or one the last commit
    opened for the next batch (a commit made while more work is queued sends ``COMMIT; BEGIN``).
    """

    __slots__ = ("conn", "jobs", "open", "sa_conn", "task", "wake")

    def __init__(self) -> None:
        self.open = False
        self.jobs: deque[_Job] = deque()
        self.wake = asyncio.Event()
        self.sa_conn: AsyncConnection | None = None
        self.conn: asyncpg.Connection | None = None
        self.task: asyncio.Task[None] | None = None

    async def drop(self) -> None:
        """Give the connection back to SQLAlchemy, discarding it when it may be broken."""
        sa_conn, self.sa_conn, self.conn = self.sa_conn, None, None
        self.open = False
        if sa_conn is not None:
            with contextlib.suppress(Exception):
                await sa_conn.invalidate()
            with contextlib.suppress(Exception):
                await sa_conn.close()


def _fail(batch: list[_Job], error: BaseException) -> None:
    for job in batch:
        if not job.fut.done():
            job.fut.set_exception(error)


class _Stale(Exception):
    """The lane's connection was dead before anything committed: retry on a fresh one."""


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
