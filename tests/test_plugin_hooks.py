"""One test per hook spec (the meta-test in test_plugins.py enforces the naming).

Most use the third-party plugin in tests/plugins/resonate_example, installed with pip into a
throwaway directory and found by the server through its real ``resonate.plugins`` entry point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, Client, ServerProcess, resonate, wait_for

EXAMPLE = ROOT / "tests" / "plugins" / "resonate_example"
T_FAR = 2**62


@pytest.fixture(scope="session")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment in which the example plugin is installed (PYTHONPATH to a pip --target)."""
    target = tmp_path_factory.mktemp("example-plugin")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
    )
    assert list(target.glob("resonate_example-*.dist-info/entry_points.txt"))
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


@pytest.fixture
def example_server(make_server: Any, example_env: dict[str, str]) -> Iterator[ServerProcess]:
    yield make_server(env=example_env)


def stats(client: Client) -> dict[str, Any]:
    reply = client.get("/example/stats")
    assert reply.status == 200, reply
    return reply.body  # type: ignore[no-any-return]


def test_hook_resonate_store_backends(workdir: Path) -> None:
    """The SQLite plugin provides the default store; without it no store is available."""
    listed = json.loads(resonate("plugins", "--json").stdout)
    sqlite = next(p for p in listed if p["name"] == "store_sqlite")
    assert "resonate_store_backends" in sqlite["hooks"]
    out = resonate(
        "serve", "--api-http-port", "0", env={"RESONATE_LOAD_PLUGINS": "health"}, cwd=workdir
    )
    assert out.returncode != 0
    assert "store 'sqlite' is not installed" in out.stderr
    assert "Traceback" not in out.stderr


def test_hook_resonate_routes(example_server: ServerProcess) -> None:
    """A plugin route is served on the API listener next to the core's routes."""
    c = example_server.client()
    assert stats(c)["greeting"] == "hello"
    assert c.get("/healthz").status == 200


def test_hook_resonate_transports(example_server: ServerProcess, make_server: Any) -> None:
    """A plugin transport makes its scheme routable and receives the outbox messages for it."""
    c = example_server.client()
    created = c.call(
        "promise.create",
        {"id": "ex1", "timeoutAt": T_FAR, "tags": {"resonate:target": "example://sink"}},
    )
    assert created.status == 200, created
    received = wait_for(lambda: stats(c)["received"])
    assert received[0]["address"] == "example://sink"
    assert received[0]["message"]["kind"] == "execute"
    assert received[0]["message"]["data"] == {"task": {"id": "ex1", "version": 0}}
    assert received[0]["message"]["head"]["serverUrl"].startswith("http://")

    plain = make_server(
        env={"RESONATE_LOAD_PLUGINS": "store_sqlite,store_postgres,health"}
    ).client()
    rejected = plain.call(
        "promise.create",
        {"id": "ex1", "timeoutAt": T_FAR, "tags": {"resonate:target": "example://sink"}},
    )
    assert rejected.status == 400
    assert rejected.data == "Invalid resonate:target address"


def test_hook_resonate_request_finished(example_server: ServerProcess) -> None:
    """Every RPC request is observed with its kind, status and duration."""
    c = example_server.client()
    c.call("promise.get", {"id": "missing"})
    c.call("promise.create", {"id": "p", "timeoutAt": T_FAR})
    seen = stats(c)["requests"]
    assert [(r["kind"], r["status"]) for r in seen] == [
        ("promise.get", 404),
        ("promise.create", 200),
    ]
    assert all(r["duration"] >= 0 for r in seen)


def test_a_failing_observer_is_dropped_not_fatal(example_server: ServerProcess) -> None:
    """An observer that raises is logged once and skipped; requests are unaffected."""
    c = example_server.client()
    assert c.call("example.explode", {}).status == 400
    assert c.call("promise.get", {"id": "x"}).status == 404
    assert [r["kind"] for r in stats(c)["requests"]] == []
    assert example_server.log().count("ignoring it from now on") == 1
    assert "RuntimeError: an observer that fails" in example_server.log()


