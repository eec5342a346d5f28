"""The relational schema shared by SQL stores (SQLAlchemy Core), and its migrations.

One owner for table shapes. JSON members (``param``, ``value``, ``promise_param``) are JSON
text; tags are JSON text on SQLite and JSONB on PostgreSQL (so tag search can use a GIN index).
``target`` and ``branch`` copy the immutable tags of the same names so they can be indexed.
A task's single timer (retry or lease) lives on its row.

Schema changes are :data:`MIGRATIONS`, applied in order by each store under its own lock and
recorded in ``resonate_schema``. Never edit a released migration: add the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable

JsonTags = Text().with_variant(JSONB(), "postgresql")


metadata = MetaData()

promises = Table(
    "promises",
    metadata,
    Column("id", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("param", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("tags", JsonTags, nullable=False),
    Column("target", Text),
    Column("branch", Text),
    Column("timeout_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("settled_at", BigInteger),
)
Index(
    "ix_promises_due",
    promises.c.timeout_at,
    sqlite_where=text("state = 'pending' AND target IS NOT NULL"),
    postgresql_where=text("state = 'pending' AND target IS NOT NULL"),
)
Index(
    "ix_promises_branch",
    promises.c.branch,
    promises.c.id,
    sqlite_where=text("branch IS NOT NULL"),
    postgresql_where=text("branch IS NOT NULL"),
)
Index(
    "ix_promises_tags", promises.c.tags, postgresql_using="gin", info={"dialects": {"postgresql"}}
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("timeout_at", BigInteger),
    Column("timeout_type", SmallInteger),
    Column("pid", Text),
    Column("ttl", BigInteger),
)
Index(
    "ix_tasks_timeout",
    tasks.c.timeout_at,
    sqlite_where=text("timeout_at IS NOT NULL"),
    postgresql_where=text("timeout_at IS NOT NULL"),
)

callbacks = Table(
    "callbacks",
    metadata,
    Column("awaited", Text, primary_key=True),
    Column("awaiter", Text, primary_key=True),
    Column("ready", Boolean, nullable=False),
)
Index("ix_callbacks_awaiter", callbacks.c.awaiter, callbacks.c.ready)

listeners = Table(
    "listeners",
    metadata,
    Column("promise_id", Text, primary_key=True),
    Column("address", Text, primary_key=True),
)

outgoing_execute = Table(
    "outgoing_execute",
    metadata,
    Column("task_id", Text, primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("address", Text, nullable=False),
)

outgoing_unblock = Table(
    "outgoing_unblock",
    metadata,
    Column("promise_id", Text, primary_key=True),
    Column("address", Text, primary_key=True),
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", Text, primary_key=True),
    Column("cron", Text, nullable=False),
    Column("promise_id", Text, nullable=False),
    Column("promise_timeout", BigInteger, nullable=False),
    Column("promise_param", Text, nullable=False),
    Column("promise_tags", JsonTags, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("next_run_at", BigInteger, nullable=False),
    Column("last_run_at", BigInteger),
)
Index("ix_schedules_next_run", schedules.c.next_run_at)

schema_version = Table(
    "resonate_schema",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("description", Text, nullable=False),
    Column("applied_at", BigInteger, nullable=False),
)

TABLES = (
    "promises",
    "tasks",
    "callbacks",
    "listeners",
    "outgoing_execute",
    "outgoing_unblock",
    "schedules",
)


@dataclass(frozen=True)
class Migration:
    """One schema change: ``statements(dialect)`` gives the DDL for that database."""

    version: int
    description: str
    statements: Callable[[Dialect], list[str]]


def _initial(dialect: Dialect) -> list[str]:
    out = []
    for table in metadata.sorted_tables:
        if table is schema_version:
            continue
        out.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            only = index.info.get("dialects")
            if only is None or dialect.name in only:
                out.append(str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)))
    return out


#: SQLite's index of promise tags: one row per (key, value) of each promise, in id order.
TAG_INDEX = "promise_tags"


def _tag_index(dialect: Dialect) -> list[str]:
    """SQLite: the tag index, filled by a trigger on every promise insert and backfilled from
    the promises already stored (tags never change and promises are never deleted one by
    one). Nothing on PostgreSQL, which has the GIN index of the initial schema."""
    if dialect.name != "sqlite":
        return []
    return [
        f"CREATE TABLE IF NOT EXISTS {TAG_INDEX} (key TEXT NOT NULL, value TEXT NOT NULL, "
        "promise_id TEXT NOT NULL, PRIMARY KEY (key, value, promise_id)) WITHOUT ROWID",
        f"CREATE TRIGGER IF NOT EXISTS {TAG_INDEX}_insert AFTER INSERT ON promises BEGIN "
        f"INSERT OR IGNORE INTO {TAG_INDEX} (key, value, promise_id) "
        "SELECT key, value, NEW.id FROM json_each(NEW.tags); END",
        f"INSERT OR IGNORE INTO {TAG_INDEX} (key, value, promise_id) "
        "SELECT j.key, j.value, p.id FROM promises p, json_each(p.tags) j",
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _initial),
    Migration(2, "promise tag index (SQLite)", _tag_index),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def bootstrap(dialect: Dialect) -> str:
    """DDL for the table that records applied migrations."""
    return str(CreateTable(schema_version, if_not_exists=True).compile(dialect=dialect))


def pending(applied: set[int]) -> list[Migration]:
    """Migrations not yet in ``applied``, in order."""
    return [m for m in MIGRATIONS if m.version not in applied]
