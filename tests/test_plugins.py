"""The plugin manager as an operator sees it, and the hook catalogue's meta-tests."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from resonate_server import hookspecs

from .conftest import ROOT, resonate

HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("resonate_"))


def test_every_hookspec_has_a_docstring() -> None:
    for name in HOOKS:
        doc = getattr(hookspecs, name).__doc__
        assert doc and len(doc.strip()) > 40, f"hook spec {name} needs a contract docstring"


def test_every_hookspec_is_documented() -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    documented = set(re.findall(r"^### `(resonate_\w+)", docs, re.MULTILINE))
    assert documented == set(HOOKS), (
        f"undocumented: {set(HOOKS) - documented}, stale: {documented - set(HOOKS)}"
    )


def test_every_hookspec_has_a_test() -> None:
    tree = ast.parse((Path(__file__).parent / "test_plugin_hooks.py").read_text())
    tested = {
        n.name[len("test_hook_") :]
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef) and n.name.startswith("test_hook_")
    }
    assert tested == set(HOOKS), f"untested: {set(HOOKS) - tested}, stale: {tested - set(HOOKS)}"


def test_plugins_command_lists_name_version_and_hooks() -> None:
    out = resonate("plugins")
    assert out.returncode == 0, out.stderr
    lines = {line.split(" ", 1)[0]: line for line in out.stdout.splitlines()}
    assert set(lines) == {
        "core",
        "health",
        "metrics",
        "store_postgres",
        "store_sqlite",
        "transport_http",
        "transport_poll",
    }
    assert lines["store_sqlite"].startswith("store_sqlite (resonate-store-sqlite 0.1.0): ")
    assert "resonate_routes" in lines["health"]
    listed = json.loads(resonate("plugins", "--json").stdout)
    assert {p["name"]: p["distribution"] for p in listed} == {
        "core": "resonate-server-core",
        "health": "resonate-health",
        "metrics": "resonate-metrics",
        "store_sqlite": "resonate-store-sqlite",
        "store_postgres": "resonate-store-postgres",
        "transport_http": "resonate-transport-http",
        "transport_poll": "resonate-transport-poll",
    }


def test_load_plugins_filter_limits_what_loads() -> None:
    out = resonate("plugins", env={"RESONATE_LOAD_PLUGINS": "store_sqlite"})
    assert [line.split(" ", 1)[0] for line in out.stdout.splitlines()] == ["core", "store_sqlite"]
    out = resonate("plugins", env={"RESONATE_LOAD_PLUGINS": ""})
    assert [line.split(" ", 1)[0] for line in out.stdout.splitlines()] == ["core"]


def test_load_plugins_filter_names_a_missing_plugin() -> None:
    out = resonate("plugins", env={"RESONATE_LOAD_PLUGINS": "store_sqlite,nope"})
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "resonate: error: RESONATE_LOAD_PLUGINS names nope, which is not installed "
        "(installed: health, metrics, store_postgres, store_sqlite, transport_http, transport_poll)"
    )


def test_postgres_enabled_without_its_plugin_fails_fast(workdir: Path) -> None:
    without = {"RESONATE_LOAD_PLUGINS": "store_sqlite,health,transport_poll,transport_http"}
    out = resonate(
        "serve",
        "--aio-store-postgres-enable",
        "--aio-store-postgres-host",
        "localhost",
        "--aio-store-postgres-database",
        "resonate",
        "--aio-store-postgres-username",
        "resonate",
        "--aio-store-postgres-password",
        "secret",
        cwd=workdir,
        env=without,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "resonate: error: store 'postgres' is not installed: "
        "pip install 'resonate-server[postgres]'"
    )
    assert "secret" not in out.stderr + out.stdout


def test_settings_reference_matches_the_code() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    documented = docs.split("<!-- settings-reference:begin -->\n", 1)[1].split(
        "<!-- settings-reference:end -->", 1
    )[0]
    out = resonate("config", "--reference")
    assert out.returncode == 0, out.stderr
    assert documented == out.stdout, "regenerate with: resonate config --reference"
