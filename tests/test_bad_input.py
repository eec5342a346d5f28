"""Bad input never crashes the server or yields a 500: always a 4xx envelope with a message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resonate_server.engine import OPERATIONS

from .conftest import Client, ServerProcess

KINDS = [*OPERATIONS, "debug.tick", "debug.snap", "schedule.create", "nope", ""]


@pytest.fixture(scope="module")
def small_limit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("bad-input")
    s = ServerProcess(
        ["--aio-store-sqlite-path", str(d / "r.db"), "--api-http-max-body-size", "4096"], d
    ).start()
    yield s
    s.stop()


@pytest.fixture
def client(small_limit_server: ServerProcess) -> Iterator[Client]:
    c = small_limit_server.client()
    yield c
    c.close()


def assert_clean_error(reply: Any, status: int = 400) -> str:
    assert reply.status == status, reply
    assert reply.body is not None, reply
    assert reply.body["head"]["status"] == status
    assert isinstance(reply.body["data"], str) and reply.body["data"]
    assert "Traceback" not in reply.body["data"]
    return reply.body["data"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\xff\xfe",
        b"{",
        b'{"kind": "promise.get"',
        b"[1, 2]",
        b"null",
        b"42",
        b'"just a string"',
        b"\xc3\x28",
        b"[" * 2000,
        b'{"kind": 1, "head": {}, "data": {}}',
        b'{"kind": "promise.get", "head": [], "data": {}}',
    ],
)
def test_garbage_bodies(client: Client, body: bytes) -> None:
    assert_clean_error(client.post(body))
    assert client.get("/healthz").status == 200


def test_oversized_body_is_413(client: Client) -> None:
    big = {
        "kind": "promise.create",
        "head": {"corrId": "big", "version": "2026-04-01"},
        "data": {"id": "big", "timeoutAt": 1, "param": {"data": "x" * 10_000}},
    }
    msg = assert_clean_error(client.post(big), 413)
    assert msg == "Request body exceeds the limit of 4096 bytes"
    assert client.call("promise.get", {"id": "big"}).status == 404


def test_wrong_method_and_path(client: Client) -> None:
    assert client.get("/").status == 405
    assert client.get("/nope").status == 404


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Invalid request: missing field `id`"),
        (
            {"id": 5, "timeoutAt": 1},
            "Invalid request: invalid type: integer `5`, expected a string at `id`",
        ),
        (
            {"id": "x", "timeoutAt": 1, "tags": {"a": 1}},
            "Invalid request: invalid type: integer `1`, expected a string at `tags.a`",
        ),
        (
            {"id": "x", "timeoutAt": 1, "param": {"data": 7}},
            "Invalid request: invalid type: integer `7`, expected a string at `param.data`",
        ),
        (
            {"id": "x", "timeoutAt": 1, "param": None},
            "Invalid request: invalid type: null, expected a map at `param`",
        ),
    ],
)
def test_mistyped_fields_name_the_field(client: Client, data: dict[str, Any], message: str) -> None:
    assert assert_clean_error(client.call("promise.create", data)) == message


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "id",
        "timeoutAt",
        "state",
        "value",
        "param",
        "tags",
        "awaited",
        "awaiter",
        "address",
        "limit",
        "cursor",
        "pid",
        "ttl",
        "version",
        "action",
        "actions",
        "tasks",
        "time",
    ]
)
data_objects = st.dictionaries(field_names, json_values, max_size=6)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kind=st.sampled_from(KINDS), data=data_objects)
def test_random_data_never_500(client: Client, kind: str, data: dict[str, Any]) -> None:
    try:
        body = json.dumps(
            {"kind": kind, "head": {"corrId": "f", "version": "2026-04-01"}, "data": data}
        ).encode()
    except ValueError:
        return
    reply = client.post(body)
    assert reply.body is not None, reply
    assert reply.status < 500, reply
    assert reply.status == reply.body["head"]["status"]
    assert reply.body["kind"] == kind or (kind == "" and reply.status == 400)
    if reply.status >= 400:
        assert isinstance(reply.body["data"], str)
