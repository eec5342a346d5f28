"""The processes a benchmark runs: the server under test, the no-storage ceiling server, the
PostgreSQL cluster; and their CPU and memory, read from ``/proc`` (Linux only, no psutil).
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
HOST = "127.0.0.1"


def free_port(taken: Collection[int] = ()) -> int:
    """A port free on loopback now, other than those in ``taken`` (ports picked for the same
    server, not yet listening)."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


# --- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads), in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE / 2**20
    except OSError:
        return 0.0


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
            out.append(int(entry))
    return out


class CpuMeter:
    """CPU use of a set of processes over a window: ``start()``, then ``stop()`` gives %.

    100% is one core fully busy; a multi-threaded or multi-process target can exceed it.
    ``pids`` is called at both ends so processes that come and go (PostgreSQL backends) count.
    """

    def __init__(
        self, pids: list[int] | None = None, pid_fn: Callable[[], list[int]] | None = None
    ) -> None:
        self._pids = pids or []
        self._pid_fn = pid_fn
        self._t0 = 0.0
        self._c0: dict[int, float] = {}

    def _current(self) -> list[int]:
        return self._pid_fn() if self._pid_fn is not None else self._pids

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = {p: cpu_seconds(p) for p in self._current()}

    def stop(self) -> float:
        wall = time.perf_counter() - self._t0
        used = 0.0
        for p in self._current():
            used += cpu_seconds(p) - self._c0.get(p, 0.0)
        return 100.0 * used / wall if wall > 0 else 0.0


def machine_jiffies() -> tuple[int, int]:
    """``(busy, total)`` clock ticks of all CPUs since boot (``/proc/stat``)."""
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --- server processes ----------------------------------------------------------------------


class ServerFailed(RuntimeError):
    pass