def test_hook_resonate_state_changes(example_server: ServerProcess) -> None:
    """Creations and settlements are reported once committed, promise and task alike."""
    c = example_server.client()
    c.call(
        "promise.create",
        {"id": "sc", "timeoutAt": T_FAR, "tags": {"resonate:target": "poll://any@g"}},
    )
    c.call("promise.settle", {"id": "sc", "state": "resolved"})
    c.call("promise.settle", {"id": "sc", "state": "rejected"})
    assert stats(c)["changes"] == [
        {"entity": "promise", "id": "sc", "before": None, "after": "pending"},
        {"entity": "task", "id": "sc", "before": None, "after": "pending"},
        {"entity": "promise", "id": "sc", "before": "pending", "after": "resolved"},
        {"entity": "task", "id": "sc", "before": "pending", "after": "fulfilled"},
    ]


def test_hook_resonate_message_delivered(example_server: ServerProcess) -> None:
    """Each claimed message is reported with its outcome; no transport means dropped."""
    c = example_server.client()
    c.call(
        "promise.create",
        {"id": "d1", "timeoutAt": T_FAR, "tags": {"resonate:target": "example://a"}},
    )
    c.call(
        "promise.create",
        {"id": "d2", "timeoutAt": T_FAR, "tags": {"resonate:target": "poll://any@nobody"}},
    )
    deliveries = wait_for(lambda: len(stats(c)["deliveries"]) >= 2 and stats(c)["deliveries"])
    assert sorted((d["address"], d["kind"], d["outcome"]) for d in deliveries) == [
        ("example://a", "execute", "success"),
        ("poll://any@nobody", "execute", "dropped"),
    ]


def test_hook_resonate_config_settings(example_env: dict[str, str], workdir: Path) -> None:
    """A plugin's keys get a flag, an environment variable and a YAML place."""
    out = resonate("config", "--example-greeting", "hi", env=example_env, cwd=workdir)
    assert "example.greeting = 'hi'  (flag --example-greeting)" in out.stdout, out.stderr
    out = resonate("config", env={**example_env, "RESONATE_EXAMPLE__GREETING": "hey"}, cwd=workdir)
    assert (
        "example.greeting = 'hey'  (environment variable RESONATE_EXAMPLE__GREETING)" in out.stdout
    ), out.stderr
    assert "--example-greeting" in resonate("serve", "--help", env=example_env).stdout


def test_hook_resonate_config_validate(example_env: dict[str, str], workdir: Path) -> None:
    """A plugin validator's message stops the server before it starts."""
    out = resonate("serve", "--example-greeting", "forbidden", env=example_env, cwd=workdir)
    assert out.returncode == 2
    assert out.stderr.strip() == "resonate: error: 'example.greeting' must not be 'forbidden'"


def test_hook_resonate_cli_commands(example_env: dict[str, str]) -> None:
    """A plugin adds a subcommand to `resonate`."""
    out = resonate("example-hello", env=example_env)
    assert out.returncode == 0
    assert out.stdout.strip() == "hello from the example plugin"
    assert "example-hello" not in resonate("--help").stdout


def test_hook_resonate_startup(example_server: ServerProcess) -> None:
    """Startup hooks (here a coroutine) ran before the server accepted requests."""
    assert stats(example_server.client())["started"] is True


def test_hook_resonate_shutdown(
    make_server: Any, example_env: dict[str, str], workdir: Path
) -> None:
    """Shutdown hooks run during a graceful SIGTERM shutdown."""
    marker = workdir / "stopped.txt"
    s = make_server("--example-marker", str(marker), env=example_env)
    s.client().call("promise.get", {"id": "x"})
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert marker.read_text() == "stopped after 1 requests"


def test_a_hanging_shutdown_hook_cannot_hold_the_server(
    make_server: Any, example_env: dict[str, str], workdir: Path
) -> None:
    """Shutdown stays within api.http.timeout even when a plugin's shutdown hook never ends."""
    marker = workdir / "stopped.txt"
    s = make_server(
        "--example-marker",
        str(marker),
        "--example-shutdown-delay",
        "60",
        "--api-http-timeout",
        "1s",
        env=example_env,
    )
    started = time.monotonic()
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert time.monotonic() - started < 10
    assert not marker.exists()
    assert "did not stop within the shutdown timeout" in s.log()
