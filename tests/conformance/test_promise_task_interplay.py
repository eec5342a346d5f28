"""Conformance: promise scenarios that need task.* operations (protocol.md §8: 6, 21, 26).

Kept apart from test_promises.py so that they can be judged separately while the task
operations land.
"""

from __future__ import annotations

from typing import Any

from .helpers import (
    R,
    T,
    callback,
    create_ok,
    err,
    execute_msg,
    ok,
    settle_ok,
    snap,
    task,
)

TARGET = "poll://any@g"
PID = "w"
TTL = 10_000


def task_create(rpc: Any, id: str, timeout_at: int, *, time: int = T) -> dict[str, Any]:
    """task.create that must succeed; returns its data ({task, promise, preload})."""
    data = {
        "pid": PID,
        "ttl": TTL,
        "action": {
            "kind": "promise.create",
            "head": {},
            "data": {"id": id, "timeoutAt": timeout_at, "tags": {"resonate:target": TARGET}},
        },
    }
    out = ok(rpc.call("task.create", data, time=time))
    assert out["task"] == task(id, "acquired", 1, ttl=TTL, pid=PID), out
    return out


def suspend(rpc: Any, id: str, version: int, awaited: list[str], *, time: int = T) -> Any:
    actions = [
        {"kind": "promise.register_callback", "head": {}, "data": {"awaited": a, "awaiter": id}}
        for a in awaited
    ]
    return rpc.call("task.suspend", {"id": id, "version": version, "actions": actions}, time=time)


def test_s06_http_status_300_and_409(rpc: Any) -> None:
    """Scenario 6: HTTP status equals head.status for 300 (suspend redirect) and 409."""
    task_create(rpc, "foo", T + 60_000)
    create_ok(rpc, "foo:1", T + 60_000)
    settle_ok(rpc, "foo:1", "resolved")
    reply = suspend(rpc, "foo", 1, ["foo:1"], time=T + 1)
    assert (reply.status, reply.body["head"]["status"]) == (300, 300), reply
    assert reply.body["data"] == {"preload": []}, reply

    create_ok(rpc, "bar", T + 60_000, tags={"resonate:target": TARGET})
    reply = rpc.call("task.acquire", {"id": "bar", "version": 5, "pid": PID, "ttl": TTL}, time=T)
    assert (reply.status, reply.body["head"]["status"]) == (409, 409), reply
    err(reply, 409, "Version mismatch")


def test_s21_settle_promise_of_acquired_task(rpc: Any) -> None:
    """Scenario 21: settling a promise whose task is acquired fulfils it; worker fulfill 409."""
    create_ok(rpc, "foo", T + 60_000, tags={"resonate:target": TARGET})
    acquired = ok(
        rpc.call("task.acquire", {"id": "foo", "version": 0, "pid": PID, "ttl": TTL}, time=T)
    )
    assert acquired["task"] == task("foo", "acquired", 1, ttl=TTL, pid=PID)
    s = snap(rpc)
    assert s["taskTimeouts"] == [{"id": "foo", "type": 1, "timeout": T + TTL}]

    settled = settle_ok(rpc, "foo", "resolved", value={"data": "eA=="}, time=T + 1000)
    assert settled["state"] == "resolved"
    s = snap(rpc, T + 1000)
    assert s["tasks"] == [task("foo", "fulfilled", 1)]
    assert s["taskTimeouts"] == []
    assert s["promiseTimeouts"] == []

    fulfill = {
        "id": "foo",
        "version": 1,
        "action": {
            "kind": "promise.settle",
            "head": {},
            "data": {"id": "foo", "state": "rejected", "value": {}},
        },
    }
    err(
        rpc.call("task.fulfill", fulfill, time=T + 2000),
        409,
        "Task version mismatch or invalid state",
    )

    hb = rpc.call(
        "task.heartbeat", {"pid": PID, "tasks": [{"id": "foo", "version": 1}]}, time=T + 3000
    )
    assert ok(hb) == {}
    after = snap(rpc, T + 3000)
    assert after["tasks"] == [task("foo", "fulfilled", 1)]
    assert after["taskTimeouts"] == []
    assert after["promises"] == [settled]
    got = ok(rpc.call("task.get", {"id": "foo"}, time=T + 3000))["task"]
    assert got == task("foo", "fulfilled", 1)


def test_s26_awaited_settled_acquired_awaiter(rpc: Any) -> None:
    """Scenario 26: awaited settled + acquired awaiter gives resumes 1 and no message."""
    task_create(rpc, "foo", T + 60_000)
    create_ok(rpc, "foo:1", T + 60_000)
    awaited = settle_ok(rpc, "foo:1", "resolved")
    assert ok(callback(rpc, "foo:1", "foo", time=T + 10))["promise"] == awaited
    s = snap(rpc, T + 10)
    assert s["tasks"] == [task("foo", "acquired", 1, resumes=1, ttl=TTL, pid=PID)]
    assert s["callbacks"] == []
    assert s["messages"] == []
    assert s["taskTimeouts"] == [{"id": "foo", "type": 1, "timeout": T + TTL}]


def test_s26_awaited_settled_suspended_awaiter(rpc: Any) -> None:
    """Scenario 26: awaited settled + suspended awaiter: pending, same version, execute, retry."""
    task_create(rpc, "bar", T + 60_000)
    create_ok(rpc, "bar:1", T + 60_000)
    assert ok(suspend(rpc, "bar", 1, ["bar:1"], time=T + 1)) == {}
    s = snap(rpc, T + 1)
    assert s["tasks"] == [task("bar", "suspended", 1)]
    assert s["taskTimeouts"] == []
    assert s["callbacks"] == [{"awaiter": "bar", "awaited": "bar:1"}]

    create_ok(rpc, "bar:2", T + 60_000, time=T + 2)
    awaited = settle_ok(rpc, "bar:2", "rejected", time=T + 3)
    assert ok(callback(rpc, "bar:2", "bar", time=T + 100))["promise"] == awaited
    s = snap(rpc, T + 100)
    assert s["tasks"] == [task("bar", "pending", 1)]  # no ready row: resumes stays 0
    assert s["messages"] == [execute_msg(TARGET, "bar", 1)]
    assert s["taskTimeouts"] == [{"id": "bar", "type": 0, "timeout": T + 100 + R}]
    assert s["callbacks"] == [{"awaiter": "bar", "awaited": "bar:1"}]


def test_s26_awaited_settled_halted_awaiter(rpc: Any) -> None:
    """Scenario 26: awaited settled + halted awaiter: nothing happens."""
    task_create(rpc, "baz", T + 60_000)
    assert ok(rpc.call("task.halt", {"id": "baz"}, time=T + 1)) == {}
    create_ok(rpc, "baz:1", T + 60_000)
    awaited = settle_ok(rpc, "baz:1", "resolved", time=T + 2)
    assert ok(callback(rpc, "baz:1", "baz", time=T + 10))["promise"] == awaited
    s = snap(rpc, T + 10)
    assert s["tasks"] == [task("baz", "halted", 1)]
    assert s["messages"] == []
    assert s["taskTimeouts"] == []
    assert s["callbacks"] == []
