"""The poll transport: SSE streams on ``GET /poll/{group}/{id}`` (protocol.md §1.6, §8 63–68).

Streams are read from raw sockets (the chunked body decoded here), every read bounded by a
deadline, against real server processes.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

import pytest
from resonate_server.addresses import Address, parse
from resonate_transport_poll.hub import Hub

from .conftest import Client, ServerProcess, wait_for

FAR = 2**62


class Stream:
    """One ``GET /poll/{group}/{id}`` stream over a raw socket, read with deadlines."""

    def __init__(self, port: int, group: str, id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(
            f"GET /poll/{group}/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        self._raw = b""
        self.body = b""  # de-chunked bytes not yet consumed as frames
        self.eof = False
        self.chunked = False
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in self._raw:
            assert self._fill(deadline), "no response headers in time"
        head, _, self._raw = self._raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)
        }
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self._decode()

    def _fill(self, deadline: float) -> bool:
        """Receive more bytes; False on timeout, True on data or end of stream."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return self.eof
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            data = b""
        if not data:
            self.eof = True
        self._raw += data
        return True

    def _decode(self) -> None:
        if not self.chunked:
            self.body += self._raw
            self._raw = b""
            return
        while True:
            size_line, sep, rest = self._raw.partition(b"\r\n")
            if not sep:
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self.eof = True
                self._raw = b""
                return
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self._raw = rest[size + 2 :]

    def frame(self, timeout: float = 5.0) -> bytes | None:
        """The next raw frame (up to and including the blank line); None when none came."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.body:
            if self.eof or not self._fill(deadline):
                return None
            self._decode()
        frame, _, self.body = self.body.partition(b"\n\n")
        return frame + b"\n\n"

    def message(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next ``data:`` event, parsed; comment frames are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return None
            if frame.startswith(b"data: "):
                return json.loads(frame[len(b"data: ") :])  # type: ignore[no-any-return]

    def ended(self, timeout: float) -> bool:
        """Whether the server ended the stream within ``timeout`` (frames are discarded)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline):
                return False
            self._decode()
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(make_server: Any) -> ServerProcess:
    return make_server("--debug")  # type: ignore[no-any-return]


def open_stream(s: ServerProcess, group: str, id: str) -> Stream:
    stream = Stream(s.port, group, id)
    assert stream.status == 200, stream.headers
    return stream


def target(c: Client, pid: str, address: str) -> None:
    """Create a promise whose task's execute message goes to ``address``."""
    reply = c.call(
        "promise.create", {"id": pid, "timeoutAt": FAR, "tags": {"resonate:target": address}}
    )
    assert reply.status == 200, reply


def execute_of(pid: str, s: ServerProcess) -> dict[str, Any]:
    return {
        "kind": "execute",
        "head": {"serverUrl": f"http://localhost:{s.port}"},
        "data": {"task": {"id": pid, "version": 0}},
    }


def outbox(c: Client) -> list[Any]:
    snap = c.call("debug.snap", {})
    assert snap.status == 200, snap
    return snap.data["messages"]  # type: ignore[no-any-return]


def test_stream_headers_and_frames(server: ServerProcess) -> None:
    """200 text/event-stream, no-cache; each message is one compact ``data:`` line."""
    w1 = open_stream(server, "g", "w1")
    assert w1.headers["content-type"].startswith("text/event-stream")
    assert w1.headers["cache-control"] == "no-cache"
    target(server.client(), "p1", "poll://uni@g/w1")
    frame = w1.frame()
    assert frame is not None
    expected = execute_of("p1", server)
    assert frame == b"data: " + json.dumps(expected, separators=(",", ":")).encode() + b"\n\n"
    w1.close()


def test_uni_reaches_only_its_id(server: ServerProcess) -> None:
    w1, w2 = open_stream(server, "g", "w1"), open_stream(server, "g", "w2")
    target(server.client(), "p1", "poll://uni@g/w1")
    assert w1.message() == execute_of("p1", server)
    assert w2.message(timeout=0.3) is None


