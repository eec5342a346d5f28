"""The workloads: what each operation sends and when it counts as done.

Every function here runs inside one event loop against a server already listening on
``port`` and returns :class:`~bench.load.Stats`. Request bodies are pre-encoded byte
templates; only the id and corrId are spliced in per request.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from . import seed as seeding
from .httpc import RpcConnection, SseStream, post_head
from .load import Op, Phase, Stats, Window, closed_loop, open_loop
from .procs import HOST, rss_mb

VERSION = b"2026-04-01"
FAR = b"4102444800000"  # timeoutAt: 2100-01-01, so nothing times out during a run
PARAM = (
    b'{"headers":{"content-type":"application/json"},'
    b'"data":"eyJmdW5jIjoiYmVuY2giLCJhcmdzIjpbMSwyLDNdfQ=="}'
)


def envelope_body(kind: bytes, corr: bytes, data: bytes) -> bytes:
    """A request envelope, the body of a ``POST /``."""
    template = b'{"kind":"%s","head":{"corrId":"%s","version":"%s"},"data":%s}'
    return template % (kind, corr, VERSION, data)


def create_body(pid: bytes, tags: bytes = b'{"bench":"create"}') -> bytes:
    """The ``promise.create`` envelope of every create workload."""
    return envelope_body(
        b"promise.create",
        pid,
        b'{"id":"%s","timeoutAt":%s,"param":%s,"tags":%s}' % (pid, FAR, PARAM, tags),
    )


class Requests:
    """Pre-encoded request templates for one server."""

    def __init__(self, port: int, prefix: str) -> None:
        self.head = post_head(HOST, port)
        self.prefix = prefix.encode()
        self.seq = itertools.count()

    def raw(self, body: bytes) -> bytes:
        return b"%s%d\r\n\r\n%s" % (self.head, len(body), body)

    def envelope(self, kind: bytes, corr: bytes, data: bytes) -> bytes:
        return self.raw(envelope_body(kind, corr, data))

    def new_id(self) -> bytes:
        return b"%s%d" % (self.prefix, next(self.seq))

    def create(self, pid: bytes, tags: bytes = b'{"bench":"create"}') -> bytes:
        return self.raw(create_body(pid, tags))

    def settle(self, pid: bytes) -> bytes:
        return self.envelope(
            b"promise.settle",
            pid,
            b'{"id":"%s","state":"resolved","value":{"data":"eyJvayI6dHJ1ZX0="}}' % pid,
        )

    def get(self, pid: bytes) -> bytes:
        return self.envelope(b"promise.get", pid, b'{"id":"%s"}' % pid)

    def search(self, corr: bytes, data: bytes) -> bytes:
        return self.envelope(b"promise.search", corr, data)


def _status_error(what: str, status: int, body: bytes) -> str:
    return f"{what} {status}: {body[:80]!r}"


def _one_request_each(
    port: int, kind: str, next_request: Callable[[], bytes], opened: list[RpcConnection]
) -> Callable[[int], Awaitable[Op]]:
    """``make_op`` for the loops: client ``k`` gets a connection of its own (kept in ``opened``
    for closing) and an operation of one request of ``kind``; a connection found closed is
    opened again before the next request."""

    async def make(k: int) -> Op:
        conn = await RpcConnection.open(HOST, port)
        opened.append(conn)

        async def op() -> str | None:
            nonlocal conn
            if conn.closed:
                conn = await RpcConnection.open(HOST, port)
                opened.append(conn)
            status, body = await conn.request(next_request())
            return None if status == 200 else _status_error(kind, status, body)

        return op

    return make


async def _one_kind_closed(
    port: int, concurrency: int, phase: Phase, kind: str, next_request: Callable[[], bytes]
) -> Stats:
    """Closed loop over ``concurrency`` connections; an operation is one request of ``kind``."""
    opened: list[RpcConnection] = []
    try:
        make = _one_request_each(port, kind, next_request, opened)
        return await closed_loop(make, concurrency, phase)
    finally:
        for conn in opened:
            conn.close()


async def _one_kind_open(
    port: int,
    rate: float,
    connections: int,
    phase: Phase,
    kind: str,
    next_request: Callable[[], bytes],
) -> Stats:
    """Open loop at ``rate`` over ``connections`` connections, one request in flight on each."""
    opened: list[RpcConnection] = []
    try:
        make = _one_request_each(port, kind, next_request, opened)
        return await open_loop(make, rate, connections, phase)
    finally:
        for conn in opened:
            conn.close()


# --- promise.create -----------------------------------------------------------------------


async def create(
    port: int,
    prefix: str,
    concurrency: int,
    phase: Phase,
) -> Stats:
    """``promise.create`` of unique ids, closed loop."""
    rq = Requests(port, prefix)
    return await _one_kind_closed(
        port, concurrency, phase, "promise.create", lambda: rq.create(rq.new_id())
    )


async def create_rate(port: int, prefix: str, rate: float, connections: int, phase: Phase) -> Stats:
    """``promise.create`` of unique ids at a fixed rate (open loop).

    At most ``connections`` requests are in flight, as in the closed loop, so the server sees
    the same concurrency; an operation waiting for a free connection is late, and its latency
    (counted from its scheduled start) shows it.
    """
    rq = Requests(port, prefix)
    return await _one_kind_open(
        port, rate, connections, phase, "promise.create", lambda: rq.create(rq.new_id())
    )


# --- promise.create + promise.settle ------------------------------------------------------


async def create_settle(
    port: int,
    prefix: str,
    concurrency: int,
    phase: Phase,
) -> Stats:
    """One operation is a ``promise.create`` then a ``promise.settle`` of the same id."""
    rq = Requests(port, prefix)

    async def make(k: int) -> Op:
        conn = await RpcConnection.open(HOST, port)

        async def op() -> str | None:
            pid = rq.new_id()
            status, body = await conn.request(rq.create(pid))
            if status != 200:
                return _status_error("promise.create", status, body)
            status, body = await conn.request(rq.settle(pid))
            return None if status == 200 else _status_error("promise.settle", status, body)

        return op

    stats = await closed_loop(make, concurrency, phase)
    stats.extra["requests_per_s"] = round(2 * stats.throughput, 1)
    return stats


# --- promise.get of existing ids ----------------------------------------------------------


async def check_seeded(port: int, n: int, created_at: int) -> None:
    """The seeded rows read back through the server exactly as seeded (encoding check)."""
    rq = Requests(port, "check-")
    conn = await RpcConnection.open(HOST, port)
    try:
        for i in sorted({0, 1, n // 2, n - 1}):
            if i < 0:
                continue
            async with asyncio.timeout(30):
                status, body = await conn.request(rq.get(seeding.seed_id(i).encode()))
            got = orjson.loads(body)
            want = seeding.expected(i, created_at)
            if status != 200 or got["data"]["promise"] != want:
                raise RuntimeError(
                    f"seeded promise {i} reads back wrong: {status} {body[:300]!r}, want {want}"
                )
    finally:
        conn.close()


async def get_closed(
    port: int,
    seeded: int,
    concurrency: int,
    phase: Phase,
) -> Stats:
    """``promise.get`` of random seeded ids, closed loop."""
    rq = Requests(port, "get-")
    rnd = random.Random(6)
    return await _one_kind_closed(
        port,
        concurrency,
        phase,
        "promise.get",
        lambda: rq.get(seeding.seed_id(rnd.randrange(seeded)).encode()),
    )


async def get_rate(port: int, seeded: int, rate: float, connections: int, phase: Phase) -> Stats:
    """``promise.get`` of random seeded ids at a fixed rate (open loop, at most
    ``connections`` requests in flight)."""
    rq = Requests(port, "get-")
    rnd = random.Random(7)
    return await _one_kind_open(
        port,
        rate,
        connections,
        phase,
        "promise.get",
        lambda: rq.get(seeding.seed_id(rnd.randrange(seeded)).encode()),
    )


async def search(port: int, concurrency: int, phase: Phase) -> Stats:
    """``promise.search`` over the seeded promises, closed loop: pending promises of one of
    the 64 shards, 10 at most. Seeded odd ids are resolved, so half of the shards have no
    pending promise at all and the search must rule out every promise of that shard."""
    rq = Requests(port, "search-")
    rnd = random.Random(11)

    def next_request() -> bytes:
        shard = rnd.randrange(seeding.SHARDS)
        data = b'{"state":"pending","tags":{"shard":"%d"},"limit":10}' % shard
        return rq.search(rq.new_id(), data)

    return await _one_kind_closed(port, concurrency, phase, "promise.search", next_request)


async def get_rate_while_searching(
    port: int, seeded: int, rate: float, connections: int, searchers: int, phase: Phase
) -> tuple[Stats, Stats]:
    """:func:`get_rate` with :func:`search` running beside it over the same window: whether a
    long search holds up the short requests. Returns (gets, searches); ``phase``'s meters
    measure the gets' window."""
    beside = Phase(phase.warmup, phase.duration, phase.max_ops, Window({}))
    gets, searches = await asyncio.gather(
        get_rate(port, seeded, rate, connections, phase), search(port, searchers, beside)
    )
    return gets, searches


