"""A small HTTP/1.1 client on asyncio protocols: cheap enough that the load generator, which
shares two cores with the server, spends its CPU on sending requests rather than on a client
library.

- :class:`RpcConnection`: one keep-alive connection, one request in flight at a time (no
  pipelining). Requests are pre-encoded bytes (:func:`post`); the reply is ``(status, body)``.
- :class:`SseStream`: ``GET /poll/{group}/{id}``; calls ``on_event(data)`` for every
  ``data:`` event of the (chunked) event stream.

Only what the Resonate server sends is parsed: a status line, headers, and a body framed by
``Content-Length`` or ``Transfer-Encoding: chunked``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

CRLF2 = b"\r\n\r\n"


class HttpError(Exception):
    """A transport failure: the connection broke or the reply could not be parsed."""


def post(host: str, port: int, body: bytes, path: str = "/") -> bytes:
    """A complete pre-encoded ``POST`` request carrying a JSON ``body``."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def post_head(host: str, port: int, path: str = "/") -> bytes:
    """The request head up to the ``Content-Length`` value (append ``len`` + CRLF2 + body)."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """``(status, content_length, chunked, close)`` of a response head (without CRLF2)."""
    try:
        status = int(head[9:12])
    except ValueError:
        raise HttpError(f"bad status line: {head[:40]!r}") from None
    # A few C-level searches instead of a loop over header lines: this runs for every reply.
    low = head.lower() + b"\r\n"
    length: int | None = None
    i = low.find(b"\r\ncontent-length:")
    if i >= 0:
        length = int(low[i + 17 : low.find(b"\r\n", i + 2)])
    i = low.find(b"\r\ntransfer-encoding:")
    chunked = i >= 0 and b"chunked" in low[i : low.find(b"\r\n", i + 2)]
    i = low.find(b"\r\nconnection:")
    close = i >= 0 and b"close" in low[i : low.find(b"\r\n", i + 2)]
    return status, length, chunked, close


class _Chunked:
    """Incremental decoder of a chunked body; ``feed`` returns the decoded bytes so far."""

    __slots__ = ("buf", "done", "need")

    def __init__(self) -> None:
        self.buf = b""
        self.need = -1  # bytes of chunk data still expected (+2 for its CRLF); -1: size line next
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        while not self.done:
            if self.need < 0:
                nl = self.buf.find(b"\r\n")
                if nl < 0:
                    break
                size = int(self.buf[:nl].split(b";", 1)[0], 16)
                self.buf = self.buf[nl + 2 :]
                if size == 0:
                    self.done = True
                    break
                self.need = size + 2
            if len(self.buf) < self.need:
                # hand out what we have of the chunk data, keep expecting the rest
                take = min(len(self.buf), self.need - 2)
                if take > 0:
                    out.append(self.buf[:take])
                    self.buf = self.buf[take:]
                    self.need -= take
                break
            out.append(self.buf[: self.need - 2])
            self.buf = self.buf[self.need :]
            self.need = -1
        return b"".join(out)


class RpcConnection(asyncio.Protocol):
    """A keep-alive client connection; :meth:`request` sends one request and awaits its reply."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._fut: asyncio.Future[tuple[int, bytes]] | None = None
        self._buf = b""
        self._status = 0
        self._length: int | None = None  # body length once the head is parsed
        self._chunked: _Chunked | None = None
        self._close = False
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> RpcConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, host, port)
        return proto

    # --- protocol callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        fut, self._fut = self._fut, None
        if fut is not None and not fut.done():
            fut.set_exception(HttpError(f"connection lost: {exc or 'closed by peer'}"))

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if self._length is None and self._chunked is None:
            end = data.find(CRLF2)
            if end < 0:
                self._buf = data
                return
            try:
                self._status, length, chunked, self._close = _parse_head(data[:end])
            except (HttpError, ValueError) as e:
                self._fail(HttpError(str(e)))
                return
            data = data[end + 4 :]
            if chunked:
                self._chunked = _Chunked()
                self._body: list[bytes] = []
            else:
                self._length = length or 0
        if self._chunked is not None:
            self._body.append(self._chunked.feed(data))
            if self._chunked.done:
                body = b"".join(self._body)
                self._chunked = None
                self._finish(body)
            return
        assert self._length is not None
        if len(data) < self._length:
            self._buf = data
            return
        body = data[: self._length]
        self._length = None
        self._finish(body)

    def _finish(self, body: bytes) -> None:
        fut, self._fut = self._fut, None
        if fut is not None and not fut.done():
            fut.set_result((self._status, body))
        if self._close and self.transport is not None:
            self.transport.close()

    def _fail(self, err: Exception) -> None:
        if self.transport is not None:
            self.transport.abort()
        fut, self._fut = self._fut, None
        if fut is not None and not fut.done():
            fut.set_exception(err)

    # --- API ---------------------------------------------------------------------------------

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send a complete request; the future gives ``(status, body)``."""
        if self.closed or self.transport is None:
            raise HttpError("connection closed")
        assert self._fut is None, "one request at a time"
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._fut = fut
        self.transport.write(raw)
        return fut

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class SseStream(asyncio.Protocol):
    """One ``GET /poll/{group}/{id}`` event stream.

    ``opened`` resolves with the HTTP status once the response head arrived; ``ended``
    resolves when the connection is gone. ``on_event`` receives each event's data bytes.
    """

    def __init__(self, request: bytes, on_event: Callable[[bytes], None]) -> None:
        self._request = request
        self.on_event = on_event
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[int] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._chunked: _Chunked | None = None
        self._events = b""
        self.status = 0
        self.frames = 0

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        group: str,
        id: str,
        on_event: Callable[[bytes], None],
        timeout: float = 15.0,
    ) -> SseStream:
        """Connect and wait for the response head; raises :class:`HttpError` unless 200."""
        req = (
            f"GET /poll/{group}/{id} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, proto = await loop.create_connection(lambda: cls(req, on_event), host, port)
            try:
                status = await proto.opened
            except BaseException:
                proto.close()
                raise
        if status != 200:
            proto.close()
            raise HttpError(f"GET /poll/{group}/{id} answered {status}")
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(HttpError(f"stream closed before its head: {exc}"))
        if not self.ended.done():
            self.ended.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._chunked is None:
            self._head += data
            end = self._head.find(CRLF2)
            if end < 0:
                return
            try:
                self.status, _, chunked, _ = _parse_head(self._head[:end])
            except (HttpError, ValueError) as e:
                if not self.opened.done():
                    self.opened.set_exception(HttpError(str(e)))
                self.close()
                return
            data = self._head[end + 4 :]
            self._head = b""
            self._chunked = _Chunked() if chunked else None
            if not self.opened.done():
                self.opened.set_result(self.status)
            if self._chunked is None:
                # an error reply (or an unchunked stream): treat the rest as raw event bytes
                self._chunked = _Identity()  # type: ignore[assignment]
        assert self._chunked is not None
        text = self._chunked.feed(data)
        if not text:
            return
        buf = self._events + text
        parts = buf.split(b"\n\n")
        self._events = parts.pop()
        for event in parts:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self.frames += 1
                    self.on_event(line[5:].lstrip(b" "))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Identity:
    done = False

    def feed(self, data: bytes) -> bytes:
        return data
