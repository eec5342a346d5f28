"""Conformance: task operations (protocol.md §8, scenarios 28–48; §1.5 task.*, §2.2, §2.3).

Colon id scheme: children of ``foo`` are ``foo:1``, ``foo:2``…; origin = text before the first
``:``. Heartbeats may span origins (project decision, overrides scenario 43's 400).
"""

from __future__ import annotations

from typing import Any

import pytest

from .helpers import (
    R,
    T,
    acquire,
    assert_invariants,
    callback,
    continue_,
    create_ok,
    err,
    execute_msg,
    fence,
    fulfill,
    get_ok,
    halt,
    heartbeat,
    listen,
    ok,
    pending_record,
    release,
    settle_ok,
    snap,
    sorted_items,
    suspend,
    task,
    task_create,
    task_create_ok,
    task_get,
    task_get_ok,
    tick,
    unblock_msg,
)

TARGET = "poll://any@g"
PID = "w"
TTL = 10_000
TOUT = T + 600_000
"""A timeoutAt far enough away that no test step reaches it by accident."""


def lease(
    id: str, version: int, *, pid: str = PID, ttl: int = TTL, resumes: int = 0
) -> dict[str, Any]:
    """An acquired TaskRecord."""
    return task(id, "acquired", version, resumes, ttl=ttl, pid=pid)


def timeouts_of(s: dict[str, Any], id: str) -> list[dict[str, Any]]:
    return [x for x in s["taskTimeouts"] if x["id"] == id]


def child_tags(
    id: str, origin: str, *, branch: str | None = None, target: bool = False
) -> dict[str, str]:
    """SDK-style lineage tags for a child ``id`` of ``origin``."""
    tags = {"resonate:origin": origin, "resonate:parent": origin, "resonate:branch": branch or id}
    if target:
        tags["resonate:target"] = TARGET
    return tags


def fence_create_data(id: str, timeout_at: int = TOUT, **tags: str) -> dict[str, Any]:
    return {"id": id, "timeoutAt": timeout_at, "tags": dict(tags)}


# --- 28 -------------------------------------------------------------------------------------


def test_s28_task_create_new(rpc: Any) -> None:
    """Scenario 28: task.create claims a new promise (v1 lease, no msg) and preloads its branch."""
    root = {"resonate:origin": "foo", "resonate:branch": "foo"}
    sib1 = create_ok(rpc, "foo:1", TOUT, tags={**root, "resonate:parent": "foo"})
    sib3 = create_ok(rpc, "foo:3", TOUT, tags={**root, "resonate:parent": "foo"})
    create_ok(rpc, "foo:2", TOUT, tags=child_tags("foo:2", "foo"))  # own branch: excluded
    create_ok(rpc, "bar", TOUT, tags={"resonate:branch": "bar"})  # other branch: excluded

    param = {"headers": {"a": "b"}, "data": "eA=="}
    out = ok(task_create(rpc, "foo", T + 60_000, tags=root, param=param, ttl=5000, pid="p1"))
    tags = {**root, "resonate:target": TARGET}
    assert out == {
        "task": task("foo", "acquired", 1, 0, ttl=5000, pid="p1"),
        "promise": pending_record("foo", T + 60_000, param=param, tags=tags),
        "preload": [sib1, sib3],
    }

    s = snap(rpc)
    assert s["tasks"] == [task("foo", "acquired", 1, 0, ttl=5000, pid="p1")]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 1, "timeout": T + 5000}]
    assert s["promiseTimeouts"] == [{"id": "foo", "timeout": T + 60_000}]
    assert s["messages"] == []
    assert s["callbacks"] == [] and s["listeners"] == []
    assert get_ok(rpc, "foo") == out["promise"]
    assert task_get_ok(rpc, "foo") == out["task"]
    assert_invariants(s)


def test_s28_task_create_without_branch_has_empty_preload(rpc: Any) -> None:
    """Scenario 28: a task promise without a branch tag gets preload []."""
    create_ok(rpc, "foo:1", TOUT, tags={"resonate:branch": "foo"})
    out = task_create_ok(rpc, "foo", TOUT)
    assert out["preload"] == []
    assert_invariants(snap(rpc))


# --- 29 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"target": None}, "Action must have a resonate:target tag"),
        ({"tags": {"resonate:delay": str(T + 1000)}}, "Action must not have a resonate:delay tag"),
        ({"ttl": 0}, "TTL must be a positive integer"),
        ({"ttl": -5}, "TTL must be a positive integer"),
        ({"pid": ""}, "Process ID is required"),
        ({"target": "poll://g"}, "Invalid resonate:target address"),
        ({"target": "not a url"}, "Invalid resonate:target address"),
        ({"tags": {"resonate:origin": "bar"}}, "Promise ID must be prefixed by resonate:origin"),
    ],
    ids=["no-target", "delay", "ttl0", "ttl-neg", "pid-empty", "no-cast", "not-url", "origin"],
)
def test_s29_task_create_validation(rpc: Any, overrides: dict[str, Any], message: str) -> None:
    """Scenario 29: task.create validation 400s; nothing is stored."""
    kwargs: dict[str, Any] = {"target": TARGET, **overrides}
    err(task_create(rpc, "foo", TOUT, **kwargs), 400, message)
    s = snap(rpc)
    assert s["promises"] == [] and s["tasks"] == [] and s["messages"] == []


def test_s29_task_create_missing_head_or_empty_id(rpc: Any) -> None:
    """Scenario 29: action.head is required; an empty promise id is a 400."""
    data = {
        "pid": PID,
        "ttl": TTL,
        "action": {
            "kind": "promise.create",
            "data": {"id": "foo", "timeoutAt": TOUT, "tags": {"resonate:target": TARGET}},
        },
    }
    err(rpc.call("task.create", data, time=T), 400)
    err(task_create(rpc, "", TOUT), 400, "Promise ID is required")
    assert snap(rpc)["promises"] == []


# --- 30 -------------------------------------------------------------------------------------


def test_s30_task_create_claims_existing_pending_task(rpc: Any) -> None:
    """Scenario 30: task.create on a pending task acquires it (v1); action param/tags ignored."""
    orig_tags = {"resonate:target": TARGET, "k": "1"}
    created = create_ok(rpc, "foo", T + 60_000, tags=orig_tags, param={"data": "YQ=="})
    out = ok(
        task_create(
            rpc,
            "foo",
            T + 90_000,
            tags={"k": "2"},
            param={"data": "Yg=="},
            target="poll://any@other",
            time=T + 1000,
        )
    )
    assert out["task"] == lease("foo", 1)
    assert out["promise"] == created
    assert out["preload"] == []

    s = snap(rpc, T + 1000)
    assert s["promises"] == [created]
    assert s["tasks"] == [lease("foo", 1)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 1, "timeout": T + 1000 + TTL}]
    assert s["promiseTimeouts"] == [{"id": "foo", "timeout": T + 60_000}]
    # acquiring does not remove the execute queued at creation
    assert s["messages"] == [execute_msg(TARGET, "foo", 0)]
    assert_invariants(s)