# --- the task round trip ------------------------------------------------------------------


async def task_round_trip(
    port: int,
    prefix: str,
    concurrency: int,
    workers: int,
    phase: Phase,
    op_timeout: float = 10.0,
) -> Stats:
    """The full round trip of a task, closed loop over ``concurrency`` producers.

    A producer creates a promise tagged ``resonate:target: poll://any@bench-workers`` and
    registers a listener ``poll://uni@bench-clients/c0``; the server pushes ``execute`` to one
    of ``workers`` SSE worker streams; that worker sends ``task.acquire`` then
    ``task.fulfill`` (settling the promise); the producer's operation ends when the
    ``unblock`` frame for its promise arrives on the client stream.
    """
    rq = Requests(port, prefix)
    group, client_group, client_id = "bench-workers", "bench-clients", "c0"
    tags = b'{"resonate:target":"poll://any@%s","bench":"task"}' % group.encode()
    listen = f"poll://uni@{client_group}/{client_id}".encode()
    waiting: dict[str, asyncio.Future[None]] = {}
    counts = {
        "acquire_errors": 0,
        "fulfill_errors": 0,
        "settled_before_listen": 0,
        "stray_unblocks": 0,
        "executes": 0,
    }

    def on_unblock(data: bytes) -> None:
        msg = orjson.loads(data)
        if msg.get("kind") != "unblock":
            return
        fut = waiting.pop(msg["data"]["promise"]["id"], None)
        if fut is None:
            counts["stray_unblocks"] += 1
        elif not fut.done():
            fut.set_result(None)

    async def worker(i: int, queue: asyncio.Queue[tuple[str, int]]) -> None:
        conn = await RpcConnection.open(HOST, port)
        pid = f"bench-w{i}".encode()
        while True:
            tid, version = await queue.get()
            t = tid.encode()
            status, body = await conn.request(
                rq.envelope(
                    b"task.acquire",
                    b"a" + t,
                    b'{"id":"%s","version":%d,"pid":"%s","ttl":60000}' % (t, version, pid),
                )
            )
            if status != 200:
                counts["acquire_errors"] += 1
                continue
            version = orjson.loads(body)["data"]["task"]["version"]
            status, body = await conn.request(
                rq.envelope(
                    b"task.fulfill",
                    b"f" + t,
                    b'{"id":"%s","version":%d,"action":{"kind":"promise.settle","head":{},'
                    b'"data":{"id":"%s","state":"resolved","value":{}}}}' % (t, version, t),
                )
            )
            if status != 200:
                counts["fulfill_errors"] += 1

    queues: list[asyncio.Queue[tuple[str, int]]] = [asyncio.Queue() for _ in range(workers)]

    def on_execute(q: asyncio.Queue[tuple[str, int]]) -> Any:
        def handle(data: bytes) -> None:
            msg = orjson.loads(data)
            if msg.get("kind") == "execute":
                task = msg["data"]["task"]
                counts["executes"] += 1
                q.put_nowait((task["id"], task["version"]))

        return handle

    streams = [
        await SseStream.open(HOST, port, group, f"w{i}", on_execute(queues[i]))
        for i in range(workers)
    ]
    streams.append(await SseStream.open(HOST, port, client_group, client_id, on_unblock))
    worker_tasks = [asyncio.create_task(worker(i, queues[i])) for i in range(workers)]
    loop = asyncio.get_running_loop()

    async def make(k: int) -> Op:
        conn = await RpcConnection.open(HOST, port)

        async def op() -> str | None:
            pid = rq.new_id()
            key = pid.decode()
            fut: asyncio.Future[None] = loop.create_future()
            waiting[key] = fut
            try:
                status, body = await conn.request(rq.create(pid, tags))
                if status != 200:
                    return _status_error("promise.create", status, body)
                status, body = await conn.request(
                    rq.envelope(
                        b"promise.register_listener",
                        b"l" + pid,
                        b'{"awaited":"%s","address":"%s"}' % (pid, listen),
                    )
                )
                if status != 200:
                    return _status_error("promise.register_listener", status, body)
                if orjson.loads(body)["data"]["promise"]["state"] != "pending":
                    counts["settled_before_listen"] += 1
                    return None
                try:
                    await asyncio.wait_for(fut, op_timeout)
                except TimeoutError:
                    return f"no unblock within {op_timeout:g}s"
                return None
            finally:
                waiting.pop(key, None)

        return op

    try:
        stats = await closed_loop(make, concurrency, phase)
    finally:
        for t in worker_tasks:
            t.cancel()
        await asyncio.gather(*worker_tasks, return_exceptions=True)
        for s in streams:
            s.close()
    for t in worker_tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            stats.errors += 1
            stats.error_kinds[f"worker failed: {t.exception()!r}"[:120]] = 1
    stats.extra.update(counts)
    stats.extra["workers"] = workers
    stats.extra["requests_per_s"] = round(4 * stats.throughput, 1)
    return stats


