"""The relational schema shared by SQL stores (SQLAlchemy Core). One owner for table shapes.

JSON members (``param``, ``value``, ``tags``, ``promise_param``, ``promise_tags``) are stored as
JSON text. ``target`` and ``branch`` copy the immutable tags of the same names so they can be
indexed. A task's single timer (retry or lease) lives on its row.
"""

from __future__ import annotations

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

SCHEMA_VERSION = 1

metadata = MetaData()

promises = Table(
    "promises",
    metadata,
    Column("id", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("param", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("tags", Text, nullable=False),
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
    Column("promise_tags", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("next_run_at", BigInteger, nullable=False),
    Column("last_run_at", BigInteger),
)
Index("ix_schedules_next_run", schedules.c.next_run_at)

schema_version = Table(
    "resonate_schema",
    metadata,
    Column("version", Integer, primary_key=True),
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
