"""The server: assembles the aiohttp app from the plugins and runs its lifecycle.

``POST /`` is the RPC endpoint (protocol.md §1.4): parse the envelope, validate the data,
run the operation in one store transaction, reply with ``head.status`` equal to the HTTP status.
On SIGTERM the server stops accepting (503), lets in-flight requests finish, stops background
work and closes the store, all within ``api.http.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from . import engine
from . import protocol as proto
from .addresses import BUILTIN_SCHEMES, parse
from .config import Settings
from .core_plugin import cpus_setting
from .engine import Ctx, StateChange
from .logs import RequestLog
from .plugins import PluginManager
from .records import execute_message, unblock_message
from .rpc_http import RpcListener
from .store import (
    Message,
    Store,
    StoreBackend,
    StoreBusy,
    StoreDataError,
    StoreError,
    StoreTx,
    StoreUnavailable,
)
from .transport import Transport

log = logging.getLogger("resonate.server")

LEGACY_PREFIXES = ("/promises", "/schedules", "/tasks")
LEGACY_BODY = orjson.dumps(
    {"error": "This endpoint is no longer supported. Please update to the latest SDK."}
)
DEBUG_KINDS = frozenset({"debug.start", "debug.stop", "debug.reset", "debug.tick", "debug.snap"})


class StartupError(Exception):
    """The server cannot start (a port taken, a resource missing): a one-line message.

    Plugins raise it from ``resonate_startup``; ``resonate serve`` prints it and exits 1.
    """


class Clock:
    """Wall-clock milliseconds that never go backwards."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> int:
        now = int(time.time() * 1000)
        if now > self.last:
            self.last = now
        return self.last


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value


