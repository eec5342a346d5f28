"""A lean HTTP/1.1 front for the RPC endpoint; aiohttp serves everything else.

Every connection starts in :class:`RpcConnection`. A request of the usual RPC shape is
answered here, through :meth:`Server.rpc <resonate_server.app.Server.rpc>`, the same code
the aiohttp route runs. The usual shape is ``POST /`` over HTTP/1.1, with well-formed
headers and a ``Content-Length`` body within the size limit, and no ``Transfer-Encoding``,
``Expect`` or ``Upgrade``. Any other request (another path or method, a chunked body,
HTTP/1.0, malformed bytes, a body over the limit) hands the connection over to aiohttp's
request handler. It gets the request from its first byte, and keeps the connection.

Requests on one connection are answered in order, one at a time, as aiohttp does. The
point is CPU: without storage, a create costs 22–43 µs through this path against 48–52 µs
through an aiohttp handler (docs/benchmarks.md, sixth session).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

#: The longest request head (request line and headers) answered here; longer ones go to
#: aiohttp, which applies its own limits.
MAX_HEAD = 16 * 1024
#: Idle keep-alive connections are closed after this long (aiohttp's default).
KEEPALIVE_TIMEOUT = 3630.0

_REQUEST_LINE = b"POST / HTTP/1.1\r\n"
_HEADERS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~\x80-\xff]*\r\n)*")
_HANDED_OVER = re.compile(rb"\r\n(?:transfer-encoding|expect|upgrade):")
_CONTENT_LENGTH = b"\r\ncontent-length:"
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}

Rpc = Callable[[bytes], Awaitable[tuple[int, bytes]]]


class _Date:
    """The ``Date`` header value, formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = 0
        self.value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = formatdate(now, usegmt=True).encode()
        return self.value


_date = _Date()


def response_head(status: int, length: int, close: bool) -> bytes:
    """The status line and headers of an RPC reply (the headers aiohttp writes for ours)."""
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    return b"%sContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n%s\r\n" % (
        line,
        length,
        _date(),
        b"Connection: close\r\n" if close else b"",
    )


class RpcConnection(asyncio.Protocol):
    """One client connection; see the module docstring."""

    __slots__ = (
        "answering",
        "buf",
        "busy",
        "connections",
        "eof",
        "fallback",
        "last_active",
        "max_body",
        "paused",
        "rpc",
        "transport",
    )

    def __init__(
        self,
        rpc: Rpc,
        fallback: Callable[[], asyncio.Protocol],
        max_body: int,
        connections: set[RpcConnection],
    ) -> None:
        self.rpc = rpc
        self.fallback = fallback
        self.max_body = max_body
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.eof = False  # the peer sent FIN while a reply was in flight
        self.paused = False
        self.answering: asyncio.Task[None] | None = None
        self.last_active = time.monotonic()

    # --- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        self.connections.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()
        elif len(self.buf) > MAX_HEAD + self.max_body and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """Keep a half-closed socket open only to send the reply in flight."""
        self.eof = self.busy
        return self.busy

    # --- requests ----------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next complete request in the buffer, or hand the connection over."""
        buf = self.buf
        if not buf:
            return
        if not buf.startswith(_REQUEST_LINE):
            if len(buf) >= len(_REQUEST_LINE) or not _REQUEST_LINE.startswith(bytes(buf)):
                self._hand_over()
            return
        end = buf.find(b"\r\n\r\n", len(_REQUEST_LINE) - 2)
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._hand_over()
            return
        headers = bytes(buf[len(_REQUEST_LINE) : end + 2])
        if _HEADERS.fullmatch(headers) is None:
            self._hand_over()
            return
        lower = b"\r\n" + headers.lower()
        if _HANDED_OVER.search(lower) is not None:
            self._hand_over()
            return
        at = lower.find(_CONTENT_LENGTH)
        if at < 0 or lower.find(_CONTENT_LENGTH, at + 1) >= 0:
            self._hand_over()
            return
        value = lower[at + len(_CONTENT_LENGTH) : lower.index(b"\r\n", at + 2)].strip(b" \t")
        if not value.isdigit() or len(value) > 12 or int(value) > self.max_body:
            self._hand_over()
            return
        start = end + 4
        stop = start + int(value)
        if len(buf) < stop:
            return
        close = b"\r\nconnection:" in lower and _closes(lower)
        body = bytes(buf[start:stop])
        del buf[:stop]
        self.busy = True
        self.last_active = time.monotonic()
        self.answering = asyncio.get_running_loop().create_task(self._answer(body, close))

    async def _answer(self, body: bytes, close: bool) -> None:
        status, payload = await self.rpc(body)
        self.answering = None
        self.busy = False
        self.last_active = time.monotonic()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(response_head(status, len(payload), close) + payload)
        if close:
            transport.close()
            return
        if self.paused:
            self.paused = False
            transport.resume_reading()
        self._next()
        if self.eof and not self.busy and self.transport is not None:
            self.transport.close()  # the peer sends nothing more: answered all it sent

    def _hand_over(self) -> None:
        """Give the connection, with the bytes not yet answered, to aiohttp's handler."""
        transport = self.transport
        assert transport is not None and not self.busy
        self.connections.discard(self)
        self.transport = None
        handler = self.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        data, self.buf = bytes(self.buf), bytearray()
        handler.data_received(data)

    def close_if_idle(self, idle_before: float) -> None:
        """Close when no request started or finished since ``idle_before``."""
        if not self.busy and self.transport is not None and self.last_active <= idle_before:
            self.transport.close()


def _closes(lower_headers: bytes) -> bool:
    for line in lower_headers.split(b"\r\n"):
        if line.startswith(b"connection:"):
            return b"close" in line
    return False


class RpcListener:
    """The listening socket: new connections start as :class:`RpcConnection`."""

    def __init__(
        self,
        rpc: Rpc,
        fallback: Callable[[], asyncio.Protocol],
        max_body: int,
        idle: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self.rpc = rpc
        self.fallback = fallback
        self.max_body = max_body
        self.idle = idle
        self.connections: set[RpcConnection] = set()
        self.server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def __call__(self) -> RpcConnection:
        return RpcConnection(self.rpc, self.fallback, self.max_body, self.connections)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self, host, port, backlog=128)
        self._sweeper = asyncio.create_task(self._sweep(), name="rpc-idle-connections")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.idle))
            before = time.monotonic() - self.idle
            for conn in list(self.connections):
                conn.close_if_idle(before)

    def receiving(self) -> bool:
        """Whether a request is in flight or partly received on a connection of this front."""
        return any(c.busy or c.buf for c in self.connections)

    async def close(self) -> None:
        """Stop listening and close every connection still here."""
        if self.server is not None:
            self.server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        self.connections.clear()
