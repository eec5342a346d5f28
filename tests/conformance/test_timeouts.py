"""Conformance: timeouts and debug.tick (protocol.md §8, scenarios 49–55; §2.4, §3.1)."""

from __future__ import annotations

from typing import Any

import pytest

from .helpers import (
    R,
    T,
    acquire,
    assert_invariants,
    create_ok,
    err,
    execute_msg,
    fulfill,
    heartbeat,
    listen,
    ok,
    snap,
    sorted_items,
    suspend,
    task,
    task_create_ok,
    tick,
    unblock_msg,
)

TARGET = "poll://any@g"
PID = "w"
TTL = 10_000
TOUT = T + 600_000


def lease(id: str, version: int, *, ttl: int = TTL, resumes: int = 0) -> dict[str, Any]:
    return task(id, "acquired", version, resumes, ttl=ttl, pid=PID)


def by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {x["id"]: x for x in items}


def child(id: str, origin: str, **extra: str) -> dict[str, str]:
    return {
        "resonate:origin": origin,
        "resonate:parent": origin,
        "resonate:branch": id,
        "resonate:target": TARGET,
        **extra,
    }


# --- 49 -------------------------------------------------------------------------------------


def test_s49_tick_expires_targeted_promise(rpc: Any) -> None:
    """Scenario 49: tick past timeout: rejected_timedout, task fulfilled, resume, unblock."""
    task_create_ok(rpc, "foo", TOUT, ttl=60_000)
    create_ok(rpc, "foo:1", T + 20_000, tags=child("foo:1", "foo"))
    ok(listen(rpc, "foo:1", "http://l1"))
    assert ok(suspend(rpc, "foo", 1, ["foo:1"])) == {}
    before = snap(rpc)
    assert_invariants(before)

    tick(rpc, T + 19_999)
    assert snap(rpc, T + 19_999) == before

    at = T + 25_000
    tick(rpc, at)
    s = snap(rpc, at)
    expired = by_id(s["promises"])["foo:1"]
    assert expired["state"] == "rejected_timedout"
    assert expired["settledAt"] == T + 20_000
    assert expired["value"] == {}
    tasks = by_id(s["tasks"])
    assert tasks["foo:1"] == task("foo:1", "fulfilled", 0)
    assert tasks["foo"] == task("foo", "pending", 1, resumes=1)
    assert s["promiseTimeouts"] == [{"id": "foo", "timeout": TOUT}]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": at + R}]
    assert s["callbacks"] == [] and s["listeners"] == []
    assert s["messages"] == sorted_items(
        [
            execute_msg(TARGET, "foo:1", 0),  # from its creation; delivery is paused
            execute_msg(TARGET, "foo", 1),
            unblock_msg("http://l1", expired),
        ]
    )
    assert_invariants(s)

    # ticking again changes nothing
    tick(rpc, at)
    assert snap(rpc, at) == s


def test_s49_tick_ignores_targetless_promise(rpc: Any) -> None:
    """Scenario 49 (with 18): tick expires only targeted promises."""
    p = create_ok(rpc, "plain", T + 1000)
    tick(rpc, T + 5000)
    assert snap(rpc, T + 5000)["promises"] == [p]


def test_s49_tick_boundary_is_inclusive(rpc: Any) -> None:
    """Scenario 49: a tick at exactly timeoutAt expires the promise."""
    create_ok(rpc, "foo", T + 1000, tags={"resonate:target": TARGET})
    tick(rpc, T + 1000)
    s = snap(rpc, T + 1000)
    assert s["promises"][0]["state"] == "rejected_timedout"
    assert s["promises"][0]["settledAt"] == T + 1000
    assert s["tasks"] == [task("foo", "fulfilled", 0)]
    assert s["taskTimeouts"] == [] and s["promiseTimeouts"] == []
    assert_invariants(s)


# --- 50 -------------------------------------------------------------------------------------