def test_any_reaches_exactly_one_connection(server: ServerProcess) -> None:
    """Each anycast message reaches one connection of the group, chosen at random."""
    w1, w2 = open_stream(server, "g", "w1"), open_stream(server, "g", "w2")
    c = server.client()
    n = 20
    for i in range(n):
        target(c, f"a{i}", "poll://any@g")
    got: dict[str, list[str]] = {"w1": [], "w2": []}
    deadline = time.monotonic() + 10
    while len(got["w1"]) + len(got["w2"]) < n and time.monotonic() < deadline:
        for name, stream in (("w1", w1), ("w2", w2)):
            m = stream.message(timeout=0.05)
            if m is not None:
                got[name].append(m["data"]["task"]["id"])
    assert sorted(got["w1"] + got["w2"]) == sorted(f"a{i}" for i in range(n))
    assert got["w1"] and got["w2"], got  # both chosen at least once (fails with p ≈ 2e-6)
    assert w1.message(timeout=0.2) is None and w2.message(timeout=0.05) is None


def test_any_with_id_prefers_that_connection(server: ServerProcess) -> None:
    w1, w2 = open_stream(server, "g", "w1"), open_stream(server, "g", "w2")
    c = server.client()
    for i in range(5):
        target(c, f"p{i}", "poll://any@g/w2")
    assert [w2.message()["data"]["task"]["id"] for _ in range(5)] == [f"p{i}" for i in range(5)]  # type: ignore[index]
    assert w1.message(timeout=0.3) is None


def test_undeliverable_messages_are_dropped(server: ServerProcess) -> None:
    """uni to an unknown id, or any group without connections: dropped, outbox empty."""
    w1 = open_stream(server, "g", "w1")
    c = server.client()
    target(c, "p1", "poll://uni@g/nobody")
    target(c, "p2", "poll://any@empty")
    target(c, "p3", "poll://uni@empty/w1")
    assert wait_for(lambda: outbox(c) == [])
    assert w1.message(timeout=0.3) is None
    tasks = c.call("debug.snap", {}).data["tasks"]
    assert sorted(t["id"] for t in tasks) == ["p1", "p2", "p3"]


def test_debug_start_pauses_delivery(server: ServerProcess) -> None:
    """Scenario 67: while paused, messages pile up in the outbox; debug.stop delivers them."""
    w1 = open_stream(server, "g", "w1")
    c = server.client()
    assert c.call("debug.start", {}).status == 200
    target(c, "p1", "poll://uni@g/w1")
    assert [m["address"] for m in outbox(c)] == ["poll://uni@g/w1"]
    assert w1.message(timeout=0.3) is None
    assert c.call("debug.stop", {}).status == 200
    assert w1.message() == execute_of("p1", server)
    assert outbox(c) == []


def test_unblock_carries_the_promise_at_delivery(server: ServerProcess) -> None:
    """Scenario 68: the unblock message holds the settled record, as promise.get shows it."""
    w1 = open_stream(server, "g", "w1")
    c = server.client()
    assert c.call("promise.create", {"id": "u", "timeoutAt": FAR}).status == 200
    listen = c.call("promise.register_listener", {"awaited": "u", "address": "poll://uni@g/w1"})
    assert listen.status == 200, listen
    value = {"headers": {"k": "v"}, "data": "ImRvbmUi"}
    assert c.call("promise.settle", {"id": "u", "state": "resolved", "value": value}).status == 200
    m = w1.message()
    assert m is not None and m["kind"] == "unblock" and m["head"] == {}
    assert m["data"]["promise"] == c.call("promise.get", {"id": "u"}).data["promise"]
    assert m["data"]["promise"]["state"] == "resolved"
    assert m["data"]["promise"]["value"] == value


def test_capacity(make_server: Any) -> None:
    """Scenario 64: beyond max_connections a stream gets 503; a closed stream frees its slot."""
    s = make_server("--transports-poll-max-connections", "2")
    first, second = open_stream(s, "g", "a"), open_stream(s, "g", "b")
    third = s.client().get("/poll/g/c")
    assert third.status == 503
    assert third.headers["content-type"].startswith("text/plain")
    assert third.raw == b"Poll registration at capacity"
    first.close()
    fourth = wait_for(lambda: (x := Stream(s.port, "g", "d")).status == 200 and x)
    assert s.client().get("/healthz").status == 200
    second.close()
    fourth.close()


