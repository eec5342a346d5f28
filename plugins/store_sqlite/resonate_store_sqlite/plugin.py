"""Registers the SQLite store (``aio.store.sqlite``), the default when no other store is enabled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resonate_server import Setting, hookimpl
from resonate_server.store import Store, StoreBackend


def _factory(section: Mapping[str, Any], settings: Mapping[str, Any]) -> Store:
    from .store import SqliteStore

    return SqliteStore(
        path=section["path"], synchronous=section["synchronous"], batch_size=section["batch_size"]
    )


@hookimpl
def resonate_store_backends() -> list[StoreBackend]:
    return [
        StoreBackend(
            "sqlite",
            "Embedded SQLite database (WAL); the default store.",
            _factory,
        )
    ]


@hookimpl
def resonate_config_settings() -> list[Setting]:
    return [
        Setting(
            "aio.store.sqlite.path",
            str,
            "resonate.db",
            "SQLite database file (`:memory:` for a throwaway database).",
        ),
        Setting(
            "aio.store.sqlite.synchronous",
            str,
            "FULL",
            "SQLite `synchronous` pragma; FULL makes every acknowledged write durable.",
            choices=("OFF", "NORMAL", "FULL", "EXTRA"),
        ),
        Setting(
            "aio.store.sqlite.batch_size",
            int,
            256,
            "Most transactions committed together in one group commit.",
            minimum=1,
        ),
    ]