def test_s50_timer_promise_resolves_and_resumes(rpc: Any) -> None:
    """Scenario 50: a timer promise with target is resolved by the tick; the sleeper resumes."""
    task_create_ok(rpc, "foo", TOUT, ttl=60_000)
    timer = child("foo:1", "foo", **{"resonate:timer": "true"})
    create_ok(rpc, "foo:1", T + 5000, tags=timer)
    assert ok(suspend(rpc, "foo", 1, ["foo:1"])) == {}

    tick(rpc, T + 5000)
    s = snap(rpc, T + 5000)
    slept = by_id(s["promises"])["foo:1"]
    assert slept["state"] == "resolved"
    assert slept["settledAt"] == T + 5000
    tasks = by_id(s["tasks"])
    assert tasks["foo:1"] == task("foo:1", "fulfilled", 0)
    assert tasks["foo"] == task("foo", "pending", 1, resumes=1)
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 5000 + R}]
    assert execute_msg(TARGET, "foo", 1) in s["messages"]
    assert_invariants(s)

    assert ok(acquire(rpc, "foo", 1, time=T + 6000))["task"] == lease("foo", 2)


# --- 51 -------------------------------------------------------------------------------------


def test_s51_lease_expiry(rpc: Any) -> None:
    """Scenario 51: lease expiry gives pending (same v), execute(v), retry; old holder 409."""
    task_create_ok(rpc, "foo", TOUT, ttl=TTL)
    before = snap(rpc)
    tick(rpc, T + TTL - 1)
    assert snap(rpc, T + TTL - 1) == before

    tick(rpc, T + TTL)
    s = snap(rpc, T + TTL)
    assert s["tasks"] == [task("foo", "pending", 1)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + TTL + R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert s["promiseTimeouts"] == [{"id": "foo", "timeout": TOUT}]
    assert_invariants(s)

    # the old holder is fenced out
    err(fulfill(rpc, "foo", 1, time=T + TTL + 1), 409, "Task version mismatch or invalid state")
    assert ok(heartbeat(rpc, PID, [("foo", 1)], time=T + TTL + 2)) == {}
    assert snap(rpc, T + TTL + 2) == s

    out = ok(acquire(rpc, "foo", 1, pid="p2", time=T + TTL + 3))
    assert out["task"] == task("foo", "acquired", 2, ttl=TTL, pid="p2")
    assert_invariants(snap(rpc, T + TTL + 3))


def test_s51_lease_expiry_after_acquire_of_pending(rpc: Any) -> None:
    """Scenario 51: a lease from task.acquire expires back to pending at the acquired version."""
    create_ok(rpc, "foo", TOUT, tags={"resonate:target": TARGET})
    ok(acquire(rpc, "foo", 0, ttl=2000, time=T + 100))
    tick(rpc, T + 5000)
    s = snap(rpc, T + 5000)
    assert s["tasks"] == [task("foo", "pending", 1)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 5000 + R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert_invariants(s)


# --- 52 -------------------------------------------------------------------------------------


def test_s52_retry(rpc: Any) -> None:
    """Scenario 52: at the retry deadline the execute is re-upserted (same v), deadline tick+R."""
    create_ok(rpc, "foo", TOUT, tags={"resonate:target": TARGET})
    before = snap(rpc)
    assert before["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + R}]
    tick(rpc, T + R - 1)
    assert snap(rpc, T + R - 1) == before

    tick(rpc, T + R)
    s = snap(rpc, T + R)
    assert s["tasks"] == [task("foo", "pending", 0)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 2 * R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 0)]
    assert_invariants(s)

    late = T + 2 * R + 777
    tick(rpc, late)
    s = snap(rpc, late)
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": late + R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 0)]
    assert_invariants(s)


def test_s52_retry_after_release_keeps_version(rpc: Any) -> None:
    """Scenario 52: a released task's retry re-sends execute with its current version."""
    task_create_ok(rpc, "foo", TOUT)
    assert ok(rpc.call("task.release", {"id": "foo", "version": 1}, time=T + 10)) == {}
    tick(rpc, T + 10 + R)
    s = snap(rpc, T + 10 + R)
    assert s["tasks"] == [task("foo", "pending", 1)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 10 + 2 * R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert_invariants(s)


def test_s52_retry_does_not_touch_acquired(rpc: Any) -> None:
    """Scenario 52: a tick before the lease deadline leaves an acquired task alone."""
    create_ok(rpc, "foo", TOUT, tags={"resonate:target": TARGET})
    ok(acquire(rpc, "foo", 0, ttl=10 * R, time=T + 1))
    before = snap(rpc, T + 1)
    tick(rpc, T + 2 * R)
    assert snap(rpc, T + 2 * R) == before


# --- 53 -------------------------------------------------------------------------------------


def test_s53_debug_tick_validation(rpc: Any) -> None:
    """Scenario 53: tick needs an integer time equal to the debug time; success gives []."""
    err(
        rpc.call("debug.tick", {"time": T + 1}, time=T),
        400,
        "resonate:debug_time must equal data.time",
    )
    err(rpc.call("debug.tick", {}, time=T), 400, "Missing or invalid 'time' field")
    err(rpc.call("debug.tick", {"time": "1"}), 400, "Missing or invalid 'time' field")
    err(rpc.call("debug.tick", {"time": 1.5}), 400, "Missing or invalid 'time' field")
    assert ok(rpc.call("debug.tick", {"time": T}, time=T)) == []
    assert ok(rpc.call("debug.tick", {"time": T + 5})) == []


def test_s53_invalid_tick_does_nothing(rpc: Any) -> None:
    """Scenario 53: a rejected tick processes no timeouts."""
    create_ok(rpc, "foo", T + 1000, tags={"resonate:target": TARGET})
    before = snap(rpc)
    err(rpc.call("debug.tick", {"time": T + 5000}, time=T + 4000), 400)
    assert snap(rpc) == before


# --- 54 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lease_at", [T + 10_000, T + 4_000], ids=["same-time", "lease-earlier"])
def test_s54_promise_and_lease_expire_together(rpc: Any, lease_at: int) -> None:
    """Scenario 54: promise and lease due in one tick: task fulfilled, no execute."""
    task_create_ok(rpc, "foo", T + 10_000, ttl=lease_at - T)
    tick(rpc, T + 10_000)
    s = snap(rpc, T + 10_000)
    assert s["promises"][0]["state"] == "rejected_timedout"
    assert s["tasks"] == [task("foo", "fulfilled", 1)]
    assert s["taskTimeouts"] == [] and s["promiseTimeouts"] == []
    assert s["messages"] == []
    assert_invariants(s)


# --- 55 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("awaiter", "awaited"),
    [("r", "r:1"), ("r:9", "r:1"), ("r:1", "r:9")],
    ids=["root-awaits-child", "awaited-sorts-first", "awaiter-sorts-first"],
)
def test_s55_awaiter_expiring_with_awaited_not_resumed(
    rpc: Any, awaiter: str, awaited: str
) -> None:
    """Scenario 55: an awaiter whose own promise expires in the same tick is not resumed."""
    at = T + 10_000
    origin_tag = {} if awaiter == "r" else {"resonate:origin": "r"}
    task_create_ok(rpc, awaiter, at, tags=origin_tag, ttl=60_000)
    create_ok(rpc, awaited, at, tags=child(awaited, "r"))
    assert ok(suspend(rpc, awaiter, 1, [awaited])) == {}

    tick(rpc, at)
    s = snap(rpc, at)
    tasks = by_id(s["tasks"])
    assert tasks[awaiter] == task(awaiter, "fulfilled", 1)
    assert tasks[awaited] == task(awaited, "fulfilled", 0)
    assert all(p["state"] == "rejected_timedout" for p in s["promises"])
    assert s["callbacks"] == [] and s["taskTimeouts"] == [] and s["promiseTimeouts"] == []
    # only the awaited's execute from its creation; nothing for the awaiter
    assert s["messages"] == [execute_msg(TARGET, awaited, 0)]
    assert_invariants(s)
