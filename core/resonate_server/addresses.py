"""Delivery addresses (``resonate:target``, listener addresses): the one owner of their grammar.

``poll://{any|uni}@group[/id]`` goes to SSE subscribers; ``http(s)://…`` is pushed by HTTP POST.
Other schemes are routable only when an installed transport plugin claims them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

BUILTIN_SCHEMES = frozenset({"poll", "http", "https"})


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address: ``scheme`` lowercased; for ``poll``, ``cast``/``group``/``id``."""

    raw: str
    scheme: str
    cast: str | None = None
    group: str | None = None
    id: str | None = None


@lru_cache(maxsize=4096)
def parse(raw: str) -> Address | None:
    """Parse ``raw``; ``None`` when it is not an address of a known shape.

    Cached: targets and listener addresses repeat, and the result is immutable.
    """
    if not raw or any(c in raw for c in " \t\r\n\x00"):
        return None
    scheme, sep, rest = raw.partition("://")
    if (
        not sep
        or not scheme
        or not (scheme[0].isalpha() and all(c.isalnum() or c in "+-." for c in scheme))
    ):
        return None
    scheme = scheme.lower()
    if scheme == "poll":
        userinfo, at, hostpath = rest.partition("@")
        if not at or userinfo not in ("any", "uni"):
            return None
        hostpath = hostpath.split("?", 1)[0].split("#", 1)[0]
        group, _, path = hostpath.partition("/")
        if not group:
            return None
        return Address(raw, scheme, userinfo, group, path or None)
    try:
        parts = urlsplit(raw)
    except ValueError:
        return None
    if scheme in ("http", "https") and not parts.hostname:
        return None
    return Address(raw, scheme)


def is_routable(raw: str, schemes: frozenset[str] = BUILTIN_SCHEMES) -> bool:
    """Whether ``raw`` parses and its scheme is one some transport delivers to."""
    addr = parse(raw)
    return addr is not None and addr.scheme in schemes
