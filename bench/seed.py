"""Bulk-load promises straight into a store's database (the server is not running).

Rows follow the ``promises`` table of :mod:`resonate_server.schema` and the encoding of
:mod:`resonate_server.sqltx`: ``param``/``value``/``tags`` are compact JSON (orjson), tags are
JSON text on SQLite and JSONB on PostgreSQL, ``target``/``branch`` copy the tags of those
names (none here). Seeded promises never time out during a run (``timeoutAt`` in 2100) and
have no target, so they create no tasks and no timer work. Every other one is resolved.

SQLite: ``executemany`` in large transactions with ``synchronous=OFF`` (a bulk load, not the
durability under test), then a WAL checkpoint. PostgreSQL: binary ``COPY`` through asyncpg,
then ``ANALYZE``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import orjson
from resonate_server.sqltx import PROMISE_INSERT_COLS as COLUMNS

from .procs import Store

TIMEOUT_AT = 4_102_444_800_000  # 2100-01-01
SHARDS = 64
PARAM = {"data": "eyJmdW5jIjoic2VlZCIsImFyZ3MiOlsxLDIsM119"}
VALUE = {"data": "eyJyZXN1bHQiOjZ9"}


def seed_id(i: int) -> str:
    return f"seed-{i:09d}"


def expected(i: int, created_at: int) -> dict[str, Any]:
    """The wire record ``promise.get`` must return for seeded promise ``i``."""
    resolved = i % 2 == 1
    rec: dict[str, Any] = {
        "id": seed_id(i),
        "state": "resolved" if resolved else "pending",
        "param": PARAM,
        "value": VALUE if resolved else {},
        "tags": {"bench": "seed", "shard": str(i % SHARDS)},
        "timeoutAt": TIMEOUT_AT,
        "createdAt": created_at,
    }
    if resolved:
        rec["settledAt"] = created_at + 1
    return rec


def rows(start: int, stop: int, created_at: int) -> Iterator[tuple[Any, ...]]:
    param = orjson.dumps(PARAM).decode()
    value = orjson.dumps(VALUE).decode()
    empty = orjson.dumps({}).decode()
    tags = [orjson.dumps({"bench": "seed", "shard": str(s)}).decode() for s in range(SHARDS)]
    for i in range(start, stop):
        if i % 2:
            yield (
                seed_id(i),
                "resolved",
                param,
                value,
                tags[i % SHARDS],
                None,
                None,
                TIMEOUT_AT,
                created_at,
                created_at + 1,
            )
        else:
            yield (
                seed_id(i),
                "pending",
                param,
                empty,
                tags[i % SHARDS],
                None,
                None,
                TIMEOUT_AT,
                created_at,
                None,
            )


def seed_sqlite(path: str, n: int, created_at: int, chunk: int = 100_000) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB while loading
        sql = f"INSERT INTO promises ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 10)})"
        for lo in range(0, n, chunk):
            conn.execute("BEGIN")
            conn.executemany(sql, rows(lo, min(n, lo + chunk), created_at))
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("ANALYZE")
    finally:
        conn.close()


async def seed_postgres(dsn: dict[str, Any], n: int, created_at: int, chunk: int = 200_000) -> None:
    import asyncpg

    conn = await asyncpg.connect(**dsn)
    try:
        for lo in range(0, n, chunk):
            await conn.copy_records_to_table(
                "promises",
                records=rows(lo, min(n, lo + chunk), created_at),
                columns=list(COLUMNS),
            )
        await conn.execute("ANALYZE promises")
    finally:
        await conn.close()


def seed(store: Store, n: int, created_at: int | None = None) -> tuple[int, float]:
    """Load ``n`` promises; returns ``(created_at, seconds)``."""
    created_at = int(time.time() * 1000) if created_at is None else created_at
    t0 = time.perf_counter()
    if store.sqlite_path is not None:
        seed_sqlite(str(store.sqlite_path), n, created_at)
    else:
        assert store.pg is not None
        asyncio.run(seed_postgres(store.pg.dsn(store.database), n, created_at))
    return created_at, time.perf_counter() - t0
