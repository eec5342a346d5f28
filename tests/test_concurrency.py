"""Requests racing on one promise or task: exactly one winner, on every store (scenarios 75-77).

Each test fires the same operation from many threads at once against a real server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .conftest import Client, Reply, ServerProcess

N = 16
FAR = 2**62
TARGET = "poll://any@nobody"


def race(server: ServerProcess, make_call: Callable[[Client, int], Reply]) -> list[Reply]:
    """Run ``make_call(client, i)`` for i in range(N), all released at the same moment."""
    clients = [server.client() for _ in range(N)]
    for c in clients:
        assert c.get("/healthz").status == 200  # open the connections first
    barrier = threading.Barrier(N)
    replies: list[Reply | None] = [None] * N

    def run(i: int) -> None:
        barrier.wait()
        replies[i] = make_call(clients[i], i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()
    assert all(r is not None for r in replies)
    return replies  # type: ignore[return-value]


def test_racing_settles_have_one_winner(make_server: Any) -> None:
    s = make_server()
    s.client().call(
        "promise.create", {"id": "p", "timeoutAt": FAR, "tags": {"resonate:target": TARGET}}
    )
    states = ["resolved", "rejected", "rejected_canceled"]
    replies = race(
        s,
        lambda c, i: c.call(
            "promise.settle", {"id": "p", "state": states[i % 3], "value": {"data": f"v{i}"}}
        ),
    )
    assert {r.status for r in replies} == {200}
    records = {str(r.data["promise"]) for r in replies}
    assert len(records) == 1, "every racer must see the same first settlement"
    final = s.client().call("promise.get", {"id": "p"}).data["promise"]
    assert str(final) in records
    task = s.client().call("task.get", {"id": "p"}).data["task"]
    assert task["state"] == "fulfilled"


def test_racing_acquires_have_one_winner(make_server: Any) -> None:
    s = make_server()
    s.client().call(
        "promise.create", {"id": "t", "timeoutAt": FAR, "tags": {"resonate:target": TARGET}}
    )
    replies = race(
        s,
        lambda c, i: c.call(
            "task.acquire", {"id": "t", "version": 0, "pid": f"w{i}", "ttl": 60_000}
        ),
    )
    assert sorted(r.status for r in replies) == [200] + [409] * (N - 1)
    winner = next(r for r in replies if r.status == 200).data["task"]
    assert winner["version"] == 1
    task = s.client().call("task.get", {"id": "t"}).data["task"]
    assert (task["state"], task["version"], task["pid"]) == ("acquired", 1, winner["pid"])


def test_racing_task_creates_have_one_winner(make_server: Any) -> None:
    s = make_server()
    replies = race(
        s,
        lambda c, i: c.call(
            "task.create",
            {
                "pid": f"w{i}",
                "ttl": 60_000,
                "action": {
                    "kind": "promise.create",
                    "head": {},
                    "data": {"id": "root", "timeoutAt": FAR, "tags": {"resonate:target": TARGET}},
                },
            },
        ),
    )
    assert sorted(r.status for r in replies) == [200] + [409] * (N - 1)
    assert {r.data for r in replies if r.status == 409} == {"Already exists"}


def test_racing_creates_make_one_task(make_server: Any) -> None:
    s = make_server("--debug")
    s.client().call("debug.start", {})
    replies = race(
        s,
        lambda c, i: c.call(
            "promise.create",
            {
                "id": "same",
                "timeoutAt": FAR,
                "param": {"data": f"p{i}"},
                "tags": {"resonate:target": TARGET},
            },
        ),
    )
    assert {r.status for r in replies} == {200}
    assert len({str(r.data["promise"]) for r in replies}) == 1
    snap = s.client().call("debug.snap", {}).data
    assert [t["id"] for t in snap["tasks"]] == ["same"]
    assert [m["message"]["data"]["task"] for m in snap["messages"]] == [
        {"id": "same", "version": 0}
    ]


def test_racing_settle_and_suspend(make_server: Any) -> None:
    """Scenario 76: a task never stays suspended on a promise that settled."""
    s = make_server("--debug")
    c = s.client()
    c.call("debug.start", {})
    for round_ in range(5):
        root, child = f"r{round_}", f"r{round_}:1"
        c.call(
            "task.create",
            {
                "pid": "w",
                "ttl": 60_000,
                "action": {
                    "kind": "promise.create",
                    "head": {},
                    "data": {"id": root, "timeoutAt": FAR, "tags": {"resonate:target": TARGET}},
                },
            },
        )
        c.call("promise.create", {"id": child, "timeoutAt": FAR})

        def op(client: Client, i: int, root: str = root, child: str = child) -> Reply:
            if i % 2:
                return client.call("promise.settle", {"id": child, "state": "resolved"})
            return client.call(
                "task.suspend",
                {
                    "id": root,
                    "version": 1,
                    "actions": [
                        {
                            "kind": "promise.register_callback",
                            "head": {},
                            "data": {"awaited": child, "awaiter": root},
                        }
                    ],
                },
            )

        replies = race(s, op)
        assert all(r.status in (200, 300, 409) for r in replies), replies
        task = c.call("task.get", {"id": root}).data["task"]
        assert task["state"] in ("acquired", "pending"), task
