"""The http transport: messages POSTed to ``http(s)://`` addresses (protocol.md §1.6, §8 62).

A stub worker (``http.server`` on 127.0.0.1, in a thread) records every request and answers
from a script of status codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
from resonate_transport_http.push import backoff_delay, redact

from .conftest import ROOT, Client, ServerProcess, free_port, wait_for

FAR = 2**62
EXAMPLE = ROOT / "tests" / "plugins" / "resonate_example"


class Stub:
    """A worker endpoint: answers ``statuses`` in turn (then ``default``), records requests."""

    def __init__(self, statuses: list[int] | None = None, default: int = 200) -> None:
        self.statuses = list(statuses or [])
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with stub.lock:
                    status = stub.statuses.pop(0) if stub.statuses else stub.default
                    stub.requests.append(
                        {
                            "at": time.monotonic(),
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": json.loads(body),
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/work") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.close()


def target(c: Client, pid: str, address: str) -> None:
    """Create a promise whose task's execute message goes to ``address``."""
    reply = c.call(
        "promise.create", {"id": pid, "timeoutAt": FAR, "tags": {"resonate:target": address}}
    )
    assert reply.status == 200, reply


def execute(pid: str, server_url: str) -> dict[str, Any]:
    return {
        "kind": "execute",
        "head": {"serverUrl": server_url},
        "data": {"task": {"id": pid, "version": 0}},
    }


def test_push_posts_the_execute_message(make_server: Any, stub: Stub) -> None:
    """Scenario 62: a JSON POST whose body is the execute message with the configured URL."""
    s = make_server("--api-http-url", "http://resonate.example:8001")
    target(s.client(), "p1", stub.url("/work?x=1"))
    (req,) = wait_for(stub.received)
    assert req["path"] == "/work?x=1"
    assert req["headers"]["content-type"] == "application/json"
    assert "authorization" not in req["headers"]
    assert req["body"] == execute("p1", "http://resonate.example:8001")
    time.sleep(0.2)
    assert len(stub.received()) == 1


def test_bearer_auth_adds_the_header(make_server: Any, stub: Stub, workdir: Path) -> None:
    s = make_server("--transports-http-auth-mode", "bearer", "--transports-http-auth-token", "s3cr")
    target(s.client(), "p1", stub.url())
    (req,) = wait_for(stub.received)
    assert req["headers"]["authorization"] == "Bearer s3cr"

    other = make_server(
        "--aio-store-sqlite-path",
        str(workdir / "other.db"),
        env={
            "RESONATE_TRANSPORTS__HTTP__AUTH__MODE": "bearer",
            "RESONATE_TRANSPORTS__HTTP__AUTH__TOKEN": "t0k",
            "RESONATE_TRANSPORTS__HTTP__AUTH__HEADER": "X-Worker-Auth",
        },
        store=False,
    )
    target(other.client(), "p2", stub.url())
    req = wait_for(lambda: len(stub.received()) == 2 and stub.received()[1])
    assert req["headers"]["x-worker-auth"] == "Bearer t0k"
    assert "authorization" not in req["headers"]
    assert "s3cr" not in s.log() and "t0k" not in other.log()


def test_bearer_without_token_is_a_config_error(make_server: Any) -> None:
    s = make_server("--transports-http-auth-mode", "bearer", wait=False)
    assert s.wait(20) == 2
    assert "'transports.http.auth.mode' is bearer but 'transports.http.auth.token' is empty" in (
        s.log()
    )


def test_failed_delivery_is_retried(make_server: Any) -> None:
    """500, 500, then 200: the same message arrives three times, then no more."""
    stub = Stub([500, 500])
    try:
        s = make_server("--transports-http-backoff", "50ms")
        target(s.client(), "p1", stub.url())
        reqs = wait_for(lambda: len(stub.received()) >= 3 and stub.received())
        assert [r["body"] for r in reqs] == [execute("p1", f"http://localhost:{s.port}")] * 3
        time.sleep(0.5)
        assert len(stub.received()) == 3
    finally:
        stub.close()


