"""SQLite-specific behaviour (runs on SQLite whatever ``--store`` says)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from resonate_server.store import StoreTx
from resonate_store_sqlite.store import SqliteStore

from .conftest import ServerProcess, resonate
from .group_commit import one_failure_in_a_batch


def sqlite_server(make_server: Any, workdir: Path, *flags: str) -> ServerProcess:
    return make_server("--aio-store-sqlite-path", str(workdir / "resonate.db"), *flags, store=False)


def test_locked_database_gives_503_then_recovers(make_server: Any, workdir: Path) -> None:
    s = sqlite_server(make_server, workdir, "--health-timeout", "1s")
    c = s.client()
    assert c.call("promise.create", {"id": "a", "timeoutAt": 2**62}).status == 200
    blocker = sqlite3.connect(workdir / "resonate.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        healthz = c.get("/healthz")
        assert healthz.status == 503
        assert healthz.body["status"] == "unavailable"
        assert time.monotonic() - started < 4
        reply = c.call("promise.create", {"id": "b", "timeoutAt": 2**62})
        assert reply.status == 503
        assert reply.data.startswith("Store unavailable: ")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    deadline = time.monotonic() + 10
    while c.get("/healthz").status != 200:
        assert time.monotonic() < deadline, "health did not recover"
        time.sleep(0.1)
    assert c.call("promise.create", {"id": "b", "timeoutAt": 2**62}).status == 200
    assert c.call("promise.get", {"id": "a"}).status == 200
    assert s.proc is not None and s.proc.poll() is None


def test_migrate_command(workdir: Path) -> None:
    db = str(workdir / "m.db")
    out = resonate("migrate", "status", "--aio-store-sqlite-path", db)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1 pending  initial schema"]
    out = resonate("migrate", "apply", "--aio-store-sqlite-path", db)
    assert out.stdout.splitlines() == ["applied 1: initial schema", "1 applied  initial schema"]
    out = resonate("migrate", "apply", "--aio-store-sqlite-path", db)
    assert out.stdout.splitlines() == ["nothing to apply", "1 applied  initial schema"]


def test_unopenable_database_is_a_one_line_error(workdir: Path) -> None:
    out = resonate(
        "serve",
        "--aio-store-sqlite-path",
        str(workdir / "no" / "such" / "dir.db"),
        "--api-http-port",
        "0",
    )
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("resonate: error: cannot open SQLite database")
    )
    assert "Traceback" not in out.stderr


def test_a_failing_transaction_in_a_group_commit_undoes_only_itself(workdir: Path) -> None:
    """Transactions batched into one commit: the one that raises leaves no trace, the others
    commit (the store re-runs the batch with each transaction isolated)."""

    async def hold(tx: StoreTx) -> str:
        time.sleep(0.2)  # blocks the writer thread so that the next ones queue up together
        return "held"

    async def main() -> None:
        store = SqliteStore(str(workdir / "batch.db"))
        await store.start()
        try:
            await one_failure_in_a_batch(store, hold)
        finally:
            await store.close()

    asyncio.run(main())
