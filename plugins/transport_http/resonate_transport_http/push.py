"""HTTP push: POST each message to its ``http(s)://`` address, retrying failures with backoff.

``send`` puts the message in a bounded queue (waiting when it is full, which slows the
delivery loop down) and returns None; a dispatcher starts one delivery per free concurrency
slot. A failed attempt (a non-2xx answer, a connection error or a timeout) gives its slot back
and waits ``backoff * 2**(n-1)`` capped at ``backoff_max``, with full jitter, before attempt
n + 1. At most ``max_retrying`` messages wait for a retry at once; a failure beyond that, or
after the last retry, is given up. Each message's final outcome (``success`` or ``error``) is
reported exactly once through ``server.report_delivery``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
from resonate_server.addresses import Address
from resonate_server.transport import Transport

log = logging.getLogger("resonate.transport.http")

DRAIN_LIMIT = 64 * 1024  # answers up to this size are read so the connection can be reused


class Reporter(Protocol):
    def __call__(self, kind: str, address: str, outcome: str) -> None: ...


@dataclass(frozen=True, slots=True)
class PushConfig:
    """The transport's settings (``transports.http.*``), durations in seconds."""

    enable: bool = True
    concurrency: int = 256
    connect_timeout: float = 10.0
    request_timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    backoff_max: float = 30.0
    max_retrying: int = 1000
    auth_header: str = "Authorization"
    auth_token: str = ""  # sent as "Bearer <token>" when set; never logged

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"PushConfig(concurrency={self.concurrency}, retries={self.retries}, ...)"


@dataclass(slots=True)
class Job:
    url: str
    kind: str
    body: bytes


def redact(url: str) -> str:
    """``url`` without its user-info, for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full-jitter wait before retry ``attempt`` (1-based): uniform in [0, min(cap, base·2ⁿ⁻¹)]."""
    return random.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))


class HttpPush(Transport):
    """Delivers ``http`` and ``https`` addresses by POSTing the message JSON."""

    name = "http"
    schemes = frozenset({"http", "https"})

    def __init__(self, config: PushConfig, report: Reporter | None) -> None:
        self.config = config
        self._report_fn = report
        self._headers = {"Content-Type": "application/json"}
        if config.auth_token:
            self._headers[config.auth_header] = f"Bearer {config.auth_token}"
        self._session: aiohttp.ClientSession | None = None
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=config.concurrency)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._dispatcher: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self.retrying = 0  # messages between a failed attempt and their next one
        self.closed = False

    async def start(self) -> None:
        c = self.config
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=c.request_timeout, connect=c.connect_timeout),
            connector=aiohttp.TCPConnector(limit=c.concurrency),
        )
        self._dispatcher = asyncio.create_task(self._dispatch(), name="http-push")

    async def stop(self) -> None:
        """Abandon queued, waiting and in-flight deliveries (each reported ``error``)."""
        self.closed = True
        tasks = [t for t in (self._dispatcher, *self._deliveries) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while not self._queue.empty():
            self._report(self._queue.get_nowait(), "error")
        if self._session is not None:
            await self._session.close()

    async def send(self, address: Address, message: dict[str, Any]) -> bool | None:
        """Queue ``message`` (waiting while the queue is full) and return None.

        Returns False, dropping the message, when the transport is disabled or stopped.
        """
        if not self.config.enable or self.closed:
            log.info(
                "http transport %s; %s message for %s dropped",
                "disabled" if not self.config.enable else "stopped",
                message.get("kind"),
                redact(address.raw),
            )
            return False
        await self._queue.put(Job(address.raw, str(message.get("kind")), orjson.dumps(message)))
        return None

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                job = await self._queue.get()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._deliver(job))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, job: Job) -> None:
        """Attempt ``job`` until it succeeds or is given up; holds a slot only while posting.

        Entered holding a slot (taken by the dispatcher); reports the outcome exactly once.
        """
        c = self.config
        outcome = "error"
        attempt = 0
        try:
            while True:
                try:
                    ok, reason = await self._post(job)
                finally:
                    self._slots.release()
                if ok:
                    outcome = "success"
                    return
                if attempt >= c.retries:
                    log.warning(
                        "%s message to %s failed after %d attempts (%s); giving up",
                        job.kind,
                        redact(job.url),
                        attempt + 1,
                        reason,
                    )
                    return
                if self.retrying >= c.max_retrying:
                    log.warning(
                        "%s message to %s failed (%s) and %d messages already wait for a "
                        "retry; giving up",
                        job.kind,
                        redact(job.url),
                        reason,
                        self.retrying,
                    )
                    return
                attempt += 1
                delay = backoff_delay(attempt, c.backoff, c.backoff_max)
                log.debug(
                    "%s message to %s failed (%s); retry %d in %.3fs",
                    job.kind,
                    redact(job.url),
                    reason,
                    attempt,
                    delay,
                )
                self.retrying += 1
                try:
                    await asyncio.sleep(delay)
                    await self._slots.acquire()
                finally:
                    self.retrying -= 1
        finally:
            self._report(job, outcome)

    async def _post(self, job: Job) -> tuple[bool, str]:
        """One attempt: (True, "") on a 2xx answer, else (False, why)."""
        assert self._session is not None
        try:
            async with self._session.post(job.url, data=job.body, headers=self._headers) as resp:
                length = resp.content_length
                if length is not None and length <= DRAIN_LIMIT:
                    await resp.read()
                if 200 <= resp.status < 300:
                    return True, ""
                return False, f"HTTP {resp.status}"
        except TimeoutError:
            return False, "timed out"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return False, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    def _report(self, job: Job, outcome: str) -> None:
        if self._report_fn is None:
            return
        try:
            self._report_fn(job.kind, job.url, outcome)
        except Exception:
            log.exception("reporting the delivery of a %s message failed", job.kind)