def test_s30_task_create_on_pending_task_after_release(rpc: Any) -> None:
    """Scenario 30: task.create on a released (pending v1) task claims it at v2."""
    task_create_ok(rpc, "foo", TOUT)
    assert ok(release(rpc, "foo", 1, time=T + 10)) == {}
    out = ok(task_create(rpc, "foo", TOUT, pid="p2", ttl=7000, time=T + 20))
    assert out["task"] == lease("foo", 2, pid="p2", ttl=7000)
    s = snap(rpc, T + 20)
    assert s["taskTimeouts"] == [{"id": "foo", "type": 1, "timeout": T + 20 + 7000}]
    assert_invariants(s)


# --- 31 -------------------------------------------------------------------------------------


def test_s31_task_create_conflicts(rpc: Any) -> None:
    """Scenario 31: task.create on acquired/suspended/halted gives 409 "Already exists"."""
    task_create_ok(rpc, "acq", TOUT)
    task_create_ok(rpc, "sus", TOUT)
    create_ok(rpc, "sus:1", TOUT)
    assert ok(suspend(rpc, "sus", 1, ["sus:1"])) == {}
    task_create_ok(rpc, "hal", TOUT)
    assert ok(halt(rpc, "hal")) == {}
    before = snap(rpc)

    for id in ("acq", "sus", "hal"):
        err(task_create(rpc, id, TOUT, pid="other", time=T + 5), 409, "Already exists")
    after = snap(rpc, T + 5)
    assert after == before
    assert_invariants(after)


def test_s31_task_create_on_fulfilled_task(rpc: Any) -> None:
    """Scenario 31: task.create on a fulfilled task returns it (no ttl/pid) with preload []."""
    root = {"resonate:origin": "foo", "resonate:branch": "foo"}
    create_ok(rpc, "foo:1", TOUT, tags={**root, "resonate:parent": "foo"})
    task_create_ok(rpc, "foo", TOUT, tags=root)
    done = ok(fulfill(rpc, "foo", 1, "resolved", value={"data": "dg=="}, time=T + 10))["promise"]
    assert done["state"] == "resolved"

    out = ok(task_create(rpc, "foo", TOUT, pid="other", time=T + 20))
    assert out == {"task": task("foo", "fulfilled", 1), "promise": done, "preload": []}
    s = snap(rpc, T + 20)
    assert s["tasks"] == [task("foo", "fulfilled", 1)]
    assert s["taskTimeouts"] == []
    assert_invariants(s)


def test_s31_task_create_on_promise_without_target(rpc: Any) -> None:
    """Scenario 31: task.create on an existing target-less promise gives 422."""
    p = create_ok(rpc, "foo", TOUT)
    err(
        task_create(rpc, "foo", TOUT, time=T + 1),
        422,
        "The promise does not have a resonate:target tag",
    )
    s = snap(rpc, T + 1)
    assert s["promises"] == [p] and s["tasks"] == []
    assert_invariants(s)


# --- 32 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timer", "state"), [(False, "rejected_timedout"), (True, "resolved")], ids=["plain", "timer"]
)
def test_s32_task_create_already_timed_out(rpc: Any, timer: bool, state: str) -> None:
    """Scenario 32: task.create with timeoutAt <= now: promise timed out, task fulfilled v0."""
    root = {"resonate:origin": "foo", "resonate:branch": "foo"}
    create_ok(rpc, "foo:1", TOUT, tags={**root, "resonate:parent": "foo"})
    tags = dict(root)
    if timer:
        tags["resonate:timer"] = "true"
    out = ok(task_create(rpc, "foo", T - 100, tags=tags))
    assert out["task"] == task("foo", "fulfilled", 0)
    assert out["preload"] == []
    prom = out["promise"]
    assert prom["state"] == state
    assert prom["createdAt"] == prom["settledAt"] == prom["timeoutAt"] == T - 100

    s = snap(rpc)
    assert s["tasks"] == [task("foo", "fulfilled", 0)]
    assert s["taskTimeouts"] == [] and s["promiseTimeouts"] == [] and s["messages"] == []
    assert_invariants(s)


def test_s32_task_create_at_exact_timeout(rpc: Any) -> None:
    """Scenario 32: the boundary is inclusive (timeoutAt == now is already timed out)."""
    out = ok(task_create(rpc, "foo", T))
    assert out["task"] == task("foo", "fulfilled", 0)
    assert out["promise"]["state"] == "rejected_timedout"
    assert_invariants(snap(rpc))


# --- 33 -------------------------------------------------------------------------------------


def test_s33_task_acquire(rpc: Any) -> None:
    """Scenario 33: acquire errors (404/409) and success (v+1, lease, old execute kept)."""
    err(acquire(rpc, "nope", 0), 404, "Task not found")
    create_ok(rpc, "plain", TOUT)
    err(acquire(rpc, "plain", 0), 404, "Task not found")

    root = {"resonate:origin": "foo", "resonate:branch": "foo"}
    sib = create_ok(rpc, "foo:1", TOUT, tags={**root, "resonate:parent": "foo"})
    prom = create_ok(rpc, "foo", TOUT, tags={**root, "resonate:target": TARGET})
    err(acquire(rpc, "foo", 1), 409, "Version mismatch")
    assert snap(rpc)["tasks"] == [task("foo", "pending", 0)]

    out = ok(acquire(rpc, "foo", 0, pid="p1", ttl=4000, time=T + 100))
    assert out == {
        "task": task("foo", "acquired", 1, ttl=4000, pid="p1"),
        "promise": prom,
        "preload": [sib],
    }
    s = snap(rpc, T + 100)
    assert s["tasks"] == [task("foo", "acquired", 1, ttl=4000, pid="p1")]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 1, "timeout": T + 100 + 4000}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 0)]
    assert_invariants(s)

    # acquired: state is checked before the version
    err(acquire(rpc, "foo", 1, time=T + 200), 409, "Task is not pending")
    err(acquire(rpc, "foo", 0, time=T + 200), 409, "Task is not pending")

    # suspended
    assert ok(suspend(rpc, "foo", 1, ["foo:1"], time=T + 300)) == {}
    err(acquire(rpc, "foo", 1, time=T + 400), 409, "Task is not pending")
    assert snap(rpc, T + 400)["tasks"] == [task("foo", "suspended", 1)]
    assert_invariants(snap(rpc, T + 400))


