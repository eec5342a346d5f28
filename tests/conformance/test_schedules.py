"""Conformance: schedules (protocol.md §8, scenarios 56–61; §1.5 schedule.*, §2.6, §3.1 step 4).

Project decisions tested here: the schedule id must not contain ``:`` (colon id scheme); cron is
standard unix cron in UTC (5 fields; 6 = seconds first; 7 = seconds first plus a year);
missed occurrences are **coalesced** into one promise for the latest due occurrence, and the
schedule then continues from the present.

T = 1_700_000_000_000 ms is Tuesday 2023-11-14 22:13:20 UTC.
"""

from __future__ import annotations

from typing import Any

import pytest

from .helpers import (
    SNAP_LISTS,
    R,
    T,
    assert_invariants,
    create_ok,
    err,
    execute_msg,
    get_ok,
    ok,
    schedule_create,
    schedule_get,
    schedule_get_ok,
    settle_ok,
    snap,
    task,
    tick,
)

TARGET = "poll://any@g"
MINUTE = 60_000
N = T + 40_000
"""The first ``* * * * *`` occurrence after T (22:14:00 UTC)."""
TEMPLATE = "{{.id}}-{{.timestamp}}"
HOUR = 3_600_000


def sched_ok(
    rpc: Any,
    id: str,
    cron: str = "* * * * *",
    promise_id: str = TEMPLATE,
    promise_timeout: int = HOUR,
    *,
    tags: dict[str, str] | None = None,
    param: dict[str, Any] | None = None,
    time: int = T,
) -> dict[str, Any]:
    """schedule.create that must succeed; returns the schedule record."""
    reply = schedule_create(
        rpc,
        id,
        cron,
        promise_id,
        promise_timeout,
        tags={"resonate:target": TARGET} if tags is None else tags,
        param=param,
        time=time,
    )
    return ok(reply)["schedule"]  # type: ignore[no-any-return]


def fired_tags(pid: str, sid: str, **user: str) -> dict[str, str]:
    """Tags of a promise fired by schedule ``sid`` with promise id ``pid``."""
    return {
        "resonate:target": TARGET,
        **user,
        "resonate:schedule": sid,
        "resonate:origin": pid,
        "resonate:branch": pid,
        "resonate:parent": pid,
        "resonate:prefix": pid,
    }


# --- 56 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"id": "a:b"}, "Schedule ID must not contain ':'"),
        ({"promiseTags": {}}, "promiseTags must include a resonate:target tag"),
        ({"promiseTags": {"k": "v"}}, "promiseTags must include a resonate:target tag"),
        ({"promiseTags": None}, None),
        ({"cron": "bad"}, "Invalid cron expression"),
        ({"promiseTimeout": -1}, "Promise timeout must be a non-negative integer"),
        ({"cron": ""}, "Cron expression is required"),
        ({"promiseId": ""}, "Promise ID template is required"),
        ({"id": ""}, "Schedule ID is required"),
        ({"promiseTimeout": 1.5}, None),
        ({"promiseTimeout": "10"}, None),
        ({"cron": None}, None),
    ],
    ids=[
        "colon-id",
        "empty-tags",
        "no-target",
        "null-tags",
        "bad-cron",
        "neg-timeout",
        "empty-cron",
        "empty-template",
        "empty-id",
        "float-timeout",
        "string-timeout",
        "null-cron",
    ],
)
def test_s56_schedule_create_validation(
    rpc: Any, data: dict[str, Any], message: str | None
) -> None:
    """Scenario 56: schedule.create 400s with the exact messages; nothing is stored."""
    body = {
        "id": "s",
        "cron": "* * * * *",
        "promiseId": TEMPLATE,
        "promiseTimeout": MINUTE,
        "promiseTags": {"resonate:target": TARGET},
        **data,
    }
    err(rpc.call("schedule.create", body, time=T), 400, message)
    sid = body["id"] or "s"
    err(schedule_get(rpc, sid), 404, "Schedule not found")


@pytest.mark.parametrize("missing", ["id", "cron", "promiseId", "promiseTimeout"])
def test_s56_schedule_create_missing_field(rpc: Any, missing: str) -> None:
    """Scenario 56: each required field missing gives 400."""
    body = {
        "id": "s",
        "cron": "* * * * *",
        "promiseId": TEMPLATE,
        "promiseTimeout": MINUTE,
        "promiseTags": {"resonate:target": TARGET},
    }
    del body[missing]
    err(rpc.call("schedule.create", body, time=T), 400)
    err(schedule_get(rpc, "s"), 404, "Schedule not found")


