"""Restarts lose nothing: SIGTERM drains and exits in time; kill -9 keeps acknowledged writes."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .conftest import Client, ServerProcess

FAR = 2**62


def create(c: Client, pid: str, **tags: str) -> Any:
    return c.call(
        "promise.create", {"id": pid, "timeoutAt": FAR, "param": {"data": "cGFyYW0="}, "tags": tags}
    )


def hammer(
    server: ServerProcess,
    prefix: str,
    acked: dict[str, dict[str, Any]],
    statuses: list[int],
    stop: threading.Event,
    limit: int = 100_000,
) -> None:
    """Create promises until the server goes away; remember what was acknowledged."""
    c = server.client()
    for i in range(limit):
        if stop.is_set():
            break
        pid = f"{prefix}-{i}"
        try:
            reply = create(c, pid)
        except OSError:
            break
        statuses.append(reply.status)
        if reply.status == 200:
            acked[pid] = reply.data["promise"]
    c.close()


def test_round_trip_survives_sigterm_restart(make_server: Any) -> None:
    s = make_server()
    c = s.client()
    created = create(c, "order-1", **{"resonate:target": "poll://any@workers"})
    assert created.status == 200
    settled = c.call(
        "promise.settle",
        {
            "id": "order-1",
            "state": "resolved",
            "value": {"headers": {"a": "b"}, "data": "ZG9uZQ=="},
        },
    )
    assert settled.status == 200 and settled.data["promise"]["state"] == "resolved"
    c.close()
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    c = make_server().client()
    got = c.call("promise.get", {"id": "order-1"})
    assert got.status == 200
    assert got.data["promise"] == settled.data["promise"]


def test_acknowledged_writes_survive_kill_9(make_server: Any) -> None:
    s = make_server()
    acked: dict[str, dict[str, Any]] = {}
    statuses: list[int] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=hammer, args=(s, f"w{n}", acked, statuses, stop)) for n in range(8)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.signal(signal.SIGKILL)
    s.wait()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) >= 300, f"only {len(acked)} writes acknowledged before the kill"
    assert set(statuses) == {200}
    c = make_server().client()
    for pid, record in acked.items():
        got = c.call("promise.get", {"id": pid})
        assert got.status == 200, f"acknowledged {pid} lost after kill -9"
        assert got.data["promise"] == record


def test_sigterm_drains_in_flight_and_refuses_new_work(make_server: Any) -> None:
    s = make_server("--api-http-timeout", "5s")
    acked: dict[str, dict[str, Any]] = {}
    statuses: list[int] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=hammer, args=(s, f"g{n}", acked, statuses, stop)) for n in range(8)
    ]
    for t in threads:
        t.start()
    while len(acked) < 200:
        time.sleep(0.01)
    started = time.monotonic()
    s.signal(signal.SIGTERM)
    assert s.wait(timeout=10) == 0
    elapsed = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(10)
    assert elapsed < 5 + 1, f"shutdown took {elapsed:.1f}s with a 5s timeout"
    assert set(statuses) <= {200, 503}, f"unexpected statuses {set(statuses)}"
    c = make_server().client()
    for pid, record in acked.items():
        got = c.call("promise.get", {"id": pid})
        assert got.status == 200 and got.data["promise"] == record, pid


def test_requests_during_shutdown_get_503(make_server: Any) -> None:
    """While in-flight work drains after SIGTERM, new requests are told 503 and the process
    still exits in time."""
    s = make_server("--api-http-timeout", "5s")
    c = s.client()
    assert create(c, "before").status == 200
    body = json.dumps(
        {
            "kind": "promise.create",
            "head": {"corrId": "slow", "version": "2026-04-01"},
            "data": {"id": "slow", "timeoutAt": FAR},
        }
    )
    slow = socket.create_connection(("127.0.0.1", s.port))
    slow.sendall(
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:10].encode()
    )  # the rest of the body comes later: still in flight
    time.sleep(0.3)
    started = time.monotonic()
    s.signal(signal.SIGTERM)
    time.sleep(0.3)
    reply = create(c, "during")
    assert reply.status == 503, reply
    assert reply.data == "Server is shutting down"
    slow.sendall(body[10:].encode())
    answer = slow.recv(65536).decode()
    slow.close()
    assert answer.startswith("HTTP/1.1 "), answer
    assert s.wait() == 0
    assert time.monotonic() - started < 5 + 1


def test_dev_keeps_nothing(make_server: Any, workdir: Path) -> None:
    s = make_server(store=False, command="dev")
    c = s.client()
    assert create(c, "ephemeral").status == 200
    assert c.call("promise.get", {"id": "ephemeral"}).status == 200
    c.close()
    s.stop()
    c = make_server(store=False, command="dev").client()
    assert c.call("promise.get", {"id": "ephemeral"}).status == 404
    assert not list(workdir.glob("*.db"))
