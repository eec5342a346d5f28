"""Fixtures of the SDK interop suite (see docs/interop.md).

``interop`` gives each test a fresh server process (short timers, its own SQLite database) and
an :class:`~tests.interop.harness.Interop` that starts SDK processes against it. When a test
fails, the server log, every SDK process log and every record file are attached to the report.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Interop, ensure_sdks

# Short protocol timers so no scenario waits on a default 30 s retry or a 1 s poll:
# a pending task's execute is re-sent after 2 s, timeouts and leases are processed every
# 100 ms, and a graceful shutdown waits at most 2 s for open requests and SSE streams.
SERVER_FLAGS = (
    "--tasks-retry-timeout",
    "2s",
    "--timeouts-poll-interval",
    "100ms",
    "--api-http-timeout",
    "2s",
)

SDKS = ("py", "ts")


@pytest.fixture(scope="session")
def sdks() -> None:
    """Both official SDKs, installed (or installed now, outside CI); never a skip."""
    problem = ""
    try:
        ensure_sdks()
    except RuntimeError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.fixture(params=SDKS)
def sdk(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def interop(
    request: pytest.FixtureRequest, sdks: None, sdk: str, make_server: Any, workdir: Path
) -> Iterator[Interop]:
    h = Interop(sdk, lambda **kw: make_server(*SERVER_FLAGS, **kw), workdir)
    yield h
    h.close()
    keep = os.environ.get("INTEROP_KEEP_LOGS")
    if keep:  # copy every log and record file of this test, for debugging
        dest = Path(keep) / request.node.name.replace("/", "_")
        shutil.copytree(workdir, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.db*"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    h = getattr(item, "funcargs", {}).get("interop")
    if isinstance(h, Interop):
        for name, text in h.logs():
            report.sections.append((f"interop {name}", text or "(empty)"))