# --- 1,000 idle SSE connections -----------------------------------------------------------


async def sse_idle(port: int, server_pid: int, connections: int, hold: float) -> dict[str, Any]:
    """Open ``connections`` event streams, hold them ``hold`` seconds; RSS before and after."""
    before = rss_mb(server_pid)
    opened: list[SseStream] = []
    failures: dict[str, int] = {}

    async def one(i: int) -> None:
        try:
            s = await SseStream.open(HOST, port, f"idle{i % 10}", f"s{i}", lambda _d: None)
        except Exception as e:
            key = f"{type(e).__name__}: {e}"[:120]
            failures[key] = failures.get(key, 0) + 1
            return
        opened.append(s)

    t0 = time.perf_counter()
    for lo in range(0, connections, 100):
        await asyncio.gather(*(one(i) for i in range(lo, min(connections, lo + 100))))
    open_s = time.perf_counter() - t0
    await asyncio.sleep(hold)
    alive = sum(1 for s in opened if not s.ended.done())
    after = rss_mb(server_pid)
    for s in opened:
        s.close()
    await asyncio.sleep(0.2)
    return {
        "connections": connections,
        "open": alive,
        "errors": connections - alive,
        "error_kinds": failures,
        "open_seconds": round(open_s, 3),
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "kib_per_connection": round((after - before) * 1024 / max(1, alive), 1),
    }


