"""A throwaway PostgreSQL 15 cluster for tests: temp directory, free port, loopback only.

``initdb`` and ``postgres`` refuse to run as root, so as root they run as the ``postgres``
system account. A missing PostgreSQL is an error, never a skip.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

PG_BIN = Path(os.environ.get("RESONATE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """A throwaway cluster; ``settings`` are extra server settings (``-c name=value``)."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.settings = dict(settings or {})
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not (PG_BIN / tool).exists():
                raise RuntimeError(
                    f"PostgreSQL binaries not found in {PG_BIN} (need {tool}); install "
                    "postgresql-15 or set RESONATE_TEST_PG_BIN"
                )
        if shutil.which("psql") is None:
            raise RuntimeError("psql not found: install postgresql-client")
        self.dir = Path(tempfile.mkdtemp(prefix="resonate-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            os.chmod(self.dir, 0o777)
            shutil.chown(self.dir, user=SUPERUSER)

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        full = ["runuser", "-u", SUPERUSER, "--", *cmd] if self._as_root else list(cmd)
        return subprocess.run(full, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> PostgresCluster:
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.pg_ctl("start")
        return self

    def pg_ctl(self, action: str) -> None:
        args = [
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.dir / "postgres.log"),
        ]
        if action in ("start", "restart"):
            opts = (
                f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} "
                "-c fsync=on -c synchronous_commit=on -c max_connections=200"
            ) + "".join(f" -c {shlex.quote(f'{k}={v}')}" for k, v in self.settings.items())
            args += ["-o", opts]
        if action == "stop":
            args += ["-m", "fast"]
        self._run(*args, action)

    def stop(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            "immediate",
            "-w",
            "stop",
            check=False,
        )

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                "psql",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def create_database(self, prefix: str = "resonate") -> str:
        name = f"{prefix}_{int(time.time() * 1000) % 10**9}_{os.getpid()}_{_free_port()}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def flags(self, database: str) -> list[str]:
        """``resonate serve`` flags for this cluster, as the seed writes them."""
        return [
            "--aio-store-postgres-enable",
            "--aio-store-postgres-host",
            self.host,
            "--aio-store-postgres-port",
            str(self.port),
            "--aio-store-postgres-database",
            database,
            "--aio-store-postgres-username",
            SUPERUSER,
        ]
