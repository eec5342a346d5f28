"""Registers the PostgreSQL store (``aio.store.postgres``), selected with its ``enable`` key.

The seed's keys (enable, host, port, database, username, password, query) are declared by the
core so that they parse even without this plugin; this plugin adds the tuning keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resonate_server import Duration, Setting, hookimpl
from resonate_server.config import Settings
from resonate_server.store import Store, StoreBackend


def _factory(section: Mapping[str, Any], settings: Mapping[str, Any]) -> Store:
    from .store import PostgresStore

    return PostgresStore(
        host=section["host"],
        port=section["port"],
        database=section["database"],
        username=section["username"],
        password=section["password"],
        query=section["query"],
        pool_size=section["pool_size"],
        connect_timeout=section["connect_timeout"],
        statement_timeout=section["statement_timeout"],
        migrate=section["migrate"],
        retries=section["retries"],
        batch_size=section["batch_size"],
    )


@hookimpl
def resonate_store_backends() -> list[StoreBackend]:
    return [
        StoreBackend(
            "postgres",
            "PostgreSQL (recommended for production).",
            _factory,
        )
    ]


@hookimpl
def resonate_config_settings() -> list[Setting]:
    return [
        Setting(
            "aio.store.postgres.pool_size",
            int,
            10,
            "Connections kept open to PostgreSQL; each commits the transactions queued on it "
            "together (group commit). The most in use at once: the store uses fewer (down to 3) "
            "while the server's CPU is the limit.",
            minimum=1,
        ),
        Setting(
            "aio.store.postgres.batch_size",
            int,
            64,
            "Most transactions one connection commits together.",
            minimum=1,
        ),
        Setting(
            "aio.store.postgres.connect_timeout",
            Duration,
            "5s",
            "How long opening a connection may take before the request gets 503.",
        ),
        Setting(
            "aio.store.postgres.statement_timeout",
            Duration,
            "30s",
            "Longest a statement may run or wait for a row lock before PostgreSQL cancels it "
            "and the request gets 503 (0 disables; migrations are exempt).",
        ),
        Setting(
            "aio.store.postgres.migrate",
            bool,
            True,
            "Apply pending schema migrations at start (else refuse to start until "
            "`resonate migrate apply` ran).",
        ),
        Setting(
            "aio.store.postgres.retries",
            int,
            5,
            "Times a transaction is retried after a serialization failure or deadlock.",
            minimum=0,
        ),
    ]


@hookimpl
def resonate_config_validate(settings: Settings) -> list[str]:
    if settings["aio.store.postgres.enable"] and not settings["aio.store.postgres.host"]:
        return ["'aio.store.postgres.host' must be set when the postgres store is enabled"]
    return []
