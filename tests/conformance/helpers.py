"""Small helpers shared by the conformance tests (protocol.md §8).

Every call carries ``resonate:debug_time``; snapshots are normalised so that list order (which
the protocol leaves open for everything except ``promises``) does not matter.
"""

from __future__ import annotations

import json
from typing import Any

T = 1_700_000_000_000
"""Base time (ms) used by every test."""

R = 30_000
"""Default task retry timeout (ms)."""

VERSION = "2026-04-01"

TARGET_DEFAULT = "poll://any@default"


def ok(reply: Any, status: int = 200) -> Any:
    """Assert a successful reply with ``status`` and return its ``data``."""
    assert reply.status == status, reply
    assert reply.body is not None, reply
    assert reply.body["head"]["status"] == status, reply
    return reply.body["data"]


def err(reply: Any, status: int, message: str | None = None, *, prefix: str | None = None) -> str:
    """Assert an error reply: HTTP ``status``, envelope status, and a JSON-string ``data``."""
    assert reply.status == status, reply
    assert reply.body is not None, reply
    assert reply.body["head"]["status"] == status, reply
    data = reply.body["data"]
    assert isinstance(data, str), reply
    if message is not None:
        assert data == message, reply
    if prefix is not None:
        assert data.startswith(prefix), reply
    return data


def envelope(
    kind: Any,
    data: Any,
    *,
    corr_id: str = "c-1",
    version: str = VERSION,
    time: int | None = T,
    **head: Any,
) -> dict[str, Any]:
    """Build a raw request envelope (for tests that bypass ``Client.call``)."""
    h: dict[str, Any] = {"corrId": corr_id, "version": version, **head}
    if time is not None:
        h["resonate:debug_time"] = time
    return {"kind": kind, "head": h, "data": data}


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def create(
    rpc: Any,
    id: str,
    timeout_at: int,
    *,
    tags: dict[str, str] | None = None,
    param: dict[str, Any] | None = None,
    time: int = T,
) -> Any:
    """Send promise.create and return the reply (no assertion)."""
    data: dict[str, Any] = {"id": id, "timeoutAt": timeout_at}
    if tags is not None:
        data["tags"] = tags
    if param is not None:
        data["param"] = param
    return rpc.call("promise.create", data, time=time)


def create_ok(
    rpc: Any,
    id: str,
    timeout_at: int,
    *,
    tags: dict[str, str] | None = None,
    param: dict[str, Any] | None = None,
    time: int = T,
) -> dict[str, Any]:
    """promise.create that must succeed; returns the promise record."""
    return ok(create(rpc, id, timeout_at, tags=tags, param=param, time=time))["promise"]


def get(rpc: Any, id: str, *, time: int = T) -> Any:
    return rpc.call("promise.get", {"id": id}, time=time)


def get_ok(rpc: Any, id: str, *, time: int = T) -> dict[str, Any]:
    return ok(get(rpc, id, time=time))["promise"]


def settle(
    rpc: Any, id: str, state: str, *, value: dict[str, Any] | None = None, time: int = T
) -> Any:
    data: dict[str, Any] = {"id": id, "state": state}
    if value is not None:
        data["value"] = value
    return rpc.call("promise.settle", data, time=time)


def settle_ok(
    rpc: Any, id: str, state: str, *, value: dict[str, Any] | None = None, time: int = T
) -> dict[str, Any]:
    return ok(settle(rpc, id, state, value=value, time=time))["promise"]


def listen(rpc: Any, awaited: str, address: str, *, time: int = T) -> Any:
    return rpc.call(
        "promise.register_listener", {"awaited": awaited, "address": address}, time=time
    )


def callback(rpc: Any, awaited: str, awaiter: str, *, time: int = T) -> Any:
    return rpc.call(
        "promise.register_callback", {"awaited": awaited, "awaiter": awaiter}, time=time
    )


def search(rpc: Any, *, time: int = T, **data: Any) -> Any:
    return rpc.call("promise.search", data, time=time)


def tick(rpc: Any, time: int) -> None:
    """debug.tick to ``time``; v0.9.8 always answers ``[]``."""
    assert ok(rpc.call("debug.tick", {"time": time}, time=time)) == []


def _key(item: Any) -> str:
    return json.dumps(item, sort_keys=True)


def snap(rpc: Any, time: int = T) -> dict[str, Any]:
    """debug.snap with every list except ``promises`` sorted canonically."""
    data = ok(rpc.call("debug.snap", {}, time=time))
    assert isinstance(data, dict), data
    for name in (
        "promises",
        "promiseTimeouts",
        "callbacks",
        "listeners",
        "tasks",
        "taskTimeouts",
        "messages",
    ):
        assert isinstance(data.get(name), list), (name, data)
    ids = [p["id"] for p in data["promises"]]
    assert ids == sorted(ids), "snap promises must be ordered by id"
    for name in ("promiseTimeouts", "callbacks", "listeners", "tasks", "taskTimeouts", "messages"):
        data[name] = sorted(data[name], key=_key)
    return data


def sorted_items(items: list[Any]) -> list[Any]:
    """The canonical order used by :func:`snap`, for building expected lists."""
    return sorted(items, key=_key)


def execute_msg(address: str, id: str, version: int) -> dict[str, Any]:
    """A snapshot execute message (no ``serverUrl`` in snapshots)."""
    return {
        "address": address,
        "message": {
            "kind": "execute",
            "head": {},
            "data": {"task": {"id": id, "version": version}},
        },
    }


def unblock_msg(address: str, promise: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": address,
        "message": {"kind": "unblock", "head": {}, "data": {"promise": promise}},
    }


def task(id: str, state: str, version: int, resumes: int = 0, **lease: Any) -> dict[str, Any]:
    """A TaskRecord; pass ``ttl=`` and ``pid=`` only for acquired tasks."""
    return {"id": id, "state": state, "version": version, "resumes": resumes, **lease}


def pending_record(
    id: str,
    timeout_at: int,
    *,
    created_at: int = T,
    param: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The exact PromiseRecord of a freshly created pending promise."""
    return {
        "id": id,
        "state": "pending",
        "param": param or {},
        "value": {},
        "tags": tags or {},
        "timeoutAt": timeout_at,
        "createdAt": created_at,
    }
