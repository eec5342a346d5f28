"""Conformance: envelope and transport (protocol.md §8, scenarios 1–10)."""

from __future__ import annotations

import time as wallclock
from typing import Any

import pytest

from .helpers import (
    VERSION,
    T,
    callback,
    create,
    create_ok,
    envelope,
    err,
    get,
    ok,
    pending_record,
    raw,
    search,
)

LEGACY_BODY = {"error": "This endpoint is no longer supported. Please update to the latest SDK."}


def assert_error_envelope(reply: Any, kind: str, corr_id: str, status: int = 400) -> str:
    """A complete error envelope: HTTP status = head.status, echoes, version, string data."""
    assert reply.status == status, reply
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    body = reply.body
    assert isinstance(body, dict), reply
    assert body["kind"] == kind, reply
    assert body["head"] == {"corrId": corr_id, "status": status, "version": VERSION}, reply
    assert isinstance(body["data"], str), reply
    return body["data"]


@pytest.mark.parametrize("payload", [b"{not json", b"", b"[1, 2]", b'"promise.get"', b"null"])
def test_s01_malformed_json_body(rpc: Any, payload: bytes) -> None:
    """Scenario 1: a body that is not an envelope gives 400 with kind "unknown" and corrId "0"."""
    reply = rpc.post(payload)
    data = assert_error_envelope(reply, "unknown", "0")
    assert data.startswith("Invalid request envelope: "), reply


def test_s02_missing_corr_id(rpc: Any) -> None:
    """Scenario 2: kind present but no head.corrId: 400, kind echoed, corrId "0"."""
    no_corr = {"kind": "promise.get", "head": {"version": VERSION}, "data": {"id": "x"}}
    data = assert_error_envelope(rpc.post(raw(no_corr)), "promise.get", "0")
    assert data.startswith("Invalid request envelope: ")

    no_head = {"kind": "promise.get", "data": {"id": "x"}}
    data = assert_error_envelope(rpc.post(raw(no_head)), "promise.get", "0")
    assert data.startswith("Invalid request envelope: ")

    bad_corr = {
        "kind": "promise.get",
        "head": {"corrId": 7, "version": VERSION},
        "data": {"id": "x"},
    }
    data = assert_error_envelope(rpc.post(raw(bad_corr)), "promise.get", "0")
    assert data.startswith("Invalid request envelope: ")

    # The reverse: corrId present but kind missing or not a string is echoed best-effort.
    no_kind = {"head": {"corrId": "c-9", "version": VERSION}, "data": {"id": "x"}}
    data = assert_error_envelope(rpc.post(raw(no_kind)), "unknown", "c-9")
    assert data.startswith("Invalid request envelope: ")
    int_kind = {"kind": 5, "head": {"corrId": "c-10", "version": VERSION}, "data": {"id": "x"}}
    data = assert_error_envelope(rpc.post(raw(int_kind)), "unknown", "c-10")
    assert data.startswith("Invalid request envelope: ")

    # Missing data is an envelope error too (data is required).
    no_data = {"kind": "promise.get", "head": {"corrId": "c-11", "version": VERSION}}
    data = assert_error_envelope(rpc.post(raw(no_data)), "promise.get", "c-11")
    assert data.startswith("Invalid request envelope: ")


def test_s03_protocol_version(rpc: Any) -> None:
    """Scenario 3: missing head.version gives 400; an unsupported version lists the supported."""
    missing = {"kind": "promise.get", "head": {"corrId": "c-1"}, "data": {"id": "x"}}
    data = assert_error_envelope(rpc.post(raw(missing)), "promise.get", "c-1")
    assert data.startswith("Invalid request envelope: "), data

    non_string = {
        "kind": "promise.get",
        "head": {"corrId": "c-2", "version": 20260401},
        "data": {"id": "x"},
    }
    data = assert_error_envelope(rpc.post(raw(non_string)), "promise.get", "c-2")
    assert data.startswith("Invalid request envelope: "), data

    old = envelope("promise.get", {"id": "x"}, corr_id="c-3", version="2025-01-01")
    data = assert_error_envelope(rpc.post(raw(old)), "promise.get", "c-3")
    assert data == (
        "Unsupported protocol version '2025-01-01', supported versions: [\"2026-04-01\"]"
    )

    # The supported version works.
    assert rpc.post(raw(envelope("promise.get", {"id": "x"}, corr_id="c-4"))).status == 404


