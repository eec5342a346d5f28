"""The interop harness: real SDK worker and client processes against a real server process.

The official SDKs live outside the project's virtual environment (``tests/interop/setup.sh``
installs them): the Python SDK in ``.interop/py312`` (Python 3.12) and the TypeScript SDK in
``tests/interop/ts/node_modules``. Each SDK has one program with the same subcommands and the
same durable functions (``py/interop_py.py``, ``ts/interop_ts.mjs``); the harness starts them
as subprocesses, each with its own log file, and reads their results from
``INTEROP-RESULT <json>`` lines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import ServerProcess

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
INTEROP_DIR = Path(os.environ.get("INTEROP_SDK_DIR", str(ROOT / ".interop")))
PY312 = INTEROP_DIR / "py312" / "bin" / "python"
TS_DIR = HERE / "ts"
SETUP = HERE / "setup.sh"
PY_SDK_VERSION = "0.8.1"
TS_SDK_VERSION = "0.11.5"
PROGRAMS = {"py": [str(PY312), str(HERE / "py" / "interop_py.py")]}
RESULT = "INTEROP-RESULT "
READY = "INTEROP-READY"

T = TypeVar("T")


def ts_command() -> list[str]:
    return [shutil.which("node") or "node", str(TS_DIR / "interop_ts.mjs")]


def sdk_problems() -> list[str]:
    """What is missing for the suite to run; empty when both SDKs are installed."""
    problems = []
    if not PY312.exists():
        problems.append(f"no Python SDK venv at {PY312.parent.parent}")
    else:
        probe = subprocess.run(
            [str(PY312), "-c", "import importlib.metadata as m; print(m.version('resonate-sdk'))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.stdout.strip() != PY_SDK_VERSION:
            problems.append(
                f"resonate-sdk in {PY312} is {probe.stdout.strip() or probe.stderr.strip()!r}, "
                f"expected {PY_SDK_VERSION}"
            )
    if shutil.which("node") is None:
        problems.append("node is not on PATH")
    pkg = TS_DIR / "node_modules" / "@resonatehq" / "sdk" / "package.json"
    try:
        version = json.loads(pkg.read_text())["version"]
    except (OSError, ValueError, KeyError):
        problems.append(f"@resonatehq/sdk is not installed in {TS_DIR / 'node_modules'}")
    else:
        if version != TS_SDK_VERSION:
            problems.append(f"@resonatehq/sdk is {version}, expected {TS_SDK_VERSION}")
    return problems


def ensure_sdks() -> None:
    """Make sure both SDKs are installed, or raise with what to do.

    In CI (``$CI`` set) a missing SDK is a failure: CI must install them before the tests
    (``tests/interop/setup.sh``). Elsewhere the setup script is run once on demand.
    """
    problems = sdk_problems()
    if not problems:
        return
    if os.environ.get("CI"):
        raise RuntimeError(
            "interop SDKs are not installed (CI is set, so they are not installed on demand): "
            + "; ".join(problems)
            + f". Run {SETUP.relative_to(ROOT)} before the tests."
        )
    proc = subprocess.run(
        ["bash", str(SETUP)], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    problems = sdk_problems()
    if proc.returncode != 0 or problems:
        raise RuntimeError(
            f"{SETUP.relative_to(ROOT)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}\n" + "; ".join(problems)
        )


class Proc:
    """One SDK process with its own log file (stdout and stderr together)."""

    def __init__(
        self, name: str, command: str, cmd: list[str], log_path: Path, env: dict[str, str]
    ) -> None:
        self.name = name
        self.command = command
        self.cmd = cmd
        self.log_path = log_path
        self.expected_exit = False
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def results(self) -> list[Any]:
        return [
            json.loads(line[len(RESULT) :])
            for line in self.output().splitlines()
            if line.startswith(RESULT)
        ]

    def ready(self) -> bool:
        return any(line.strip() == READY for line in self.output().splitlines())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig``; the process is then expected to exit."""
        self.expected_exit = True
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self) -> None:
        self.expected_exit = True
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def describe(self) -> str:
        return f"{self.name} (os pid {self.pid}, exit {self.popen.poll()})"