def test_retries_are_bounded_with_growing_gaps(make_server: Any) -> None:
    """An always-failing worker gets 1 + retries attempts per message, the waits growing."""
    stub = Stub(default=500)
    try:
        s = make_server("--transports-http-backoff", "100ms", "--transports-http-retries", "3")
        c = s.client()
        n = 8
        for i in range(n):
            target(c, f"p{i}", stub.url())
        wait_for(lambda: len(stub.received()) >= 4 * n, timeout=10)
        time.sleep(1.0)  # longer than any further wait (≤ 400ms) would be
        by_task: dict[str, list[float]] = {}
        for r in stub.received():
            by_task.setdefault(r["body"]["data"]["task"]["id"], []).append(r["at"])
        assert sorted(by_task) == sorted(f"p{i}" for i in range(n))
        assert all(len(times) == 4 for times in by_task.values()), by_task
        gaps = [[b - a for a, b in pairwise(t)] for t in by_task.values()]
        for g in gaps:  # full jitter: retry k waits at most 100ms · 2^(k-1)
            assert g[0] < 0.1 + 0.3 and g[1] < 0.2 + 0.3 and g[2] < 0.4 + 0.3, g
        first, last = mean(g[0] for g in gaps), mean(g[2] for g in gaps)
        assert last > first, (first, last)  # means 50ms vs 200ms
        assert c.get("/healthz").status == 200
    finally:
        stub.close()


def test_unreachable_worker_is_given_up(make_server: Any) -> None:
    """A closed port: a bounded number of attempts, then an error in the log; still healthy."""
    s = make_server("--transports-http-backoff", "50ms", "--transports-http-retries", "2")
    dead = f"http://127.0.0.1:{free_port()}/work"
    c = s.client()
    target(c, "p1", dead)
    wait_for(lambda: "failed after 3 attempts" in s.log(), timeout=10)
    assert "giving up" in s.log()
    assert c.get("/healthz").status == 200
    assert c.call("promise.get", {"id": "p1"}).status == 200


def test_waiting_retries_hold_no_slot(make_server: Any) -> None:
    """With one slot, a message waiting to retry does not hold up the next one."""
    failing, fine = Stub(default=500), Stub()
    try:
        s = make_server(
            "--transports-http-concurrency",
            "1",
            "--transports-http-backoff",
            "5s",
            "--transports-http-backoff-max",
            "5s",
        )
        c = s.client()
        target(c, "slow", failing.url())
        wait_for(failing.received)
        started = time.monotonic()
        target(c, "quick", fine.url())
        wait_for(fine.received, timeout=3)
        assert time.monotonic() - started < 1.0
    finally:
        failing.close()
        fine.close()


def test_disabled_transport_drops(make_server: Any, stub: Stub) -> None:
    s = make_server("--debug", "--no-transports-http-enable")
    c = s.client()
    target(c, "p1", stub.url())
    assert wait_for(lambda: c.call("debug.snap", {}).data["messages"] == [])
    time.sleep(0.2)
    assert stub.received() == []


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment with the example plugin (which records delivery outcomes) installed."""
    target_dir = tmp_path_factory.mktemp("example-plugin")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--no-deps"),
            *("--no-build-isolation", "--target", str(target_dir), str(EXAMPLE)),
        ],
        check=True,
        capture_output=True,
    )
    path = os.pathsep.join(p for p in (str(target_dir), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def test_outcomes_are_reported_once(
    make_server: Any, example_env: dict[str, str], workdir: Path
) -> None:
    """Each pushed message reports one final outcome: success, or error once given up."""
    ok, failing = Stub(), Stub(default=500)
    try:
        s: ServerProcess = make_server(
            "--transports-http-backoff", "20ms", "--transports-http-retries", "1", env=example_env
        )
        c = s.client()
        target(c, "good", ok.url())
        target(c, "bad", failing.url())

        def deliveries() -> list[tuple[str, str, str]]:
            body = c.get("/example/stats").body
            return sorted((d["address"], d["kind"], d["outcome"]) for d in body["deliveries"])

        wait_for(lambda: len(failing.received()) == 2)
        wait_for(lambda: len(deliveries()) >= 2)
        time.sleep(0.2)
        assert deliveries() == sorted(
            [(ok.url(), "execute", "success"), (failing.url(), "execute", "error")]
        )
    finally:
        ok.close()
        failing.close()


def test_backoff_delay_is_full_jitter_under_a_doubling_cap() -> None:
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (60, 30.0)):
        delays = [backoff_delay(attempt, 1.0, 30.0) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2 and min(delays) < ceiling / 2


def test_logged_urls_hide_credentials() -> None:
    assert redact("https://user:pw@worker.example/run?x=1") == "https://***@worker.example/run?x=1"
    assert redact("http://worker.example:8080/run") == "http://worker.example:8080/run"
