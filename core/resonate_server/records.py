"""Stored records and their wire shapes (protocol.md §1.5)."""

from __future__ import annotations

from typing import Any

PENDING = "pending"
RESOLVED = "resolved"
REJECTED = "rejected"
REJECTED_CANCELED = "rejected_canceled"
REJECTED_TIMEDOUT = "rejected_timedout"
PROMISE_STATES = frozenset({PENDING, RESOLVED, REJECTED, REJECTED_CANCELED, REJECTED_TIMEDOUT})
SETTLE_STATES = frozenset({RESOLVED, REJECTED, REJECTED_CANCELED})

TASK_PENDING = "pending"
TASK_ACQUIRED = "acquired"
TASK_SUSPENDED = "suspended"
TASK_HALTED = "halted"
TASK_FULFILLED = "fulfilled"
TASK_STATES = frozenset({TASK_PENDING, TASK_ACQUIRED, TASK_SUSPENDED, TASK_HALTED, TASK_FULFILLED})

RETRY = 0
LEASE = 1

TAG_TARGET = "resonate:target"
TAG_TIMER = "resonate:timer"
TAG_DELAY = "resonate:delay"
TAG_ORIGIN = "resonate:origin"
TAG_BRANCH = "resonate:branch"
TAG_PARENT = "resonate:parent"
TAG_PREFIX = "resonate:prefix"
TAG_SCHEDULE = "resonate:schedule"

Value = dict[str, Any]
"""``{"headers"?: {str: str}, "data"?: str}``; absent members stay absent."""


class Promise:
    """A durable promise. ``tags`` never change after creation."""

    __slots__ = ("created_at", "id", "param", "settled_at", "state", "tags", "timeout_at", "value")

    def __init__(
        self,
        id: str,
        state: str,
        param: Value,
        value: Value,
        tags: dict[str, str],
        timeout_at: int,
        created_at: int,
        settled_at: int | None,
    ) -> None:
        self.id = id
        self.state = state
        self.param = param
        self.value = value
        self.tags = tags
        self.timeout_at = timeout_at
        self.created_at = created_at
        self.settled_at = settled_at

    @property
    def target(self) -> str | None:
        return self.tags.get(TAG_TARGET)

    @property
    def branch(self) -> str | None:
        return self.tags.get(TAG_BRANCH)

    @property
    def timer(self) -> bool:
        return self.tags.get(TAG_TIMER) == "true"

    @property
    def pending(self) -> bool:
        return self.state == PENDING

    def to_wire(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "param": self.param,
            "value": self.value,
            "tags": self.tags,
            "timeoutAt": self.timeout_at,
            "createdAt": self.created_at,
        }
        if self.settled_at is not None:
            rec["settledAt"] = self.settled_at
        return rec


class Task:
    """A task: one per promise with a target. ``timeout_*`` is its retry timer or its lease."""

    __slots__ = ("id", "pid", "state", "timeout_at", "timeout_type", "ttl", "version")

    def __init__(
        self,
        id: str,
        state: str,
        version: int,
        timeout_at: int | None = None,
        timeout_type: int | None = None,
        pid: str | None = None,
        ttl: int | None = None,
    ) -> None:
        self.id = id
        self.state = state
        self.version = version
        self.timeout_at = timeout_at
        self.timeout_type = timeout_type
        self.pid = pid
        self.ttl = ttl

    def set_timeout(
        self,
        at: int | None,
        kind: int | None = None,
        pid: str | None = None,
        ttl: int | None = None,
    ) -> None:
        """Arm (or with ``at=None`` clear) the task's single timer."""
        self.timeout_at = at
        self.timeout_type = kind if at is not None else None
        self.pid = pid if at is not None else None
        self.ttl = ttl if at is not None else None

    def to_wire(self, resumes: int) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "version": self.version,
            "resumes": resumes,
        }
        if self.timeout_type == LEASE:
            rec["ttl"] = self.ttl
            rec["pid"] = self.pid
        return rec


class Schedule:
    """A cron schedule that creates promises from a template."""

    __slots__ = (
        "created_at",
        "cron",
        "id",
        "last_run_at",
        "next_run_at",
        "promise_id",
        "promise_param",
        "promise_tags",
        "promise_timeout",
    )

    def __init__(
        self,
        id: str,
        cron: str,
        promise_id: str,
        promise_timeout: int,
        promise_param: Value,
        promise_tags: dict[str, str],
        created_at: int,
        next_run_at: int,
        last_run_at: int | None,
    ) -> None:
        self.id = id
        self.cron = cron
        self.promise_id = promise_id
        self.promise_timeout = promise_timeout
        self.promise_param = promise_param
        self.promise_tags = promise_tags
        self.created_at = created_at
        self.next_run_at = next_run_at
        self.last_run_at = last_run_at

    def to_wire(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": self.id,
            "cron": self.cron,
            "promiseId": self.promise_id,
            "promiseTimeout": self.promise_timeout,
            "promiseParam": self.promise_param,
            "promiseTags": self.promise_tags,
            "createdAt": self.created_at,
            "nextRunAt": self.next_run_at,
        }
        if self.last_run_at is not None:
            rec["lastRunAt"] = self.last_run_at
        return rec


def execute_message(task_id: str, version: int, server_url: str | None = None) -> dict[str, Any]:
    head = {"serverUrl": server_url} if server_url else {}
    return {"kind": "execute", "head": head, "data": {"task": {"id": task_id, "version": version}}}


def unblock_message(promise: Promise) -> dict[str, Any]:
    return {"kind": "unblock", "head": {}, "data": {"promise": promise.to_wire()}}
