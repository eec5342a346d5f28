"""Interop program on the official Python SDK (resonate-sdk 0.8.1, Python >= 3.12).

Runs under ``.interop/py312/bin/python`` (never the server's venv). One subcommand per role:

    worker           a long-lived worker: registers every durable function, listens on its
                     group, prints ``INTEROP-READY`` once its SSE stream is open
    rpc              dispatch a function by name to a group (``--target``), optionally wait
    run              run a function in this process (``Resonate.run``: task.create + execute)
    get              wait for an existing promise through the SDK and print its value
    resolve          resolve a promise through ``r.promises.resolve``
    schedule-create  create a schedule through ``r.schedule``
    schedule-delete  delete a schedule through ``r.schedules.delete``

Results are printed as ``INTEROP-RESULT <json>`` lines on stdout; everything else is logging.
Durable functions record what they do as lines appended to files in ``$INTEROP_RECORD_DIR``
(one file per workflow), so the test can count step executions across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

from resonate.context import Context
from resonate.resonate import Resonate
from resonate.types import Value

RESULT = "INTEROP-RESULT"
READY = "INTEROP-READY"
WORKER: dict[str, str] = {"group": "", "pid": ""}


# --- recording ------------------------------------------------------------------------------


def record(name: str, *fields: Any) -> None:
    """Append one line to ``$INTEROP_RECORD_DIR/<name>`` (O_APPEND: atomic across processes)."""
    line = " ".join(str(f) for f in fields) + "\n"
    path = os.path.join(os.environ["INTEROP_RECORD_DIR"], name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def emit(value: Any) -> None:
    print(f"{RESULT} {json.dumps(value, sort_keys=True)}", flush=True)


# --- leaf functions (run through ctx.run) ---------------------------------------------------


def add_step(ctx: Context, acc: int, i: int) -> int:
    record(ctx.info.origin_id, "done", i, os.getpid())
    return acc + i


def now_ms(ctx: Context) -> int:
    return int(time.time() * 1000)


async def square(ctx: Context, i: int, ms: int) -> int:
    record(ctx.info.origin_id, "start", i, os.getpid())
    await asyncio.sleep(ms / 1000)
    record(ctx.info.origin_id, "done", i, os.getpid())
    return i * i


def publish(ctx: Context, promise_id: str) -> str:
    record(ctx.info.origin_id + ".promise", promise_id)
    return promise_id


async def slow_step(ctx: Context, i: int, ms: int) -> int:
    record(ctx.info.origin_id, "start", i, os.getpid())
    await asyncio.sleep(ms / 1000)
    record(ctx.info.origin_id, "done", i, os.getpid())
    return i


# --- durable functions (registered by name) ------------------------------------------------


async def steps(ctx: Context, n: int) -> list[int]:
    """Scenario 1: ``n`` sequential ctx.run steps, each adding its index to a running sum."""
    acc, out = 0, []
    for i in range(1, n + 1):
        acc = await ctx.run(add_step, acc, i)
        out.append(acc)
    return out


async def sleeper(ctx: Context, ms: int) -> dict[str, int]:
    """Scenario 2: a durable sleep between two durable clock readings."""
    t0 = await ctx.run(now_ms)
    await ctx.sleep(timedelta(milliseconds=ms))
    t1 = await ctx.run(now_ms)
    return {"slept_ms": t1 - t0}


async def fanout(ctx: Context, n: int, ms: int) -> list[int]:
    """Scenario 3: ``n`` ctx.run children started before any is awaited."""
    futures = [ctx.run(square, i, ms) for i in range(n)]
    return [await f for f in futures]


async def caller(ctx: Context, x: int, group: str) -> dict[str, Any]:
    """Scenario 4: rpc to ``remote_add``, registered only on the workers of ``group``."""
    remote = await ctx.options(target=group).rpc("remote_add", x, 1)
    return {"caller_group": WORKER["group"], "remote": remote}


def remote_add(ctx: Context, a: int, b: int) -> dict[str, Any]:
    record(ctx.info.origin_id, "remote_add", a, b, WORKER["group"], os.getpid())
    return {"sum": a + b, "group": WORKER["group"]}


async def approval(ctx: Context) -> dict[str, Any]:
    """Scenario 5: wait on an external promise that some other process settles."""
    p = ctx.promise(timeout=timedelta(minutes=5))
    await ctx.run(publish, await p.id())
    value = await p
    return {"approved": value}


async def once(ctx: Context, ms: int) -> dict[str, Any]:
    """Scenario 6: records each execution; the token shows which execution a caller saw."""
    record(ctx.info.origin_id, "exec", os.getpid())
    await asyncio.sleep(ms / 1000)
    return {"token": uuid.uuid4().hex, "pid": os.getpid()}


def tick(ctx: Context, tag: str) -> str:
    """Scenario 7: the function a schedule fires; records the fired promise id."""
    record("tick-" + tag, ctx.info.id, os.getpid())
    return f"tick {ctx.info.id}"


async def crashy(ctx: Context, n: int, ms: int) -> int:
    """Scenarios 8 and 9: ``n`` sequential steps of ``ms`` each (recorded start and done)."""
    total = 0
    for i in range(n):
        total += await ctx.run(slow_step, i, ms)
    return total


async def napper(ctx: Context, ms: int, step_ms: int) -> int:
    """Scenario 9: step 0, a durable sleep, then steps 1 and 2."""
    total = await ctx.run(slow_step, 0, 1)
    await ctx.sleep(timedelta(milliseconds=ms))
    total += await ctx.run(slow_step, 1, step_ms)
    total += await ctx.run(slow_step, 2, 1)
    return total


FUNCTIONS = {
    "main": [steps, sleeper, fanout, caller, approval, once, tick, crashy, napper],
    "remote": [remote_add],
}


def make(args: argparse.Namespace, group: str) -> Resonate:
    r = Resonate(
        url=args.url,
        group=group,
        pid=args.pid or uuid.uuid4().hex,
        ttl=timedelta(milliseconds=args.ttl_ms),
    )
    for fn in FUNCTIONS[args.role]:
        r.register(fn)
    return r


async def finish(r: Resonate) -> None:
    """Stop the SDK, bounded: a result already printed must not be lost to a slow stop."""
    try:
        await asyncio.wait_for(r.stop(), 10)
    except TimeoutError:
        logging.getLogger("interop").warning("Resonate.stop() did not finish within 10 s")


class _ReadyHandler(logging.Handler):
    """Prints the READY marker when the SDK logs that its SSE stream is open."""

    def emit(self, record: logging.LogRecord) -> None:
        if "SSE connection established" in record.getMessage():
            print(READY, flush=True)


# --- subcommands ----------------------------------------------------------------------------


async def cmd_worker(args: argparse.Namespace) -> None:
    WORKER["group"], WORKER["pid"] = args.group, args.pid or uuid.uuid4().hex
    args.pid = WORKER["pid"]
    logging.getLogger("resonate.connections.sse").addHandler(_ReadyHandler())
    r = make(args, args.group)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"worker group={args.group} pid={args.pid} os_pid={os.getpid()}", flush=True)
    await stop.wait()
    await finish(r)


async def cmd_rpc(args: argparse.Namespace) -> None:
    r = make(args, args.group)
    fn_args = json.loads(args.args)
    handles = [
        r.options(target=args.target).rpc(args.id, args.func, *fn_args) for _ in range(args.times)
    ]
    for h in handles:
        await h.id()
    if args.no_wait:
        emit({"id": args.id})
    else:
        emit([await h.result() for h in handles])
    await finish(r)


async def cmd_run(args: argparse.Namespace) -> None:
    r = make(args, args.group)
    fn_args = json.loads(args.args)
    handles = [r.run(args.id, args.func, *fn_args) for _ in range(args.times)]
    emit([await h.result() for h in handles])
    await finish(r)


async def cmd_get(args: argparse.Namespace) -> None:
    r = make(args, args.group)
    h = await r.get(args.id)
    emit(await h.result())
    await finish(r)


async def cmd_resolve(args: argparse.Namespace) -> None:
    r = make(args, args.group)
    rec = await r.promises.resolve(args.id, Value(data=json.loads(args.value)))
    emit({"id": rec.id, "state": rec.state, "value": rec.value.data})
    await finish(r)


async def cmd_schedule_create(args: argparse.Namespace) -> None:
    r = make(args, args.group)
    await r.options(target=args.target).schedule(
        args.id, args.cron, args.func, args=tuple(json.loads(args.args))
    )
    rec = await r.schedules.get(args.id)
    emit({"id": rec.id, "cron": rec.cron, "promiseId": rec.promise_id})
    await finish(r)


async def cmd_schedule_delete(args: argparse.Namespace) -> None:
    r = make(args, args.group)
    await r.schedules.delete(args.id)
    emit({"deleted": args.id})
    await finish(r)


async def watch_parent(parent: int) -> None:
    """Exit when the test process that started us is gone (the SDK would retry forever)."""
    while True:
        await asyncio.sleep(1)
        if os.getppid() != parent:
            os._exit(3)


async def run_command(args: argparse.Namespace) -> None:
    watchdog = asyncio.create_task(watch_parent(args.parent))
    try:
        await COMMANDS[args.command](args)
    finally:
        watchdog.cancel()


COMMANDS = {
    "worker": cmd_worker,
    "rpc": cmd_rpc,
    "run": cmd_run,
    "get": cmd_get,
    "resolve": cmd_resolve,
    "schedule-create": cmd_schedule_create,
    "schedule-delete": cmd_schedule_delete,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--url", required=True)
    p.add_argument("--group", default="clients")
    p.add_argument("--pid", default="")
    p.add_argument("--ttl-ms", type=int, default=10_000)
    p.add_argument("--role", choices=sorted(FUNCTIONS), default="main")
    p.add_argument("--id", default="")
    p.add_argument("--func", default="")
    p.add_argument("--args", default="[]")
    p.add_argument("--target", default=None)
    p.add_argument("--times", type=int, default=1)
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--value", default="null")
    p.add_argument("--cron", default="")
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args.parent = os.getppid()
    asyncio.run(run_command(args))


if __name__ == "__main__":
    main()
