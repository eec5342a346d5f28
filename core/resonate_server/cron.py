"""Cron expressions for schedules, evaluated in UTC (the one owner of cron rules).

Five fields are standard cron (``min hour dom mon dow``; Sunday is 0 or 7; names allowed).
Six fields put seconds first (``sec min hour dom mon dow``); seven add a year last.
"""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import croniter


def _fields(expr: str) -> int:
    return len(expr.split())


def valid(expr: str) -> bool:
    n = _fields(expr)
    if n not in (5, 6, 7):
        return False
    try:
        return bool(croniter.is_valid(expr, second_at_beginning=n > 5))
    except Exception:
        return False


def _iter(expr: str, at_s: int) -> croniter:
    base = datetime.fromtimestamp(at_s, UTC)
    return croniter(expr, base, second_at_beginning=_fields(expr) > 5)


def next_after(expr: str, t_ms: int) -> int:
    """The first occurrence strictly after ``floor(t_ms / 1000)`` seconds, in ms.

    An expression that cannot produce one (invalid, or no future occurrence) gives
    ``t_ms + 60000`` so a broken schedule is retried later instead of spinning.
    """
    try:
        return int(_iter(expr, t_ms // 1000).get_next(float) * 1000)
    except Exception:
        return t_ms + 60_000


def latest_at_or_before(expr: str, t_ms: int) -> int | None:
    """The last occurrence at or before ``floor(t_ms / 1000)`` seconds, in ms (None if none)."""
    try:
        return int(_iter(expr, t_ms // 1000 + 1).get_prev(float) * 1000)
    except Exception:
        return None