def test_s56_schedule_create_success_and_idempotent(rpc: Any) -> None:
    """Scenario 56: record shape (nextRunAt next minute, createdAt T, no lastRunAt); idempotent."""
    tags = {"resonate:target": TARGET, "team": "a"}
    param = {"headers": {"h": "v"}, "data": "eA=="}
    s = sched_ok(rpc, "s", promise_timeout=MINUTE, tags=tags, param=param)
    assert s == {
        "id": "s",
        "cron": "* * * * *",
        "promiseId": TEMPLATE,
        "promiseTimeout": MINUTE,
        "promiseParam": param,
        "promiseTags": tags,
        "createdAt": T,
        "nextRunAt": N,
    }
    assert schedule_get_ok(rpc, "s") == s
    assert schedule_get_ok(rpc, "s", time=T + 999_999) == s  # time-independent

    again = ok(
        schedule_create(
            rpc, "s", "0 * * * *", "other", 5, tags={"resonate:target": "x"}, time=T + 1000
        )
    )
    assert again == {"schedule": s}
    assert schedule_get_ok(rpc, "s") == s

    # creating a schedule makes no promise, task or message
    sn = snap(rpc)
    assert sn["promises"] == [] and sn["tasks"] == [] and sn["messages"] == []


def test_s56_schedule_defaults_and_lenient_target(rpc: Any) -> None:
    """Scenario 56: promiseParam defaults to {}; the target is not checked; '.' is allowed."""
    s = sched_ok(rpc, "a.b", tags={"resonate:target": "not a url"})
    assert s["promiseParam"] == {}
    assert s["promiseTags"] == {"resonate:target": "not a url"}
    assert "lastRunAt" not in s
    assert schedule_get_ok(rpc, "a.b") == s


def test_s56_schedule_get_missing(rpc: Any) -> None:
    """Scenario 56/61: schedule.get of a missing id gives 404 "Schedule not found"."""
    err(schedule_get(rpc, "nope"), 404, "Schedule not found")
    err(rpc.call("schedule.get", {"id": ""}, time=T), 400)
    err(rpc.call("schedule.get", {}, time=T), 400)


def test_s56_snap_has_no_schedules(rpc: Any) -> None:
    """Scenario 56: debug.snap keeps the v0.9.8 shape (no schedules key)."""
    sched_ok(rpc, "s")
    data = ok(rpc.call("debug.snap", {}, time=T))
    assert set(data) == set(SNAP_LISTS)


# --- 57 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "now", "next_run"),
    [
        ("* * * * *", T, N),
        ("* * * * *", T + 500, N),
        ("14 22 * * *", T, N),
        ("13 22 * * *", T, T - 20_000 + 86_400_000),  # strictly after: tomorrow
        ("0 * * * *", T, T + 2_800_000),
        ("*/5 * * * *", T, T + 100_000),
        ("0 12 * * 0", T, T + 395_200_000),  # Sunday 2023-11-19 12:00
        ("0 12 * * 7", T, T + 395_200_000),
        ("0 12 * * SUN", T, T + 395_200_000),
        ("0 12 * * 1", T, T + 481_600_000),  # Monday 2023-11-20 12:00
        ("0 12 * * MON", T, T + 481_600_000),
        ("0 0 1 12 *", T, T + 1_388_800_000),  # 2023-12-01 00:00
        ("0 0 1 DEC *", T, T + 1_388_800_000),
        ("30 * * * * *", T, T + 10_000),  # 6 fields: seconds first
        ("*/20 * * * * *", T, T + 20_000),  # :20 is now, so :40
        ("0 15 * * * *", T, T + 100_000),
        ("* * * * * *", T, T + 1000),
        ("* * * * * *", T + 999, T + 1000),
        ("0 0 0 1 1 * 2030", T, 1_893_456_000_000),  # 7 fields: year last
    ],
)
def test_s57_cron_dialects(rpc: Any, cron: str, now: int, next_run: int) -> None:
    """Scenario 57: 5/6/7-field crons in UTC; nextRunAt strictly after floor(now/1000) s."""
    s = sched_ok(rpc, "s", cron, time=now)
    assert s["cron"] == cron
    assert s["createdAt"] == now
    assert s["nextRunAt"] == next_run


