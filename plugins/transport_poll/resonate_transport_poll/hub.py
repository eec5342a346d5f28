"""The registry of open SSE streams and the routing of ``poll://`` addresses (protocol.md §1.6).

A :class:`Hub` knows every open ``GET /poll/{group}/{id}`` stream as a :class:`Connection`,
keyed by group. :meth:`Hub.send` picks at most one connection for an address and puts the
encoded frame in its bounded mailbox without waiting; the stream's handler writes it out.
Nothing here does I/O, so routing is plain synchronous code on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import deque
from typing import Any

import orjson
from resonate_server.addresses import Address

log = logging.getLogger("resonate.transport.poll")

PING = b": ping\n\n"


def frame(message: dict[str, Any]) -> bytes:
    """One SSE event for ``message``: ``data: <compact json>`` and a blank line."""
    return b"data: " + orjson.dumps(message) + b"\n\n"


class Connection:
    """One open stream: a bounded mailbox of encoded frames that its handler drains.

    ``transport`` is the stream's socket transport (None in unit tests); a connection whose
    transport is closing is dead and is never chosen. ``closed`` is set once the hub let go of
    the connection; its handler then writes what is left and ends the stream.
    """

    __slots__ = ("_capacity", "_frames", "_ready", "closed", "conn_id", "group", "id", "transport")

    def __init__(
        self,
        conn_id: int,
        group: str,
        id: str,
        capacity: int,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.group = group
        self.id = id
        self.transport = transport
        self.closed = False
        self._capacity = capacity
        self._frames: deque[bytes] = deque()
        self._ready = asyncio.Event()

    def __repr__(self) -> str:
        return f"Connection({self.conn_id}, {self.group!r}, {self.id!r})"

    def alive(self) -> bool:
        """Whether a frame offered now can still reach the peer."""
        return not self.closed and (self.transport is None or not self.transport.is_closing())

    def offer(self, data: bytes) -> bool:
        """Queue ``data`` without waiting; False when the mailbox is full or closed."""
        if self.closed or len(self._frames) >= self._capacity:
            return False
        self._frames.append(data)
        self._ready.set()
        return True

    def take(self) -> list[bytes]:
        """Everything queued so far, oldest first; the mailbox is empty afterwards."""
        self._ready.clear()
        frames = list(self._frames)
        self._frames.clear()
        return frames

    async def wait(self, timeout: float | None) -> bool:
        """Wait until a frame is queued or the connection closes; False after ``timeout``."""
        if self._frames or self.closed:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.closed = True
        self._ready.set()


class Hub:
    """Open streams by group, at most ``max_connections`` of them; routes ``poll://`` addresses.

    Routing (protocol.md §1.6): no connection in the group drops the message; ``uni`` goes to a
    connection with the address id, else it is dropped; ``any`` prefers a connection with the
    address id and otherwise picks a uniformly random connection of the group. Among several
    connections with one id the newest live one wins (an older one is likely a stale stream of
    a process that reconnected). A full mailbox drops the message; there is no fallback.
    """

    def __init__(self, buffer_size: int, max_connections: int) -> None:
        self.buffer_size = buffer_size
        self.max_connections = max_connections
        self.closed = False
        self._groups: dict[str, list[Connection]] = {}
        self._count = 0
        self._ids = itertools.count(1)
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return self._count

    def connections(self) -> list[Connection]:
        return [c for members in self._groups.values() for c in members]

    def register(
        self, group: str, id: str, transport: asyncio.Transport | None = None
    ) -> Connection | None:
        """Add a stream; None when the hub is closed or at capacity (after pruning dead ones)."""
        if self.closed:
            return None
        if self._count >= self.max_connections:
            for conn in self.connections():
                if not conn.alive():
                    self.unregister(conn)
            if self._count >= self.max_connections:
                return None
        conn = Connection(next(self._ids), group, id, self.buffer_size, transport)
        self._groups.setdefault(group, []).append(conn)
        self._count += 1
        self._empty.clear()
        return conn

    def unregister(self, conn: Connection) -> None:
        """Remove ``conn`` from routing and close it; a no-op when already removed."""
        conn.close()
        members = self._groups.get(conn.group)
        if members is None or conn not in members:
            return
        members.remove(conn)
        if not members:
            del self._groups[conn.group]
        self._count -= 1
        if self._count == 0:
            self._empty.set()

    def _live(self, conn: Connection) -> bool:
        if conn.alive():
            return True
        log.debug("pruning dead poll connection %s", conn)
        self.unregister(conn)
        return False

    def route(self, address: Address) -> Connection | None:
        """The connection ``address`` goes to, or None when the message is to be dropped."""
        if address.group is None:
            return None
        members = self._groups.get(address.group)
        if not members:
            return None
        if address.id is not None:
            for conn in [c for c in reversed(members) if c.id == address.id]:
                if self._live(conn):
                    return conn
        if address.cast != "any":
            return None
        while members:  # shrinks as dead connections are pruned
            conn = random.choice(members)
            if self._live(conn):
                return conn
        return None

    def send(self, address: Address, message: dict[str, Any]) -> bool:
        """Queue ``message`` for the connection ``address`` routes to; False when dropped."""
        conn = self.route(address)
        kind = message.get("kind")
        if conn is None:
            log.info("no poll connection for %s; %s message dropped", address.raw, kind)
            return False
        if not conn.offer(frame(message)):
            log.warning(
                "poll connection %s/%s has a full buffer (%d); %s message dropped",
                conn.group,
                conn.id,
                self.buffer_size,
                kind,
            )
            return False
        return True

    async def close(self, grace: float = 1.0) -> None:
        """Refuse new streams and end every open one.

        Handlers get ``grace`` seconds to flush what is queued; streams still open after that
        (a peer that stopped reading) have their sockets aborted, which ends their handlers.
        """
        self.closed = True
        for conn in self.connections():
            conn.close()
        if await self._wait_empty(grace):
            return
        for conn in self.connections():
            if conn.transport is not None:
                conn.transport.abort()
        await self._wait_empty(grace)

    async def _wait_empty(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True
