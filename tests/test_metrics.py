"""The metrics plugin seen from outside: ``GET /metrics`` of a real server process.

Every server here gets its own free metrics port on loopback. Counters are checked as exact
differences between two scrapes; state gauges are checked against the store's own view
(``debug.snap``) and against a fresh count after a restart. Run with ``--store postgres``
for the same checks on PostgreSQL.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Client, ServerProcess, free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

HOUR_MS = 3_600_000
SEED_FAMILIES = ("promises_total", "api_requests_total", "api_duration_seconds")
FAMILIES = (
    *SEED_FAMILIES,
    "coroutines_in_flight",
    "tasks_total",
    "schedules_total",
    "resonate_promises_pending",
    "resonate_tasks_pending",
    "resonate_tasks_acquired",
    "resonate_request_total",
    "resonate_request_duration_seconds",
    "resonate_messages_total",
    "resonate_deliveries_total",
    "resonate_schedule_promises_total",
    "resonate_store_queued",
    "resonate_store_lanes",
    "resonate_store_transactions",
    "resonate_store_commits",
)


# --- helpers (also used by test_prometheus.py and test_restart_runbook.py) ---------------------


def metrics_text(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(resp.read().decode())


def scrape(port: int) -> tuple[set[str], Samples]:
    """The names (of families and samples) and every sample (name, labels) → value."""
    families: set[str] = set()
    samples: Samples = {}
    for fam in text_string_to_metric_families(metrics_text(port)):
        families.add(fam.name)
        for s in fam.samples:
            families.add(s.name)
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process ``pid`` listens on (from /proc; no external tools)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def metrics_server(make_server: Any, *flags: str, **kw: Any) -> tuple[ServerProcess, int]:
    port = free_port()
    s = make_server("--metrics-port", str(port), "--metrics-host", "127.0.0.1", *flags, **kw)
    return s, port


def create(c: Client, id: str, **tags: str) -> Any:
    now = int(time.time() * 1000)
    data = {"id": id, "timeoutAt": now + HOUR_MS, "param": {}, "tags": tags}
    reply = c.call("promise.create", data)
    assert reply.status == 200, reply
    return reply.data["promise"]


def settle(c: Client, id: str, state: str = "resolved") -> None:
    reply = c.call("promise.settle", {"id": id, "state": state, "value": {}})
    assert reply.status == 200, reply


def states_in_store(c: Client) -> tuple[Counter[str], Counter[str]]:
    """Promises and tasks per state, as the store has them (debug.snap)."""
    snap = c.call("debug.snap", {}).data
    return Counter(p["state"] for p in snap["promises"]), Counter(t["state"] for t in snap["tasks"])


# --- tests -------------------------------------------------------------------------------------


def test_every_family_after_traffic(make_server: Any) -> None:
    closed = free_port()  # nothing listens here: HTTP pushes to it fail
    s, port = metrics_server(
        make_server,
        "--debug",
        "--transports-http-retries",
        "0",
        "--transports-http-connect-timeout",
        "500ms",
    )
    c = s.client()
    _, before = scrape(port)

    for i in range(5):
        create(c, f"p{i}")
    for i in range(5):
        for _ in range(3):
            assert c.call("promise.get", {"id": f"p{i}"}).status == 200
    assert c.call("promise.get", {"id": "missing"}).status == 404
    settle(c, "p0")
    settle(c, "p1")
    settle(c, "p2", "rejected")
    assert c.post(b"this is not an envelope").status == 400
    create(c, "work", **{"resonate:target": "poll://any@nobody"})  # task; execute dropped
    create(c, "pushed", **{"resonate:target": f"http://127.0.0.1:{closed}/"})  # push fails
    acquire = {"id": "work", "version": 0, "pid": "w", "ttl": 60_000}
    assert c.call("task.acquire", acquire).status == 200
    due = int(time.time() * 1000) - 90_000  # created in the past: its first occurrence is due
    reply = c.call(
        "schedule.create",
        {
            "id": "every-minute",
            "cron": "* * * * *",
            "promiseId": "sched-{{.timestamp}}",
            "promiseTimeout": HOUR_MS,
            "promiseParam": {},
            "promiseTags": {"resonate:target": "poll://any@nobody"},
        },
        time=due,
    )
    assert reply.status == 200, reply

    def settled_down() -> Samples | None:
        _, now = scrape(port)
        done = (
            value(now, "resonate_deliveries_total", status="error") >= 1
            and value(now, "resonate_schedule_promises_total") >= 1
            and value(now, "resonate_messages_total", kind="execute") >= 2
        )
        return now if done else None

    after = wait_for(settled_down, "the push failure and the schedule firing")
    families, _ = scrape(port)
    assert set(FAMILIES) <= families, set(FAMILIES) - families
    assert {"process_cpu_seconds", "resonate_server_info"} <= families

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # exact request counts, per kind and status (upstream) and per status (seed)
    assert delta("resonate_request_total", kind="promise.get", status="200") == 15
    assert delta("resonate_request_total", kind="promise.get", status="404") == 1
    assert delta("resonate_request_total", kind="promise.settle", status="200") == 3
    assert delta("resonate_request_total", kind="promise.create", status="200") == 7
    assert delta("resonate_request_total", kind="unknown", status="400") == 1
    assert delta("api_requests_total", status="400") == 1  # the unreadable envelope counts
    assert delta("api_requests_total", status="404") == 1
    assert delta("api_requests_total", status="200") == 15 + 3 + 7 + 1 + 1
    assert delta("resonate_request_duration_seconds_count", kind="promise.get") == 16
    assert delta("api_duration_seconds_count") == sum(
        delta("api_requests_total", status=code) for code in ("200", "400", "404")
    )
    assert value(after, "resonate_request_duration_seconds_bucket", kind="promise.get", le="+Inf")
    # deliveries: the poll execute is a message but not an HTTP delivery
    assert delta("resonate_deliveries_total", status="success") == 0
    assert delta("resonate_deliveries_total", status="dropped") == 0
    assert delta("resonate_deliveries_total", status="error") >= 1
    # one firing per occurrence; the schedule itself stays active
    assert value(after, "schedules_total", state="active") == 1
    assert ("coroutines_in_flight", frozenset({("kind", "request")})) in after
    # the store's own account: every request above reached it; group commit shares commits
    transactions = delta("resonate_store_transactions_total")
    assert transactions >= 15 + 1 + 3 + 7 + 1 + 1
    assert 1 <= delta("resonate_store_commits_total") <= transactions
    assert ("resonate_store_queued", frozenset()) in after
    assert ("resonate_store_lanes", frozenset()) in after

    # the state gauges agree with the store
    promises, tasks = states_in_store(c)
    _, now = scrape(port)
    for state in ("pending", "resolved", "rejected", "rejected_canceled", "rejected_timedout"):
        assert value(now, "promises_total", state=state) == promises[state], state
    for state in ("pending", "acquired", "suspended", "halted", "fulfilled"):
        assert value(now, "tasks_total", state=state) == tasks[state], state
    assert value(now, "resonate_promises_pending") == promises["pending"] >= 4
    assert value(now, "resonate_tasks_acquired") == tasks["acquired"] == 1
    assert value(now, "resonate_tasks_pending") == tasks["pending"] >= 1
    assert value(now, "promises_total", state="resolved") == 2

    # debug.reset empties the store: the gauges follow
    assert c.call("debug.reset", {}).status == 200
    _, now = scrape(port)
    assert value(now, "promises_total", state="pending") == 0
    assert value(now, "schedules_total", state="active") == 0
    c.close()


def test_request_counter_moves_by_exactly_n(make_server: Any) -> None:
    s, port = metrics_server(make_server)
    c = s.client()
    create(c, "x")
    _, before = scrape(port)
    n = 37
    for _ in range(n):
        assert c.call("promise.get", {"id": "x"}).status == 200
    _, after = scrape(port)
    key = {"kind": "promise.get", "status": "200"}
    assert (
        value(after, "resonate_request_total", **key)
        - value(before, "resonate_request_total", **key)
        == n
    )
    c.close()


def test_backlog_gauges_are_initialized_from_the_store_after_a_restart(make_server: Any) -> None:
    s, _ = metrics_server(make_server)
    c = s.client()
    for i in range(4):
        create(c, f"r{i}")
    create(c, "t", **{"resonate:target": "poll://any@nobody"})
    settle(c, "r0")
    settle(c, "r1", "rejected_canceled")
    c.close()
    s.stop()

    s2, port2 = metrics_server(make_server)
    _, now = scrape(port2)
    assert value(now, "promises_total", state="pending") == 3
    assert value(now, "resonate_promises_pending") == 3
    assert value(now, "promises_total", state="resolved") == 1
    assert value(now, "promises_total", state="rejected_canceled") == 1
    assert value(now, "tasks_total", state="pending") == 1
    assert value(now, "resonate_tasks_pending") == 1
    # counters start again from zero: this process answered no request yet
    assert value(now, "api_requests_total", status="200") == 0
    c2 = s2.client()
    settle(c2, "r2")
    _, now = scrape(port2)
    assert value(now, "promises_total", state="pending") == 2
    assert value(now, "promises_total", state="resolved") == 2
    c2.close()


def test_port_zero_disables_the_listener(make_server: Any) -> None:
    s = make_server("--metrics-port", "0")
    assert s.proc is not None
    assert s.client().call("promise.get", {"id": "nope"}).status == 404
    assert listening_ports(s.proc.pid) == {s.port}
    assert "metrics disabled" in s.log()


def test_metrics_listener_is_the_only_extra_port(make_server: Any) -> None:
    s, port = metrics_server(make_server)
    assert s.proc is not None
    assert listening_ports(s.proc.pid) == {s.port, port}


def test_a_taken_port_fails_startup_naming_the_port(make_server: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = make_server("--metrics-port", str(port), "--metrics-host", "127.0.0.1", wait=False)
        assert s.wait(20) == 1
    lines = [line for line in s.log().splitlines() if line.startswith("resonate: error:")]
    assert lines == [
        f"resonate: error: metrics cannot listen on 127.0.0.1:{port}: address already in use "
        "(set metrics.port to a free port, or 0 to disable metrics)"
    ]


def test_metrics_port_must_differ_from_the_api_port(make_server: Any) -> None:
    port = free_port()
    s = make_server("--metrics-port", str(port), port=port, wait=False)
    assert s.wait(20) == 2
    assert f"'metrics.port' and 'api.http.port' are both {port}" in s.log()


# --- the registry in-process (no server): per-server isolation and the label guard ------------


def test_registries_are_per_server_and_kinds_are_bounded() -> None:
    from resonate_metrics.metrics import MAX_KINDS, OTHER_KIND, ServerMetrics

    def sample(m: ServerMetrics, name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    a, b = ServerMetrics(lambda: 3, process=False), ServerMetrics(lambda: 0, process=False)
    a.observe_request("promise.get", 200, 0.01)
    assert sample(a, "resonate_request_total", kind="promise.get", status="200") == 1
    assert sample(b, "resonate_request_total", kind="promise.get", status="200") is None
    assert sample(a, "coroutines_in_flight", kind="request") == 3
    for i in range(MAX_KINDS + 10):
        a.observe_request(f"made.up.{i}", 400, 0.001)
    kinds = {
        s.labels["kind"]
        for fam in a.registry.collect()
        if fam.name == "resonate_request"
        for s in fam.samples
    }
    assert len(kinds) == MAX_KINDS + 1 and OTHER_KIND in kinds
    a.observe_request("promise.get", 200, 0.01)  # kinds seen before the cap keep their label
    assert sample(a, "resonate_request_total", kind="promise.get", status="200") == 2

    class Change:  # a StateChange stand-in
        def __init__(self, entity: str, before: str | None, after: str) -> None:
            self.entity, self.id, self.before, self.after = entity, "x", before, after

    a.load_counts({"promises": {"pending": 2}, "tasks": {}, "schedules": {"active": 1}})
    a.observe_changes(
        [
            Change("promise", "pending", "resolved"),
            Change("promise", None, "pending"),
            Change("schedule", "active", "fired"),
            Change("schedule", "active", "deleted"),
            Change("task", None, "pending"),
        ]
    )
    assert sample(a, "promises_total", state="pending") == 2
    assert sample(a, "promises_total", state="resolved") == 1
    assert sample(a, "schedules_total", state="active") == 0
    assert sample(a, "resonate_schedule_promises_total") == 1
    assert sample(a, "resonate_tasks_pending") == 1
    a.observe_delivery("execute", "http://w/", "success")
    a.observe_delivery("unblock", "poll://any@g", "dropped")
    assert sample(a, "resonate_deliveries_total", status="success") == 1
    assert sample(a, "resonate_deliveries_total", status="dropped") == 0
    assert sample(a, "resonate_messages_total", kind="unblock") == 1


def test_request_latency_histograms_are_cumulative_prometheus_histograms() -> None:
    """Each duration lands in the first bucket whose bound is at least it (a bound is
    inclusive, as in prometheus-client); buckets are cumulative and end at +Inf = count."""
    from prometheus_client import generate_latest
    from resonate_metrics.metrics import ServerMetrics

    m = ServerMetrics(lambda: 0, process=False)
    for seconds in (0.0005, 0.001, 0.003, 0.02, 7.0, 60.0):
        m.observe_request("promise.get", 200, seconds)
    m.observe_request("promise.create", 409, 0.004)
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())
    }

    def buckets(family: str, **labels: str) -> dict[str, float]:
        return {
            s.labels["le"]: s.value
            for s in families[family].samples
            if s.name == f"{family}_bucket" and all(s.labels.get(k) == v for k, v in labels.items())
        }

    def scalar(family: str, suffix: str, **labels: str) -> float:
        (value,) = [
            s.value
            for s in families[family].samples
            if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return value

    api = buckets("api_duration_seconds")
    assert api["0.001"] == 2  # 0.0005 and 0.001 (the bound is inclusive)
    assert api["0.0025"] == 2
    assert api["0.005"] == 4  # + 0.003 and the create's 0.004
    assert api["0.025"] == 5
    assert api["5.0"] == 5 and api["10.0"] == 6 and api["+Inf"] == 7
    assert scalar("api_duration_seconds", "_count") == 7
    assert scalar("api_duration_seconds", "_sum") == pytest.approx(67.0285)
    get = buckets("resonate_request_duration_seconds", kind="promise.get")
    assert list(get) == [
        "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75",
        "1.0", "2.5", "5.0", "7.5", "10.0", "+Inf",
    ]  # fmt: skip
    assert (get["0.005"], get["0.025"], get["7.5"], get["+Inf"]) == (3, 4, 5, 6)
    assert scalar("resonate_request_duration_seconds", "_count", kind="promise.create") == 1
    assert scalar("resonate_request", "_total", kind="promise.create", status="409") == 1
    assert scalar("api_requests", "_total", status="200") == 6
    assert scalar("api_requests", "_total", status="409") == 1
    assert scalar("api_requests", "_total", status="500") == 0  # exposed from the start
