"""The official SDKs against our server: real worker processes, real durable workflows.

Every test runs once per SDK (``py``: resonate-sdk 0.8.1, ``ts``: @resonatehq/sdk 0.11.5) on
its own server process. The durable functions are in ``py/interop_py.py`` and
``ts/interop_ts.mjs``; docs/interop.md says what each scenario proves.
"""

from __future__ import annotations

import base64
import json
import signal
import time
from collections import Counter

import pytest

from ..conftest import resonate
from .harness import Interop

WORKERS = "workers"


def fields(rows: list[list[str]], kind: str) -> list[int]:
    """The step indexes of the ``kind`` ("start"/"done") records, in file order."""
    return [int(r[1]) for r in rows if r[0] == kind]


def test_steps(interop: Interop) -> None:
    """1. Sequential ctx.run steps: correct result, each step executed once."""
    interop.worker(WORKERS)
    assert interop.call("rpc", id="steps1", func="steps", args=[5], target=WORKERS) == [
        [1, 3, 6, 10, 15]
    ]
    assert fields(interop.lines("steps1"), "done") == [1, 2, 3, 4, 5]
    assert interop.promise("steps1")["state"] == "resolved"


def test_durable_sleep(interop: Interop) -> None:
    """2. A 1 s durable sleep: the server's timer resumes the workflow, no sooner."""
    interop.worker(WORKERS)
    [res] = interop.call("rpc", id="sleep1", func="sleeper", args=[1000], target=WORKERS)
    assert 1000 <= res["slept_ms"] < 20_000, res


def test_fan_out_fan_in(interop: Interop) -> None:
    """3. Eight ctx.run / beginRun children run in parallel and are gathered in order."""
    interop.worker(WORKERS)
    n = 8
    res = interop.call("rpc", id="fan1", func="fanout", args=[n, 1000], target=WORKERS)
    assert res == [[i * i for i in range(n)]]
    rows = interop.lines("fan1")
    assert sorted(fields(rows, "start")) == list(range(n))
    assert sorted(fields(rows, "done")) == list(range(n))
    kinds = [r[0] for r in rows]
    last_start = max(i for i, k in enumerate(kinds) if k == "start")
    first_done = kinds.index("done")
    assert last_start < first_done, f"children did not overlap: {rows}"


def test_rpc_to_another_group(interop: Interop) -> None:
    """4. A workflow on group alpha calls a function registered only on group beta."""
    interop.worker("alpha")
    beta = interop.worker("beta", role="remote")
    [res] = interop.call("rpc", id="rpc1", func="caller", args=[41, "beta"], target="alpha")
    assert res == {"caller_group": "alpha", "remote": {"sum": 42, "group": "beta"}}
    rows = interop.lines("rpc1")
    assert [r[0] for r in rows] == ["remote_add"], rows
    assert rows[0] == ["remote_add", "41", "1", "beta", str(beta.pid)], rows


def test_external_promise(interop: Interop) -> None:
    """5. ctx.promise resolved by a separate client process; the workflow returns its value."""
    interop.worker(WORKERS)
    waiter = interop.spawn("rpc", id="ext1", func="approval", args=[], target=WORKERS)
    rows = interop.wait_for(lambda: interop.lines("ext1.promise"), 30, "the external promise id")
    promise_id = rows[0][0]
    assert promise_id.startswith("ext1:"), promise_id
    assert interop.promise(promise_id)["state"] == "pending"
    value = {"approved_by": "interop", "n": 7}
    resolved = interop.call("resolve", id=promise_id, value=value)
    assert resolved == {"id": promise_id, "state": "resolved", "value": value}
    assert interop.wait_result(waiter) == [{"approved": value}]
    assert interop.promise("ext1")["state"] == "resolved"


def test_run_deduplication(interop: Interop) -> None:
    """6. The same id run twice in each of two processes executes the function once."""
    a = interop.spawn("run", id="once1", func="once", args=[1500], times=2)
    b = interop.spawn("run", id="once1", func="once", args=[1500], times=2)
    results = interop.wait_result(a) + interop.wait_result(b)
    assert len(results) == 4
    assert all(r == results[0] for r in results), results
    # A later run of the completed id returns the stored result without executing again.
    assert interop.call("run", id="once1", func="once", args=[1500]) == [results[0]]
    execs = interop.lines("once1")
    assert len(execs) == 1, execs
    assert execs[0][1] == str(results[0]["pid"])


def test_schedule(interop: Interop) -> None:
    """7. A schedule (6-field cron, every second) fires its function; then it is deleted."""
    interop.worker(WORKERS)
    created = interop.call(
        "schedule-create",
        id="every1s",
        cron="* * * * * *",
        func="tick",
        args=["s1"],
        target=WORKERS,
    )
    assert created["id"] == "every1s" and created["cron"] == "* * * * * *", created
    rows = interop.wait_for(lambda: interop.lines("tick-s1"), 30, "the schedule to fire")
    assert interop.call("schedule-delete", id="every1s") == {"deleted": "every1s"}
    fired = rows[0][0]
    assert fired.startswith("every1s-"), fired
    assert interop.settled(fired)["state"] == "resolved"
    c = interop.server.client()
    try:
        assert c.call("schedule.get", {"id": "every1s"}).status == 404
        before = _schedule_promises(c)
        time.sleep(2.5)  # longer than two cron periods: a live schedule would fire again
        assert _schedule_promises(c) == before
    finally:
        c.close()


