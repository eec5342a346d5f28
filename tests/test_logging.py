"""Structured logs: one line per request, levels, JSON for collectors, no secrets."""

from __future__ import annotations

import json
import signal
from typing import Any


def request_lines(log: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["logger"] == "resonate.request":
                out.append(entry)
    return out


def stopped_log(s: Any) -> str:
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    return s.log_path.read_text()  # type: ignore[no-any-return]


def test_json_request_lines(make_server: Any) -> None:
    s = make_server("--log-format", "json", "--aio-store-postgres-password", "hunter2-secret")
    c = s.client()
    c.call("promise.create", {"id": "a", "timeoutAt": 2**62}, corr_id="mine-1")
    c.call("promise.get", {"id": "missing"}, corr_id="mine-2")
    c.post(b"not json")
    log = stopped_log(s)
    lines = request_lines(log)
    assert [(e["kind"], e["status"], e["corr_id"]) for e in lines] == [
        ("promise.create", 200, "mine-1"),
        ("promise.get", 404, "mine-2"),
        ("unknown", 400, "0"),
    ]
    assert all(e["level"] == "info" and e["duration_ms"] >= 0 for e in lines)
    assert len({e["request_id"] for e in lines}) == 3
    for line in log.splitlines():
        json.loads(line)  # every line is JSON
    assert "hunter2-secret" not in log


def test_text_lines_and_levels(make_server: Any) -> None:
    s = make_server()
    s.client().call("promise.get", {"id": "x"}, corr_id="c1")
    assert "resonate.request: promise.get 404 " in stopped_log(s)

    quiet = make_server("--log-level", "warning")
    quiet.client().call("promise.get", {"id": "x"})
    assert "resonate.request" not in stopped_log(quiet)

    off = make_server("--no-log-requests")
    off.client().call("promise.get", {"id": "x"})
    log = stopped_log(off)
    assert "resonate.request" not in log
    assert "listening on" in log
