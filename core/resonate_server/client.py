"""A small synchronous RPC client for the CLI's client commands (``invoke``, ``promises``)."""

from __future__ import annotations

import base64
import itertools
import json
import urllib.error
import urllib.request
from typing import Any

from .protocol import VERSION

_ids = itertools.count(1)


class ClientError(Exception):
    """The server could not be reached, or answered with an error status."""


def call(
    server: str, kind: str, data: dict[str, Any], token: str | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """Send one envelope to ``server``; return ``(status, data)``."""
    head: dict[str, Any] = {"corrId": f"cli-{next(_ids)}", "version": VERSION}
    if token:
        head["auth"] = token
    body = json.dumps({"kind": kind, "head": head, "data": data}).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        server.rstrip("/") + "/", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ClientError(f"cannot reach {server}: {reason}") from None
    try:
        reply = json.loads(raw)
        return int(reply["head"]["status"]), reply["data"]
    except (ValueError, KeyError, TypeError):
        raise ClientError(f"{server} did not answer with a Resonate envelope") from None


def encode(value: Any) -> str:
    """A value as the SDKs put it in ``Value.data``: base64 of its JSON."""
    return base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()


def decode(data: str | None) -> Any:
    if not data:
        return None
    try:
        return json.loads(base64.b64decode(data, validate=True))
    except ValueError:
        return data


def parse_arg(text: str) -> Any:
    """A CLI argument: JSON when it parses as JSON (``42``, ``{"a": 1}``), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def target_address(target: str) -> str:
    """A group name becomes its anycast poll address; an address passes through."""
    return target if "://" in target else f"poll://any@{target}"


def invoke_request(
    promise_id: str,
    func: str,
    args: list[Any],
    target: str,
    now_ms: int,
    timeout_ms: int,
    version: int = 1,
    delay_ms: int = 0,
) -> dict[str, Any]:
    """The ``promise.create`` data that starts ``func(*args)`` on a worker of ``target``.

    The param is encoded as the SDKs encode a top-level run: base64 of
    ``{"func", "args", "kwargs", "version"}``; the tags make the promise a root (origin, branch
    and parent are its own id) with a target, so the server creates its task.
    """
    tags = {
        "resonate:origin": promise_id,
        "resonate:branch": promise_id,
        "resonate:parent": promise_id,
        "resonate:scope": "global",
        "resonate:target": target_address(target),
    }
    if delay_ms:
        tags["resonate:delay"] = str(now_ms + delay_ms)
    param = {"func": func, "args": args, "kwargs": {}, "version": version}
    return {
        "id": promise_id,
        "timeoutAt": now_ms + delay_ms + timeout_ms,
        "param": {"headers": {}, "data": encode(param)},
        "tags": tags,
    }
