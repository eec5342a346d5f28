"""Hooks of the metrics plugin: ``GET /metrics`` on a listener of its own (default ``:9090``).

At startup the plugin counts the store's promises, tasks and schedules once, then keeps those
gauges current from ``resonate_state_changes``; requests and deliveries are counted by their
hooks. Scrapes never touch the store. ``metrics.port = 0`` turns the plugin off entirely.

The observation hooks receive no ``server``: each server's :class:`ServerMetrics` is found by
the event loop it runs on, so several servers in one process (each on its own loop) keep
separate registries.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from resonate_server import Setting, __version__, hookimpl
from resonate_server.app import Server, StartupError
from resonate_server.config import Settings

from .metrics import ServerMetrics

log = logging.getLogger("resonate.metrics")

STATE_KEY = "metrics"
# The classic text format, which every Prometheus (and the upstream server) speaks.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_failed: set[str] = set()  # hooks that raised once already (logged once, then quiet)


class MetricsListenError(StartupError):
    """The metrics port cannot be bound; the core turns this into a one-line exit."""


def _hook_failed(name: str, error: Exception) -> None:
    if name not in _failed:
        _failed.add(name)
        log.warning("metrics hook %s failed (not counted): %r", name, error)


@hookimpl
def resonate_config_settings() -> list[Setting]:
    return [
        Setting(
            "metrics.port",
            int,
            9090,
            "Port of the Prometheus listener (GET /metrics); 0 disables metrics.",
            minimum=0,
        ),
        Setting("metrics.host", str, "0.0.0.0", "Address the Prometheus listener binds."),
    ]


@hookimpl
def resonate_config_validate(settings: Settings) -> list[str]:
    port = settings["metrics.port"]
    if port > 65535:
        return [f"'metrics.port' must be at most 65535, got {port}"]
    if port and port == settings["api.http.port"]:
        return [f"'metrics.port' and 'api.http.port' are both {port}; give metrics its own port"]
    return []


@hookimpl
def resonate_startup(server: Server) -> Any:
    port: int = server.settings["metrics.port"]
    if not port:
        log.info("metrics disabled (metrics.port = 0)")
        return None
    return _start(server, server.settings["metrics.host"], port)


async def _start(server: Server, host: str, port: int) -> None:
    metrics = ServerMetrics(
        lambda: server.in_flight,
        __version__,
        server.backend.name,
        store_stats=server.store.stats,
    )
    metrics.load_counts(await server.store.transact(lambda tx: tx.count_states()))
    runner = web.AppRunner(_metrics_app(metrics), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=1.0)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        reason = os.strerror(e.errno).lower() if e.errno else str(e)
        raise MetricsListenError(
            f"metrics cannot listen on {host}:{port}: {reason} "
            "(set metrics.port to a free port, or 0 to disable metrics)"
        ) from None
    server.plugin_state[STATE_KEY] = (metrics, runner)
    log.info("metrics on http://%s:%d/metrics", host, port)


def _metrics_app(metrics: ServerMetrics) -> web.Application:
    async def scrape(request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(metrics.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE
        resp.enable_compression()
        return resp

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="resonate-server metrics: GET /metrics\n")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/", index)
    return app


@hookimpl
def resonate_shutdown(server: Server) -> Any:
    entry = server.plugin_state.pop(STATE_KEY, None)
    if entry is None:
        return None
    _, runner = entry

    async def stop() -> None:
        await runner.cleanup()

    return stop()


def _metrics(server: Server) -> ServerMetrics | None:
    entry = server.plugin_state.get(STATE_KEY)
    return entry[0] if entry is not None else None


@hookimpl
def resonate_request_finished(server: Server, kind: str, status: int, duration: float) -> None:
    m = _metrics(server)
    if m is None:
        return
    try:
        m.observe_request(kind, status, duration)
        if kind == "debug.reset" and status == 200:
            m.clear_counts()
    except Exception as e:
        _hook_failed("resonate_request_finished", e)


@hookimpl
def resonate_state_changes(server: Server, changes: list[Any]) -> None:
    m = _metrics(server)
    if m is None:
        return
    try:
        m.observe_changes(changes)
    except Exception as e:
        _hook_failed("resonate_state_changes", e)


@hookimpl
def resonate_message_delivered(server: Server, kind: str, address: str, outcome: str) -> None:
    m = _metrics(server)
    if m is None:
        return
    try:
        m.observe_delivery(kind, address, outcome)
    except Exception as e:
        _hook_failed("resonate_message_delivered", e)