def wait_listening(port: int, name: str, timeout: float = 10.0) -> None:
    """Return once something accepts connections on ``port`` on loopback."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise ServerFailed(f"{name} did not listen on port {port} in {timeout}s")
        time.sleep(0.05)


class Process:
    """A server child process listening on ``port``; its output goes to ``log``."""

    def __init__(
        self, argv: list[str], port: int, log: Path, name: str, cwd: Path | None = None
    ) -> None:
        self.argv = argv
        self.port = port
        self.log = log
        self.name = name
        self.cwd = cwd or log.parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> Process:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.port}/healthz"
        while True:
            if self.proc.poll() is not None:
                raise ServerFailed(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status < 500:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(
                    f"{self.name} did not answer {url} in {timeout}s:\n{self.tail()}"
                )
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def resonate_bin() -> str:
    exe = Path(sys.executable).parent / "resonate"
    return str(exe) if exe.exists() else "resonate"


_SERVE_HELP: list[str] = []


def serve_flags_supported() -> str:
    """``resonate serve --help`` (cached): which optional flags this build has."""
    if not _SERVE_HELP:
        out = subprocess.run(
            [resonate_bin(), "serve", "--help"], capture_output=True, text=True, timeout=60
        )
        _SERVE_HELP.append(out.stdout)
    return _SERVE_HELP[0]


def plugins() -> list[dict[str, object]]:
    """The plugins a ``resonate serve`` loads (name and version), for the record."""
    import json

    out = subprocess.run(
        [resonate_bin(), "plugins", "--json"], capture_output=True, text=True, timeout=60
    )
    try:
        return [{"name": p["name"], "version": p["version"]} for p in json.loads(out.stdout)]
    except (ValueError, KeyError, TypeError):
        return []


def loopback_flags(api_port: int) -> list[str]:
    """Keep every listener of the server on loopback and on a free port (not ``api_port``).

    The metrics plugin (when installed) listens on its own port, 9090 on all addresses by
    default; it stays enabled, as in a default deployment, but on 127.0.0.1 and a free port.
    """
    flags = []
    help_text = serve_flags_supported()
    if "--metrics-port" in help_text:
        flags += ["--metrics-port", str(free_port(taken=(api_port,)))]
        if "--metrics-host" in help_text:
            flags += ["--metrics-host", HOST]
    return flags


@dataclass
class Store:
    """Where a server keeps its data: ``flags`` select it; ``db_pids`` are the database's
    processes (PostgreSQL), counted as database CPU."""

    name: str
    flags: list[str]
    sqlite_path: Path | None = None
    pg: PgEnv | None = None
    database: str = ""

    def db_pids(self) -> list[int]:
        if self.pg is None:
            return []
        return self.pg.pids()


class PgEnv:
    """A throwaway PostgreSQL cluster (tests/pg.py) for the whole run; one database per store.

    With ``delay_ms``, servers reach it through :mod:`bench.delay`, which holds every packet
    that long in each direction (a database across a network). With ``statements``, the
    cluster loads ``pg_stat_statements`` (see :meth:`reset_statements`, :meth:`top_statements`).
    """

    def __init__(self, delay_ms: float = 0.0, statements: bool = False) -> None:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from tests.pg import PostgresCluster

        settings = {"shared_preload_libraries": "pg_stat_statements"} if statements else {}
        self.cluster = PostgresCluster(settings)
        self.cluster.start()
        self._postmaster = self._read_pid()
        self.port = self.cluster.port
        self._proxy: subprocess.Popen[bytes] | None = None
        if delay_ms > 0:
            self.port = free_port()
            argv = [sys.executable, "-m", "bench.delay", str(self.port), str(self.cluster.port)]
            self._proxy = subprocess.Popen([*argv, str(delay_ms)], cwd=ROOT)
            try:
                wait_listening(self.port, "the PostgreSQL delay proxy")
            except ServerFailed:
                self.close()
                raise

    def _read_pid(self) -> int:
        pidfile = self.cluster.data / "postmaster.pid"
        for _ in range(50):
            with contextlib.suppress(OSError, ValueError):
                return int(pidfile.read_text().split()[0])
            time.sleep(0.1)
        return 0

    def pids(self) -> list[int]:
        if not self._postmaster:
            return []
        return [self._postmaster, *children(self._postmaster)]

    def version(self) -> str:
        return self.cluster.psql("SHOW server_version")

    def store(self, label: str) -> Store:
        db = self.cluster.create_database(f"bench_{label.replace('-', '_')}")
        flags = self.cluster.flags(db)
        flags[flags.index("--aio-store-postgres-port") + 1] = str(self.port)
        return Store("postgres", flags, pg=self, database=db)

    def dsn(self, database: str) -> dict[str, object]:
        return {
            "host": self.cluster.host,
            "port": self.cluster.port,
            "user": "postgres",
            "database": database,
        }

    def reset_statements(self, store: Store) -> None:
        """Forget the statement statistics gathered so far (needs ``statements``)."""
        self.cluster.psql(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
            store.database,
        )

    def top_statements(self, store: Store, n: int) -> list[dict[str, Any]]:
        """The ``n`` statements of ``store``'s database with the most execution time since
        :meth:`reset_statements`: calls, total and mean execution ms, rows, and the text."""
        out = self.cluster.psql(
            "SELECT calls, total_exec_time, mean_exec_time, rows, "
            "regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            f"AND query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT {n}",
            store.database,
        )
        keys = ("calls", "total_ms", "mean_ms", "rows", "query")
        rows = [dict(zip(keys, line.split("|", 4), strict=True)) for line in out.splitlines()]
        for r in rows:
            for k in ("calls", "rows"):
                r[k] = int(r[k])
            for k in ("total_ms", "mean_ms"):
                r[k] = round(float(r[k]), 3)
        return rows

    def drop(self, store: Store) -> None:
        with contextlib.suppress(Exception):
            self.cluster.psql(f'DROP DATABASE IF EXISTS "{store.database}"')

    def close(self) -> None:
        if self._proxy is not None:
            self._proxy.terminate()
            self._proxy.wait(timeout=10)
        self.cluster.destroy()


def sqlite_store(workdir: Path, label: str) -> Store:
    path = workdir / f"{label}.db"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + suffix).unlink()
    return Store("sqlite", ["--aio-store-sqlite-path", str(path)], sqlite_path=path)


def remove_store(store: Store) -> None:
    if store.sqlite_path is not None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(store.sqlite_path) + suffix).unlink()
    elif store.pg is not None:
        store.pg.drop(store)


def migrate(store: Store, log: Path) -> None:
    """Create the schema (``resonate migrate apply``) without starting a server."""
    with open(log, "ab") as out:
        subprocess.run(
            [resonate_bin(), "migrate", "apply", *store.flags],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=120,
            cwd=log.parent,
        )


def resonate_server(store: Store, workdir: Path, label: str, extra: list[str]) -> Process:
    port = free_port()
    argv = [
        resonate_bin(),
        "serve",
        "--api-http-host",
        HOST,
        "--api-http-port",
        str(port),
        "--no-log-requests",
        "--log-level",
        "warning",
        *loopback_flags(port),
        *store.flags,
        *extra,
    ]
    return Process(argv, port, workdir / f"{label}.log", f"resonate server ({label})")


def ceiling_server(workdir: Path, front: str = "aiohttp", cpus: str = "") -> Process:
    port = free_port()
    argv = [sys.executable, "-m", "bench.ceiling", "--host", HOST, "--port", str(port)]
    argv += ["--front", front, *(["--cpus", cpus] if cpus else [])]
    return Process(argv, port, workdir / "ceiling.log", "ceiling server", cwd=ROOT)


# --- the machine ---------------------------------------------------------------------------


def git_commit() -> str:
    """The commit of the server under test, ``+dirty`` when the work tree has changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_info(pg_version: str | None) -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 2**20
                break
    import aiohttp

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git_commit(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "sqlite": sqlite3.sqlite_version,
        "postgres": pg_version,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def temp_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="resonate-bench-"))