class Interop:
    """Drives one SDK (``"py"`` or ``"ts"``) against ``server`` for one test."""

    def __init__(self, sdk: str, start_server: Callable[..., ServerProcess], workdir: Path) -> None:
        self.sdk = sdk
        self._start_server = start_server
        self.server = start_server()
        self.servers: list[ServerProcess] = [self.server]
        self.workdir = workdir
        self.record_dir = workdir / "records"
        self.record_dir.mkdir(exist_ok=True)
        self.procs: list[Proc] = []
        self._n = 0

    # --- processes ------------------------------------------------------------------------

    def _command(self, command: str, opts: dict[str, Any]) -> list[str]:
        cmd = [*(PROGRAMS["py"] if self.sdk == "py" else ts_command()), command]
        cmd += ["--url", self.server.url]
        for key, value in opts.items():
            if value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            if value is True:
                cmd.append(flag)
            elif key == "args" or key == "value":
                cmd += [flag, json.dumps(value)]
            else:
                cmd += [flag, str(value)]
        return cmd

    def spawn(self, command: str, **opts: Any) -> Proc:
        """Start ``<program> command --url <server> --opt value ...`` in the background."""
        self._n += 1
        name = f"{self.sdk}-{command}-{self._n}"
        env = {**os.environ, "INTEROP_RECORD_DIR": str(self.record_dir)}
        env.pop("RESONATE_URL", None)
        proc = Proc(name, command, self._command(command, opts), self.workdir / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    def worker(
        self, group: str, *, role: str = "main", ttl_ms: int = 10_000, timeout: float = 30.0
    ) -> Proc:
        """Start a worker on ``group`` and wait until its SSE stream is open."""
        proc = self.spawn("worker", group=group, role=role, ttl_ms=ttl_ms)
        self.wait_for(proc.ready, timeout, f"{proc.name} to connect (print {READY})")
        return proc

    def wait_result(self, proc: Proc, timeout: float = 60.0) -> Any:
        """Wait for a client process to exit 0 and return its last result."""
        self.wait_for(lambda: not proc.alive(), timeout, f"{proc.name} to finish", ignore=proc)
        rc = proc.popen.returncode
        results = proc.results()
        assert rc == 0 and results, f"{proc.describe()} gave no result:\n{proc.output()[-4000:]}"
        return results[-1]

    def call(self, command: str, timeout: float = 60.0, **opts: Any) -> Any:
        """Run a client subcommand to completion and return its result."""
        return self.wait_result(self.spawn(command, **opts), timeout)

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float,
        what: str,
        *,
        interval: float = 0.05,
        ignore: Proc | None = None,
    ) -> T:
        """Poll ``predicate`` until it is truthy; fail fast when a process dies unexpectedly."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            self.check_alive(ignore)
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def check_alive(self, ignore: Proc | None = None) -> None:
        proc = self.server.proc
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        for p in self.procs:
            if p is ignore or p.expected_exit or p.alive():
                continue
            if p.command == "worker":
                raise AssertionError(f"worker {p.describe()} died:\n{p.output()[-3000:]}")
            if p.popen.returncode != 0:
                raise AssertionError(f"{p.describe()} failed:\n{p.output()[-3000:]}")

    def restart_server(self, sig: int) -> int:
        """Stop the server with ``sig``, then start it again on the same port and database.

        Returns the old server's exit status. Workers are not told: they reconnect by
        themselves."""
        old = self.server
        old.signal(sig)
        rc = old.wait(timeout=30)
        self.server = self._start_server(port=old.port)
        self.servers.append(self.server)
        return rc

    def close(self) -> None:
        for p in self.procs:
            p.stop()

    # --- observations ---------------------------------------------------------------------

    def lines(self, name: str) -> list[list[str]]:
        """The records a durable function appended to ``name``, split into fields."""
        try:
            text = (self.record_dir / name).read_text()
        except FileNotFoundError:
            return []
        return [line.split() for line in text.splitlines() if line.strip()]

    def promise(self, promise_id: str) -> dict[str, Any]:
        """The promise as the server stores it (``promise.get`` through our own client)."""
        c = self.server.client()
        try:
            reply = c.call("promise.get", {"id": promise_id})
        finally:
            c.close()
        assert reply.status == 200, reply
        return dict(reply.data["promise"])

    def settled(self, promise_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the server reports ``promise_id`` settled; returns the record."""

        def check() -> dict[str, Any] | None:
            try:
                p = self.promise(promise_id)
            except (AssertionError, OSError):
                return None
            return p if p["state"] != "pending" else None

        return self.wait_for(check, timeout, f"promise {promise_id} to settle", interval=0.2)

    def logs(self) -> list[tuple[str, str]]:
        logs = {s.log_path: s for s in self.servers}
        out = [(f"server {path.name}", s.log()) for path, s in logs.items()]
        out += [(p.describe(), p.output()[-6000:]) for p in self.procs]
        for f in sorted(self.record_dir.iterdir()):
            out.append((f"record {f.name}", f.read_text(errors="replace")[-3000:]))
        return out