def test_s33_task_acquire_validation(rpc: Any) -> None:
    """Scenario 33: acquire request validation (negative version, ttl < 1, empty pid)."""
    create_ok(rpc, "foo", TOUT, tags={"resonate:target": TARGET})
    err(acquire(rpc, "foo", -1), 400, "Version must be a non-negative integer")
    err(acquire(rpc, "foo", 0, ttl=0), 400, "TTL must be a positive integer")
    err(acquire(rpc, "foo", 0, pid=""), 400, "Process ID is required")
    err(rpc.call("task.acquire", {"id": "foo", "version": 0, "pid": PID}, time=T), 400)
    assert snap(rpc)["tasks"] == [task("foo", "pending", 0)]


def test_s33_task_acquire_after_promise_timeout(rpc: Any) -> None:
    """Scenario 33: acquiring after the promise's timeout hits the ghost timeout: 409, fulfilled."""
    create_ok(rpc, "foo", T + 1000, tags={"resonate:target": TARGET})
    err(acquire(rpc, "foo", 0, time=T + 1000), 409, "Task is not pending")
    s = snap(rpc, T + 1000)
    assert s["tasks"] == [task("foo", "fulfilled", 0)]
    assert s["promises"][0]["state"] == "rejected_timedout"
    assert_invariants(s)


# --- 34 -------------------------------------------------------------------------------------


