"""The client commands (`resonate invoke`, `resonate promises …`) against a real server."""

from __future__ import annotations

import base64
import json
from typing import Any

from .conftest import resonate


def decoded(data: str) -> Any:
    return json.loads(base64.b64decode(data))


def test_invoke_creates_a_root_promise_as_the_sdks_do(make_server: Any) -> None:
    s = make_server()
    out = resonate(
        "invoke",
        "wf-1",
        "--func",
        "greet",
        "--arg",
        '"ann"',
        "--arg",
        "3",
        "--arg",
        "plain text",
        "--target",
        "workers",
        "-S",
        s.url,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "invoked greet as wf-1 on poll://any@workers (promise pending)"
    promise = s.client().call("promise.get", {"id": "wf-1"}).data["promise"]
    assert promise["tags"] == {
        "resonate:origin": "wf-1",
        "resonate:branch": "wf-1",
        "resonate:parent": "wf-1",
        "resonate:scope": "global",
        "resonate:target": "poll://any@workers",
    }
    assert decoded(promise["param"]["data"]) == {
        "func": "greet",
        "args": ["ann", 3, "plain text"],
        "kwargs": {},
        "version": 1,
    }
    assert 86_000_000 < promise["timeoutAt"] - promise["createdAt"] <= 86_400_000
    task = s.client().call("task.get", {"id": "wf-1"})
    assert task.data["task"]["state"] == "pending"


def test_invoke_with_json_args_address_target_and_delay(make_server: Any) -> None:
    s = make_server()
    out = resonate(
        "invoke",
        "wf-2",
        "-f",
        "add",
        "--json-args",
        "[1, 2]",
        "--target",
        "poll://any@other",
        "--delay",
        "1h",
        "-S",
        s.url,
    )
    assert out.returncode == 0, out.stderr
    promise = s.client().call("promise.get", {"id": "wf-2"}).data["promise"]
    assert promise["tags"]["resonate:target"] == "poll://any@other"
    assert decoded(promise["param"]["data"])["args"] == [1, 2]
    assert int(promise["tags"]["resonate:delay"]) - promise["createdAt"] >= 3_599_000


def test_promises_commands(make_server: Any) -> None:
    s = make_server()
    s.client().call("promise.create", {"id": "approval", "timeoutAt": 2**62})
    out = resonate("promises", "resolve", "approval", "--value", '{"ok": true}', "-S", s.url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["value"]["data"] == {"ok": True}
    got = json.loads(resonate("promises", "get", "approval", "-S", s.url).stdout)
    assert got["state"] == "resolved"
    listed = json.loads(resonate("promises", "search", "--state", "resolved", "-S", s.url).stdout)
    assert [p["id"] for p in listed["promises"]] == ["approval"]


def test_client_errors_are_one_line(make_server: Any) -> None:
    s = make_server()
    out = resonate("promises", "get", "missing", "-S", s.url)
    assert out.returncode == 1
    assert out.stderr.strip() == "resonate: error: promise.get failed with 404: Promise not found"
    out = resonate("promises", "get", "x", "-S", "http://127.0.0.1:9")
    assert out.returncode == 1
    assert out.stderr.startswith("resonate: error: cannot reach http://127.0.0.1:9")
