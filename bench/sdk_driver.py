"""The ``sdk`` workload: workflows through the official Python SDK (resonate-sdk 0.8.1).

Runs under the SDK's own interpreter (``.interop/py312/bin/python``, Python >= 3.12), as a
separate process started by ``python -m bench``; it imports nothing from this repository.

One ``Resonate`` instance on the server's URL registers ``workflow(ctx, n)``: ``n``
sequential ``ctx.run`` steps (each a durable child promise). ``--concurrency`` drivers run
workflows back to back with ``Resonate.run`` (task.create, then execution in this process)
and await each result through the SDK (a listener and its ``unblock`` over SSE). After
``--warmup`` seconds it prints ``{"event": "measure-start"}``, records for ``--duration``
seconds or ``--max-workflows`` workflows, then prints one ``{"event": "result", ...}`` line
and exits. Everything on stdout is one JSON object a line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid
from datetime import timedelta

from resonate.context import Context
from resonate.resonate import Resonate

perf = time.perf_counter


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def step(ctx: Context, acc: int, i: int) -> int:
    return acc + i


async def workflow(ctx: Context, n: int) -> int:
    acc = 0
    for i in range(1, n + 1):
        acc = await ctx.run(step, acc, i)
    return acc


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    rank = max(1, -(-len(values) * q // 100))
    return values[min(len(values), int(rank)) - 1]


async def main(args: argparse.Namespace) -> None:
    r = Resonate(
        url=args.url,
        group=args.group,
        pid=uuid.uuid4().hex,
        ttl=timedelta(seconds=60),
        max_concurrent_tasks=max(64, args.concurrency * 2),
    )
    r.register(workflow)
    expected = args.steps * (args.steps + 1) // 2
    run_id = uuid.uuid4().hex[:8]
    lat: list[float] = []
    errors: dict[str, int] = {}
    state = {"measuring": False, "stop": False, "started": 0}
    full = asyncio.Event()
    seq = iter(range(10**12))

    async def driver(k: int) -> None:
        while not state["stop"]:
            wid = f"wf-{run_id}-{k}-{next(seq)}"
            t0 = perf()
            err = None
            try:
                h = r.run(wid, workflow, args.steps)
                got = await asyncio.wait_for(h.result(), args.op_timeout)
                if got != expected:
                    err = f"wrong result {got!r} (expected {expected})"
            except Exception as e:
                err = f"{type(e).__name__}: {e}"[:120]
            if not state["measuring"]:
                continue
            if err is None:
                lat.append(perf() - t0)
            else:
                errors[err] = errors.get(err, 0) + 1
            if len(lat) + sum(errors.values()) >= args.max_workflows:
                full.set()

    drivers = [asyncio.create_task(driver(k)) for k in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    state["measuring"] = True
    t0 = perf()
    c0 = os.times()
    emit({"event": "measure-start"})
    try:
        await asyncio.wait_for(full.wait(), args.duration)
    except TimeoutError:
        pass
    state["measuring"] = False
    elapsed = perf() - t0
    c1 = os.times()
    state["stop"] = True
    lat.sort()
    emit(
        {
            "event": "result",
            "workflows": len(lat),
            "steps_per_workflow": args.steps,
            "errors": sum(errors.values()),
            "error_kinds": errors,
            "seconds": elapsed,
            "p50": percentile(lat, 50) * 1000,
            "p90": percentile(lat, 90) * 1000,
            "p99": percentile(lat, 99) * 1000,
            "max": (lat[-1] * 1000) if lat else float("nan"),
            "sdk_cpu": 100.0 * ((c1.user + c1.system) - (c0.user + c0.system)) / elapsed,
        }
    )
    for d in drivers:
        d.cancel()
    await asyncio.gather(*drivers, return_exceptions=True)
    try:
        await asyncio.wait_for(r.stop(), 5)
    except Exception:
        pass


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="SDK workflow load for python -m bench")
    p.add_argument("--url", required=True)
    p.add_argument("--group", default="bench-sdk")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--max-workflows", type=int, default=1_000_000)
    p.add_argument("--op-timeout", type=float, default=30.0)
    a = p.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    asyncio.run(main(a))
    sys.stdout.flush()
    os._exit(0)  # do not wait for SDK background threads or retries
