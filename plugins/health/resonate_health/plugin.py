"""``GET /healthz`` and ``/ready``: 200 while the store answers, 503 when it does not.

``GET /health`` is liveness: 200 whenever the process serves HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from resonate_server import Duration, Setting, hookimpl
from resonate_server.app import Server
from resonate_server.store import StoreError

log = logging.getLogger("resonate.health")


@hookimpl
def resonate_config_settings() -> list[Setting]:
    return [
        Setting(
            "health.timeout",
            Duration,
            "2s",
            "How long the store may take to answer a health check before it is 503.",
        )
    ]


@hookimpl
def resonate_routes(server: Server) -> list[tuple[str, str, Any]]:
    timeout: float = server.settings["health.timeout"]

    async def readiness(request: web.Request) -> web.Response:
        if not server.accepting:
            return web.json_response(
                {"status": "unavailable", "reason": "not accepting requests"}, status=503
            )
        try:
            await asyncio.wait_for(server.store.ping(), timeout)
        except (TimeoutError, StoreError, OSError) as e:
            reason = str(e) or "store did not answer in time"
            log.warning("health check failed: %s", reason)
            return web.json_response({"status": "unavailable", "reason": reason}, status=503)
        return web.json_response({"status": "ok", "store": server.backend.name})

    async def liveness(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    return [
        ("GET", "/healthz", readiness),
        ("GET", "/ready", readiness),
        ("GET", "/health", liveness),
    ]
