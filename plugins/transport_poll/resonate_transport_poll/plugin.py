"""Hooks of the poll transport: ``GET /poll/{group}/{id}`` streams and ``poll://`` delivery.

The route and the transport share one :class:`~resonate_transport_poll.hub.Hub` through
``server.plugin_state["poll"]``: the route registers streams in it, the transport routes
outbox messages to them (docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import Any

from aiohttp import web
from resonate_server import Duration, Setting, hookimpl
from resonate_server.addresses import Address
from resonate_server.app import Server
from resonate_server.config import Settings
from resonate_server.transport import Transport

from .hub import PING, Connection, Hub

log = logging.getLogger("resonate.transport.poll")

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # ask reverse proxies (nginx) not to buffer the stream
}
MIN_KEEPALIVE = 0.1
MIN_MAX_AGE = 1.0


@hookimpl
def resonate_config_settings() -> list[Setting]:
    return [
        Setting(
            "transports.poll.enable",
            bool,
            True,
            "Deliver poll:// messages to SSE streams (when off they are dropped; /poll stays).",
        ),
        Setting(
            "transports.poll.buffer_size",
            int,
            100,
            "Messages queued per stream; beyond it new messages for that stream are dropped.",
            minimum=1,
        ),
        Setting(
            "transports.poll.max_connections",
            int,
            1000,
            "Open streams allowed in total; the next one gets 503.",
            minimum=1,
        ),
        Setting(
            "transports.poll.keepalive",
            Duration,
            "15s",
            "Send an SSE comment on an idle stream this often (0 = never).",
            minimum=0,
        ),
        Setting(
            "transports.poll.max_age",
            Duration,
            "4m",
            "End each stream after about this long so the client reconnects (0 = never).",
            minimum=0,
        ),
    ]


@hookimpl
def resonate_config_validate(settings: Settings) -> list[str]:
    errors = []
    keepalive = settings["transports.poll.keepalive"]
    if 0 < keepalive < MIN_KEEPALIVE:
        errors.append("'transports.poll.keepalive' must be 0 (off) or at least 100ms")
    max_age = settings["transports.poll.max_age"]
    if 0 < max_age < MIN_MAX_AGE:
        errors.append("'transports.poll.max_age' must be 0 (off) or at least 1s")
    return errors


def hub_of(server: Server) -> Hub:
    """The server's one hub, created on first use."""
    hub = server.plugin_state.get("poll")
    if hub is None:
        hub = Hub(
            server.settings["transports.poll.buffer_size"],
            server.settings["transports.poll.max_connections"],
        )
        server.plugin_state["poll"] = hub
    assert isinstance(hub, Hub)
    return hub


class PollTransport(Transport):
    """Delivers ``poll://`` messages to the hub's streams; ``send`` never waits."""

    name = "poll"
    schemes = frozenset({"poll"})

    def __init__(self, hub: Hub, enable: bool) -> None:
        self.hub = hub
        self.enable = enable

    async def send(self, address: Address, message: dict[str, Any]) -> bool:
        """True when the message was queued on a live stream, False when it was dropped."""
        if not self.enable:
            log.info(
                "poll transport disabled; %s message for %s dropped",
                message.get("kind"),
                address.raw,
            )
            return False
        return self.hub.send(address, message)

    async def stop(self) -> None:
        await self.hub.close()


@hookimpl
def resonate_transports(server: Server) -> list[Transport]:
    return [PollTransport(hub_of(server), server.settings["transports.poll.enable"])]


async def pump(
    hub: Hub, conn: Connection, resp: web.StreamResponse, keepalive: float, max_age: float
) -> None:
    """Write ``conn``'s frames to ``resp`` until the connection is closed.

    An idle stream gets a comment every ``keepalive`` seconds (0: never), which also finds
    peers that went away. After ``max_age`` seconds (0: never; jittered down by up to 20% so
    reconnects spread out) the connection leaves the hub, its queued frames are flushed and the
    stream ends. Raises ConnectionError when the peer is gone.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + max_age * random.uniform(0.8, 1.0) if max_age > 0 else math.inf
    next_ping = loop.time() + keepalive if keepalive > 0 else math.inf
    while True:
        frames = conn.take()
        if frames:
            await resp.write(b"".join(frames))
            if keepalive > 0:
                next_ping = loop.time() + keepalive
            continue
        if conn.closed:
            return
        now = loop.time()
        if now >= end:
            hub.unregister(conn)  # no new frames; flush the rest on the next turn
            continue
        if now >= next_ping:
            await resp.write(PING)
            next_ping = now + keepalive
            continue
        wake = min(end, next_ping)
        await conn.wait(None if wake == math.inf else wake - now)


@hookimpl
def resonate_routes(server: Server) -> list[tuple[str, str, Any]]:
    hub = hub_of(server)
    keepalive: float = server.settings["transports.poll.keepalive"]
    max_age: float = server.settings["transports.poll.max_age"]

    async def stream(request: web.Request) -> web.StreamResponse:
        """``GET /poll/{group}/{id}``: an SSE stream of the messages routed to this process."""
        if not server.accepting or hub.closed:
            return web.Response(status=503, text="Server is shutting down")
        group, id = request.match_info["group"], request.match_info["id"]
        if request.transport is None:  # the client left before we got here
            return web.Response(status=499, text="Client closed the connection")
        conn = hub.register(group, id, request.transport)
        if conn is None:
            if hub.closed:
                return web.Response(status=503, text="Server is shutting down")
            log.warning("poll registration at capacity (%d streams)", hub.max_connections)
            return web.Response(status=503, text="Poll registration at capacity")
        log.debug("poll stream opened: %s", conn)
        try:
            resp = web.StreamResponse(headers=SSE_HEADERS)
            resp.force_close()  # the stream owns its TCP connection; no keep-alive reuse
            await resp.prepare(request)
            try:
                await pump(hub, conn, resp, keepalive, max_age)
                await resp.write_eof()
            except ConnectionError:
                log.debug("poll stream lost its peer: %s", conn)
        finally:
            hub.unregister(conn)
            log.debug("poll stream closed: %s", conn)
        return resp

    return [("GET", "/poll/{group}/{id}", stream)]


__all__ = ["PollTransport", "hub_of"]
