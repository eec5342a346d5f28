"""The RPC envelope and request-data validation: the one owner of the wire format (protocol.md §1).

Every request is ``POST /`` with ``{kind, head, data}``; every reply echoes ``kind`` and
``head.corrId``, carries ``head.status`` equal to the HTTP status, and has an object ``data`` on
success or a JSON string on error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

VERSION = "2026-04-01"
SUPPORTED_VERSIONS = (VERSION,)
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1


class RpcError(Exception):
    """A reply with an error status; ``message`` becomes the JSON-string ``data``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> RpcError:
    return RpcError(400, message)


@dataclass(slots=True)
class Envelope:
    kind: str
    corr_id: str
    head: dict[str, Any]
    data: dict[str, Any]
    debug_time: int | None


class EnvelopeError(RpcError):
    """An envelope that cannot be dispatched; ``kind``/``corr_id`` are best-effort echoes."""

    def __init__(self, message: str, kind: str, corr_id: str) -> None:
        super().__init__(400, message)
        self.kind = kind
        self.corr_id = corr_id


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{str(v).lower()}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{v}`"
    if isinstance(v, str):
        return f"string {orjson.dumps(v).decode()}"
    if isinstance(v, list):
        return "sequence"
    return "map"


def parse_envelope(body: bytes) -> Envelope:
    """Steps 1–4 of the request pipeline (§1.4); raises :class:`EnvelopeError`."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise EnvelopeError(f"Invalid request envelope: {e}", "unknown", "0") from None
    if not isinstance(obj, dict):
        raise EnvelopeError(
            f"Invalid request envelope: invalid type: {_type_name(obj)}, expected an envelope",
            "unknown",
            "0",
        )
    raw_kind = obj.get("kind")
    kind = raw_kind if isinstance(raw_kind, str) else "unknown"
    head = obj.get("head")
    raw_corr = head.get("corrId") if isinstance(head, dict) else None
    corr_id = raw_corr if isinstance(raw_corr, str) else "0"

    def fail(detail: str) -> EnvelopeError:
        return EnvelopeError(f"Invalid request envelope: {detail}", kind, corr_id)

    if "kind" not in obj:
        raise fail("missing field `kind`")
    if not isinstance(raw_kind, str):
        raise fail(f"invalid type: {_type_name(raw_kind)}, expected a string at `kind`")
    if "head" not in obj:
        raise fail("missing field `head`")
    if not isinstance(head, dict):
        raise fail(f"invalid type: {_type_name(head)}, expected a map at `head`")
    if "corrId" not in head:
        raise fail("missing field `corrId`")
    if not isinstance(raw_corr, str):
        raise fail(f"invalid type: {_type_name(raw_corr)}, expected a string at `head.corrId`")
    version = head.get("version")
    if "version" not in head:
        raise fail("missing field `version`")
    if not isinstance(version, str):
        raise fail(f"invalid type: {_type_name(version)}, expected a string at `head.version`")
    auth = head.get("auth")
    if auth is not None and not isinstance(auth, str):
        raise fail(f"invalid type: {_type_name(auth)}, expected a string at `head.auth`")
    debug_time = head.get("resonate:debug_time")
    if debug_time is not None and not is_i64(debug_time):
        raise fail(
            f"invalid type: {_type_name(debug_time)}, expected i64 at `head.resonate:debug_time`"
        )
    if "data" not in obj:
        raise fail("missing field `data`")
    if kind == "":
        raise EnvelopeError(
            "Missing or invalid 'kind' field — must be a non-empty string", kind, corr_id
        )
    data = obj["data"]
    if not isinstance(data, dict):
        raise EnvelopeError("Invalid 'data' field — must be an object", kind, corr_id)
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
        raise EnvelopeError(
            f"Unsupported protocol version '{version}', supported versions: [{supported}]",
            kind,
            corr_id,
        )
    return Envelope(kind, corr_id, head, data, debug_time)


def render(kind: str, corr_id: str, status: int, data: Any) -> bytes:
    """A compact JSON reply envelope."""
    return orjson.dumps(
        {
            "kind": kind,
            "head": {"corrId": corr_id, "status": status, "version": VERSION},
            "data": data,
        }
    )


# --- request-data fields (serde-like strictness; §1.4 "type strictness") --------------------


def is_i64(v: Any) -> bool:
    return type(v) is int and I64_MIN <= v <= I64_MAX


def _invalid(msg: str) -> RpcError:
    return bad_request(f"Invalid request: {msg}")


def req_str(d: dict[str, Any], key: str, where: str = "") -> str:
    if key not in d:
        raise _invalid(f"missing field `{where}{key}`")
    v = d[key]
    if not isinstance(v, str):
        raise _invalid(f"invalid type: {_type_name(v)}, expected a string at `{where}{key}`")
    return v


def req_int(d: dict[str, Any], key: str, where: str = "") -> int:
    if key not in d:
        raise _invalid(f"missing field `{where}{key}`")
    v = d[key]
    if not is_i64(v):
        raise _invalid(f"invalid type: {_type_name(v)}, expected i64 at `{where}{key}`")
    return v


def opt_int(d: dict[str, Any], key: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if not is_i64(v):
        raise _invalid(f"invalid type: {_type_name(v)}, expected i64 at `{key}`")
    return v


def opt_str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise _invalid(f"invalid type: {_type_name(v)}, expected a string at `{key}`")
    return v


def req_obj(d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    if key not in d:
        raise _invalid(f"missing field `{where}{key}`")
    v = d[key]
    if not isinstance(v, dict):
        raise _invalid(f"invalid type: {_type_name(v)}, expected a map at `{where}{key}`")
    return v


def req_list(d: dict[str, Any], key: str) -> list[Any]:
    if key not in d:
        raise _invalid(f"missing field `{key}`")
    v = d[key]
    if not isinstance(v, list):
        raise _invalid(f"invalid type: {_type_name(v)}, expected a sequence at `{key}`")
    return v


def str_map(d: dict[str, Any], key: str, where: str = "", nullable: bool = False) -> dict[str, str]:
    """An optional ``{str: str}`` member: absent gives ``{}``; ``null`` only when ``nullable``."""
    if key not in d:
        return {}
    v = d[key]
    if v is None and nullable:
        return {}
    if not isinstance(v, dict):
        raise _invalid(f"invalid type: {_type_name(v)}, expected a map at `{where}{key}`")
    for k, x in v.items():
        if not isinstance(x, str):
            raise _invalid(
                f"invalid type: {_type_name(x)}, expected a string at `{where}{key}.{k}`"
            )
    return v


def value(d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    """An optional Value ``{headers?, data?}``: absent gives ``{}``; null members are dropped."""
    if key not in d:
        return {}
    v = d[key]
    if not isinstance(v, dict):
        raise _invalid(f"invalid type: {_type_name(v)}, expected a map at `{where}{key}`")
    out: dict[str, Any] = {}
    headers = v.get("headers")
    if headers is not None:
        out["headers"] = str_map(v, "headers", f"{where}{key}.")
    data = v.get("data")
    if data is not None:
        if not isinstance(data, str):
            raise _invalid(
                f"invalid type: {_type_name(data)}, expected a string at `{where}{key}.data`"
            )
        out["data"] = data
    return out


def enum(d: dict[str, Any], key: str, choices: frozenset[str], required: bool) -> str | None:
    v = d.get(key)
    if v is None:
        if required:
            raise _invalid(f"missing field `{key}`")
        return None
    if not isinstance(v, str):
        raise _invalid(f"invalid type: {_type_name(v)}, expected a string at `{key}`")
    if v not in choices:
        expected = ", ".join(f"`{c}`" for c in sorted(choices))
        raise _invalid(f"unknown variant `{v}`, expected one of {expected}")
    return v


def search_limit(d: dict[str, Any], default: int) -> int:
    limit = opt_int(d, "limit")
    if limit is None:
        return default
    if limit < 1:
        raise bad_request("Limit must be a positive integer")
    if limit > 1000:
        raise bad_request("Invalid 'limit' — must be between 1 and 1000")
    return limit