def test_disabled_transport_drops(make_server: Any) -> None:
    """Scenario 65: with the transport off, /poll still streams but messages are dropped."""
    s = make_server("--debug", "--no-transports-poll-enable")
    w1 = open_stream(s, "g", "w1")
    c = s.client()
    target(c, "p1", "poll://uni@g/w1")
    assert wait_for(lambda: outbox(c) == [])
    assert w1.message(timeout=0.3) is None


def test_dead_connection_is_never_chosen(server: ServerProcess) -> None:
    """A stream whose peer went away leaves routing before it could swallow a message."""
    gone = open_stream(server, "g", "w1")
    w2 = open_stream(server, "g", "w2")
    gone.close()
    time.sleep(0.1)
    c = server.client()
    for i in range(6):
        target(c, f"p{i}", "poll://any@g")
    ids = [w2.message() for _ in range(6)]
    assert [m["data"]["task"]["id"] for m in ids if m] == [f"p{i}" for i in range(6)]


def test_keepalive_and_max_age(make_server: Any) -> None:
    """Idle streams get ``: ping`` comments; a stream ends after max_age so clients reconnect."""
    s = make_server("--transports-poll-keepalive", "200ms", "--transports-poll-max-age", "1s")
    w1 = open_stream(s, "g", "w1")
    assert w1.frame(timeout=1.0) == b": ping\n\n"
    started = time.monotonic()
    assert w1.ended(timeout=3.0)
    assert time.monotonic() - started < 1.5
    w2 = open_stream(s, "g", "w1")  # the client reconnects
    target(s.client(), "p1", "poll://uni@g/w1")
    assert w2.message() == execute_of("p1", s)


def test_keepalive_validation(make_server: Any) -> None:
    s = make_server("--transports-poll-keepalive", "10ms", wait=False)
    assert s.wait(20) == 2
    assert "'transports.poll.keepalive' must be 0 (off) or at least 100ms" in s.log()


def test_sigterm_ends_open_streams(make_server: Any) -> None:
    """Shutdown ends every stream (chunked end marker) and the server exits 0 promptly."""
    s = make_server()
    streams = [open_stream(s, "g", f"w{i}") for i in range(3)]
    started = time.monotonic()
    s.signal(signal.SIGTERM)
    assert all(stream.ended(timeout=5.0) for stream in streams)
    assert s.wait(10) == 0
    assert time.monotonic() - started < 3.0, s.log()
    assert "Traceback" not in s.log()


# --- the hub's routing, without a server ---------------------------------------------------


def parse_address(raw: str) -> Address:
    address = parse(raw)
    assert address is not None
    return address


def test_hub_routing_rules() -> None:
    """Newest live connection per id wins; full buffers drop; capacity counts every stream."""
    hub = Hub(buffer_size=1, max_connections=3)
    old, new, other = hub.register("g", "w1"), hub.register("g", "w1"), hub.register("g", "w2")
    assert old and new and other and hub.register("g", "w3") is None
    assert hub.route(parse_address("poll://uni@g/w1")) is new
    assert hub.route(parse_address("poll://any@g/w2")) is other
    assert hub.route(parse_address("poll://uni@g")) is None
    assert hub.route(parse_address("poll://uni@h/w1")) is None
    assert hub.send(parse_address("poll://uni@g/w1"), {"kind": "execute"})
    assert not hub.send(parse_address("poll://uni@g/w1"), {"kind": "execute"})  # buffer full
    assert new.take() == [b'data: {"kind":"execute"}\n\n']
    hub.unregister(new)
    assert new.closed and len(hub) == 2
    assert hub.route(parse_address("poll://uni@g/w1")) is old
    hub.unregister(new)  # idempotent
    assert len(hub) == 2 and hub.register("g", "w3") is not None
