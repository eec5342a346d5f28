"""The no-storage ceiling: an aiohttp server doing the envelope work of ``promise.create``
and nothing else.

It parses and validates the envelope and the create data with the server's own code
(:mod:`resonate_server.protocol`, :mod:`resonate_server.engine`), builds the promise record
and renders the reply, exactly as ``POST /`` does, but stores nothing; it tunes the garbage
collector as ``resonate serve`` does. ``create`` against it is the most the HTTP layer plus
the envelope work allow on this machine; the benchmark reports the real server's ``create``
throughput as a fraction of it.

    python -m bench.ceiling --host 127.0.0.1 --port 9000

``--front lean`` serves the same work through the server's lean HTTP front
(:mod:`resonate_server.rpc_http`) instead of an aiohttp handler. That is not the ceiling
issue 6 defines; it shows what the server's own HTTP path costs without storage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from aiohttp import web
from resonate_server import engine
from resonate_server import protocol as proto
from resonate_server.addresses import BUILTIN_SCHEMES
from resonate_server.app import Clock, tune_gc
from resonate_server.core_plugin import parse_cpus
from resonate_server.rpc_http import RpcListener


def answer(body: bytes, now: int) -> tuple[int, bytes]:
    """The ceiling's whole work for one ``POST /`` body besides HTTP: the status and reply."""
    try:
        env = proto.parse_envelope(body)
    except proto.EnvelopeError as e:
        return e.status, proto.render(e.kind, e.corr_id, e.status, e.message)
    c = engine.Ctx(now, 30_000, BUILTIN_SCHEMES, env.corr_id)
    try:
        if env.kind != "promise.create":
            raise proto.RpcError(400, "the ceiling server only answers promise.create")
        req = engine.parse_promise_create(env.data, c)
        status, data = 200, {"promise": engine.new_promise(req, c.now).to_wire()}
    except proto.RpcError as e:
        status, data = e.status, e.message
    return status, proto.render(env.kind, env.corr_id, status, data)


MAX_BODY = 10 * 2**20  #: the server's default api.http.max_body_size
now = Clock()


def build_app() -> web.Application:
    async def rpc(request: web.Request) -> web.Response:
        status, body = answer(await request.read(), now())
        return web.Response(body=body, status=status, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/", rpc)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(host: str, port: int, front: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    listener = None
    if front == "lean":

        async def rpc(body: bytes) -> tuple[int, bytes]:
            return answer(body, now())

        assert runner.server is not None
        listener = RpcListener(rpc, runner.server, MAX_BODY)
        await listener.start(host, port)
    else:
        await web.TCPSite(runner, host, port).start()
    tune_gc()
    await stop.wait()
    if listener is not None:
        await listener.close()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description="no-storage ceiling server for the benchmark")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--front", choices=("aiohttp", "lean"), default="aiohttp")
    p.add_argument("--cpus", default="", help="run on these CPUs only (as --cpu-affinity)")
    args = p.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, parse_cpus(args.cpus))
    asyncio.run(serve(args.host, args.port, args.front))


if __name__ == "__main__":
    main()