@pytest.mark.parametrize("data", [None, [], "x", 1, True])
def test_s04_data_must_be_object(rpc: Any, data: Any) -> None:
    """Scenario 4: data null, [], "x" (or any non-object) gives 400 "Invalid 'data' field"."""
    err(rpc.call("promise.get", data, time=T), 400, "Invalid 'data' field — must be an object")


def test_s04_empty_kind(rpc: Any) -> None:
    """Scenario 4: kind "" gives 400 with the non-empty-string message, kind and corrId echoed."""
    reply = rpc.post(raw(envelope("", {}, corr_id="c-empty")))
    data = assert_error_envelope(reply, "", "c-empty")
    assert data == "Missing or invalid 'kind' field — must be a non-empty string"


def test_s05_unknown_operation(rpc: Any) -> None:
    """Scenario 5: kind "foo.bar" gives 400 "Unknown operation: foo.bar" with kind echoed."""
    reply = rpc.post(raw(envelope("foo.bar", {}, corr_id="c-foo")))
    data = assert_error_envelope(reply, "foo.bar", "c-foo")
    assert data == "Unknown operation: foo.bar"


def _status_pair(reply: Any) -> tuple[int, int]:
    assert reply.body is not None, reply
    return reply.status, reply.body["head"]["status"]


def test_s06_http_status_equals_head_status(rpc: Any) -> None:
    """Scenario 6: HTTP status equals head.status for 200, 400, 404, 422 (300/409/403 elsewhere)."""
    assert _status_pair(create(rpc, "foo", T + 60_000)) == (200, 200)
    assert _status_pair(rpc.call("nope.nope", {}, time=T)) == (400, 400)
    assert _status_pair(get(rpc, "missing")) == (404, 404)
    # awaiter missing -> 422
    assert _status_pair(callback(rpc, "foo", "foo:1")) == (422, 422)
    # successes are objects, errors are JSON strings
    assert isinstance(get(rpc, "foo").body["data"], dict)
    assert isinstance(get(rpc, "missing").body["data"], str)


def test_s06_http_status_403(make_server: Any) -> None:
    """Scenario 6: HTTP status equals head.status for 403 (debug op on a non-debug server)."""
    server = make_server()
    client = server.client()
    try:
        reply = client.call("debug.snap", {})
        assert _status_pair(reply) == (403, 403)
        assert isinstance(reply.body["data"], str)
    finally:
        client.close()


def test_s07_unknown_fields_ignored(rpc: Any) -> None:
    """Scenario 7: unknown members at the top level, in head, in data and in a Value are ignored."""
    body = {
        "kind": "promise.create",
        "head": {
            "corrId": "c-x",
            "version": VERSION,
            "resonate:debug_time": T,
            "extra": {"nested": [1, 2]},
            "origin": "foo",
        },
        "data": {
            "id": "foo",
            "timeoutAt": T + 1000,
            "bogus": True,
            "param": {"data": "eA==", "junk": 1},
            "tags": {"a": "b"},
        },
        "extraTop": 42,
    }
    reply = rpc.post(raw(body))
    assert reply.status == 200, reply
    assert reply.body["kind"] == "promise.create"
    assert reply.body["head"] == {"corrId": "c-x", "status": 200, "version": VERSION}
    assert reply.body["data"]["promise"] == pending_record(
        "foo", T + 1000, param={"data": "eA=="}, tags={"a": "b"}
    )
    got = ok(rpc.call("promise.get", {"id": "foo", "whatever": None}, time=T))
    assert got["promise"] == reply.body["data"]["promise"]


@pytest.mark.parametrize(
    "timeout_at",
    [1.5, 1.0, "10", True, 2**63, None],
    ids=["float", "float-integral", "string", "bool", "2^63", "null"],
)
def test_s08_strict_integer_timeout(rpc: Any, timeout_at: Any) -> None:
    """Scenario 8: timeoutAt must be a JSON integer in i64 range, else 400 "Invalid request: …"."""
    reply = rpc.call("promise.create", {"id": "p", "timeoutAt": timeout_at}, time=T)
    err(reply, 400, prefix="Invalid request: ")
    err(get(rpc, "p"), 404, "Promise not found")