@pytest.mark.parametrize(
    "cron",
    ["* * * *", "a b c d e", "61 * * * *", "* 24 * * *", "* * 32 * *", "* * * 13 *", "* * * * 8"],
)
def test_s57_cron_rejected(rpc: Any, cron: str) -> None:
    """Scenario 57: a 4-field or out-of-range cron gives 400 "Invalid cron expression"."""
    err(schedule_create(rpc, "s", cron, TEMPLATE, MINUTE, tags={"resonate:target": TARGET}),
        400, "Invalid cron expression")  # fmt: skip
    err(schedule_get(rpc, "s"), 404, "Schedule not found")


# --- 58 -------------------------------------------------------------------------------------


def test_s58_tick_fires_schedule(rpc: Any) -> None:
    """Scenario 58: tick at/after nextRunAt creates the templated promise, task and execute."""
    user_tags = {"team": "a", "resonate:origin": "user", "resonate:schedule": "user"}
    param = {"headers": {"h": "v"}, "data": "eA=="}
    sched_ok(rpc, "s", tags={"resonate:target": TARGET, **user_tags}, param=param)
    before = snap(rpc)

    tick(rpc, N - 1)
    assert snap(rpc, N - 1) == before
    assert "lastRunAt" not in schedule_get_ok(rpc, "s")

    now = N + 5000
    tick(rpc, now)
    pid = f"s-{N}"
    s = snap(rpc, now)
    assert s["promises"] == [
        {
            "id": pid,
            "state": "pending",
            "param": param,
            "value": {},
            "tags": fired_tags(pid, "s", team="a"),
            "timeoutAt": N + HOUR,
            "createdAt": N,
        }
    ]
    assert s["tasks"] == [task(pid, "pending", 0)]
    assert s["taskTimeouts"] == [{"id": pid, "type": 0, "timeout": now + R}]
    assert s["promiseTimeouts"] == [{"id": pid, "timeout": N + HOUR}]
    assert s["messages"] == [execute_msg(TARGET, pid, 0)]
    assert s["callbacks"] == [] and s["listeners"] == []
    assert_invariants(s)
    assert get_ok(rpc, pid, time=now) == s["promises"][0]

    sch = schedule_get_ok(rpc, "s")
    assert sch["lastRunAt"] == N
    assert sch["nextRunAt"] == N + MINUTE
    assert sch["createdAt"] == T

    # the same tick again fires nothing
    tick(rpc, now)
    assert snap(rpc, now) == s

    # the next occurrence fires a second promise
    tick(rpc, N + MINUTE)
    s2 = snap(rpc, N + MINUTE)
    assert [p["id"] for p in s2["promises"]] == [pid, f"s-{N + MINUTE}"]
    assert s2["promises"][1]["createdAt"] == N + MINUTE
    sch = schedule_get_ok(rpc, "s")
    assert (sch["lastRunAt"], sch["nextRunAt"]) == (N + MINUTE, N + 2 * MINUTE)
    assert_invariants(s2)


def test_s58_promise_born_timed_out_is_created_at_its_occurrence(rpc: Any) -> None:
    """§3.1 step 4: createdAt = fired_at even when the promise is born timed out."""
    sched_ok(rpc, "s", promise_timeout=1000, tags={"resonate:target": TARGET})
    tick(rpc, N + 5000)
    p = get_ok(rpc, f"s-{N}", time=N + 5000)
    assert (p["state"], p["createdAt"], p["settledAt"]) == ("rejected_timedout", N, N + 1000)


def test_s58_template_without_placeholders_and_several_schedules(rpc: Any) -> None:
    """Scenario 58: templates substitute only {{.id}}/{{.timestamp}}; all due schedules fire."""
    sched_ok(rpc, "a", promise_id="job.{{.id}}.at.{{.timestamp}}.{{.id}}")
    sched_ok(rpc, "b", "30 * * * * *", promise_id="fixed-b")
    tick(rpc, N)
    ids = [p["id"] for p in snap(rpc, N)["promises"]]
    assert ids == sorted([f"job.a.at.{N}.a", "fixed-b"])
    b = get_ok(rpc, "fixed-b", time=N)
    assert b["createdAt"] == T + 10_000  # 22:13:30, the only occurrence due by 22:14:00
    assert schedule_get_ok(rpc, "b")["nextRunAt"] == N + 30_000
    assert_invariants(snap(rpc, N))


# --- 59 -------------------------------------------------------------------------------------


