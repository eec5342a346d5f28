"""The promise-id scheme: the one owner of lineage rules (the colon rule of SDK 0.8.1 / TS 0.11.5).

Ids look like ``root``, ``root:1``, ``root:1.2``. The origin is the text before the first ``:``.
"""

from __future__ import annotations

ORIGIN_SEPARATOR = ":"


def origin(promise_id: str) -> str:
    """The root of ``promise_id``'s execution tree: the text before the first ``:``."""
    return promise_id.split(ORIGIN_SEPARATOR, 1)[0]


def extends(promise_id: str, ancestor: str) -> bool:
    """True when ``promise_id`` is ``ancestor`` or one of its descendants.

    A descendant of an id without ``:`` continues with ``:``; a descendant of an id that already
    has one continues with ``.``.
    """
    if promise_id == ancestor:
        return True
    sep = "." if ORIGIN_SEPARATOR in ancestor else ORIGIN_SEPARATOR
    return promise_id.startswith(ancestor + sep)


def valid_root_tag(value: str) -> bool:
    """Whether ``value`` may stand as a ``resonate:origin`` or ``resonate:prefix`` tag."""
    return ORIGIN_SEPARATOR not in value
