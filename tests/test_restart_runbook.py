"""The restart procedure of docs/runbook.md, run line by line against a live workflow.

The server is started exactly as the runbook writes it (``resonate serve --config
resonate.yaml`` in the directory of ``resonate.yaml``), a worker of the official Python SDK
connects and starts a workflow; while the workflow sleeps durably, the runbook's restart block
runs in bash (``kill -TERM``, the wait loop) and its last line starts the server again. The
worker must reconnect by itself and the workflow must complete with every step run once.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, ServerProcess, free_port
from .interop.harness import READY, Interop, ensure_sdks
from .test_metrics import scrape, value

RUNBOOK = ROOT / "docs" / "runbook.md"
BIN = Path(sys.executable).parent  # where `resonate` is installed


def restart_block() -> list[str]:
    """The commands between the runbook's restart markers."""
    text = RUNBOOK.read_text()
    m = re.search(
        r"<!-- runbook:restart:begin -->\s*```bash\n(.*?)```\s*<!-- runbook:restart:end -->",
        text,
        re.S,
    )
    assert m, "docs/runbook.md lost its restart block markers"
    return [line for line in m.group(1).splitlines() if line.strip()]


class RunbookServer(ServerProcess):
    """A server started with the runbook's command line in its working directory."""

    def __init__(self, argv: list[str], cwd: Path, port: int) -> None:
        super().__init__([], cwd, env={"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}, port=port)
        self.argv = argv
        for name in ("RESONATE_METRICS__PORT", "RESONATE_METRICS__HOST"):
            self.env.pop(name, None)  # resonate.yaml decides, as in the runbook
        self.log_path = cwd / "resonate.log"

    def start(self, wait: bool = True) -> RunbookServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        (self.cwd / "resonate.pid").write_text(f"{self.proc.pid}\n")
        if wait:
            self.wait_ready()
        return self


@pytest.fixture
def sdk_ready() -> None:
    try:
        ensure_sdks()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.mark.timeout(90)
def test_restart_procedure_of_the_runbook(
    sdk_ready: None, workdir: Path, request: pytest.FixtureRequest
) -> None:
    from .conftest import store_args

    block = restart_block()
    *stop_lines, start_line = block
    assert start_line == "resonate serve --config resonate.yaml", block
    assert any(line.startswith("kill -TERM") for line in stop_lines), block

    api_port, metrics_port = free_port(), free_port()
    settings: dict[str, Any] = {
        "api": {"http": {"host": "127.0.0.1", "port": api_port, "timeout": "10s"}},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        # short protocol timers, as in the interop suite, so nothing waits on a default 30 s
        "tasks": {"retry_timeout": "2s"},
        "timeouts": {"poll_interval": "100ms"},
    }
    store = store_args(request.config, workdir)
    if store[0] == "--aio-store-sqlite-path":
        settings["aio"] = {"store": {"sqlite": {"path": store[1]}}}
    else:  # --store postgres: the same flags, written as YAML
        pg: dict[str, Any] = {}
        it = iter(store)
        for flag in it:
            key = flag.removeprefix("--aio-store-postgres-").replace("-", "_")
            pg[key] = True if key == "enable" else next(it)
        settings["aio"] = {"store": {"postgres": pg}}
    (workdir / "resonate.yaml").write_text(yaml.safe_dump(settings))

    argv = shlex.split(start_line)
    servers: list[RunbookServer] = []

    def start_server(port: int | None = None) -> RunbookServer:
        s = RunbookServer(argv, workdir, api_port).start()
        servers.append(s)
        return s

    interop = Interop("py", start_server, workdir)
    try:
        worker = interop.worker("workers")
        wid = "runbook-restart"
        interop.call("rpc", id=wid, func="napper", args=[3000, 200], target="workers", no_wait=True)
        interop.wait_for(lambda: ["done", "0"] in [r[:2] for r in interop.lines(wid)], 30, "step 0")

        # The runbook's stop lines, in bash. The test is the server's parent, so a thread
        # reaps it the moment it exits (else `kill -0` would still see a zombie).
        old = servers[-1]
        assert old.proc is not None
        reaper = threading.Thread(target=old.proc.wait, daemon=True)
        reaper.start()
        started = time.monotonic()
        stop = subprocess.run(
            ["bash", "-euc", "\n".join(stop_lines)],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=30,
        )
        stopped_in = time.monotonic() - started
        assert stop.returncode == 0, stop.stderr
        reaper.join(5)
        assert old.proc.returncode == 0, old.log()
        assert stopped_in < 10 + 2, f"shutdown took {stopped_in:.1f}s"
        log = old.log()
        assert "shutting down" in log and "shutdown complete" in log, log

        # The runbook's last line: the same command again.
        interop.server = start_server()
        interop.servers.append(interop.server)

        record = interop.settled(wid, 45)
        assert record["state"] == "resolved", record
        rows = interop.lines(wid)
        assert [r[1] for r in rows if r[0] == "done"] == ["0", "1", "2"], rows
        assert worker.alive(), worker.output()[-3000:]
        ready = [line for line in worker.output().splitlines() if line.strip() == READY]
        assert len(ready) >= 2, "the worker did not reconnect:\n" + worker.output()[-3000:]

        # The backlog gauge came back from the database, and nothing is left pending.
        _, samples = scrape(metrics_port)
        assert value(samples, "promises_total", state="pending") == 0
        assert value(samples, "promises_total", state="resolved") >= 1
    finally:
        interop.close()
        for s in servers:
            s.stop()