def _schedule_promises(c: object) -> set[str]:
    reply = c.call("promise.search", {"limit": 1000})  # type: ignore[attr-defined]
    assert reply.status == 200, reply
    return {p["id"] for p in reply.data["promises"] if p["id"].startswith("every1s-")}


def test_worker_crash_mid_step(interop: Interop) -> None:
    """8. SIGKILL the worker running step 2; the other worker of the group finishes.

    Steps completed before the kill are durable (not re-run); the killed step starts twice
    and completes once; every step completes exactly once. ttl 3 s: the lease lapses 3 s
    after the last heartbeat and the server re-dispatches the task to the group."""
    w1 = interop.worker(WORKERS, ttl_ms=3000)
    w2 = interop.worker(WORKERS, ttl_ms=3000)
    n = 5
    waiter = interop.spawn("rpc", id="crash1", func="crashy", args=[n, 800], target=WORKERS)

    def step2_started() -> list[str] | None:
        return next((r for r in interop.lines("crash1") if r[:2] == ["start", "2"]), None)

    row = interop.wait_for(step2_started, 30, "step 2 to start")
    victim, survivor = (w1, w2) if row[2] == str(w1.pid) else (w2, w1)
    assert row[2] == str(victim.pid), row
    victim.kill(signal.SIGKILL)
    assert interop.wait_result(waiter, 60) == [sum(range(n))]

    rows = interop.lines("crash1")
    done = fields(rows, "done")
    assert sorted(done) == list(range(n)), rows
    assert Counter(fields(rows, "start")) == {0: 1, 1: 1, 2: 2, 3: 1, 4: 1}, rows
    by_step = {int(r[1]): r[2] for r in rows if r[0] == "done"}
    assert by_step[0] == by_step[1] == str(victim.pid), rows
    assert by_step[2] == by_step[3] == by_step[4] == str(survivor.pid), rows


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_server_restart(interop: Interop, how: str) -> None:
    """9. The server restarts mid-workflow on the same port and database.

    sigterm: a graceful stop while the workflow sleeps durably (1.5 s timer); nothing is in
    flight, so every step completes exactly once.
    sigkill: kill -9 while step 1 (2.5 s) runs on the worker. Workers reconnect by themselves
    and the workflow completes; steps settled before the kill never run again. The Python SDK
    resends a request that failed to connect until the server answers, so step 1 settles once.
    The TypeScript SDK treats a connection error as a platform failure and abandons that
    execution; the task is re-dispatched when its lease (10 s) expires, so when the restart
    outlasts the step, step 1 runs again (at-least-once)."""
    worker = interop.worker(WORKERS)
    wid = f"restart-{how}"
    interop.call("rpc", id=wid, func="napper", args=[1500, 2500], target=WORKERS, no_wait=True)
    if how == "sigterm":
        interop.wait_for(lambda: "done" in {r[0] for r in interop.lines(wid)}, 30, "step 0")
        assert interop.restart_server(signal.SIGTERM) == 0
    else:
        interop.wait_for(
            lambda: ["start", "1"] in [r[:2] for r in interop.lines(wid)], 30, "step 1 to start"
        )
        interop.restart_server(signal.SIGKILL)
    record = interop.settled(wid, 60)
    assert record["state"] == "resolved", record
    assert interop.call("get", id=wid) == 3
    rows = interop.lines(wid)
    if how == "sigterm" or interop.sdk == "py":
        assert fields(rows, "done") == [0, 1, 2], rows
        assert fields(rows, "start") == [0, 1, 2], rows
    else:
        done = Counter(fields(rows, "done"))
        assert done[0] == 1 and done[2] == 1 and 1 <= done[1] <= 2, rows
        if done[1] == 2:  # only for the documented cause: a request lost to the restart
            assert '"error_type":"connection_error"' in worker.output(), rows
        assert fields(rows, "done")[-1] == 2, rows


def test_resonate_invoke(interop: Interop) -> None:
    """`resonate invoke` starts a function registered by an SDK worker, from the shell."""
    interop.worker(WORKERS)
    out = resonate(
        "invoke",
        "invoked1",
        "--func",
        "steps",
        "--arg",
        "4",
        "--target",
        WORKERS,
        "-S",
        interop.server.url,
    )
    assert out.returncode == 0, out.stderr
    record = interop.settled("invoked1")
    assert record["state"] == "resolved", record
    assert json.loads(base64.b64decode(record["value"]["data"])) == [1, 3, 6, 10]
    assert fields(interop.lines("invoked1"), "done") == [1, 2, 3, 4]
