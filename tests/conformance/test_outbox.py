"""Conformance: the outbox (protocol.md §8 scenario 66; §2.5 and invariants M1–M3).

Delivery is paused by debug.start (the ``rpc`` fixture), so ``snap.messages`` is the outbox.
"""

from __future__ import annotations

from typing import Any

from .helpers import (
    R,
    T,
    acquire,
    assert_invariants,
    continue_,
    create_ok,
    execute_msg,
    halt,
    listen,
    ok,
    release,
    settle_ok,
    snap,
    sorted_items,
    suspend,
    task,
    task_create_ok,
    tick,
    unblock_msg,
)

TARGET = "poll://any@g"
TTL = 10_000
TOUT = T + 3_600_000


def executes(s: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in s["messages"] if m["message"]["kind"] == "execute"]


def test_s66_release_reacquire_release_keeps_one_execute(rpc: Any) -> None:
    """Scenario 66: release, re-acquire and release before delivery leave one execute (newest v)."""
    create_ok(rpc, "foo", TOUT, tags={"resonate:target": TARGET})
    assert snap(rpc)["messages"] == [execute_msg(TARGET, "foo", 0)]

    ok(acquire(rpc, "foo", 0, time=T + 1))
    assert snap(rpc, T + 1)["messages"] == [execute_msg(TARGET, "foo", 0)]
    assert ok(release(rpc, "foo", 1, time=T + 2)) == {}
    s = snap(rpc, T + 2)
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert_invariants(s)

    ok(acquire(rpc, "foo", 1, time=T + 3))
    assert ok(release(rpc, "foo", 2, time=T + 4)) == {}
    s = snap(rpc, T + 4)
    assert s["messages"] == [execute_msg(TARGET, "foo", 2)]
    assert s["tasks"] == [task("foo", "pending", 2)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 4 + R}]
    assert_invariants(s)


def test_s66_every_dispatch_path_upserts(rpc: Any) -> None:
    """Scenario 66: lease expiry, retry, resume and continue all overwrite the one execute row."""
    create_ok(rpc, "foo", TOUT, tags={"resonate:target": TARGET})
    ok(acquire(rpc, "foo", 0, ttl=TTL, time=T + 1))
    tick(rpc, T + 1 + TTL)  # lease expiry: pending v1
    assert snap(rpc, T + 1 + TTL)["messages"] == [execute_msg(TARGET, "foo", 1)]
    tick(rpc, T + 1 + TTL + R)  # retry
    s = snap(rpc, T + 1 + TTL + R)
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert_invariants(s)

    now = T + 1 + TTL + R + 10
    ok(acquire(rpc, "foo", 1, time=now))  # v2
    create_ok(rpc, "foo:1", TOUT, time=now)
    assert ok(suspend(rpc, "foo", 2, ["foo:1"], time=now + 1)) == {}
    settle_ok(rpc, "foo:1", "resolved", time=now + 2)  # resume: pending v2
    assert snap(rpc, now + 2)["messages"] == [execute_msg(TARGET, "foo", 2)]

    ok(acquire(rpc, "foo", 2, time=now + 3))  # v3
    assert ok(halt(rpc, "foo", time=now + 4)) == {}
    assert snap(rpc, now + 4)["messages"] == [execute_msg(TARGET, "foo", 2)]
    assert ok(continue_(rpc, "foo", time=now + 5)) == {}
    s = snap(rpc, now + 5)
    assert s["messages"] == [execute_msg(TARGET, "foo", 3)]
    assert s["tasks"] == sorted_items([task("foo", "pending", 3, resumes=0)])
    assert_invariants(s)


def test_s66_one_execute_per_task(rpc: Any) -> None:
    """Scenario 66: executes of different tasks coexist, one row each (M1)."""
    for id in ("a", "b", "c"):
        create_ok(rpc, id, TOUT, tags={"resonate:target": f"poll://any@{id}"})
    task_create_ok(rpc, "d", TOUT)  # the caller is the worker: no execute
    ok(acquire(rpc, "b", 0, time=T + 1))
    assert ok(release(rpc, "b", 1, time=T + 2)) == {}
    s = snap(rpc, T + 2)
    assert s["messages"] == sorted_items(
        [
            execute_msg("poll://any@a", "a", 0),
            execute_msg("poll://any@b", "b", 1),
            execute_msg("poll://any@c", "c", 0),
        ]
    )
    assert_invariants(s)


def test_s66_unblock_rows_are_unique(rpc: Any) -> None:
    """Scenario 66 (M2): one unblock per (promise, address), kept until delivery."""
    create_ok(rpc, "p", TOUT)
    create_ok(rpc, "q", TOUT)
    for awaited, address in (
        ("p", "http://a"),
        ("p", "http://a"),
        ("p", "http://b"),
        ("q", "http://a"),
    ):
        ok(listen(rpc, awaited, address))
    assert len(snap(rpc)["listeners"]) == 3
    p = settle_ok(rpc, "p", "resolved", time=T + 1)
    q = settle_ok(rpc, "q", "rejected", time=T + 2)
    s = snap(rpc, T + 2)
    assert s["messages"] == sorted_items(
        [unblock_msg("http://a", p), unblock_msg("http://b", p), unblock_msg("http://a", q)]
    )
    assert s["listeners"] == []
    # settling again, or registering on a settled promise, adds nothing
    settle_ok(rpc, "p", "rejected", time=T + 3)
    ok(listen(rpc, "p", "http://c", time=T + 3))
    assert snap(rpc, T + 3) == s
    assert_invariants(s)