def test_s59_missed_occurrences_are_coalesced(rpc: Any) -> None:
    """Scenario 59: a tick 3+ periods late makes ONE promise for the latest occurrence."""
    sched_ok(rpc, "s")
    now = N + 3 * MINUTE + 5000  # occurrences N, N+1m, N+2m, N+3m are all due
    latest = N + 3 * MINUTE
    tick(rpc, now)
    s = snap(rpc, now)
    pid = f"s-{latest}"
    assert [p["id"] for p in s["promises"]] == [pid]
    prom = s["promises"][0]
    assert prom["createdAt"] == latest
    assert prom["timeoutAt"] == latest + HOUR
    assert s["taskTimeouts"] == [{"id": pid, "type": 0, "timeout": now + R}]
    assert s["messages"] == [execute_msg(TARGET, pid, 0)]
    sch = schedule_get_ok(rpc, "s")
    assert sch["lastRunAt"] == latest
    assert sch["nextRunAt"] == latest + MINUTE
    assert_invariants(s)

    # no catch-up on later ticks: nothing until the next real occurrence
    tick(rpc, now + 1000)
    assert [p["id"] for p in snap(rpc, now + 1000)["promises"]] == [pid]
    tick(rpc, latest + MINUTE)
    ids = [p["id"] for p in snap(rpc, latest + MINUTE)["promises"]]
    assert ids == [pid, f"s-{latest + MINUTE}"]


def test_s59_coalesced_hourly(rpc: Any) -> None:
    """Scenario 59: an hourly schedule ticked hours late fires once, for the latest hour."""
    sched_ok(rpc, "h", "0 * * * *", promise_timeout=10 * HOUR)
    first = T + 2_800_000  # 23:00
    now = first + 3 * HOUR + 30 * MINUTE  # 02:30 next day
    tick(rpc, now)
    s = snap(rpc, now)
    assert [p["id"] for p in s["promises"]] == [f"h-{first + 3 * HOUR}"]
    sch = schedule_get_ok(rpc, "h")
    assert (sch["lastRunAt"], sch["nextRunAt"]) == (first + 3 * HOUR, first + 4 * HOUR)
    assert_invariants(s)


def test_s59_existing_promise_is_not_duplicated(rpc: Any) -> None:
    """Scenario 59: when the templated id exists, the firing changes nothing but the schedule."""
    sched_ok(rpc, "s", promise_id="job-{{.id}}")
    tick(rpc, N)
    first = get_ok(rpc, "job-s", time=N)
    assert first["state"] == "pending"
    done = settle_ok(rpc, "job-s", "resolved", time=N + 10)
    before = snap(rpc, N + 10)

    tick(rpc, N + MINUTE)
    s = snap(rpc, N + MINUTE)
    assert s == before
    assert get_ok(rpc, "job-s", time=N + MINUTE) == done
    sch = schedule_get_ok(rpc, "s")
    assert (sch["lastRunAt"], sch["nextRunAt"]) == (N + MINUTE, N + 2 * MINUTE)
    assert_invariants(s)


def test_s59_existing_targetless_promise_kept(rpc: Any) -> None:
    """Scenario 59: a pre-existing promise with the templated id is left as it is (no task)."""
    mine = create_ok(rpc, f"s-{N}", T + 10 * HOUR, tags={"k": "v"})
    sched_ok(rpc, "s")
    tick(rpc, N)
    s = snap(rpc, N)
    assert s["promises"] == [mine]
    assert s["tasks"] == [] and s["messages"] == []
    assert schedule_get_ok(rpc, "s")["lastRunAt"] == N
    assert_invariants(s)


# --- 60 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timer", "state"), [(False, "rejected_timedout"), (True, "resolved")], ids=["plain", "timer"]
)
def test_s60_promise_timeout_zero(rpc: Any, timer: bool, state: str) -> None:
    """Scenario 60: promiseTimeout 0: the promise is born timed out, task fulfilled, no execute."""
    tags = {"resonate:target": TARGET}
    if timer:
        tags["resonate:timer"] = "true"
    sched_ok(rpc, "s", promise_timeout=0, tags=tags)
    tick(rpc, N + 5000)
    pid = f"s-{N}"
    s = snap(rpc, N + 5000)
    extra = {"resonate:timer": "true"} if timer else {}
    assert s["promises"] == [
        {
            "id": pid,
            "state": state,
            "param": {},
            "value": {},
            "tags": fired_tags(pid, "s", **extra),
            "timeoutAt": N,
            "createdAt": N,
            "settledAt": N,
        }
    ]
    assert s["tasks"] == [task(pid, "fulfilled", 0)]
    assert s["taskTimeouts"] == [] and s["promiseTimeouts"] == [] and s["messages"] == []
    sch = schedule_get_ok(rpc, "s")
    assert (sch["lastRunAt"], sch["nextRunAt"]) == (N, N + MINUTE)
    assert_invariants(s)