@pytest.mark.parametrize("debug_time", [1.5, "1700000000000", True])
def test_s08_strict_integer_debug_time(rpc: Any, debug_time: Any) -> None:
    """Scenario 8: a non-integer resonate:debug_time is an envelope error (400)."""
    body = envelope(
        "promise.get", {"id": "p"}, corr_id="c-dt", time=None, **{"resonate:debug_time": debug_time}
    )
    data = assert_error_envelope(rpc.post(raw(body)), "promise.get", "c-dt")
    assert data.startswith("Invalid request envelope: ")


def test_s08_null_accepted_for_option_fields(rpc: Any) -> None:
    """Scenario 8: limit: null (and the other Option fields) on promise.search are accepted."""
    create_ok(rpc, "a", T + 1000)
    data = ok(search(rpc, limit=None))
    assert [p["id"] for p in data["promises"]] == ["a"]
    assert "cursor" not in data
    data = ok(search(rpc, state=None, tags=None, limit=None, cursor=None))
    assert [p["id"] for p in data["promises"]] == ["a"]
    # null debug_time is accepted (Option) and means "no debug time"
    body = envelope(
        "promise.get", {"id": "a"}, corr_id="c-n", time=None, **{"resonate:debug_time": None}
    )
    assert rpc.post(raw(body)).status == 200


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/promises/x"),
        ("POST", "/tasks"),
        ("GET", "/promises"),
        ("GET", "/schedules"),
        ("DELETE", "/schedules/s1"),
        ("PATCH", "/promises/a/b"),
        ("GET", "/tasks/t1"),
    ],
)
def test_s09_legacy_paths_gone(rpc: Any, method: str, path: str) -> None:
    """Scenario 9: gen-1 REST paths answer 410 with the JSON upgrade message."""
    body = b"{}" if method in ("POST", "PATCH") else None
    reply = rpc.request(method, path, body, {"Content-Type": "application/json"} if body else None)
    assert reply.status == 410, reply
    assert reply.body == LEGACY_BODY, reply


@pytest.mark.parametrize("path", ["/health", "/ready", "/healthz"])
def test_s09_health_endpoints(rpc: Any, path: str) -> None:
    """Scenario 9: GET /health, /ready and /healthz answer 200 (DB-down part covered elsewhere)."""
    assert rpc.get(path).status == 200


def test_s09_unknown_path_404(rpc: Any) -> None:
    """Scenario 9 (§1.1): a path outside the surface answers 404."""
    assert rpc.get("/definitely/not/here").status == 404


def test_s10_debug_disabled(make_server: Any) -> None:
    """Scenario 10: debug.* off gives 403; resonate:debug_time is ignored (wall clock is used)."""
    server = make_server()
    client = server.client()
    try:
        for kind, data in [
            ("debug.start", {}),
            ("debug.stop", {}),
            ("debug.reset", {}),
            ("debug.snap", {}),
            ("debug.tick", {"time": T}),
        ]:
            err(client.call(kind, data), 403, "Debug operations are disabled")
            err(client.call(kind, data, time=T), 403, "Debug operations are disabled")

        before = int(wallclock.time() * 1000)
        far_future = before + 10 * 24 * 3600 * 1000
        timeout_at = before + 60_000
        promise = ok(
            client.call("promise.create", {"id": "dbg", "timeoutAt": timeout_at}, time=far_future)
        )["promise"]
        after = int(wallclock.time() * 1000)
        assert promise["state"] == "pending", promise
        assert before - 1000 <= promise["createdAt"] <= after + 1000, (before, promise, after)
        assert "settledAt" not in promise

        # A far-future debug time on a read does not expire it either.
        got = ok(client.call("promise.get", {"id": "dbg"}, time=far_future))["promise"]
        assert got == promise
        # Nor does a settle "at" a debug time; settledAt comes from the wall clock.
        settled = ok(
            client.call("promise.settle", {"id": "dbg", "state": "resolved"}, time=far_future)
        )["promise"]
        assert settled["state"] == "resolved", settled
        assert settled["settledAt"] < timeout_at, settled
    finally:
        client.close()
