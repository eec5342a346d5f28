"""The group-commit contract every store with batches must keep (used by the store tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from resonate_server.records import Promise
from resonate_server.store import Store, StoreTx


def promise(pid: str) -> Promise:
    return Promise(pid, "pending", {}, {}, {}, 2**62, 1, None)


async def promise_ids(tx: StoreTx) -> list[str]:
    """Every stored promise id, sorted."""
    return sorted(p.id for p in (await tx.snapshot()).promises)


async def one_failure_in_a_batch(store: Store, hold: Callable[[StoreTx], Awaitable[str]]) -> None:
    """While ``hold`` keeps the store busy, three transactions queue up into one batch; the
    middle one raises. It must leave no trace, the others must commit, and the store must have
    run the batch again with each transaction isolated (so ``a`` ran twice)."""
    runs: list[str] = []

    def create(pid: str, fail: bool = False) -> Callable[[StoreTx], Awaitable[str]]:
        async def fn(tx: StoreTx) -> str:
            runs.append(pid)
            await tx.insert_promise(promise(pid))
            if fail:
                raise RuntimeError("boom")
            return pid

        return fn

    first = asyncio.ensure_future(store.transact(hold))
    await asyncio.sleep(0.05)
    a, bad, b = await asyncio.gather(
        store.transact(create("a"), key="a"),
        store.transact(create("bad", fail=True), key="bad"),
        store.transact(create("b"), key="b"),
        return_exceptions=True,
    )
    assert await first == "held"

    stored: Any = await store.transact(promise_ids)
    assert (a, b) == ("a", "b")
    assert isinstance(bad, RuntimeError)
    assert stored == ["a", "b"]
    assert runs.count("a") == 2, "the batch was run again with each transaction isolated"
