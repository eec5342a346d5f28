"""Shared fixtures: every test talks to a real `resonate` server process over HTTP.

The store under test is chosen with ``--store`` (default ``sqlite``); the conformance suite runs
unchanged against every store.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_VERSION = "2026-04-01"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store", default="sqlite", help="store the servers run on: sqlite or postgres"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resonate(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``resonate`` CLI (``python -m resonate_server``) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "resonate_server", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=60,
    )


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


class Reply:
    """One HTTP reply: ``status`` (HTTP), ``body`` (parsed JSON or None), ``raw`` bytes, headers."""

    def __init__(self, status: int, raw: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.raw = raw
        self.headers = headers
        try:
            self.body: Any = json.loads(raw) if raw else None
        except ValueError:
            self.body = None

    @property
    def data(self) -> Any:
        return self.body["data"]

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.raw[:300]!r})"


class Client:
    """A minimal RPC client for ``POST /`` with keep-alive."""

    _ids = itertools.count(1)

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                resp = self._conn.getresponse()
                raw = resp.read()
                return Reply(resp.status, raw, {k.lower(): v for k, v in resp.getheaders()})
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def post(self, payload: Any) -> Reply:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.request("POST", "/", body, {"Content-Type": "application/json"})

    def call(
        self,
        kind: str,
        data: Any,
        *,
        time: int | None = None,
        corr_id: str | None = None,
        head: dict[str, Any] | None = None,
    ) -> Reply:
        """Send one envelope; ``time`` sets ``head["resonate:debug_time"]``."""
        h: dict[str, Any] = {
            "corrId": corr_id or f"t-{next(self._ids)}",
            "version": PROTOCOL_VERSION,
        }
        if time is not None:
            h["resonate:debug_time"] = time
        if head:
            h.update(head)
        reply = self.post({"kind": kind, "head": h, "data": data})
        if reply.body is not None:
            assert reply.status == reply.body["head"]["status"], reply
            assert reply.body["kind"] == kind and reply.body["head"]["corrId"] == h["corrId"], reply
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ServerProcess:
    """A real `resonate serve` child process.

    ``args`` are extra CLI flags; ``cwd`` is its working directory (where `resonate.yaml` is
    looked up and the default `resonate.db` lives).
    """

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        command: str = "serve",
    ) -> None:
        self.command = command
        self.port = port or free_port()
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = cwd / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics_off(self) -> list[str]:
        """``--metrics-port 0`` when the metrics plugin loads (a test's own flag overrides it),
        so that servers started side by side do not all claim :9090."""
        only = self.env.get("RESONATE_LOAD_PLUGINS")
        if only is not None and "metrics" not in {p.strip() for p in only.split(",")}:
            return []
        return ["--metrics-port", "0"]

    def start(self, wait: bool = True) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "resonate_server",
            self.command,
            "--api-http-host",
            "127.0.0.1",
            "--api-http-port",
            str(self.port),
            *self.metrics_off(),
            *self.args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
                c = Client("127.0.0.1", self.port)
                if c.get("/healthz").status == 200:
                    c.close()
                    return
                c.close()
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def client(self) -> Client:
        return Client("127.0.0.1", self.port)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


_clusters: dict[str, Any] = {}
_databases: dict[Path, str] = {}


def pg_cluster(config: pytest.Config) -> Any:
    """The session's throwaway PostgreSQL cluster, started on first use."""
    from .pg import PostgresCluster

    if "pg" not in _clusters:
        cluster = PostgresCluster().start()
        config.add_cleanup(cluster.destroy)
        _clusters["pg"] = cluster
    return _clusters["pg"]


def store_args(config: pytest.Config, workdir: Path) -> list[str]:
    """CLI flags that put a server on the store selected by ``--store``.

    Servers started in the same ``workdir`` share one database, so a restart sees its data.
    """
    store = config.getoption("--store")
    if store == "sqlite":
        return ["--aio-store-sqlite-path", str(workdir / "resonate.db")]
    if store == "postgres":
        cluster = pg_cluster(config)
        if workdir not in _databases:
            _databases[workdir] = cluster.create_database()
        return list(cluster.flags(_databases[workdir]))
    raise pytest.UsageError(f"unknown --store {store!r} (sqlite or postgres)")


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="resonate-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_server(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Any]:
    """Factory: ``make_server(*flags, env=, store=, port=, wait=, command=)`` starts a server.

    It runs in ``workdir``; ``store=False`` leaves out the ``--store`` flags."""
    started: list[ServerProcess] = []

    def make(
        *flags: str,
        env: dict[str, str] | None = None,
        store: bool = True,
        port: int | None = None,
        wait: bool = True,
        command: str = "serve",
    ) -> ServerProcess:
        args = (store_args(request.config, workdir) if store else []) + list(flags)
        s = ServerProcess(args, workdir, env=env, port=port, command=command)
        started.append(s)
        return s.start(wait=wait)

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def debug_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """One server in debug mode for the whole session; tests isolate with ``debug.reset``."""
    d = Path(tempfile.mkdtemp(prefix="resonate-debug-"))
    s = ServerProcess([*store_args(request.config, d), "--debug"], d).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rpc(debug_server: ServerProcess) -> Iterator[Client]:
    """A client on the debug server with background loops paused and every table empty."""
    c = debug_server.client()
    assert c.call("debug.start", {}).status == 200
    assert c.call("debug.reset", {}).status == 200
    yield c
    c.close()
