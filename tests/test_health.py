"""Health endpoints on the store under test."""

from __future__ import annotations

from typing import Any

import pytest


def test_health_endpoints(make_server: Any, request: pytest.FixtureRequest) -> None:
    c = make_server().client()
    healthz = c.get("/healthz")
    assert healthz.status == 200
    assert healthz.body == {"status": "ok", "store": request.config.getoption("--store")}
    assert c.get("/ready").status == 200
    assert c.get("/health").status == 200
