"""The lean HTTP/1.1 front for ``POST /`` (core/resonate_server/rpc_http.py), over raw sockets.

Requests of the usual RPC shape are answered by the front; anything else is handed, with the
rest of its connection, to aiohttp. Either way the client sees correct HTTP, in order.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import PROTOCOL_VERSION, ServerProcess


class Raw:
    """A socket speaking HTTP/1.1 by hand, reading replies framed by Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def reply(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed before a reply: {self.buf!r}"
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.buf) < length:
            assert self._fill(), "connection closed inside a reply body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(status), headers, body

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def envelope(kind: str, data: dict[str, Any], corr_id: str) -> bytes:
    return json.dumps(
        {"kind": kind, "head": {"corrId": corr_id, "version": PROTOCOL_VERSION}, "data": data}
    ).encode()


def post(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
    )


def get_promise(corr_id: str, id: str = "missing", extra: bytes = b"") -> bytes:
    return post(envelope("promise.get", {"id": id}, corr_id), extra)


def corr_id(body: bytes) -> str:
    return json.loads(body)["head"]["corrId"]  # type: ignore[no-any-return]


@pytest.fixture
def raw(debug_server: ServerProcess) -> Iterator[Raw]:
    r = Raw(debug_server.port)
    yield r
    r.close()


def test_keep_alive_requests_are_answered_by_the_lean_front(raw: Raw) -> None:
    for i in range(5):
        raw.send(get_promise(f"k{i}"))
        status, headers, body = raw.reply()
        assert status == 404 and corr_id(body) == f"k{i}"
        assert headers["content-type"] == "application/json"
        assert "aiohttp" not in headers.get("server", ""), "answered by aiohttp, not the front"
        assert "connection" not in headers


def test_pipelined_requests_are_answered_in_order(raw: Raw) -> None:
    raw.send(b"".join(get_promise(f"p{i}") for i in range(20)))
    assert [corr_id(raw.reply()[2]) for _ in range(20)] == [f"p{i}" for i in range(20)]


def test_a_request_arriving_one_byte_at_a_time(raw: Raw) -> None:
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in get_promise("slow"):
        raw.send(bytes([byte]))
        time.sleep(0.0005)
    status, _, body = raw.reply()
    assert status == 404 and corr_id(body) == "slow"


def test_other_requests_hand_the_connection_to_aiohttp_in_order(raw: Raw) -> None:
    """RPC, then GET /healthz, then RPCs again, all pipelined on one connection."""
    raw.send(
        get_promise("before")
        + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        + get_promise("after-1")
        + get_promise("after-2")
    )
    status, _, body = raw.reply()
    assert (status, corr_id(body)) == (404, "before")
    status, _, body = raw.reply()
    assert status == 200 and json.loads(body)["status"] == "ok"
    for expected in ("after-1", "after-2"):
        status, _, body = raw.reply()
        assert (status, corr_id(body)) == (404, expected)


def test_a_chunked_rpc_body_is_answered(raw: Raw) -> None:
    body = envelope("promise.get", {"id": "missing"}, "chunked")
    raw.send(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    status, _, reply = raw.reply()
    assert (status, corr_id(reply)) == (404, "chunked")


def test_http_1_0_is_answered(raw: Raw) -> None:
    body = envelope("promise.get", {"id": "missing"}, "old")
    raw.send(b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    status, _, reply = raw.reply()
    assert (status, corr_id(reply)) == (404, "old")


@pytest.mark.parametrize(
    "head",
    [
        b"Host: localhost\r\nContent-Length : 2\r\n",  # whitespace before the colon
        b"Host: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n",  # conflicting lengths
        b"Host: localhost\r\nContent-Length: -2\r\n",
        b"Host: localhost\r\nBad\x01Name: x\r\nContent-Length: 2\r\n",
    ],
)
def test_malformed_heads_get_400_not_a_crash(raw: Raw, head: bytes) -> None:
    raw.send(b"POST / HTTP/1.1\r\n" + head + b"\r\n{}")
    status, _, _ = raw.reply()
    assert status == 400


def test_connection_close_is_honoured(raw: Raw) -> None:
    raw.send(get_promise("last", extra=b"Connection: close\r\n"))
    status, headers, body = raw.reply()
    assert (status, corr_id(body)) == (404, "last")
    assert headers["connection"].lower() == "close"
    assert raw.closed_by_server()


def test_a_client_gone_mid_request_leaves_the_server_serving(
    debug_server: ServerProcess, raw: Raw
) -> None:
    whole = get_promise("gone")
    raw.send(whole[: len(whole) - 5])
    raw.close()
    other = Raw(debug_server.port)
    try:
        other.send(get_promise("next"))
        status, _, body = other.reply()
        assert (status, corr_id(body)) == (404, "next")
    finally:
        other.close()


def test_a_created_promise_round_trips_through_the_front(raw: Raw) -> None:
    data = {"id": "front-1", "timeoutAt": 2**53, "param": {"data": "aGk="}, "tags": {"a": "b"}}
    raw.send(post(envelope("promise.create", data, "c1")))
    status, _, body = raw.reply()
    assert status == 200, body
    raw.send(get_promise("c2", "front-1"))
    status, _, body = raw.reply()
    promise = json.loads(body)["data"]["promise"]
    assert status == 200 and promise["id"] == "front-1" and promise["param"]["data"] == "aGk="


def test_requests_before_a_half_close_are_all_answered(raw: Raw) -> None:
    raw.send(get_promise("h1") + get_promise("h2"))
    raw.sock.shutdown(socket.SHUT_WR)
    assert [corr_id(raw.reply()[2]) for _ in range(2)] == ["h1", "h2"]
    assert raw.closed_by_server()
