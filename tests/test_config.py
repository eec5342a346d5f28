"""Configuration: the seed's surface parses, precedence is defaults < file < env < flags,
and every mistake is a one-line error that names the key and where it came from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import resonate

SEED_YAML = """\
aio:
  store:
    postgres:
      enable: true
      host: "postgres.example.com"
      database: "resonate"
      username: "resonate"
      password: "secret"
      query: "sslmode=require"
"""


def config(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    out = resonate("config", *args, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr
    values = {}
    for line in out.stdout.splitlines():
        key, rest = line.split(" = ", 1)
        shown, source = rest.rsplit("  (", 1)
        values[key] = (shown, source.rstrip(")"))
    return values


def error(*args: str, cwd: Path, env: dict[str, str] | None = None, cmd: str = "serve") -> str:
    out = resonate(cmd, *args, cwd=cwd, env=env)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    return lines[-1]


def test_defaults(workdir: Path) -> None:
    v = config(cwd=workdir)
    assert v["api.http.port"] == ("8001", "default")
    assert v["aio.store.sqlite.path"] == ("'resonate.db'", "default")
    assert v["api.http.timeout"] == ("10s", "default")
    assert v["aio.store.postgres.enable"] == ("false", "default")


def test_seed_yaml_block_parses(workdir: Path) -> None:
    (workdir / "resonate.yaml").write_text(SEED_YAML)
    v = config(cwd=workdir)
    where = f"config file {workdir / 'resonate.yaml'}"
    assert v["aio.store.postgres.enable"] == ("true", where)
    assert v["aio.store.postgres.host"] == ("'postgres.example.com'", where)
    assert v["aio.store.postgres.database"] == ("'resonate'", where)
    assert v["aio.store.postgres.username"] == ("'resonate'", where)
    assert v["aio.store.postgres.password"] == ("********", where)
    assert v["aio.store.postgres.query"] == ("'sslmode=require'", where)


def test_seed_flags_parse(workdir: Path) -> None:
    v = config(
        "--aio-store-postgres-enable",
        "--aio-store-postgres-host",
        "localhost",
        "--aio-store-postgres-database",
        "resonate",
        "--aio-store-postgres-username",
        "resonate",
        "--aio-store-postgres-password",
        "secret",
        "--aio-store-postgres-port",
        "5433",
        "--aio-store-postgres-query",
        "sslmode=disable",
        cwd=workdir,
    )
    assert v["aio.store.postgres.enable"] == ("true", "flag --aio-store-postgres-enable")
    assert v["aio.store.postgres.host"] == ("'localhost'", "flag --aio-store-postgres-host")
    assert v["aio.store.postgres.port"] == ("5433", "flag --aio-store-postgres-port")
    assert v["aio.store.postgres.password"][0] == "********"
    assert v["aio.store.postgres.query"] == ("'sslmode=disable'", "flag --aio-store-postgres-query")


def test_explicit_config_file(workdir: Path) -> None:
    (workdir / "resonate.yaml").write_text("api:\n  http:\n    port: 7000\n")
    other = workdir / "other.yaml"
    other.write_text("api:\n  http:\n    port: 7001\n")
    assert config(cwd=workdir)["api.http.port"][0] == "7000"
    assert config("--config", str(other), cwd=workdir)["api.http.port"] == (
        "7001",
        f"config file {other}",
    )


def test_precedence_file_env_flag(workdir: Path) -> None:
    (workdir / "resonate.yaml").write_text(
        "api:\n  http:\n    port: 7000\n    timeout: 3s\naio:\n  store:\n    sqlite:\n"
        "      path: file.db\n"
    )
    env = {"RESONATE_API__HTTP__PORT": "7100", "RESONATE_AIO__STORE__SQLITE__PATH": "env.db"}
    v = config("--api-http-port", "7200", cwd=workdir, env=env)
    assert v["api.http.port"] == ("7200", "flag --api-http-port")
    assert v["aio.store.sqlite.path"] == (
        "'env.db'",
        "environment variable RESONATE_AIO__STORE__SQLITE__PATH",
    )
    assert v["api.http.timeout"] == ("3s", f"config file {workdir / 'resonate.yaml'}")


def test_sdk_environment_is_not_server_config(workdir: Path) -> None:
    env = {
        "RESONATE_URL": "http://localhost:8001",
        "RESONATE_TOKEN": "x",
        "RESONATE_HOST": "localhost",
        "RESONATE_PORT": "8001",
    }
    assert config(cwd=workdir, env=env)["api.http.port"] == ("8001", "default")


def test_unknown_flag(workdir: Path) -> None:
    msg = error("--aio-store-postgres-hots", "x", cwd=workdir)
    assert msg.startswith("Error: No such option '--aio-store-postgres-hots'.")
    assert "'--aio-store-postgres-host'" in msg


def test_unknown_yaml_key(workdir: Path) -> None:
    (workdir / "resonate.yaml").write_text("api:\n  http:\n    prot: 7000\n")
    assert error(cwd=workdir) == (
        f"resonate: error: unknown setting 'api.http.prot' in config file "
        f"{workdir / 'resonate.yaml'} (did you mean 'api.http.port'?)"
    )


def test_unknown_env_key(workdir: Path) -> None:
    assert error(cwd=workdir, env={"RESONATE_API__HTTP__PROT": "1"}) == (
        "resonate: error: unknown setting 'api.http.prot' in environment variable "
        "RESONATE_API__HTTP__PROT (did you mean 'api.http.port'?)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--api-http-port", "eighty"],
            "invalid value for 'api.http.port' from flag --api-http-port: expected an integer, "
            "got 'eighty'",
        ),
        (
            ["--api-http-timeout", "10"],
            "invalid value for 'api.http.timeout' from flag --api-http-timeout: expected a "
            "duration such as 10s, 500ms or 1m30s, got '10'",
        ),
        (
            ["--log-level", "loud"],
            "invalid value for 'log.level' from flag --log-level: expected one of debug, info, "
            "warning, error, got 'loud'",
        ),
        (
            ["--api-http-port", "-1"],
            "invalid value for 'api.http.port' from flag --api-http-port: must be at least 0, "
            "got -1",
        ),
    ],
)
def test_bad_values(workdir: Path, args: list[str], message: str) -> None:
    assert error(*args, cwd=workdir) == f"resonate: error: {message}"


def test_bad_secret_value_is_not_echoed(workdir: Path) -> None:
    (workdir / "resonate.yaml").write_text(
        "aio:\n  store:\n    postgres:\n      password: [hunter2]\n"
    )
    msg = error(cwd=workdir)
    assert msg.startswith("resonate: error: invalid value for 'aio.store.postgres.password'")
    assert "hunter2" not in msg


def test_bad_yaml(workdir: Path) -> None:
    (workdir / "resonate.yaml").write_text("api: [unclosed\n")
    assert error(cwd=workdir).startswith(
        f"resonate: error: cannot read config file {workdir / 'resonate.yaml'}"
    )


def test_missing_config_file(workdir: Path) -> None:
    assert error("--config", "nope.yaml", cwd=workdir) == (
        "resonate: error: config file not found: nope.yaml"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x", "expected CPU numbers like 1 or 0,2-3, got 'x'"),
        ("1-0", "the range '1-0' is empty"),
        ("4096", "CPU 4096 does not exist (this machine has CPUs 0-"),
    ],
)
def test_bad_cpu_affinity(workdir: Path, value: str, message: str) -> None:
    assert error("--cpu-affinity", value, cwd=workdir).startswith(
        f"resonate: error: 'cpu_affinity': {message}"
    )


def test_cpu_affinity_pins_every_thread(make_server: Any) -> None:
    cpu = min(os.sched_getaffinity(0))
    s = make_server("--cpu-affinity", str(cpu))
    assert s.client().get("/healthz").status == 200
    assert s.proc is not None
    for task in Path(f"/proc/{s.proc.pid}/task").iterdir():
        allowed = [
            line
            for line in (task / "status").read_text().splitlines()
            if "Cpus_allowed_list" in line
        ]
        assert allowed == [f"Cpus_allowed_list:\t{cpu}"], task
    assert f"running on CPUs {cpu}" in s.log()


def _without_uvloop(workdir: Path) -> dict[str, str]:
    """An environment in which ``import uvloop`` fails, as on a machine without it."""
    shadow = workdir / "no-uvloop"
    (shadow / "uvloop").mkdir(parents=True)
    (shadow / "uvloop" / "__init__.py").write_text("raise ImportError('no uvloop here')\n")
    return {"PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_event_loop_is_uvloop_unless_asked_otherwise(make_server: Any) -> None:
    """``event_loop`` auto serves on uvloop (a dependency where it builds); asyncio on request."""
    default = make_server()
    assert default.client().get("/healthz").status == 200
    assert "event loop: uvloop)" in default.log()
    plain = make_server("--event-loop", "asyncio")
    assert plain.client().get("/healthz").status == 200
    assert "event loop: asyncio)" in plain.log()


def test_without_uvloop_auto_falls_back_and_uvloop_refuses(make_server: Any, workdir: Path) -> None:
    env = _without_uvloop(workdir)
    s = make_server(env=env)
    assert s.client().get("/healthz").status == 200
    assert "event loop: asyncio)" in s.log()
    assert error("--event-loop", "uvloop", cwd=workdir, env=env) == (
        "resonate: error: 'event_loop': uvloop is not installed (pip install uvloop, or use auto)"
    )
