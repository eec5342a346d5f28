"""Health endpoints, and what clients see while the database does not answer."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from .conftest import ServerProcess


def test_health_endpoints(make_server: Any) -> None:
    c = make_server().client()
    healthz = c.get("/healthz")
    assert healthz.status == 200
    assert healthz.body == {"status": "ok", "store": "sqlite"}
    assert c.get("/ready").status == 200
    assert c.get("/health").status == 200


def test_locked_database_gives_503_then_recovers(make_server: Any, workdir: Path) -> None:
    s: ServerProcess = make_server("--health-timeout", "1s")
    c = s.client()
    assert c.call("promise.create", {"id": "a", "timeoutAt": 2**62}).status == 200
    blocker = sqlite3.connect(workdir / "resonate.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        assert c.get("/healthz").status == 503
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
