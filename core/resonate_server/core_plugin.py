"""The core's own settings, registered as an ordinary plugin."""

from __future__ import annotations

import os

import pluggy

from .config import Duration, Setting, Settings

hookimpl = pluggy.HookimplMarker("resonate")

LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


@hookimpl
def resonate_config_settings() -> list[Setting]:
    return [
        Setting("api.http.host", str, "0.0.0.0", "Address the API listens on."),
        Setting("api.http.port", int, 8001, "Port of the API (RPC, health, SSE).", minimum=0),
        Setting(
            "api.http.url",
            str,
            "",
            "URL workers use to reach this server (sent in execute messages); "
            "default http://localhost:<port>.",
        ),
        Setting(
            "api.http.timeout",
            Duration,
            "10s",
            "Graceful shutdown: how long in-flight work may take after SIGTERM.",
        ),
        Setting(
            "api.http.max_body_size",
            int,
            10 * 1024 * 1024,
            "Largest request body accepted, in bytes (larger gets 413).",
            minimum=1024,
        ),
        Setting(
            "debug",
            bool,
            False,
            "Enable debug.* operations and the resonate:debug_time request header.",
        ),
        Setting("log.level", str, "info", "Log level.", choices=LOG_LEVELS),
        Setting(
            "log.format",
            str,
            "text",
            "Log format: text for people, json for collectors.",
            choices=("text", "json"),
        ),
        Setting(
            "log.requests",
            bool,
            True,
            "Log one line per RPC request (kind, status, duration, request id) at info.",
        ),
        Setting(
            "tasks.retry_timeout",
            Duration,
            "30s",
            "How long a pending task waits before its execute message is sent again.",
        ),
        Setting(
            "timeouts.poll_interval",
            Duration,
            "1s",
            "How often promise timeouts, task leases and retries are processed.",
        ),
        Setting(
            "messages.poll_interval",
            Duration,
            "100ms",
            "Longest wait before queued messages are delivered (new ones go at once).",
        ),
        Setting(
            "messages.batch_size",
            int,
            100,
            "Messages of each kind taken from the outbox per delivery round.",
            minimum=1,
        ),
        Setting(
            "event_loop",
            str,
            "auto",
            "The event loop: uvloop when it is installed (auto), uvloop (refuse to start "
            "without it), or Python's asyncio loop.",
            choices=EVENT_LOOPS,
        ),
        Setting(
            "cpu_affinity",
            str,
            "",
            "Run the server on these CPUs only, e.g. 1 or 0,2-3 (empty: wherever the OS puts "
            "it). Its Python work uses one core at a time; pinned to one CPU, its threads hand "
            "work to each other more cheaply (docs/operations.md).",
        ),
        # The seed's PostgreSQL surface; the store itself comes from the postgres plugin.
        Setting("aio.store.postgres.enable", bool, False, "Use PostgreSQL as the store."),
        Setting(
            "aio.store.postgres.host",
            str,
            "localhost",
            "PostgreSQL host, or a directory holding its Unix socket.",
        ),
        Setting("aio.store.postgres.port", int, 5432, "PostgreSQL port.", minimum=1),
        Setting("aio.store.postgres.database", str, "resonate", "PostgreSQL database."),
        Setting("aio.store.postgres.username", str, "", "PostgreSQL user."),
        Setting("aio.store.postgres.password", str, "", "PostgreSQL password.", secret=True),
        Setting(
            "aio.store.postgres.query",
            str,
            "",
            "Extra connection parameters as a query string, e.g. sslmode=require.",
        ),
    ]


@hookimpl
def resonate_config_validate(settings: Settings) -> list[str]:
    errors = []
    if settings["tasks.retry_timeout"] <= 0:
        errors.append("'tasks.retry_timeout' must be greater than 0")
    if settings["timeouts.poll_interval"] <= 0:
        errors.append("'timeouts.poll_interval' must be greater than 0")
    try:
        cpus_setting(settings)
    except ValueError as e:
        errors.append(f"'cpu_affinity': {e}")
    return errors


def parse_cpus(text: str) -> set[int]:
    """CPU numbers from a list like ``0,2-3``; ValueError when malformed."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise ValueError(f"expected CPU numbers like 1 or 0,2-3, got {text!r}")
        low, high = int(first), int(last) if sep else int(first)
        if high < low:
            raise ValueError(f"the range {part.strip()!r} is empty")
        cpus.update(range(low, high + 1))
    return cpus


def cpus_setting(settings: Settings) -> set[int] | None:
    """The CPUs ``cpu_affinity`` names (None when empty); ValueError when the machine lacks
    one of them."""
    text = settings["cpu_affinity"].strip()
    if not text:
        return None
    cpus = parse_cpus(text)
    count = os.cpu_count() or 1
    missing = sorted(c for c in cpus if c >= count)
    if missing:
        raise ValueError(f"CPU {missing[0]} does not exist (this machine has CPUs 0-{count - 1})")
    return cpus
