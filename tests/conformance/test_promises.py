"""Conformance: promises (protocol.md §8, scenarios 11–20, 22–25, 27).

Scenarios 21 and 26 need task.* operations and live in test_promise_task_interplay.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from .helpers import (
    R,
    T,
    callback,
    create_ok,
    err,
    execute_msg,
    get,
    get_ok,
    listen,
    ok,
    pending_record,
    search,
    settle,
    settle_ok,
    snap,
    sorted_items,
    task,
    tick,
    unblock_msg,
)

TARGET = "poll://any@g"
EMPTY_SNAP = {
    "promises": [],
    "promiseTimeouts": [],
    "callbacks": [],
    "listeners": [],
    "tasks": [],
    "taskTimeouts": [],
    "messages": [],
}


def ids(promises: list[dict[str, Any]]) -> list[str]:
    return [p["id"] for p in promises]


# --- 11 -------------------------------------------------------------------------------------


def test_s11_create_without_target(rpc: Any) -> None:
    """Scenario 11: target-less create is pending, exact record shape, no task/timeout/msg."""
    param = {"headers": {"h": "v"}, "data": "ZGF0YQ=="}
    p1 = create_ok(rpc, "p1", T + 10_000, param=param, tags={"k": "v"})
    assert p1 == pending_record("p1", T + 10_000, param=param, tags={"k": "v"})
    assert "settledAt" not in p1

    # headers present only if sent; an empty headers map round-trips as {}
    p2 = create_ok(rpc, "p2", T + 10_000, param={"data": "eA=="})
    assert p2["param"] == {"data": "eA=="}
    p3 = create_ok(rpc, "p3", T + 10_000)
    assert p3["param"] == {} and p3["tags"] == {} and p3["value"] == {}
    p4 = create_ok(rpc, "p4", T + 10_000, param={"headers": {}})
    assert p4["param"] == {"headers": {}}

    assert get_ok(rpc, "p1") == p1
    assert get_ok(rpc, "p2") == p2
    assert get_ok(rpc, "p4") == p4

    s = snap(rpc)
    assert s == {**EMPTY_SNAP, "promises": [p1, p2, p3, p4]}


# --- 12 -------------------------------------------------------------------------------------


def test_s12_create_with_target(rpc: Any) -> None:
    """Scenario 12: targeted create gives task pending v0, timeouts and one execute message."""
    tags = {"resonate:target": TARGET}
    p = create_ok(rpc, "p", T + 60_000, tags=tags)
    assert p == pending_record("p", T + 60_000, tags=tags)

    s = snap(rpc)
    assert s == {
        **EMPTY_SNAP,
        "promises": [p],
        "promiseTimeouts": [{"id": "p", "timeout": T + 60_000}],
        "tasks": [task("p", "pending", 0)],
        "taskTimeouts": [{"id": "p", "type": 0, "timeout": T + R}],
        "messages": [execute_msg(TARGET, "p", 0)],
    }


# --- 13 -------------------------------------------------------------------------------------


def test_s13_create_is_idempotent_first_write_wins(rpc: Any) -> None:
    """Scenario 13: a second create returns the first record and adds no rows or messages."""
    first = create_ok(
        rpc, "p", T + 60_000, param={"data": "YQ=="}, tags={"resonate:target": TARGET, "x": "1"}
    )
    s1 = snap(rpc)

    second = create_ok(
        rpc,
        "p",
        T + 90_000,
        param={"headers": {"a": "b"}, "data": "Yg=="},
        tags={"resonate:target": "poll://any@other", "x": "2"},
        time=T + 1000,
    )
    assert second == first
    assert snap(rpc, T + 1000) == s1

    # also for a target-less promise, and after it was settled
    create_ok(rpc, "q", T + 60_000, param={"data": "cQ=="})
    settled = settle_ok(rpc, "q", "resolved", value={"data": "dg=="}, time=T + 2000)
    again = create_ok(rpc, "q", T + 70_000, tags={"resonate:target": TARGET}, time=T + 3000)
    assert again == settled
    s3 = snap(rpc, T + 3000)
    assert s3["tasks"] == [task("p", "pending", 0)]
    assert s3["messages"] == [execute_msg(TARGET, "p", 0)]
    assert len(s3["promises"]) == 2


# --- 14 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_at", [T, T - 5000, 0], ids=["equal", "past", "zero"])
def test_s14_create_already_timed_out(rpc: Any, timeout_at: int) -> None:
    """Scenario 14: timeoutAt <= T gives rejected_timedout, createdAt = settledAt = timeoutAt."""
    p = create_ok(rpc, "p", timeout_at, param={"data": "eA=="})
    assert p == {
        "id": "p",
        "state": "rejected_timedout",
        "param": {"data": "eA=="},
        "value": {},
        "tags": {},
        "timeoutAt": timeout_at,
        "createdAt": timeout_at,
        "settledAt": timeout_at,
    }
    assert snap(rpc) == {**EMPTY_SNAP, "promises": [p]}


def test_s14_create_already_timed_out_timer_and_target(rpc: Any) -> None:
    """Scenario 14: timer tag resolves instead; with a target the task is fulfilled v0, no msg."""
    timer = create_ok(rpc, "timer", T - 1, tags={"resonate:timer": "true"})
    assert timer["state"] == "resolved"
    assert timer["createdAt"] == timer["settledAt"] == T - 1
    assert timer["value"] == {}

    not_timer = create_ok(rpc, "nottimer", T - 1, tags={"resonate:timer": "yes"})
    assert not_timer["state"] == "rejected_timedout"

    tgt_tags = {"resonate:target": TARGET}
    tgt = create_ok(rpc, "tgt", T, tags=tgt_tags)
    assert tgt == {
        "id": "tgt",
        "state": "rejected_timedout",
        "param": {},
        "value": {},
        "tags": tgt_tags,
        "timeoutAt": T,
        "createdAt": T,
        "settledAt": T,
    }
    both_tags = {"resonate:target": TARGET, "resonate:timer": "true"}
    both = create_ok(rpc, "tgttimer", T - 10, tags=both_tags)
    assert both["state"] == "resolved" and both["settledAt"] == T - 10

    s = snap(rpc)
    assert ids(s["promises"]) == ["nottimer", "tgt", "tgttimer", "timer"]
    assert s["tasks"] == sorted_items(
        [task("tgt", "fulfilled", 0), task("tgttimer", "fulfilled", 0)]
    )
    assert s["promiseTimeouts"] == []
    assert s["taskTimeouts"] == []
    assert s["messages"] == []
    assert s["callbacks"] == [] and s["listeners"] == []


# --- 15 -------------------------------------------------------------------------------------

BAD_CREATES: list[tuple[str, dict[str, Any], str]] = [
    ("empty-id", {"id": "", "timeoutAt": T + 1000}, "Promise ID is required"),
    ("nul-id", {"id": "a\x00b", "timeoutAt": T + 1000}, "Promise ID must not contain null bytes"),
    ("negative-timeout", {"id": "p", "timeoutAt": -1}, "TimeoutAt must be a non-negative integer"),
    (
        "origin-with-colon",
        {"id": "a:b", "timeoutAt": T + 1000, "tags": {"resonate:origin": "a:b"}},
        "resonate:origin must not contain ':'",
    ),
    (
        "id-not-extending-origin",
        {"id": "bar", "timeoutAt": T + 1000, "tags": {"resonate:origin": "foo"}},
        "Promise ID must be prefixed by resonate:origin",
    ),
    (
        "id-sharing-text-prefix-of-origin",
        {"id": "foobar", "timeoutAt": T + 1000, "tags": {"resonate:origin": "foo"}},
        "Promise ID must be prefixed by resonate:origin",
    ),
    (
        "id-not-extending-branch",
        {"id": "foo:1", "timeoutAt": T + 1000, "tags": {"resonate:branch": "foo:2"}},
        "Promise ID must be prefixed by resonate:branch",
    ),
    (
        "id-not-extending-parent",
        {"id": "foo:1", "timeoutAt": T + 1000, "tags": {"resonate:parent": "bar"}},
        "Promise ID must be prefixed by resonate:parent",
    ),
    (
        "prefix-with-colon",
        {"id": "p", "timeoutAt": T + 1000, "tags": {"resonate:prefix": "a:b"}},
        "resonate:prefix must not contain ':'",
    ),
    (
        "delay-not-integer",
        {
            "id": "p",
            "timeoutAt": T + 10_000,
            "tags": {"resonate:target": TARGET, "resonate:delay": "abc"},
        },
        "resonate:delay must be a non-negative integer",
    ),
    (
        "delay-negative",
        {
            "id": "p",
            "timeoutAt": T + 10_000,
            "tags": {"resonate:target": TARGET, "resonate:delay": "-1"},
        },
        "resonate:delay must be a non-negative integer",
    ),
    (
        "delay-equal-timeout",
        {
            "id": "p",
            "timeoutAt": T + 10_000,
            "tags": {"resonate:target": TARGET, "resonate:delay": str(T + 10_000)},
        },
        "resonate:delay must be less than timeoutAt",
    ),
    (
        "delay-after-timeout",
        {
            "id": "p",
            "timeoutAt": T + 10_000,
            "tags": {"resonate:target": TARGET, "resonate:delay": str(T + 20_000)},
        },
        "resonate:delay must be less than timeoutAt",
    ),
    (
        "delay-without-target",
        {"id": "p", "timeoutAt": T + 10_000, "tags": {"resonate:delay": str(T + 5000)}},
        "resonate:delay requires a resonate:target tag",
    ),
    (
        "target-no-cast",
        {"id": "p", "timeoutAt": T + 1000, "tags": {"resonate:target": "poll://g"}},
        "Invalid resonate:target address",
    ),
    (
        "target-bad-cast",
        {"id": "p", "timeoutAt": T + 1000, "tags": {"resonate:target": "poll://multi@g"}},
        "Invalid resonate:target address",
    ),
    (
        "target-unknown-scheme",
        {"id": "p", "timeoutAt": T + 1000, "tags": {"resonate:target": "foo://x"}},
        "Invalid resonate:target address",
    ),
    (
        "target-not-a-url",
        {"id": "p", "timeoutAt": T + 1000, "tags": {"resonate:target": "not a url"}},
        "Invalid resonate:target address",
    ),
]


@pytest.mark.parametrize(
    "data,message", [(d, m) for _, d, m in BAD_CREATES], ids=[n for n, _, _ in BAD_CREATES]
)
def test_s15_create_validation(rpc: Any, data: dict[str, Any], message: str) -> None:
    """Scenario 15: each create validation rule gives 400 with its exact message, nothing stored."""
    err(rpc.call("promise.create", data, time=T), 400, message)
    assert snap(rpc) == EMPTY_SNAP


@pytest.mark.parametrize(
    "data",
    [
        {"id": "p", "timeoutAt": T + 1000, "param": None},
        {"id": "p", "timeoutAt": T + 1000, "tags": None},
        {"id": "p", "timeoutAt": T + 1000, "tags": {"a": 1}},
        {"id": "p", "timeoutAt": T + 1000, "param": {"data": 5}},
        {"id": "p", "timeoutAt": T + 1000, "param": {"headers": {"a": None}}},
        {"id": 5, "timeoutAt": T + 1000},
        {"timeoutAt": T + 1000},
        {"id": "p"},
    ],
    ids=[
        "param-null",
        "tags-null",
        "tag-value-int",
        "param-data-int",
        "header-null",
        "id-int",
        "id-missing",
        "timeout-missing",
    ],
)
def test_s15_create_shape_errors(rpc: Any, data: dict[str, Any]) -> None:
    """Scenario 15 (§1.4): mistyped or missing create fields give 400 "Invalid request: …"."""
    err(rpc.call("promise.create", data, time=T), 400, prefix="Invalid request: ")
    assert snap(rpc) == EMPTY_SNAP


# --- 16 -------------------------------------------------------------------------------------


def test_s16_delay_defers_first_execute(rpc: Any) -> None:
    """Scenario 16: resonate:delay defers the first execute until the delay passes."""
    tags = {"resonate:target": TARGET, "resonate:delay": str(T + 5000)}
    p = create_ok(rpc, "p", T + 60_000, tags=tags)
    assert p == pending_record("p", T + 60_000, tags=tags)

    s = snap(rpc)
    assert s["tasks"] == [task("p", "pending", 0)]
    assert s["messages"] == []
    assert s["taskTimeouts"] == [{"id": "p", "type": 0, "timeout": T + 5000}]
    assert s["promiseTimeouts"] == [{"id": "p", "timeout": T + 60_000}]

    tick(rpc, T + 4999)
    s = snap(rpc, T + 4999)
    assert s["messages"] == []
    assert s["taskTimeouts"] == [{"id": "p", "type": 0, "timeout": T + 5000}]

    tick(rpc, T + 5000)
    s = snap(rpc, T + 5000)
    assert s["messages"] == [execute_msg(TARGET, "p", 0)]
    assert s["taskTimeouts"] == [{"id": "p", "type": 0, "timeout": T + 5000 + R}]
    assert s["tasks"] == [task("p", "pending", 0)]
    assert s["promises"][0]["state"] == "pending"


# --- 17 -------------------------------------------------------------------------------------


def test_s17_get(rpc: Any) -> None:
    """Scenario 17: get of a missing id is 404; get after timeout returns it timed out (stored)."""
    err(get(rpc, "missing"), 404, "Promise not found")

    created = create_ok(rpc, "p", T + 1000)
    assert get_ok(rpc, "p", time=T + 999) == created

    timed_out = get_ok(rpc, "p", time=T + 5000)
    assert timed_out == {**created, "state": "rejected_timedout", "settledAt": T + 1000}

    # persisted: search (which never projects) sees the settled state
    found = ok(search(rpc, time=T + 6000))["promises"]
    assert found == [timed_out]
    assert snap(rpc, T + 6000)["promises"] == [timed_out]

    # timer flavour resolves
    create_ok(rpc, "timer", T + 1000, tags={"resonate:timer": "true"})
    t = get_ok(rpc, "timer", time=T + 1000)
    assert t["state"] == "resolved" and t["settledAt"] == T + 1000 and t["value"] == {}


def test_s17_get_times_out_targeted_promise(rpc: Any) -> None:
    """Scenario 17 (§2.8): the ghost timeout on get also settles a targeted promise fully."""
    create_ok(rpc, "p", T + 1000, tags={"resonate:target": TARGET})
    got = get_ok(rpc, "p", time=T + 2000)
    assert got["state"] == "rejected_timedout" and got["settledAt"] == T + 1000
    s = snap(rpc, T + 2000)
    assert s["promises"] == [got]
    assert s["tasks"] == [task("p", "fulfilled", 0)]
    assert s["promiseTimeouts"] == []
    assert s["taskTimeouts"] == []


# --- 18 -------------------------------------------------------------------------------------


def test_s18_tick_ignores_targetless_promise(rpc: Any) -> None:
    """Scenario 18: tick does not expire a target-less promise; a later get does and unblocks."""
    created = create_ok(rpc, "p", T + 1000)
    assert ok(listen(rpc, "p", "http://a"))["promise"] == created

    tick(rpc, T + 2000)
    s = snap(rpc, T + 2000)
    assert s["promises"] == [created]
    assert s["listeners"] == [{"id": "p", "address": "http://a"}]
    assert s["messages"] == []
    assert s["promiseTimeouts"] == []

    got = get_ok(rpc, "p", time=T + 2000)
    assert got == {**created, "state": "rejected_timedout", "settledAt": T + 1000}
    s = snap(rpc, T + 2000)
    assert s["promises"] == [got]
    assert s["listeners"] == []
    assert s["messages"] == [unblock_msg("http://a", got)]


# --- 19 -------------------------------------------------------------------------------------


def test_s19_settle(rpc: Any) -> None:
    """Scenario 19: settle stores state/value/settledAt; re-settle returns the original record."""
    created = create_ok(rpc, "p", T + 60_000, param={"data": "cA=="})
    value = {"headers": {"h": "v"}, "data": "dmFs"}
    settled = settle_ok(rpc, "p", "resolved", value=value, time=T + 1000)
    assert settled == {**created, "state": "resolved", "value": value, "settledAt": T + 1000}
    assert get_ok(rpc, "p", time=T + 1500) == settled

    again = settle_ok(rpc, "p", "rejected", value={"data": "eA=="}, time=T + 2000)
    assert again == settled
    again = settle_ok(rpc, "p", "rejected_canceled", time=T + 70_000)
    assert again == settled

    err(settle(rpc, "missing", "resolved"), 404, "Promise not found")
    create_ok(rpc, "q", T + 60_000)
    err(settle(rpc, "q", "rejected_timedout"), 400, prefix="Invalid request: ")
    err(settle(rpc, "q", "pending"), 400, prefix="Invalid request: ")
    err(settle(rpc, "q", "bogus"), 400, prefix="Invalid request: ")
    err(rpc.call("promise.settle", {"id": "q"}, time=T), 400, prefix="Invalid request: ")
    err(
        rpc.call("promise.settle", {"id": "", "state": "resolved"}, time=T),
        400,
        "Promise ID is required",
    )
    assert get_ok(rpc, "q")["state"] == "pending"

    canceled = settle_ok(rpc, "q", "rejected_canceled", time=T + 10)
    assert canceled["state"] == "rejected_canceled"
    assert canceled["value"] == {} and canceled["settledAt"] == T + 10

    create_ok(rpc, "r", T + 60_000)
    assert settle_ok(rpc, "r", "rejected", value={"headers": {}})["value"] == {"headers": {}}


def test_s19_settle_targeted_pending(rpc: Any) -> None:
    """Scenario 19 (§2.8): settling a targeted promise fulfils its task and drops its timeouts."""
    create_ok(rpc, "p", T + 60_000, tags={"resonate:target": TARGET})
    settled = settle_ok(rpc, "p", "resolved", time=T + 1000)
    s = snap(rpc, T + 1000)
    assert s["promises"] == [settled]
    assert s["tasks"] == [task("p", "fulfilled", 0)]
    assert s["promiseTimeouts"] == []
    assert s["taskTimeouts"] == []


# --- 20 -------------------------------------------------------------------------------------


def test_s20_settle_at_exactly_timeout(rpc: Any) -> None:
    """Scenario 20: settling at exactly timeoutAt returns the timed-out record, value not stored."""
    created = create_ok(rpc, "p", T + 1000)
    got = settle_ok(rpc, "p", "resolved", value={"data": "eA=="}, time=T + 1000)
    assert got == {**created, "state": "rejected_timedout", "settledAt": T + 1000}

    create_ok(rpc, "timer", T + 1000, tags={"resonate:timer": "true"})
    got = settle_ok(rpc, "timer", "rejected", value={"data": "eA=="}, time=T + 1000)
    assert got["state"] == "resolved" and got["value"] == {} and got["settledAt"] == T + 1000

    # one millisecond earlier the settle wins
    create_ok(rpc, "early", T + 1000)
    got = settle_ok(rpc, "early", "resolved", value={"data": "eA=="}, time=T + 999)
    assert got["state"] == "resolved" and got["value"] == {"data": "eA=="}
    assert got["settledAt"] == T + 999


# --- 22 -------------------------------------------------------------------------------------


def test_s22_listeners_unblocked_on_settle(rpc: Any) -> None:
    """Scenario 22: duplicate listeners collapse; settle sends one unblock per address, clears."""
    created = create_ok(rpc, "p", T + 60_000)
    for address in ("http://a", "http://a", "poll://uni@g/w"):
        assert ok(listen(rpc, "p", address))["promise"] == created

    s = snap(rpc)
    assert s["listeners"] == sorted_items(
        [{"id": "p", "address": "http://a"}, {"id": "p", "address": "poll://uni@g/w"}]
    )
    assert s["messages"] == []

    settled = settle_ok(rpc, "p", "resolved", value={"data": "eA=="}, time=T + 1000)
    s = snap(rpc, T + 1000)
    assert s["listeners"] == []
    assert s["messages"] == sorted_items(
        [unblock_msg("http://a", settled), unblock_msg("poll://uni@g/w", settled)]
    )


# --- 23 -------------------------------------------------------------------------------------


def test_s23_register_listener_edge_cases(rpc: Any) -> None:
    """Scenario 23: listener on settled promise records nothing; missing 404; bad address 400."""
    create_ok(rpc, "p", T + 60_000)
    settled = settle_ok(rpc, "p", "resolved")
    assert ok(listen(rpc, "p", "http://a", time=T + 10))["promise"] == settled
    s = snap(rpc, T + 10)
    assert s["listeners"] == [] and s["messages"] == []

    err(listen(rpc, "missing", "http://a"), 404, "Awaited promise not found")

    create_ok(rpc, "q", T + 60_000)
    for bad in ("poll://g", "poll://x@g/w", "foo://x", "not a url"):
        err(listen(rpc, "q", bad), 400, "Invalid listener address")
    assert snap(rpc)["listeners"] == []

    # a listener on an expired (not yet processed) promise: ghost timeout, nothing recorded
    create_ok(rpc, "r", T + 1000)
    got = ok(listen(rpc, "r", "http://a", time=T + 1000))["promise"]
    assert got["state"] == "rejected_timedout" and got["settledAt"] == T + 1000
    s = snap(rpc, T + 1000)
    assert s["listeners"] == [] and s["messages"] == []


# --- 24 -------------------------------------------------------------------------------------


def test_s24_register_callback_errors(rpc: Any) -> None:
    """Scenario 24: register_callback 400 (same id, cross origin), 404 awaited, 422 awaiter."""
    create_ok(rpc, "foo", T + 60_000, tags={"resonate:target": TARGET})
    create_ok(rpc, "foo:1", T + 60_000)
    create_ok(rpc, "foo:2", T + 60_000)  # no target
    create_ok(rpc, "bar", T + 60_000, tags={"resonate:target": TARGET})

    err(callback(rpc, "foo", "foo"), 400, "Awaited and awaiter must be different promises")
    err(callback(rpc, "foo:1", "bar"), 400, "Awaiter and awaited must belong to the same origin")
    err(callback(rpc, "foo:9", "foo"), 404, "Awaited promise not found")
    err(callback(rpc, "foo:9", "foo:8"), 404, "Awaited promise not found")
    err(callback(rpc, "foo:1", "foo:8"), 422, "Awaiter promise not found")
    err(callback(rpc, "foo:1", "foo:2"), 422, "Awaiter promise has no resonate:target tag")
    err(
        rpc.call("promise.register_callback", {"awaited": "foo:1"}, time=T),
        400,
        prefix="Invalid request: ",
    )

    s = snap(rpc)
    assert s["callbacks"] == []
    assert s["tasks"] == sorted_items([task("bar", "pending", 0), task("foo", "pending", 0)])


# --- 25 -------------------------------------------------------------------------------------


def test_s25_register_callback_both_pending(rpc: Any) -> None:
    """Scenario 25: both pending gives a callback row; the reply is the awaited record."""
    create_ok(rpc, "foo", T + 60_000, tags={"resonate:target": TARGET})
    awaited = create_ok(rpc, "foo:1", T + 60_000, param={"data": "eA=="})

    assert ok(callback(rpc, "foo:1", "foo"))["promise"] == awaited
    assert ok(callback(rpc, "foo:1", "foo", time=T + 1))["promise"] == awaited  # idempotent
    s = snap(rpc, T + 1)
    assert s["callbacks"] == [{"awaiter": "foo", "awaited": "foo:1"}]
    assert s["tasks"] == [task("foo", "pending", 0)]
    assert s["messages"] == [execute_msg(TARGET, "foo", 0)]

    # awaited settles while the awaiter task is merely pending: a ready row, resumes 1,
    # no transition and no new message
    settle_ok(rpc, "foo:1", "resolved", time=T + 100)
    s = snap(rpc, T + 100)
    assert s["callbacks"] == []
    assert s["tasks"] == [task("foo", "pending", 0, resumes=1)]
    assert s["messages"] == [execute_msg(TARGET, "foo", 0)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + R}]


def test_s25_register_callback_awaiter_settled(rpc: Any) -> None:
    """Scenario 25 (§1.5): awaited pending but awaiter settled records nothing."""
    create_ok(rpc, "foo", T + 60_000, tags={"resonate:target": TARGET})
    awaited = create_ok(rpc, "foo:1", T + 60_000)
    settle_ok(rpc, "foo", "resolved")
    assert ok(callback(rpc, "foo:1", "foo", time=T + 1))["promise"] == awaited
    s = snap(rpc, T + 1)
    assert s["callbacks"] == []
    assert s["tasks"] == [task("foo", "fulfilled", 0)]


# --- 26 (the task-free part; acquired/suspended/halted awaiters are in the interplay file) ---


def test_s26_awaited_settled_pending_or_fulfilled_awaiter(rpc: Any) -> None:
    """Scenario 26 (§1.5): awaited settled: pending awaiter gets resumes 1, fulfilled nothing."""
    create_ok(rpc, "foo", T + 60_000, tags={"resonate:target": TARGET})
    create_ok(rpc, "foo:1", T + 60_000)
    awaited = settle_ok(rpc, "foo:1", "resolved", value={"data": "eA=="})
    assert ok(callback(rpc, "foo:1", "foo", time=T + 10))["promise"] == awaited
    assert ok(callback(rpc, "foo:1", "foo", time=T + 11))["promise"] == awaited  # no double count
    s = snap(rpc, T + 11)
    assert s["callbacks"] == []
    assert s["tasks"] == [task("foo", "pending", 0, resumes=1)]
    assert s["messages"] == [execute_msg(TARGET, "foo", 0)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + R}]

    create_ok(rpc, "bar", T + 60_000, tags={"resonate:target": TARGET})
    create_ok(rpc, "bar:1", T - 1)  # born timed out
    settle_ok(rpc, "bar", "resolved", time=T + 20)
    got = ok(callback(rpc, "bar:1", "bar", time=T + 30))["promise"]
    assert got["state"] == "rejected_timedout"
    s = snap(rpc, T + 30)
    assert s["callbacks"] == []
    assert task("bar", "fulfilled", 0) in s["tasks"]
    assert task("foo", "pending", 0, resumes=1) in s["tasks"]


# --- 27 -------------------------------------------------------------------------------------


def test_s27_search_state_exact(rpc: Any) -> None:
    """Scenario 27: the state filter is an exact match (rejected excludes rejected_canceled)."""
    for pid in ("a", "b", "c", "d", "e"):
        create_ok(rpc, pid, T + 60_000)
    settle_ok(rpc, "a", "resolved")
    settle_ok(rpc, "b", "rejected")
    settle_ok(rpc, "c", "rejected_canceled")
    create_ok(rpc, "f", T - 1)  # born rejected_timedout

    def by_state(state: str) -> list[str]:
        return ids(ok(search(rpc, state=state))["promises"])

    assert by_state("resolved") == ["a"]
    assert by_state("rejected") == ["b"]
    assert by_state("rejected_canceled") == ["c"]
    assert by_state("rejected_timedout") == ["f"]
    assert by_state("pending") == ["d", "e"]
    assert ids(ok(search(rpc))["promises"]) == ["a", "b", "c", "d", "e", "f"]
    err(search(rpc, state="bogus"), 400, prefix="Invalid request: ")


def test_s27_search_tags_subset(rpc: Any) -> None:
    """Scenario 27: tags is a subset match; {} matches everything."""
    create_ok(rpc, "p", T + 60_000, tags={"a": "1", "b": "2"})
    create_ok(rpc, "q", T + 60_000, tags={"a": "1"})
    create_ok(rpc, "r", T + 60_000, tags={"a": "2"})
    create_ok(rpc, "s", T + 60_000)

    def by_tags(tags: dict[str, str]) -> list[str]:
        return ids(ok(search(rpc, tags=tags))["promises"])

    assert by_tags({"a": "1"}) == ["p", "q"]
    assert by_tags({"a": "1", "b": "2"}) == ["p"]
    assert by_tags({"b": "1"}) == []
    assert by_tags({"c": "1"}) == []
    assert by_tags({}) == ["p", "q", "r", "s"]
    data = ok(search(rpc, tags={"a": "1"}, state="pending"))
    assert ids(data["promises"]) == ["p", "q"]
    assert data["promises"][0] == pending_record("p", T + 60_000, tags={"a": "1", "b": "2"})


def test_s27_search_pagination(rpc: Any) -> None:
    """Scenario 27: 3 matches with limit 2 give cursor = second id; next page 1 item, no cursor."""
    for pid in ("a", "_", "B"):  # binary order: "B" < "_" < "a"
        create_ok(rpc, pid, T + 60_000, tags={"k": "v"})
    create_ok(rpc, "other", T + 60_000)

    page1 = ok(search(rpc, tags={"k": "v"}, limit=2))
    assert ids(page1["promises"]) == ["B", "_"]
    assert page1["cursor"] == "_"

    page2 = ok(search(rpc, tags={"k": "v"}, limit=2, cursor=page1["cursor"]))
    assert ids(page2["promises"]) == ["a"]
    assert "cursor" not in page2

    exact = ok(search(rpc, tags={"k": "v"}, limit=3))
    assert ids(exact["promises"]) == ["B", "_", "a"] and "cursor" not in exact

    err(search(rpc, limit=0), 400, "Limit must be a positive integer")
    err(search(rpc, limit=-5), 400, "Limit must be a positive integer")
    err(search(rpc, limit=1001), 400, "Invalid 'limit' — must be between 1 and 1000")
    err(search(rpc, limit=1.5), 400, prefix="Invalid request: ")
    err(search(rpc, limit="2"), 400, prefix="Invalid request: ")
    assert len(ok(search(rpc, limit=1000))["promises"]) == 4


def test_s27_search_default_limit(rpc: Any) -> None:
    """Scenario 27: the default limit is 100."""
    names = [f"d{i:03d}" for i in range(101)]
    for name in names:
        create_ok(rpc, name, T + 60_000)
    data = ok(search(rpc))
    assert ids(data["promises"]) == names[:100]
    assert data["cursor"] == names[99]
    rest = ok(search(rpc, cursor=data["cursor"]))
    assert ids(rest["promises"]) == [names[100]] and "cursor" not in rest


def test_s27_search_no_projection(rpc: Any) -> None:
    """Scenario 27: search returns the stored state; expired-but-unprocessed stays pending."""
    created = create_ok(rpc, "p", T + 1000)
    found = ok(search(rpc, time=T + 5000))["promises"]
    assert found == [created]
    assert ids(ok(search(rpc, state="pending", time=T + 5000))["promises"]) == ["p"]
    assert ok(search(rpc, state="rejected_timedout", time=T + 5000))["promises"] == []
    assert snap(rpc, T + 5000)["promises"] == [created]
