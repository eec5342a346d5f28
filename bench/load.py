"""Load shapes and what they record.

- :func:`closed_loop`: ``concurrency`` clients, each sending its next operation as soon as the
  previous one finished. Gives the throughput the server sustains.
- :func:`open_loop`: operations started at a fixed rate whatever the server does; latency is
  counted from each operation's *scheduled* start, so a stalled server shows up in the tail
  (no coordinated omission).

Both warm up first (nothing recorded), then record for ``duration`` seconds or ``max_ops``
operations, whichever comes first, then stop by themselves. Operations still in flight at the
end are abandoned, not counted.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .procs import CpuMeter, Store, machine_jiffies, self_cpu_seconds

perf = time.perf_counter

#: One operation: returns None on success or a short error description.
Op = Callable[[], Awaitable[str | None]]


class Recorder:
    """Latencies (seconds) of successful operations and errors, while ``measuring``."""

    def __init__(self, max_ops: int, timeline: float = 0.0) -> None:
        self.max_ops = max_ops
        self.lat: list[float] = []
        self.timeline = timeline
        self.starts: list[float] = []  # with a timeline: the start of each latency in ``lat``
        #: Open loop: how late each start was at the end that no sender had taken (lower bounds
        #: of latencies; in the percentiles, not in the count of operations).
        self.unstarted: list[float] = []
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.measuring = False
        self.full = asyncio.Event()
        self.t0 = self.t1 = 0.0

    def add(self, start: float, end: float, err: str | None) -> None:
        if not self.measuring:
            return
        if err is None:
            self.lat.append(end - start)
            if self.timeline:
                self.starts.append(start)
        else:
            self.errors += 1
            key = err[:120]
            self.error_kinds[key] = self.error_kinds.get(key, 0) + 1
        if len(self.lat) + self.errors >= self.max_ops:
            self.full.set()

    def begin(self) -> None:
        self.measuring = True
        self.t0 = perf()

    def end(self) -> None:
        if self.measuring:
            self.t1 = perf()
            self.measuring = False

    @property
    def elapsed(self) -> float:
        return max(1e-9, self.t1 - self.t0)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (``q`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


@dataclass
class Stats:
    """What one measured run produced (latencies in ms)."""

    ops: int
    errors: int
    seconds: float
    throughput: float
    p50: float
    p90: float
    p99: float
    max: float
    error_kinds: dict[str, int] = field(default_factory=dict)
    loadgen_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, rec: Recorder, loadgen_cpu: float = 0.0) -> Stats:
        lat = sorted(rec.lat + rec.unstarted)
        ms = [x * 1000 for x in (percentile(lat, 50), percentile(lat, 90), percentile(lat, 99))]
        extra: dict[str, Any] = {"timeline": timeline(rec)} if rec.timeline else {}
        if rec.unstarted:
            extra["unstarted"] = len(rec.unstarted)
        return cls(
            ops=len(rec.lat),
            errors=rec.errors,
            seconds=rec.elapsed,
            throughput=len(rec.lat) / rec.elapsed,
            p50=ms[0],
            p90=ms[1],
            p99=ms[2],
            max=(lat[-1] * 1000) if lat else float("nan"),
            error_kinds=dict(sorted(rec.error_kinds.items(), key=lambda kv: -kv[1])[:5]),
            loadgen_cpu=loadgen_cpu,
            extra=extra,
        )


def timeline(rec: Recorder) -> list[list[float]]:
    """``[start s, ops, p50 ms, max ms]`` per ``rec.timeline`` seconds of operation starts
    (scheduled starts in an open loop), from the start of the measured window; operations
    started before it (a backlog) fall in buckets with negative starts."""
    buckets: dict[int, list[float]] = {}
    for start, lat in zip(rec.starts, rec.lat, strict=True):
        buckets.setdefault(math.floor((start - rec.t0) / rec.timeline), []).append(lat)
    rows = []
    for k in sorted(buckets):
        v = sorted(buckets[k])
        rows.append(
            [
                round(k * rec.timeline, 3),
                len(v),
                round(percentile(v, 50) * 1000, 2),
                round(v[-1] * 1000, 2),
            ]
        )
    return rows


class Window:
    """Starts and stops the CPU meters with the measured window.

    Besides the named meters it measures this process (``loadgen_cpu``) and the whole machine
    (``machine_cpu``, 100% per core), so that CPU taken by anything else on the machine during
    the window (other people's tests) can be reported next to the numbers.
    """

    def __init__(self, meters: dict[str, CpuMeter], statements_of: Store | None = None) -> None:
        self.meters = meters
        #: The PostgreSQL store whose statement statistics the row reports (``--pg-statements``).
        self.statements_of = statements_of
        self.cpu: dict[str, float] = {}
        self._self0 = 0.0
        self._t0 = 0.0
        self._m0 = (0, 0)
        self.loadgen_cpu = 0.0
        self.machine_cpu = 0.0

    def start(self) -> None:
        for m in self.meters.values():
            m.start()
        self._self0 = self_cpu_seconds()
        self._m0 = machine_jiffies()
        self._t0 = perf()

    def stop(self) -> None:
        wall = perf() - self._t0
        busy, total = machine_jiffies()
        self.loadgen_cpu = 100.0 * (self_cpu_seconds() - self._self0) / max(wall, 1e-9)
        self.cpu = {name: m.stop() for name, m in self.meters.items()}
        d_busy, d_total = busy - self._m0[0], total - self._m0[1]
        self.machine_cpu = 100.0 * (os.cpu_count() or 1) * d_busy / max(1, d_total)


@dataclass
class Phase:
    """How long to warm up and to measure, the most operations to record, the meters, and the
    width of the latency timeline's buckets in seconds (0: no timeline)."""

    warmup: float
    duration: float
    max_ops: int
    window: Window
    timeline: float = 0.0


async def _measure(rec: Recorder, phase: Phase) -> None:
    await asyncio.sleep(phase.warmup)
    phase.window.start()
    rec.begin()
    try:
        await asyncio.wait_for(rec.full.wait(), phase.duration)
    except TimeoutError:
        pass
    rec.end()
    phase.window.stop()


async def closed_loop(
    make_op: Callable[[int], Awaitable[Op]], concurrency: int, phase: Phase
) -> Stats:
    """``concurrency`` clients; ``make_op(k)`` sets up client ``k`` and returns its operation."""
    rec = Recorder(phase.max_ops, phase.timeline)
    done = False

    async def client(k: int) -> None:
        op = await make_op(k)
        while not done:
            t0 = perf()
            try:
                err = await op()
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
                await asyncio.sleep(0.01)  # a broken connection: do not spin
            rec.add(t0, perf(), err)

    clients = [asyncio.create_task(client(k)) for k in range(concurrency)]
    try:
        await _measure(rec, phase)
        for c in clients:
            if c.done() and c.exception() is not None:
                raise c.exception()  # type: ignore[misc]
    finally:
        done = True
        for c in clients:
            c.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    return Stats.of(rec, phase.window.loadgen_cpu)


async def open_loop(
    make_op: Callable[[int], Awaitable[Op]], rate: float, senders: int, phase: Phase
) -> Stats:
    """Start an operation ``rate`` times a second (spread evenly) on ``senders`` senders;
    latency from the scheduled start.

    Each sender owns one operation (``make_op(k)``, one connection) and, once free, takes the
    next scheduled start: it waits for it, or starts at once when it is already late. At most
    ``senders`` operations are in flight, as in the closed loop; when all are busy the next ones
    wait, and their wait counts in their latency. A start due before the window ended that no
    sender took enters the percentiles with its lateness at the end as latency (a lower bound),
    so a server that falls behind cannot hide its backlog; it is not counted as an operation.
    The senders cost the load generator one timer per operation and no task.
    """
    rec = Recorder(phase.max_ops, phase.timeline)
    interval = 1.0 / rate
    start = 0.0
    taken = 0
    done = False

    async def sender(k: int) -> None:
        nonlocal taken
        op = await make_op(k)
        while not done:
            scheduled = start + taken * interval
            taken += 1
            wait = scheduled - perf()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                err = await op()
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
            rec.add(scheduled, perf(), err)

    async def measure() -> None:
        await _measure(rec, phase)
        due = min(int((rec.t1 - start) / interval) + 1, taken + phase.max_ops)
        rec.unstarted = [rec.t1 - (start + i * interval) for i in range(taken, due)]

    start = perf() + 0.01
    tasks = [asyncio.create_task(sender(k)) for k in range(senders)]
    try:
        await measure()
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        done = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stats = Stats.of(rec, phase.window.loadgen_cpu)
    stats.extra["target_rate"] = rate
    return stats
