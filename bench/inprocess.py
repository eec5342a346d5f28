"""The server's own CPU per ``promise.create``, without HTTP, in one process.

Where the HTTP benchmark reports the whole server, this splits what is left when aiohttp is
taken away, so changes to the engine, the store hand-off or the observers can be measured
without the machine's network noise. On a fresh SQLite database in a temp directory:

- ``envelope``: parsing the envelope and the create data and rendering the reply, which is
  the work the no-storage ceiling does besides HTTP;
- ``rpc``: :meth:`Server.rpc` (the path of every RPC, whichever HTTP layer received it) for
  64 concurrent creates at a time, process CPU per create, the store's commit thread
  included;
- ``observe_request``: the metrics plugin's four request families, per request.

The server runs with its plugins (metrics on a free port), as ``resonate serve`` does.

    python -m bench.inprocess [--creates 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from resonate_metrics.metrics import ServerMetrics
from resonate_server import plugins
from resonate_server.app import build_server, tune_gc
from resonate_server.config import load_settings

from . import ceiling
from .procs import free_port
from .workloads import create_body

CONCURRENCY = 64


def _create(i: int) -> bytes:
    return create_body(b"p%d" % i)


def envelope_us(bodies: list[bytes]) -> float:
    started = time.process_time()
    for body in bodies:
        status, reply = ceiling.answer(body, 1)
        if status != 200:
            raise SystemExit(f"the ceiling's work answered {status}: {reply[:80]!r}")
    return (time.process_time() - started) / len(bodies) * 1e6


async def measure(creates: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        pm = plugins.load()
        cli = {
            "aio.store.sqlite.path": str(Path(tmp) / "resonate.db"),
            "metrics.port": free_port(),
        }
        server = build_server(load_settings(pm.settings_schema(), cli, cwd=Path(tmp)), pm)
        await server.start_background()
        tune_gc()
        try:
            seq = itertools.count()
            warm = [_create(next(seq)) for _ in range(2_000)]
            await asyncio.gather(*[server.rpc(body) for body in warm])
            per_round = []
            for _ in range(rounds):
                bodies = [_create(next(seq)) for _ in range(creates)]
                started = time.process_time()
                for i in range(0, creates, CONCURRENCY):
                    replies = await asyncio.gather(
                        *[server.rpc(body) for body in bodies[i : i + CONCURRENCY]]
                    )
                    bad = [status for status, _ in replies if status != 200]
                    if bad:
                        raise SystemExit(f"promise.create answered {bad[0]}")
                per_round.append((time.process_time() - started) / creates * 1e6)
        finally:
            await server.stop_background()
    return {
        "envelope": envelope_us([_create(i) for i in range(creates)]),
        "rpc": statistics.median(per_round),
        "rpc_min": min(per_round),
    }


def observe_request_us(n: int = 200_000) -> float:
    """One request in the metrics plugin's four request families."""
    metrics = ServerMetrics(lambda: 0, process=False)
    started = time.process_time()
    for _ in range(n):
        metrics.observe_request("promise.create", 200, 0.003)
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description="the server's CPU per create without HTTP")
    p.add_argument("--creates", type=int, default=20_000, help="creates per round (20,000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (5)")
    args = p.parse_args()
    if args.creates < 1 or args.rounds < 1:
        p.error("--creates and --rounds must be at least 1")
    r = asyncio.run(measure(args.creates, args.rounds))
    print(f"envelope work (what the ceiling does besides HTTP): {r['envelope']:.1f} µs/create")
    print(
        f"Server.rpc, store included: {r['rpc']:.1f} µs/create "
        f"(median of {args.rounds} rounds; fastest {r['rpc_min']:.1f})"
    )
    print(f"metrics observe_request: {observe_request_us():.2f} µs/request")


if __name__ == "__main__":
    main()
