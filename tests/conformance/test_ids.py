"""Conformance: the colon id scheme (protocol.md §8 scenario 79, §9.1 colon rules only)."""

from __future__ import annotations

from typing import Any

import pytest

from .helpers import TARGET_DEFAULT, T, callback, create, create_ok, err, ok, snap

ACCEPTED: list[tuple[str, str, dict[str, str]]] = [
    ("root", "foo", {"resonate:origin": "foo", "resonate:branch": "foo", "resonate:parent": "foo"}),
    (
        "child",
        "foo:1",
        {"resonate:origin": "foo", "resonate:branch": "foo:1", "resonate:parent": "foo"},
    ),
    (
        "grandchild",
        "foo:1.2",
        {"resonate:origin": "foo", "resonate:branch": "foo:1", "resonate:parent": "foo:1"},
    ),
    (
        "great-grandchild",
        "foo:1.2.3",
        {"resonate:origin": "foo", "resonate:branch": "foo:1", "resonate:parent": "foo:1.2"},
    ),
    ("grandchild-parent-is-origin", "foo:1.2", {"resonate:parent": "foo"}),
    (
        "detached",
        "foo:d0123456789abcdef",
        {
            "resonate:origin": "foo",
            "resonate:parent": "foo",
            "resonate:branch": "foo:d0123456789abcdef",
        },
    ),
    ("prefix-with-dot", "bar", {"resonate:prefix": "a.b"}),
]


@pytest.mark.parametrize(
    "id,tags", [(i, t) for _, i, t in ACCEPTED], ids=[n for n, _, _ in ACCEPTED]
)
def test_s79_colon_ids_accepted(rpc: Any, id: str, tags: dict[str, str]) -> None:
    """Scenario 79: SDK 0.8.1 lineage ids (foo, foo:1, foo:1.2, detached) are accepted."""
    promise = create_ok(rpc, id, T + 60_000, tags=tags)
    assert promise["id"] == id and promise["tags"] == tags and promise["state"] == "pending"


REJECTED: list[tuple[str, str, dict[str, str], str]] = [
    (
        "origin-with-colon",
        "a:b",
        {"resonate:origin": "a:b"},
        "resonate:origin must not contain ':'",
    ),
    (
        "dot-child-of-origin",
        "foo.1",
        {"resonate:origin": "foo"},
        "Promise ID must be prefixed by resonate:origin",
    ),
    (
        "text-prefix-of-origin",
        "foobar",
        {"resonate:origin": "foo"},
        "Promise ID must be prefixed by resonate:origin",
    ),
    (
        "dot-child-of-branch",
        "foo.1",
        {"resonate:branch": "foo"},
        "Promise ID must be prefixed by resonate:branch",
    ),
    (
        "colon-under-colon-parent",
        "foo:1:2",
        {"resonate:parent": "foo:1"},
        "Promise ID must be prefixed by resonate:parent",
    ),
    (
        "text-prefix-of-colon-parent",
        "foo:12",
        {"resonate:parent": "foo:1"},
        "Promise ID must be prefixed by resonate:parent",
    ),
    (
        "sibling-branch",
        "foo:2.1",
        {"resonate:branch": "foo:1"},
        "Promise ID must be prefixed by resonate:branch",
    ),
    (
        "prefix-with-colon",
        "bar",
        {"resonate:prefix": "a:b"},
        "resonate:prefix must not contain ':'",
    ),
]


@pytest.mark.parametrize(
    "id,tags,message", [(i, t, m) for _, i, t, m in REJECTED], ids=[n for n, _, _, _ in REJECTED]
)
def test_s79_colon_ids_rejected(rpc: Any, id: str, tags: dict[str, str], message: str) -> None:
    """Scenario 79: ids that do not follow the colon rules give 400 with the exact message."""
    err(create(rpc, id, T + 60_000, tags=tags), 400, message)
    assert snap(rpc)["promises"] == []


def test_s79_callback_origin_uses_colon(rpc: Any) -> None:
    """Scenario 79: register_callback's same-origin rule uses the text before the first ':'."""
    create_ok(rpc, "foo", T + 60_000, tags={"resonate:target": TARGET_DEFAULT})
    awaited = create_ok(rpc, "foo:1.2", T + 60_000)
    assert ok(callback(rpc, "foo:1.2", "foo"))["promise"] == awaited
    assert snap(rpc)["callbacks"] == [{"awaiter": "foo", "awaited": "foo:1.2"}]

    create_ok(rpc, "foo.1", T + 60_000)  # no origin tag: a root of its own ("foo.1")
    err(callback(rpc, "foo.1", "foo"), 400, "Awaiter and awaited must belong to the same origin")