def test_s34_task_release(rpc: Any) -> None:
    """Scenario 34: release gives pending (same v), retry now+R and execute(v); re-acquire v+1."""
    task_create_ok(rpc, "foo", TOUT)
    err(release(rpc, "nope", 1), 404, "Task not found")
    err(release(rpc, "foo", 2), 409, "Task version mismatch or invalid state")
    err(release(rpc, "foo", 0), 409, "Task version mismatch or invalid state")

    assert ok(release(rpc, "foo", 1, time=T + 500)) == {}
    s = snap(rpc, T + 500)
    assert s["tasks"] == [task("foo", "pending", 1)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 500 + R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert s["promiseTimeouts"] == [{"id": "foo", "timeout": TOUT}]
    assert_invariants(s)
    assert task_get_ok(rpc, "foo", time=T + 500) == task("foo", "pending", 1)

    # releasing a pending task
    err(release(rpc, "foo", 1, time=T + 600), 409, "Task version mismatch or invalid state")

    out = ok(acquire(rpc, "foo", 1, time=T + 700))
    assert out["task"] == lease("foo", 2)
    s = snap(rpc, T + 700)
    assert s["taskTimeouts"] == [{"id": "foo", "type": 1, "timeout": T + 700 + TTL}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert_invariants(s)


def test_s34_release_suspended_or_fulfilled(rpc: Any) -> None:
    """Scenario 34: release of a suspended or fulfilled task gives 409 and changes nothing."""
    task_create_ok(rpc, "foo", TOUT)
    create_ok(rpc, "foo:1", TOUT)
    assert ok(suspend(rpc, "foo", 1, ["foo:1"])) == {}
    err(release(rpc, "foo", 1), 409, "Task version mismatch or invalid state")
    task_create_ok(rpc, "bar", TOUT)
    ok(fulfill(rpc, "bar", 1))
    err(release(rpc, "bar", 1), 409, "Task version mismatch or invalid state")
    s = snap(rpc)
    assert sorted_items(s["tasks"]) == sorted_items(
        [task("foo", "suspended", 1), task("bar", "fulfilled", 1)]
    )
    assert s["messages"] == []
    assert_invariants(s)


# --- 35 -------------------------------------------------------------------------------------


def test_s35_task_fulfill(rpc: Any) -> None:
    """Scenario 35: fulfill settles, fulfils, clears timeouts/own callbacks, resumes dependents."""
    # foo: acquired v2, with a stale not-ready callback on foo:b as awaiter
    task_create_ok(rpc, "foo", TOUT)
    create_ok(rpc, "foo:a", TOUT)
    create_ok(rpc, "foo:b", TOUT)
    assert ok(suspend(rpc, "foo", 1, ["foo:a", "foo:b"])) == {}
    settle_ok(rpc, "foo:a", "resolved", time=T + 10)
    ok(acquire(rpc, "foo", 1, time=T + 20))
    # foo:w: a task suspended on foo; plus a listener on foo
    task_create_ok(rpc, "foo:w", TOUT, tags={"resonate:origin": "foo"}, time=T + 30)
    assert ok(suspend(rpc, "foo:w", 1, ["foo"], time=T + 40)) == {}
    ok(listen(rpc, "foo", "http://listener", time=T + 50))
    s = snap(rpc, T + 50)
    assert sorted_items(s["callbacks"]) == sorted_items(
        [{"awaiter": "foo", "awaited": "foo:b"}, {"awaiter": "foo:w", "awaited": "foo"}]
    )
    assert_invariants(s)

    value = {"headers": {"h": "1"}, "data": "cmVzdWx0"}
    out = ok(fulfill(rpc, "foo", 2, "rejected", value=value, time=T + 100))
    done = out["promise"]
    assert out == {"promise": done}
    assert {k: done[k] for k in ("id", "state", "value", "settledAt")} == {
        "id": "foo",
        "state": "rejected",
        "value": value,
        "settledAt": T + 100,
    }
    assert get_ok(rpc, "foo", time=T + 100) == done

    s = snap(rpc, T + 100)
    tasks = {t["id"]: t for t in s["tasks"]}
    assert tasks["foo"] == task("foo", "fulfilled", 2)
    assert tasks["foo:w"] == task("foo:w", "pending", 1, resumes=1)
    assert timeouts_of(s, "foo") == []
    assert timeouts_of(s, "foo:w") == [{"id": "foo:w", "type": 0, "timeout": T + 100 + R}]
    assert [x["id"] for x in s["promiseTimeouts"]] == ["foo:w"]
    assert s["callbacks"] == []  # foo's own (foo:b) deleted; foo:w's became ready
    assert s["listeners"] == []
    # foo's execute v1 from its resume (T+10) is still queued: acquire does not remove it
    assert s["messages"] == sorted_items(
        [
            execute_msg(TARGET, "foo", 1),
            execute_msg(TARGET, "foo:w", 1),
            unblock_msg("http://listener", done),
        ]
    )
    assert_invariants(s)


def test_s35_task_fulfill_errors(rpc: Any) -> None:
    """Scenario 35: fulfill 409 (wrong version, not acquired), 400 (action id), 404 (missing)."""
    task_create_ok(rpc, "foo", TOUT)
    err(fulfill(rpc, "foo", 2), 409, "Task version mismatch or invalid state")
    err(fulfill(rpc, "foo", 1, action_id="foo:1"), 400, "Action ID must match the task ID")
    err(fulfill(rpc, "nope", 1), 404, "Task not found")
    create_ok(rpc, "bar", TOUT, tags={"resonate:target": TARGET})
    err(fulfill(rpc, "bar", 0), 409, "Task version mismatch or invalid state")
    err(
        rpc.call(
            "task.fulfill",
            {
                "id": "foo",
                "version": 1,
                "action": {
                    "kind": "promise.settle",
                    "head": {},
                    "data": {"id": "foo", "state": "rejected_timedout"},
                },
            },
            time=T,
        ),
        400,
    )
    s = snap(rpc)
    assert sorted_items(s["tasks"]) == sorted_items([lease("foo", 1), task("bar", "pending", 0)])
    assert all(p["state"] == "pending" for p in s["promises"])
    assert_invariants(s)


def test_s35_task_fulfill_after_timeout(rpc: Any) -> None:
    """Scenario 35: fulfill after the promise's timeout: the ghost timeout wins, 409."""
    task_create_ok(rpc, "foo", T + 5000, ttl=60_000)
    err(fulfill(rpc, "foo", 1, time=T + 5000), 409, "Task version mismatch or invalid state")
    s = snap(rpc, T + 5000)
    assert s["promises"][0]["state"] == "rejected_timedout"
    assert s["promises"][0]["settledAt"] == T + 5000
    assert s["tasks"] == [task("foo", "fulfilled", 1)]
    assert s["taskTimeouts"] == [] and s["promiseTimeouts"] == []
    assert_invariants(s)


def test_s35_task_fulfill_settled_promise(rpc: Any) -> None:
    """Scenario 35: fulfill is refused once the promise was settled by someone else."""
    task_create_ok(rpc, "foo", TOUT)
    settled = settle_ok(rpc, "foo", "rejected_canceled", time=T + 1)
    err(fulfill(rpc, "foo", 1, time=T + 2), 409, "Task version mismatch or invalid state")
    assert get_ok(rpc, "foo", time=T + 2) == settled


# --- 36 -------------------------------------------------------------------------------------


def test_s36_task_suspend_all_pending(rpc: Any) -> None:
    """Scenario 36: suspend on pending promises: 200 {}, suspended, no lease, callbacks listed."""
    task_create_ok(rpc, "foo", TOUT)
    create_ok(rpc, "foo:1", TOUT)
    create_ok(rpc, "foo:2", TOUT, tags={"resonate:target": TARGET})
    reply = suspend(rpc, "foo", 1, ["foo:1", "foo:2"], time=T + 10)
    assert reply.status == 200
    assert ok(reply) == {}

    s = snap(rpc, T + 10)
    tasks = {t["id"]: t for t in s["tasks"]}
    assert tasks["foo"] == task("foo", "suspended", 1)
    assert timeouts_of(s, "foo") == []
    assert s["callbacks"] == sorted_items(
        [{"awaiter": "foo", "awaited": "foo:1"}, {"awaiter": "foo", "awaited": "foo:2"}]
    )
    assert task_get_ok(rpc, "foo", time=T + 10) == task("foo", "suspended", 1)
    # the promise keeps its timeout; suspending again is refused
    assert {"id": "foo", "timeout": TOUT} in s["promiseTimeouts"]
    err(suspend(rpc, "foo", 1, ["foo:1"], time=T + 20), 409)
    assert_invariants(snap(rpc, T + 20))


def test_s36_task_suspend_clears_ready_callbacks(rpc: Any) -> None:
    """Scenario 36: a successful suspend deletes the task's ready rows (resumes becomes 0)."""
    task_create_ok(rpc, "foo", TOUT)
    create_ok(rpc, "foo:1", TOUT)
    create_ok(rpc, "foo:2", TOUT)
    settle_ok(rpc, "foo:2", "resolved")
    ok(callback(rpc, "foo:2", "foo"))
    assert task_get_ok(rpc, "foo") == lease("foo", 1, resumes=1)
    assert ok(suspend(rpc, "foo", 1, ["foo:1"], time=T + 1)) == {}
    s = snap(rpc, T + 1)
    assert s["tasks"] == [task("foo", "suspended", 1, resumes=0)]
    assert s["callbacks"] == [{"awaiter": "foo", "awaited": "foo:1"}]
    assert_invariants(s)


# --- 37 -------------------------------------------------------------------------------------


def test_s37_task_suspend_with_settled_awaited(rpc: Any) -> None:
    """Scenario 37: one awaited settled: 300 {preload}, still acquired, resumes 0, no callbacks."""
    root = {"resonate:origin": "foo", "resonate:branch": "foo"}
    kid = {**root, "resonate:parent": "foo"}
    task_create_ok(rpc, "foo", TOUT, tags=root)
    p1 = create_ok(rpc, "foo:1", TOUT, tags=kid)
    create_ok(rpc, "foo:2", TOUT, tags=kid)
    p2 = settle_ok(rpc, "foo:2", "resolved", value={"data": "eA=="}, time=T + 5)
    ok(callback(rpc, "foo:2", "foo", time=T + 6))  # a ready row: resumes 1
    assert task_get_ok(rpc, "foo", time=T + 6) == lease("foo", 1, resumes=1)

    reply = suspend(rpc, "foo", 1, ["foo:1", "foo:2"], time=T + 10)
    assert reply.status == 300, reply
    assert reply.body["head"]["status"] == 300
    assert reply.body["data"] == {"preload": [p1, p2]}

    s = snap(rpc, T + 10)
    assert s["tasks"] == [lease("foo", 1)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 1, "timeout": T + TTL}]
    assert s["callbacks"] == []
    assert s["messages"] == []
    assert_invariants(s)


# --- 38 -------------------------------------------------------------------------------------


def test_s38_task_suspend_errors(rpc: Any) -> None:
    """Scenario 38: suspend 422/409/404 and the 400 validation rules, state unchanged."""
    task_create_ok(rpc, "foo", TOUT)
    create_ok(rpc, "foo:1", TOUT)
    create_ok(rpc, "bar", TOUT)
    err(suspend(rpc, "foo", 1, ["foo:1", "foo:404"]), 422, "Awaited promise not found")
    err(suspend(rpc, "foo", 2, ["foo:1"]), 409, "Task is not acquired or version mismatch")
    err(suspend(rpc, "nope", 1, ["nope:1"]), 404, "Task not found")
    err(
        suspend(rpc, "foo", 1, ["foo:1"], awaiter="foo:9"),
        400,
        "All action awaiter IDs must match the task ID",
    )
    err(suspend(rpc, "foo", 1, ["foo"]), 400, "Awaited and awaiter must be different promises")
    err(suspend(rpc, "foo", 1, ["bar"]), 400, "Awaiter and awaited must belong to the same origin")
    err(suspend(rpc, "foo", 1, []), 400, "Actions array cannot be empty")
    err(suspend(rpc, "foo", -1, ["foo:1"]), 400, "Version must be a non-negative integer")

    s = snap(rpc)
    assert s["tasks"] == [lease("foo", 1)]
    assert s["callbacks"] == []
    assert_invariants(s)


def test_s38_task_suspend_pending_task(rpc: Any) -> None:
    """Scenario 38: suspending a pending (not acquired) task gives 409."""
    create_ok(rpc, "foo", TOUT, tags={"resonate:target": TARGET})
    create_ok(rpc, "foo:1", TOUT)
    err(suspend(rpc, "foo", 0, ["foo:1"]), 409, "Task is not acquired or version mismatch")
    assert snap(rpc)["callbacks"] == []


def test_s38_task_suspend_deduplicates_awaited(rpc: Any) -> None:
    """Scenario 38: duplicate awaited entries are de-duplicated (one callback row)."""
    task_create_ok(rpc, "foo", TOUT)
    create_ok(rpc, "foo:1", TOUT)
    create_ok(rpc, "foo:2", TOUT)
    assert ok(suspend(rpc, "foo", 1, ["foo:1", "foo:2", "foo:1"])) == {}
    s = snap(rpc)
    assert s["callbacks"] == sorted_items(
        [{"awaiter": "foo", "awaited": "foo:1"}, {"awaiter": "foo", "awaited": "foo:2"}]
    )
    settle_ok(rpc, "foo:1", "resolved", time=T + 1)
    assert task_get_ok(rpc, "foo", time=T + 1) == task("foo", "pending", 1, resumes=1)
    assert_invariants(snap(rpc, T + 1))


# --- 39 -------------------------------------------------------------------------------------


def test_s39_resume(rpc: Any) -> None:
    """Scenario 39: settle A resumes (pending, execute, resumes 1); B adds a resume; acquire."""
    task_create_ok(rpc, "foo", TOUT)
    create_ok(rpc, "foo:a", TOUT)
    create_ok(rpc, "foo:b", TOUT)
    assert ok(suspend(rpc, "foo", 1, ["foo:a", "foo:b"])) == {}

    settle_ok(rpc, "foo:a", "resolved", time=T + 100)
    s = snap(rpc, T + 100)
    assert s["tasks"] == [task("foo", "pending", 1, resumes=1)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 100 + R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert s["callbacks"] == [{"awaiter": "foo", "awaited": "foo:b"}]
    assert_invariants(s)

    settle_ok(rpc, "foo:b", "rejected", time=T + 200)
    s = snap(rpc, T + 200)
    assert s["tasks"] == [task("foo", "pending", 1, resumes=2)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 100 + R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert s["callbacks"] == []
    assert_invariants(s)
    assert task_get_ok(rpc, "foo", time=T + 200)["resumes"] == 2

    out = ok(acquire(rpc, "foo", 1, time=T + 300))
    assert out["task"] == lease("foo", 2)
    s = snap(rpc, T + 300)
    assert s["tasks"] == [lease("foo", 2)]
    assert_invariants(s)


# --- 40 -------------------------------------------------------------------------------------


def test_s40_stale_callback_resumes(rpc: Any) -> None:
    """Scenario 40: a not-ready callback from an earlier suspension survives and resumes later."""
    task_create_ok(rpc, "foo", TOUT)
    for c in ("foo:a", "foo:b", "foo:c"):
        create_ok(rpc, c, TOUT)
    assert ok(suspend(rpc, "foo", 1, ["foo:a", "foo:b"])) == {}
    settle_ok(rpc, "foo:a", "resolved", time=T + 10)
    ok(acquire(rpc, "foo", 1, time=T + 20))
    assert ok(suspend(rpc, "foo", 2, ["foo:c"], time=T + 30)) == {}
    s = snap(rpc, T + 30)
    assert s["tasks"] == [task("foo", "suspended", 2)]
    assert s["callbacks"] == sorted_items(
        [{"awaiter": "foo", "awaited": "foo:b"}, {"awaiter": "foo", "awaited": "foo:c"}]
    )
    assert_invariants(s)

    settle_ok(rpc, "foo:b", "resolved", time=T + 40)
    s = snap(rpc, T + 40)
    assert s["tasks"] == [task("foo", "pending", 2, resumes=1)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 40 + R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 2)]
    assert s["callbacks"] == [{"awaiter": "foo", "awaited": "foo:c"}]
    assert_invariants(s)


# --- 41 -------------------------------------------------------------------------------------


def test_s41_fence_create(rpc: Any) -> None:
    """Scenario 41: fenced create of an rpc child (task+execute) and a local child; corrId echo."""
    root = {"resonate:origin": "foo", "resonate:branch": "foo"}
    task_create_ok(rpc, "foo", TOUT, tags=root)

    rpc_child = fence_create_data("foo:1", T + 50_000, **child_tags("foo:1", "foo", target=True))
    reply = fence(rpc, "foo", 1, "promise.create", rpc_child, time=T + 10, corr_id="outer-41")
    out = ok(reply)
    child = out["action"]["data"]["promise"]
    assert child == pending_record(
        "foo:1", T + 50_000, created_at=T + 10, tags=child_tags("foo:1", "foo", target=True)
    )
    assert out == {
        "action": {
            "kind": "promise.create",
            "head": {"corrId": "outer-41", "status": 200, "version": "2026-04-01"},
            "data": {"promise": child},
        },
        "preload": [],
    }
    s = snap(rpc, T + 10)
    tasks = {t["id"]: t for t in s["tasks"]}
    assert tasks["foo:1"] == task("foo:1", "pending", 0)
    assert timeouts_of(s, "foo:1") == [{"id": "foo:1", "type": 0, "timeout": T + 10 + R}]
    assert {"id": "foo:1", "timeout": T + 50_000} in s["promiseTimeouts"]
    assert s["messages"] == [execute_msg(TARGET, "foo:1", 0)]
    assert_invariants(s)

    # repeat: same record, no new rows
    again = ok(fence(rpc, "foo", 1, "promise.create", rpc_child, time=T + 20, corr_id="o2"))
    assert again["action"]["data"] == {"promise": child}
    assert again["action"]["head"]["corrId"] == "o2"
    assert snap(rpc, T + 20) == s

    # a local child shares foo's branch, so the preload (computed after the action) includes it
    local = fence_create_data("foo:2", **{**root, "resonate:parent": "foo"})
    out = ok(fence(rpc, "foo", 1, "promise.create", local, time=T + 30))
    kid = out["action"]["data"]["promise"]
    assert kid["state"] == "pending" and kid["createdAt"] == T + 30
    assert out["preload"] == [kid]
    s = snap(rpc, T + 30)
    assert "foo:2" not in {t["id"] for t in s["tasks"]}
    assert_invariants(s)


def test_s41_fence_create_errors(rpc: Any) -> None:
    """Scenario 41: fence 409 (version, suspended), 404 (task), 400 (kind, id, data)."""
    task_create_ok(rpc, "foo", TOUT)
    good = fence_create_data("foo:1")
    err(fence(rpc, "foo", 2, "promise.create", good), 409, "Version mismatch")
    err(fence(rpc, "nope", 1, "promise.create", fence_create_data("nope:1")), 404, "Task not found")
    err(fence(rpc, "foo", 1, "promise.get", {"id": "foo:1"}), 400, "Invalid fence action kind")
    err(
        fence(rpc, "foo", 1, "promise.create", fence_create_data("foo")),
        400,
        "Action ID must not equal the task ID",
    )
    bad = {"id": "foo:1", "timeoutAt": "soon"}
    err(fence(rpc, "foo", 1, "promise.create", bad), 400, prefix="Invalid action data: ")
    err(
        fence(rpc, "foo", 1, "promise.create", {"id": "foo:1"}),
        400,
        prefix="Invalid action data: ",
    )
    err(
        fence(
            rpc, "foo", 1, "promise.create", fence_create_data("foo:1", **{"resonate:origin": "x"})
        ),
        400,
        "Promise ID must be prefixed by resonate:origin",
    )
    err(
        fence(
            rpc, "foo", 1, "promise.create", fence_create_data("foo:1", **{"resonate:target": "x"})
        ),
        400,
        "Invalid resonate:target address",
    )
    # parsing and validation come before the fence check
    err(fence(rpc, "nope", 1, "promise.get", {"id": "x"}), 400, "Invalid fence action kind")
    err(fence(rpc, "nope", 1, "promise.create", bad), 400, prefix="Invalid action data: ")

    create_ok(rpc, "foo:w", TOUT)
    assert ok(suspend(rpc, "foo", 1, ["foo:w"])) == {}
    err(fence(rpc, "foo", 1, "promise.create", good), 409, "Version mismatch")

    s = snap(rpc)
    assert [p["id"] for p in s["promises"]] == ["foo", "foo:w"]
    assert_invariants(s)


def test_s41_fence_bad_action_still_runs_the_ghost_timeout(rpc: Any) -> None:
    """Scenario 41 (§1.5): the ghost timeout on [id, action.data.id] comes before the kind and
    data checks, and commits although the fence answers 400."""
    create_ok(rpc, "a", T + 1000)
    err(
        fence(rpc, "x", 0, "promise.get", {"id": "a"}, time=T + 2000),
        400,
        "Invalid fence action kind",
    )
    a = get_ok(rpc, "a", time=T + 1000)  # an earlier time: only a stored settlement shows
    assert (a["state"], a["settledAt"]) == ("rejected_timedout", T + 1000)

    task_create_ok(rpc, "b", T + 1000)
    bad = fence_create_data("b:1", **{"resonate:origin": "other"})
    err(fence(rpc, "b", 1, "promise.create", bad, time=T + 2000), 400)
    s = snap(rpc, T + 1000)
    assert next(p for p in s["promises"] if p["id"] == "b")["state"] == "rejected_timedout"
    assert next(t for t in s["tasks"] if t["id"] == "b")["state"] == "fulfilled"
    assert_invariants(s)


# --- 42 -------------------------------------------------------------------------------------


def test_s42_fence_settle(rpc: Any) -> None:
    """Scenario 42: fenced settle runs the full chain; a missing promise gives inner 404."""
    task_create_ok(rpc, "foo", TOUT)
    # foo:1: an rpc child (pending task v0) with a listener, awaited by task foo:9
    create_ok(rpc, "foo:1", TOUT, tags=child_tags("foo:1", "foo", target=True))
    ok(listen(rpc, "foo:1", "poll://uni@g/w1"))
    task_create_ok(rpc, "foo:9", TOUT, tags={"resonate:origin": "foo"})
    assert ok(suspend(rpc, "foo:9", 1, ["foo:1"])) == {}
    assert_invariants(snap(rpc))

    value = {"data": "b2s="}
    data = {"id": "foo:1", "state": "resolved", "value": value}
    out = ok(fence(rpc, "foo", 1, "promise.settle", data, time=T + 100, corr_id="outer-42"))
    settled = out["action"]["data"]["promise"]
    assert settled["state"] == "resolved" and settled["value"] == value
    assert settled["settledAt"] == T + 100
    assert out["action"]["kind"] == "promise.settle"
    assert out["action"]["head"] == {"corrId": "outer-42", "status": 200, "version": "2026-04-01"}
    assert out["preload"] == []

    s = snap(rpc, T + 100)
    tasks = {t["id"]: t for t in s["tasks"]}
    assert tasks["foo"] == lease("foo", 1)
    assert tasks["foo:1"] == task("foo:1", "fulfilled", 0)
    assert tasks["foo:9"] == task("foo:9", "pending", 1, resumes=1)
    assert timeouts_of(s, "foo:1") == []
    assert timeouts_of(s, "foo:9") == [{"id": "foo:9", "type": 0, "timeout": T + 100 + R}]
    assert s["callbacks"] == [] and s["listeners"] == []
    # foo:1's execute v0 from its creation is still queued (delivery is paused)
    assert s["messages"] == sorted_items(
        [
            execute_msg(TARGET, "foo:1", 0),
            execute_msg(TARGET, "foo:9", 1),
            unblock_msg("poll://uni@g/w1", settled),
        ]
    )
    assert_invariants(s)

    # already settled: inner 200 with the record unchanged
    again = {"id": "foo:1", "state": "rejected"}
    out = ok(fence(rpc, "foo", 1, "promise.settle", again, time=T + 200))
    assert out["action"]["data"] == {"promise": settled}
    assert out["action"]["head"]["status"] == 200


def test_s42_fence_settle_missing_promise(rpc: Any) -> None:
    """Scenario 42: fenced settle of a missing promise: outer 200, inner 404 "Promise not found"."""
    task_create_ok(rpc, "foo", TOUT)
    data = {"id": "foo:404", "state": "resolved"}
    reply = fence(rpc, "foo", 1, "promise.settle", data, corr_id="outer-404")
    assert reply.status == 200
    out = ok(reply)
    assert out == {
        "action": {
            "kind": "promise.settle",
            "head": {"corrId": "outer-404", "status": 404, "version": "2026-04-01"},
            "data": "Promise not found",
        },
        "preload": [],
    }
    bad = {"id": "foo:1", "state": "rejected_timedout"}
    err(fence(rpc, "foo", 1, "promise.settle", bad), 400, prefix="Invalid action data: ")
    err(fence(rpc, "foo", 9, "promise.settle", data), 409, "Version mismatch")
    err(fence(rpc, "nope", 1, "promise.settle", data), 404, "Task not found")
    assert_invariants(snap(rpc))


# --- 43 -------------------------------------------------------------------------------------


def test_s43_heartbeat(rpc: Any) -> None:
    """Scenario 43: heartbeat moves the matching lease to now+ttl; mismatches are no-ops."""
    task_create_ok(rpc, "foo", TOUT, ttl=10_000)
    assert ok(heartbeat(rpc, PID, [("foo", 1)], time=T + 4000)) == {}
    s = snap(rpc, T + 4000)
    assert s["taskTimeouts"] == [{"id": "foo", "type": 1, "timeout": T + 14_000}]
    assert s["tasks"] == [lease("foo", 1, ttl=10_000)]

    for pid, tasks in (
        ("other", [("foo", 1)]),
        (PID, [("foo", 0)]),
        (PID, [("foo", 2)]),
        (PID, [("nope", 1)]),
        (PID, [("", 1)]),
    ):
        assert ok(heartbeat(rpc, pid, tasks, time=T + 8000)) == {}
        assert snap(rpc, T + 8000)["taskTimeouts"] == [
            {"id": "foo", "type": 1, "timeout": T + 14_000}
        ]
    assert_invariants(snap(rpc, T + 8000))


def test_s43_heartbeat_validation(rpc: Any) -> None:
    """Scenario 43: empty tasks or empty pid give 400."""
    err(heartbeat(rpc, PID, []), 400, "Tasks array must not be empty")
    err(heartbeat(rpc, "", [("foo", 1)]), 400, "Process ID is required")
    err(rpc.call("task.heartbeat", {"pid": PID}, time=T), 400)


def test_s43_heartbeat_mixed_origins_accepted(rpc: Any) -> None:
    """Scenario 43 (project override): a heartbeat batch spanning origins is accepted, 200."""
    task_create_ok(rpc, "foo", TOUT)
    task_create_ok(rpc, "bar", TOUT)
    create_ok(rpc, "bar:1", TOUT, tags=child_tags("bar:1", "bar", target=True))
    ok(acquire(rpc, "bar:1", 0))
    reply = heartbeat(rpc, PID, [("foo", 1), ("bar", 1), ("bar:1", 1)], time=T + 3000)
    assert ok(reply) == {}
    s = snap(rpc, T + 3000)
    assert s["taskTimeouts"] == sorted_items(
        [{"id": i, "type": 1, "timeout": T + 3000 + TTL} for i in ("foo", "bar", "bar:1")]
    )
    assert_invariants(s)


def test_s43_heartbeat_revives_lapsed_lease(rpc: Any) -> None:
    """Scenario 43: a heartbeat after the lease deadline but before the tick revives the lease."""
    task_create_ok(rpc, "foo", TOUT, ttl=10_000)
    assert ok(heartbeat(rpc, PID, [("foo", 1)], time=T + 12_000)) == {}
    assert snap(rpc, T + 12_000)["taskTimeouts"] == [
        {"id": "foo", "type": 1, "timeout": T + 22_000}
    ]
    tick(rpc, T + 15_000)
    s = snap(rpc, T + 15_000)
    assert s["tasks"] == [lease("foo", 1, ttl=10_000)]
    assert s["messages"] == []
    assert_invariants(s)


def test_s43_heartbeat_does_not_touch_non_acquired(rpc: Any) -> None:
    """Scenario 43: heartbeat of a pending or suspended task is a silent no-op."""
    task_create_ok(rpc, "foo", TOUT)
    assert ok(release(rpc, "foo", 1)) == {}
    task_create_ok(rpc, "bar", TOUT)
    create_ok(rpc, "bar:1", TOUT)
    assert ok(suspend(rpc, "bar", 1, ["bar:1"])) == {}
    before = snap(rpc, T + 100)
    assert ok(heartbeat(rpc, PID, [("foo", 1), ("bar", 1)], time=T + 100)) == {}
    assert snap(rpc, T + 100) == before
    assert_invariants(before)


# --- 44 -------------------------------------------------------------------------------------


def test_s44_halt(rpc: Any) -> None:
    """Scenario 44: pending/acquired/suspended become halted (timeout gone, callbacks kept)."""
    create_ok(rpc, "pen", TOUT, tags={"resonate:target": TARGET})
    task_create_ok(rpc, "acq", TOUT)
    task_create_ok(rpc, "sus", TOUT)
    create_ok(rpc, "sus:1", TOUT)
    assert ok(suspend(rpc, "sus", 1, ["sus:1"])) == {}

    for id in ("pen", "acq", "sus"):
        assert ok(halt(rpc, id, time=T + 10)) == {}
    s = snap(rpc, T + 10)
    assert s["tasks"] == sorted_items(
        [task("pen", "halted", 0), task("acq", "halted", 1), task("sus", "halted", 1)]
    )
    assert s["taskTimeouts"] == []
    assert s["callbacks"] == [{"awaiter": "sus", "awaited": "sus:1"}]
    assert task_get_ok(rpc, "acq", time=T + 10) == task("acq", "halted", 1)
    assert_invariants(s)

    assert ok(halt(rpc, "acq", time=T + 20)) == {}  # idempotent
    assert snap(rpc, T + 20) == s

    err(halt(rpc, "nope"), 404, "Task not found")
    task_create_ok(rpc, "ful", TOUT)
    ok(fulfill(rpc, "ful", 1))
    err(halt(rpc, "ful", time=T + 30), 409, "Task is fulfilled")


def test_s44_operations_on_halted_task(rpc: Any) -> None:
    """Scenario 44: fulfill, acquire, suspend and release of a halted task give 409."""
    task_create_ok(rpc, "foo", TOUT)
    create_ok(rpc, "foo:1", TOUT)
    assert ok(halt(rpc, "foo")) == {}
    before = snap(rpc)
    err(fulfill(rpc, "foo", 1), 409, "Task version mismatch or invalid state")
    err(acquire(rpc, "foo", 1), 409, "Task is not pending")
    err(suspend(rpc, "foo", 1, ["foo:1"]), 409, "Task is not acquired or version mismatch")
    err(release(rpc, "foo", 1), 409, "Task version mismatch or invalid state")
    err(fence(rpc, "foo", 1, "promise.create", fence_create_data("foo:2")), 409, "Version mismatch")
    err(task_create(rpc, "foo", TOUT), 409, "Already exists")
    assert snap(rpc) == before


# --- 45 -------------------------------------------------------------------------------------


def test_s45_continue(rpc: Any) -> None:
    """Scenario 45: continue turns halted into pending (same v), retry now+R, execute(v)."""
    task_create_ok(rpc, "foo", TOUT)
    assert ok(halt(rpc, "foo", time=T + 10)) == {}
    assert ok(continue_(rpc, "foo", time=T + 20)) == {}
    s = snap(rpc, T + 20)
    assert s["tasks"] == [task("foo", "pending", 1)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 20 + R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert_invariants(s)

    err(continue_(rpc, "foo", time=T + 30), 409, "Task is not halted")
    err(continue_(rpc, "nope"), 404, "Task not found")
    ok(acquire(rpc, "foo", 1, time=T + 40))
    err(continue_(rpc, "foo", time=T + 50), 409, "Task is not halted")
    assert_invariants(snap(rpc, T + 50))


def test_s45_continue_fulfilled(rpc: Any) -> None:
    """Scenario 45: continue of a fulfilled task gives 409 "Task is not halted"."""
    task_create_ok(rpc, "foo", TOUT)
    ok(fulfill(rpc, "foo", 1))
    err(continue_(rpc, "foo"), 409, "Task is not halted")


# --- 46 -------------------------------------------------------------------------------------


def test_s46_halted_task_awaited_settles(rpc: Any) -> None:
    """Scenario 46: awaited settles while halted: resumes +1, stays halted; continue dispatches."""
    task_create_ok(rpc, "foo", TOUT)
    create_ok(rpc, "foo:1", TOUT)
    assert ok(suspend(rpc, "foo", 1, ["foo:1"])) == {}
    assert ok(halt(rpc, "foo", time=T + 10)) == {}
    settle_ok(rpc, "foo:1", "resolved", time=T + 20)
    s = snap(rpc, T + 20)
    assert s["tasks"] == [task("foo", "halted", 1, resumes=1)]
    assert s["taskTimeouts"] == [] and s["messages"] == [] and s["callbacks"] == []
    assert_invariants(s)

    assert ok(continue_(rpc, "foo", time=T + 30)) == {}
    s = snap(rpc, T + 30)
    assert s["tasks"] == [task("foo", "pending", 1, resumes=1)]
    assert s["taskTimeouts"] == [{"id": "foo", "type": 0, "timeout": T + 30 + R}]
    assert s["messages"] == [execute_msg(TARGET, "foo", 1)]
    assert_invariants(s)

    assert ok(acquire(rpc, "foo", 1, time=T + 40))["task"] == lease("foo", 2)


# --- 47 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["get", "tick", "task.get"])
def test_s47_halted_task_promise_times_out(rpc: Any, via: str) -> None:
    """Scenario 47: a halted task whose own promise times out (ghost or tick) is fulfilled."""
    task_create_ok(rpc, "foo", T + 20_000)
    assert ok(halt(rpc, "foo", time=T + 10)) == {}
    at = T + 20_000
    if via == "get":
        assert get_ok(rpc, "foo", time=at)["state"] == "rejected_timedout"
    elif via == "task.get":
        assert task_get_ok(rpc, "foo", time=at) == task("foo", "fulfilled", 1)
    else:
        tick(rpc, at)
    s = snap(rpc, at)
    assert s["tasks"] == [task("foo", "fulfilled", 1)]
    assert s["promises"][0]["state"] == "rejected_timedout"
    assert s["promises"][0]["settledAt"] == at
    assert s["promiseTimeouts"] == [] and s["taskTimeouts"] == [] and s["messages"] == []
    assert_invariants(s)


# --- 48 -------------------------------------------------------------------------------------


def test_s48_task_get(rpc: Any) -> None:
    """Scenario 48: task.get shows ttl/pid only while acquired and resumes = ready callbacks."""
    err(task_get(rpc, "nope"), 404, "Task not found")
    create_ok(rpc, "plain", TOUT)
    err(task_get(rpc, "plain"), 404, "Task not found")
    err(rpc.call("task.get", {"id": ""}, time=T), 400)

    task_create_ok(rpc, "foo", TOUT, ttl=3000, pid="px")
    assert task_get_ok(rpc, "foo") == task("foo", "acquired", 1, 0, ttl=3000, pid="px")
    create_ok(rpc, "foo:1", TOUT)
    create_ok(rpc, "foo:2", TOUT)
    settle_ok(rpc, "foo:1", "resolved")
    settle_ok(rpc, "foo:2", "resolved")
    ok(callback(rpc, "foo:1", "foo"))
    ok(callback(rpc, "foo:2", "foo"))
    ok(callback(rpc, "foo:2", "foo"))  # idempotent
    assert task_get_ok(rpc, "foo") == task("foo", "acquired", 1, 2, ttl=3000, pid="px")
    assert ok(release(rpc, "foo", 1, time=T + 1)) == {}
    assert task_get_ok(rpc, "foo", time=T + 1) == task("foo", "pending", 1, 2)
    assert_invariants(snap(rpc, T + 1))


def test_s48_task_search(rpc: Any) -> None:
    """Scenario 48: task.search filters by state and paginates by id with a cursor."""
    for id in ("t1", "t2", "t3"):
        task_create_ok(rpc, id, TOUT)
    for id in ("u1", "u2"):
        create_ok(rpc, id, TOUT, tags={"resonate:target": TARGET})
    create_ok(rpc, "plain", TOUT)

    acquired = ok(rpc.call("task.search", {"state": "acquired"}, time=T))
    assert acquired == {"tasks": [lease("t1", 1), lease("t2", 1), lease("t3", 1)]}
    pending = ok(rpc.call("task.search", {"state": "pending"}, time=T))
    assert pending == {"tasks": [task("u1", "pending", 0), task("u2", "pending", 0)]}
    assert ok(rpc.call("task.search", {"state": "halted"}, time=T)) == {"tasks": []}
    everything = ok(rpc.call("task.search", {}, time=T))
    assert [t["id"] for t in everything["tasks"]] == ["t1", "t2", "t3", "u1", "u2"]
    assert "cursor" not in everything

    page1 = ok(rpc.call("task.search", {"limit": 2}, time=T))
    assert [t["id"] for t in page1["tasks"]] == ["t1", "t2"] and page1["cursor"] == "t2"
    page2 = ok(rpc.call("task.search", {"limit": 2, "cursor": "t2"}, time=T))
    assert [t["id"] for t in page2["tasks"]] == ["t3", "u1"] and page2["cursor"] == "u1"
    page3 = ok(rpc.call("task.search", {"limit": 2, "cursor": "u1"}, time=T))
    assert [t["id"] for t in page3["tasks"]] == ["u2"] and "cursor" not in page3
    page = ok(rpc.call("task.search", {"state": "acquired", "limit": 2, "cursor": "t1"}, time=T))
    assert page == {"tasks": [lease("t2", 1), lease("t3", 1)]}

    err(rpc.call("task.search", {"limit": 0}, time=T), 400)
    err(rpc.call("task.search", {"limit": 1001}, time=T), 400)
    err(rpc.call("task.search", {"state": "sleeping"}, time=T), 400)


def test_s48_task_search_no_ghost_timeout(rpc: Any) -> None:
    """Scenario 48: task.search reports stored state (no ghost timeout of expired promises)."""
    task_create_ok(rpc, "foo", T + 1000)
    out = ok(rpc.call("task.search", {"state": "acquired"}, time=T + 5000))
    assert out == {"tasks": [lease("foo", 1)]}
    assert snap(rpc, T + 5000)["tasks"] == [lease("foo", 1)]
