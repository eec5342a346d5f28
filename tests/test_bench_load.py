"""The open loop of the load generator (``bench/load.py``): a server that falls behind cannot
hide its backlog. The operation here is a timer, not a server: what is under test is how the
loop schedules and records, and each bound below only gets easier on a slower machine."""

from __future__ import annotations

import asyncio

from bench.load import Op, Phase, Window, open_loop

OP_SECONDS = 0.05
RATE = 100.0
SECONDS = 0.5


def test_starts_no_sender_took_count_with_their_lateness() -> None:
    """Two senders whose operations take 50 ms can start at most 40 a second; at 100 a second
    the others wait. They are no operations, but their lateness at the end is in the tail."""

    async def make(k: int) -> Op:
        async def op() -> str | None:
            await asyncio.sleep(OP_SECONDS)
            return None

        return op

    async def main() -> None:
        phase = Phase(warmup=0.0, duration=SECONDS, max_ops=10_000, window=Window({}))
        stats = await open_loop(make, RATE, 2, phase)
        most = 2 * SECONDS / OP_SECONDS
        assert 0 < stats.ops <= most
        assert stats.extra["unstarted"] >= RATE * SECONDS - most - 2
        assert stats.p99 >= 1000 * (SECONDS - most / RATE) * 0.8
        assert stats.errors == 0 and stats.extra["target_rate"] == RATE

    asyncio.run(main())