# --- the SDK workflow benchmark -----------------------------------------------------------


def sdk_python(root: Path) -> Path | None:
    exe = root / ".interop" / "py312" / "bin" / "python"
    return exe if exe.exists() else None


async def sdk_workflows(
    python: Path,
    port: int,
    concurrency: int,
    steps: int,
    phase: Phase,
    log: Path,
) -> Stats:
    """Runs :mod:`bench.sdk_driver` under the SDK's interpreter; the window follows its
    ``measure-start`` and ``result`` lines."""
    driver = Path(__file__).with_name("sdk_driver.py")
    with open(log, "ab") as err:
        proc = await asyncio.create_subprocess_exec(
            str(python),
            str(driver),
            "--url",
            f"http://{HOST}:{port}",
            "--concurrency",
            str(concurrency),
            "--steps",
            str(steps),
            "--warmup",
            str(phase.warmup),
            "--duration",
            str(phase.duration),
            "--max-workflows",
            str(phase.max_ops),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            stdin=asyncio.subprocess.DEVNULL,
        )
    assert proc.stdout is not None
    result: dict[str, Any] | None = None
    deadline = phase.warmup + phase.duration + 60
    started = False
    try:
        async with asyncio.timeout(deadline):
            async for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("event") == "measure-start":
                    phase.window.start()
                    started = True
                elif msg.get("event") == "result":
                    if started:
                        phase.window.stop()
                    result = msg
                    break
    finally:
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    if result is None:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"the SDK driver gave no result (exit {proc.returncode}):\n{tail}")
    wf = result["workflows"]
    secs = result["seconds"]
    stats = Stats(
        ops=wf,
        errors=result["errors"],
        seconds=secs,
        throughput=wf / secs,
        p50=result["p50"],
        p90=result["p90"],
        p99=result["p99"],
        max=result["max"],
        error_kinds=result["error_kinds"],
        loadgen_cpu=result["sdk_cpu"],
    )
    stats.extra["steps_per_workflow"] = steps
    stats.extra["steps_per_s"] = round(wf * steps / secs, 1)
    stats.extra["sdk_concurrency"] = concurrency
    return stats


__all__ = [
    "check_seeded",
    "create",
    "create_rate",
    "create_settle",
    "get_closed",
    "get_rate",
    "sdk_python",
    "sdk_workflows",
    "sse_idle",
    "task_round_trip",
]