class Server:
    """One server process: settings, plugins, store, HTTP app and background loops."""

    def __init__(self, settings: Settings, pm: PluginManager, backend: StoreBackend) -> None:
        self.settings = settings
        self.pm = pm
        self.backend = backend
        self.store: Store = backend.factory(settings.section(f"aio.store.{backend.name}"), settings)
        self.debug: bool = settings["debug"]
        self.retry_timeout = int(settings["tasks.retry_timeout"] * 1000)
        self.poll_interval: float = settings["timeouts.poll_interval"]
        self.message_interval: float = settings["messages.poll_interval"]
        self.message_batch: int = settings["messages.batch_size"]
        self._outbox = asyncio.Event()
        self.shutdown_timeout: float = settings["api.http.timeout"]
        port = settings["api.http.port"]
        self.url: str = settings["api.http.url"] or f"http://localhost:{port}"
        self.clock = Clock()
        self.transports: dict[str, Transport] = {}
        self.schemes: frozenset[str] = BUILTIN_SCHEMES
        self.paused = False  # debug.start pauses background work
        self.accepting = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.plugin_state: dict[str, Any] = {}  # per-server state plugins share between hooks
        self._on_request = observers(pm, "resonate_request_finished", self)
        self._on_changes = observers(pm, "resonate_state_changes", self)
        self._on_delivery = observers(pm, "resonate_message_delivered", self)
        self.request_log = (
            RequestLog(settings["log.format"])
            if settings["log.requests"]
            and logging.getLogger(RequestLog.LOGGER).isEnabledFor(logging.INFO)
            else None
        )
        self._boot = int(time.time())
        self._request_seq = 0
        self.app = self._build_app()

    # --- assembly ----------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings["api.http.max_body_size"])
        app.router.add_post("/", self.handle_rpc)
        for batch in self.pm.hook.resonate_routes(server=self):
            for method, path, handler in batch:
                app.router.add_route(method, path, handler)
        for prefix in LEGACY_PREFIXES:
            app.router.add_route("*", prefix, self.handle_legacy)
            app.router.add_route("*", prefix + "/{tail:.*}", self.handle_legacy)
        return app

    async def start_background(self) -> None:
        """Open the store, start transports and plugins; then accept requests."""
        await self.store.start()
        transports = [t for batch in self.pm.hook.resonate_transports(server=self) for t in batch]
        for t in transports:
            for scheme in t.schemes:
                if scheme in self.transports:
                    raise StartupError(f"two transports claim the scheme '{scheme}'")
                self.transports[scheme] = t
            await t.start()
        self.schemes = BUILTIN_SCHEMES | frozenset(self.transports)
        for result in self.pm.hook.resonate_startup(server=self):
            await _maybe_await(result)
        self._tasks.append(asyncio.create_task(self._timeouts_loop(), name="timeouts"))
        self._tasks.append(asyncio.create_task(self._messages_loop(), name="messages"))
        if self.request_log is not None:
            self._tasks.append(asyncio.create_task(self._flush_loop(), name="request-log"))
        self.accepting = True

    async def stop_background(self) -> None:
        """Stop loops, let plugins and transports shut down, close the store."""
        self.accepting = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for result in self.pm.hook.resonate_shutdown(server=self):
            with contextlib.suppress(Exception):
                await _maybe_await(result)
        for t in set(self.transports.values()):
            with contextlib.suppress(Exception):
                await t.stop()
        await self.store.close()

    # --- request handling --------------------------------------------------------------------

    def ctx(self, now: int, corr_id: str = "0") -> Ctx:
        return Ctx(now, self.retry_timeout, self.schemes, corr_id, [] if self._on_changes else None)

    async def transact(
        self, c: Ctx, fn: Callable[[StoreTx], Awaitable[Any]], key: str | None = None
    ) -> Any:
        """Run ``fn`` in a transaction; report state changes once it committed.

        A store may run ``fn`` more than once (a retried deadlock, a re-run batch); only the
        attempt that committed is reported.
        """

        async def attempt(tx: StoreTx) -> Any:
            if c.changes:
                c.changes.clear()
            c.outbox = False
            return await fn(tx)

        result = await self.store.transact(attempt, key)
        if c.outbox:
            self._outbox.set()
        if c.changes:
            self._on_changes(changes=c.changes)
        return result

    async def handle_rpc(self, request: web.Request) -> web.Response:
        """``POST /`` through aiohttp (requests the lean front hands over, and test clients)."""
        try:
            body: bytes | None = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None
        status, payload = await self.rpc(body)
        return web.Response(body=payload, status=status, content_type="application/json")

    async def rpc(self, body: bytes | None) -> tuple[int, bytes]:
        """Answer one ``POST /`` body (None: over the size limit) with the status and reply.

        Every RPC goes through here, whichever HTTP layer received it; never raises.
        """
        started = time.perf_counter()
        self.in_flight += 1
        self._idle.clear()
        kind, corr_id, status = "unknown", "0", 500
        try:
            kind, corr_id, status, data = await self._dispatch(body)
            return status, proto.render(kind, corr_id, status, data)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
            duration = time.perf_counter() - started
            if self._on_request:
                self._on_request(kind=kind, status=status, duration=duration)
            if self.request_log is not None:
                self._request_seq += 1
                self.request_log.add(
                    kind, status, duration, f"{self._boot:x}-{self._request_seq:x}", corr_id
                )

    async def _dispatch(self, body: bytes | None) -> tuple[str, str, int, Any]:
        if body is None:
            limit = self.settings["api.http.max_body_size"]
            return "unknown", "0", 413, f"Request body exceeds the limit of {limit} bytes"
        try:
            env = proto.parse_envelope(body)
        except proto.EnvelopeError as e:
            return e.kind, e.corr_id, e.status, e.message
        if not self.accepting:
            return env.kind, env.corr_id, 503, "Server is shutting down"
        now = env.debug_time if self.debug and env.debug_time is not None else self.clock()
        try:
            status, data = await self.run_operation(env, now)
        except proto.RpcError as e:
            status, data = e.status, e.message
        except StoreUnavailable as e:
            log.warning("store unavailable for %s: %s", env.kind, e)
            status, data = 503, f"Store unavailable: {e}"
        except StoreDataError as e:
            status, data = 400, f"Invalid request: {e}"
        except StoreBusy as e:
            log.warning("store busy for %s: %s", env.kind, e)
            status, data = 503, f"Store busy: {e}"
        except StoreError as e:
            log.error("store error for %s: %s", env.kind, e)
            status, data = 500, f"Internal error: {e}"
        except Exception:
            log.exception("unexpected error handling %s (corrId %s)", env.kind, env.corr_id)
            status, data = 500, "Internal error: unexpected server failure (see server log)"
        return env.kind, env.corr_id, status, data

    async def run_operation(self, env: proto.Envelope, now: int) -> tuple[int, Any]:
        c = self.ctx(now, env.corr_id)
        op = engine.OPERATIONS.get(env.kind)
        if op is not None:
            parse, run = op
            req = parse(env.data, c)
            if env.kind in engine.READ_ONLY:
                return await self.store.read(lambda tx: run(tx, c, req))  # type: ignore[no-any-return]
            key = engine.lock_key(env.data)
            return await self.transact(c, lambda tx: run(tx, c, req), key)  # type: ignore[no-any-return]
        if env.kind in DEBUG_KINDS:
            if not self.debug:
                return 403, "Debug operations are disabled"
            return await self._debug(env, c)
        return 400, f"Unknown operation: {env.kind}"

    async def _debug(self, env: proto.Envelope, c: Ctx) -> tuple[int, Any]:
        kind = env.kind
        if kind == "debug.start":
            self.paused = True
            return 200, {}
        if kind == "debug.stop":
            self.paused = False
            return 200, {}
        if kind == "debug.reset":
            await self.store.transact(lambda tx: tx.reset())
            return 200, {}
        if kind == "debug.snap":
            return 200, await self.store.transact(engine.snapshot)
        t = env.data.get("time")
        if not proto.is_i64(t):
            return 400, "Missing or invalid 'time' field"
        if env.debug_time is not None and env.debug_time != t:
            return 400, "resonate:debug_time must equal data.time"
        tick = self.ctx(t)
        await self.transact(tick, lambda tx: engine.process_timeouts(tx, tick))
        return 200, []

    async def handle_legacy(self, request: web.Request) -> web.Response:
        return web.Response(body=LEGACY_BODY, status=410, content_type="application/json")

    # --- background work ---------------------------------------------------------------------

    async def _timeouts_loop(self) -> None:
        health = _LoopHealth("timeout processing")
        while True:
            await asyncio.sleep(health.delay(self.poll_interval))
            if self.paused:
                continue
            try:
                more = True
                while more:
                    c = self.ctx(self.clock())
                    more = await self.transact(c, lambda tx, c=c: engine.process_timeouts(tx, c))
                health.ok()
            except StoreError as e:
                health.failed(e)

    async def _flush_loop(self) -> None:
        assert self.request_log is not None
        try:
            while True:
                await asyncio.sleep(0.1)
                self.request_log.flush()
        finally:
            self.request_log.flush()

    async def _messages_loop(self) -> None:
        """Claim outbox messages (deleting them) and hand them to transports.

        Wakes when a transaction queued a message, else every ``messages.poll_interval``.
        """
        health = _LoopHealth("message delivery")
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox.wait(), health.delay(self.message_interval))
            self._outbox.clear()
            if self.paused:
                continue
            try:
                while True:
                    batch = await self.store.transact(
                        lambda tx: tx.take_messages(self.message_batch)
                    )
                    for message in batch:
                        await self.deliver(message)
                    if len(batch) < self.message_batch:
                        break
                health.ok()
            except StoreError as e:
                health.failed(e)

    async def deliver(self, message: Message) -> str:
        """Send one claimed message; returns its outcome (``pending`` when still in flight)."""
        if message.kind == "execute":
            assert message.task_id is not None and message.version is not None
            body = execute_message(message.task_id, message.version, self.url)
        else:
            assert message.promise is not None
            body = unblock_message(message.promise)
        address = parse(message.address)
        transport = self.transports.get(address.scheme) if address is not None else None
        if address is None or transport is None:
            log.warning("no transport for %s; %s message dropped", message.address, message.kind)
            outcome = "dropped"
        else:
            try:
                sent = await transport.send(address, body)
            except Exception as e:
                log.warning("delivery of %s to %s failed: %s", message.kind, message.address, e)
                outcome = "error"
            else:
                if sent is None:
                    return "pending"
                outcome = "success" if sent else "dropped"
        self.report_delivery(message.kind, message.address, outcome)
        return outcome

    def report_delivery(self, kind: str, address: str, outcome: str) -> None:
        """Record the final outcome of one message (``success``, ``error`` or ``dropped``).

        Transports whose ``send`` returned None call this once the delivery is decided.
        """
        if self._on_delivery:
            self._on_delivery(kind=kind, address=address, outcome=outcome)

    # --- lifecycle ---------------------------------------------------------------------------

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _drain(self, listener: RpcListener) -> None:
        """Return once no request is in flight, or partly received by the lean front."""
        while listener.receiving():
            await asyncio.sleep(0.02)
        await self.wait_idle()

    async def serve(self, host: str, port: int, ready: Callable[[], None] | None = None) -> None:
        """Run until SIGTERM/SIGINT, then shut down gracefully within the timeout."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        cpus = cpus_setting(self.settings)
        if cpus is not None:  # before the store starts its threads, which inherit it
            names = ",".join(map(str, sorted(cpus)))
            try:
                os.sched_setaffinity(0, cpus)
            except OSError as e:
                raise StartupError(f"cannot run on CPUs {names}: {e.strerror or e}") from None
            log.info("running on CPUs %s", names)
        try:
            await self.start_background()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop_background()
            raise
        tune_gc()
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=self.shutdown_timeout
        )
        await runner.setup()
        assert runner.server is not None
        listener = RpcListener(self.rpc, runner.server, self.settings["api.http.max_body_size"])
        try:
            await listener.start(host, port)
        except OSError as e:
            await self.stop_background()
            raise StartupError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        log.info(
            "resonate server listening on http://%s:%s (store: %s, event loop: %s)",
            host,
            port,
            self.backend.name,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        if ready is not None:
            ready()
        await stop.wait()
        deadline = loop.time() + self.shutdown_timeout
        log.info("shutting down (timeout %gs)", self.shutdown_timeout)
        self.accepting = False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drain(listener), max(0.0, deadline - loop.time()))
        try:
            await asyncio.wait_for(self.stop_background(), max(0.5, deadline - loop.time()))
        except TimeoutError:
            log.warning(
                "background work did not stop within the shutdown timeout (%gs); exiting anyway",
                self.shutdown_timeout,
            )
        await listener.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(runner.cleanup(), max(0.5, deadline - loop.time()))
        if self.request_log is not None:
            self.request_log.flush()
        log.info("shutdown complete")


def tune_gc() -> None:
    """Fewer and cheaper garbage collections while serving.

    What exists after start-up (modules, plugins, settings) is frozen out of every collection,
    and the youngest generation is collected every 50,000 allocations instead of 700. Requests
    create few reference cycles, so memory stays bounded; the collection pauses were what put
    the create p99 over 50 ms at 80% of capacity (measured in docs/benchmarks.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class _Observers:
    """The implementations of one observation hook, called directly (no pluggy dispatch).

    Each implementation gets the arguments it names (pluggy's rule), ``server`` included; one
    that raises is logged once and skipped from then on. False when there are none.
    """

    def __init__(
        self, name: str, impls: list[tuple[Callable[..., Any], tuple[str, ...]]], server: Server
    ) -> None:
        self.name = name
        self.impls = impls
        self.server = server

    def __bool__(self) -> bool:
        return bool(self.impls)

    def __call__(self, **kwargs: Any) -> None:
        kwargs["server"] = self.server
        for fn, names in self.impls:
            try:
                fn(*[kwargs[n] for n in names])
            except Exception:
                log.exception(
                    "%s observer %s failed; ignoring it from now on",
                    self.name,
                    getattr(fn, "__module__", fn),
                )
                self.impls = [i for i in self.impls if i[0] is not fn]


def observers(pm: PluginManager, name: str, server: Server) -> _Observers:
    impls = getattr(pm.hook, name).get_hookimpls()
    return _Observers(name, [(i.function, tuple(i.argnames)) for i in reversed(impls)], server)


class _LoopHealth:
    """Backoff and quiet logging for a background loop while the store fails."""

    MAX_DELAY = 5.0

    def __init__(self, name: str) -> None:
        self.name = name
        self.failures = 0

    def delay(self, normal: float) -> float:
        if not self.failures:
            return normal
        return min(self.MAX_DELAY, normal * 2 ** min(self.failures, 10))

    def failed(self, error: Exception) -> None:
        if not self.failures:
            log.warning("%s failing, backing off until the store answers: %s", self.name, error)
        self.failures += 1

    def ok(self) -> None:
        if self.failures:
            log.info("%s recovered after %d failed attempts", self.name, self.failures)
        self.failures = 0


def build_server(settings: Settings, pm: PluginManager) -> Server:
    pm.validate(settings)
    return Server(settings, pm, pm.select_store(settings))


__all__ = ["Server", "StateChange", "build_server"]