def test_s60_fired_after_its_timeout(rpc: Any) -> None:
    """Scenario 60: a firing ticked after F + promiseTimeout is born settled too."""
    sched_ok(rpc, "s", promise_timeout=1000)
    tick(rpc, N + 5000)
    s = snap(rpc, N + 5000)
    prom = s["promises"][0]
    assert prom["id"] == f"s-{N}"
    assert prom["state"] == "rejected_timedout"
    assert prom["timeoutAt"] == prom["settledAt"] == N + 1000
    assert s["tasks"] == [task(prom["id"], "fulfilled", 0)]
    assert s["messages"] == [] and s["taskTimeouts"] == []
    assert_invariants(s)


# --- 61 -------------------------------------------------------------------------------------


def test_s61_schedule_delete(rpc: Any) -> None:
    """Scenario 61: delete gives {}; then get 404, no more firings, created promises stay."""
    sched_ok(rpc, "s")
    tick(rpc, N)
    created = get_ok(rpc, f"s-{N}", time=N)

    assert ok(rpc.call("schedule.delete", {"id": "s"}, time=N + 1)) == {}
    err(schedule_get(rpc, "s"), 404, "Schedule not found")
    err(rpc.call("schedule.delete", {"id": "s"}, time=N + 2), 404, "Schedule not found")
    err(rpc.call("schedule.delete", {"id": "nope"}, time=N + 2), 404, "Schedule not found")
    assert ok(rpc.call("schedule.search", {}, time=N + 2)) == {"schedules": []}

    tick(rpc, N + 5 * MINUTE)
    s = snap(rpc, N + 5 * MINUTE)
    assert s["promises"] == [created]
    assert_invariants(s)

    # the id can be used again, as a fresh schedule
    again = sched_ok(rpc, "s", "0 * * * *", time=N + 6 * MINUTE)
    assert again["createdAt"] == N + 6 * MINUTE and "lastRunAt" not in again


def test_s61_schedule_search(rpc: Any) -> None:
    """Scenario 61: search by promiseTags subset, ordered by id, default limit 10, cursor."""
    recs = {}
    for i in range(12):
        team = "a" if i % 3 == 0 else "b"
        sid = f"s{i:02d}"
        recs[sid] = sched_ok(rpc, sid, tags={"resonate:target": TARGET, "team": team})
    all_ids = sorted(recs)

    page1 = ok(rpc.call("schedule.search", {}, time=T))
    assert page1["schedules"] == [recs[i] for i in all_ids[:10]]
    assert page1["cursor"] == "s09"
    page2 = ok(rpc.call("schedule.search", {"cursor": "s09"}, time=T))
    assert page2 == {"schedules": [recs["s10"], recs["s11"]]}

    team_a = ok(rpc.call("schedule.search", {"tags": {"team": "a"}}, time=T))
    assert team_a == {"schedules": [recs[i] for i in ("s00", "s03", "s06", "s09")]}
    both = {"team": "a", "resonate:target": TARGET}
    assert ok(rpc.call("schedule.search", {"tags": both}, time=T)) == team_a
    for tags in ({"team": "c"}, {"team": "a", "x": "y"}, {"resonate:schedule": "s00"}):
        assert ok(rpc.call("schedule.search", {"tags": tags}, time=T)) == {"schedules": []}
    assert ok(rpc.call("schedule.search", {"tags": {}, "limit": 100}, time=T)) == {
        "schedules": [recs[i] for i in all_ids]
    }

    p = ok(rpc.call("schedule.search", {"tags": {"team": "a"}, "limit": 3}, time=T))
    assert [x["id"] for x in p["schedules"]] == ["s00", "s03", "s06"] and p["cursor"] == "s06"
    p = ok(
        rpc.call("schedule.search", {"tags": {"team": "a"}, "limit": 3, "cursor": "s06"}, time=T)
    )
    assert p == {"schedules": [recs["s09"]]}

    err(rpc.call("schedule.search", {"limit": 0}, time=T), 400)
    err(rpc.call("schedule.search", {"limit": 1001}, time=T), 400)
