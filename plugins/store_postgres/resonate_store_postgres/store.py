"""PostgreSQL store: SQLAlchemy's async pool over asyncpg, the shared SQL, row locks.

Each transaction checks a connection out of the SQLAlchemy pool and runs the shared
:class:`~resonate_server.sqltx.SqlTx` statements on the underlying asyncpg connection (prepared
and cached per connection) under PostgreSQL's default READ COMMITTED isolation. Rows the engine
may change are read ``FOR UPDATE``, so two requests racing on one promise or task serialize and
exactly one wins; deadlocks and serialization failures are retried. A broken connection is
dropped from the pool and the transaction retried on a fresh one when nothing was committed;
while the database is down, requests fail fast with :class:`StoreUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import asyncpg
from resonate_server import schema
from resonate_server.sqltx import SqlTx
from resonate_server.store import (
    Store,
    StoreBusy,
    StoreDataError,
    StoreError,
    StoreTx,
    StoreUnavailable,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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
    """The shared SQL on one asyncpg connection inside a transaction."""

    __slots__ = ("c",)

    LOCK = " FOR UPDATE"
    SKIP_LOCKED = " SKIP LOCKED"
    TAG_MATCH = "{col} @> ?::jsonb"
    JSON_PARAM = "?::jsonb"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.c = conn

    @classmethod
    def convert(cls, sql: str) -> str:
        parts = sql.split("?")
        return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return await self.c.fetch(self.sql(sql), *args)  # type: ignore[no-any-return]

    async def _row(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Any] | None:
        return await self.c.fetchrow(self.sql(sql), *args)  # type: ignore[no-any-return]

    async def _exec(self, sql: str, args: Sequence[Any] = ()) -> int:
        status: str = await self.c.execute(self.sql(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0


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
        migrate: bool = True,
        retries: int = 5,
    ) -> None:
        self.url = connection_url(host, port, database, username, password, query)
        self.where = f"{host}:{port}/{database}"
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.migrate = migrate
        self.retries = retries
        self._engine: AsyncEngine | None = None

    async def start(self, migrate: bool = True) -> None:
        self._engine = create_async_engine(
            self.url,
            pool_size=self.pool_size,
            max_overflow=0,
            pool_timeout=30,
            connect_args={
                "timeout": self.connect_timeout,
                "server_settings": {"application_name": "resonate-server"},
            },
        )
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

    async def transact(self, fn: Callable[[StoreTx], Awaitable[T]]) -> T:
        if self._engine is None:
            raise StoreUnavailable("the PostgreSQL store is closed")
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(fn)
            except RETRYABLE as e:
                if attempt > self.retries:
                    raise StoreBusy(
                        f"transaction kept conflicting with concurrent ones "
                        f"({_reason(e)}, {attempt} attempts); retry"
                    ) from None
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
            except _Stale:
                if attempt > 2:
                    raise StoreUnavailable(f"PostgreSQL at {self.where} is unreachable") from None

    async def _attempt(self, fn: Callable[[StoreTx], Awaitable[T]]) -> T:
        assert self._engine is not None
        try:
            sa_conn = await self._engine.connect()
        except (sa_exc.DBAPIError, *DISCONNECTED) as e:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self.where}: {_reason(e)}"
            ) from None
        committing = False
        try:
            raw = await sa_conn.get_raw_connection()
            conn: asyncpg.Connection = raw.driver_connection  # type: ignore[assignment]
            tr = conn.transaction()
            await tr.start()
            try:
                result = await fn(PgTx(conn))
                committing = True
                await tr.commit()
                return result
            except BaseException:
                if not committing and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await tr.rollback()
                raise
        except DISCONNECTED as e:
            with contextlib.suppress(Exception):
                await sa_conn.invalidate()
            if committing:
                raise StoreUnavailable(
                    f"connection to PostgreSQL lost while committing: {_reason(e)}"
                ) from None
            raise _Stale() from None
        except BAD_TEXT as e:
            raise StoreDataError(f"text the database cannot store: {_reason(e)}") from None
        except asyncpg.PostgresError as e:
            if isinstance(e, RETRYABLE):
                raise
            log.error("PostgreSQL error: %s", e)
            raise StoreError(f"PostgreSQL error: {_reason(e)}") from None
        finally:
            with contextlib.suppress(Exception):
                await sa_conn.close()


class _Stale(Exception):
    """The pooled connection was dead before anything committed: retry on a fresh one."""


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
