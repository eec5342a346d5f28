"""The metric families of one server, in a registry of their own.

Per-request work is a few dictionary look-ups and integer increments (no lock);
state gauges are plain integers kept up to date from state changes and turned into samples
only when Prometheus scrapes. docs/monitoring/README.md describes every family.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from resonate_server.store import StoreStats

# The seed's families carry no `_created` series and neither do the upstream ones.
disable_created_metrics()

PROMISE_STATES = ("pending", "resolved", "rejected", "rejected_canceled", "rejected_timedout")
TASK_STATES = ("pending", "acquired", "suspended", "halted", "fulfilled")
SCHEDULE_STATES = ("active",)

# Request latencies of the seed's histogram, finer than the default below 5 ms.
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Per-kind latencies: prometheus-client's default buckets.
KIND_BUCKETS = Histogram.DEFAULT_BUCKETS[:-1]
# Distinct request kinds kept as label values; later new kinds are counted as "other" so that
# a client sending made-up kinds cannot grow the registry without bound.
MAX_KINDS = 64
OTHER_KIND = "other"
PUSH_SCHEMES = ("http://", "https://")
# Statuses the RPC endpoint answers with, exposed at 0 from the start: rate() and increase()
# only see increments after a series' first sample, so the first errors after a start would be
# invisible if their series appeared with them.
API_STATUSES = (200, 400, 403, 404, 409, 413, 422, 500, 503)


class StateCounts:
    """Current number of entities per state, seeded from the store and moved by changes."""

    def __init__(self, states: Iterable[str]) -> None:
        self.known = tuple(states)
        self.counts: dict[str, int] = dict.fromkeys(self.known, 0)

    def load(self, counts: dict[str, int]) -> None:
        self.counts = dict.fromkeys(self.known, 0)
        for state, n in counts.items():
            self.counts[state] = int(n)

    def move(self, before: str | None, after: str | None) -> None:
        counts = self.counts
        if before is not None:
            counts[before] = counts.get(before, 0) - 1
        if after is not None:
            counts[after] = counts.get(after, 0) + 1

    def clear(self) -> None:
        self.counts = dict.fromkeys(self.known, 0)

    def __getitem__(self, state: str) -> int:
        return self.counts.get(state, 0)


class _Latencies:
    """One histogram series as plain numbers: a count per bucket (the last is ``+Inf``)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((floatToGoString(bound), total))
        return out


class _RequestCollector(Collector):
    """The four request families, kept as plain numbers and turned into samples when
    Prometheus scrapes.

    Only the event loop writes them (each answered request) and reads them (the scrape), so the
    per-request path takes no lock: it costs a quarter of prometheus-client's labelled
    counters and histograms, which lock every sample.
    """

    def __init__(self) -> None:
        self.by_status: dict[int, int] = dict.fromkeys(API_STATUSES, 0)
        self.by_kind_status: dict[tuple[str, int], int] = {}
        self.latency = _Latencies(API_BUCKETS)
        self.kind_latency: dict[str, _Latencies] = {}

    def observe(self, kind: str, status: int, seconds: float) -> None:
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1
        self.latency.observe(seconds)
        latency = self.kind_latency.get(kind)
        if latency is None:
            if len(self.kind_latency) >= MAX_KINDS:
                kind = OTHER_KIND
            latency = self.kind_latency.get(kind)
            if latency is None:
                latency = self.kind_latency[kind] = _Latencies(KIND_BUCKETS)
        latency.observe(seconds)
        key = (kind, status)
        self.by_kind_status[key] = self.by_kind_status.get(key, 0) + 1

    def describe(self) -> list[Metric]:
        return list(self._families(sampled=False))

    def collect(self) -> Iterator[Metric]:
        return self._families(sampled=True)

    def _families(self, sampled: bool) -> Iterator[Metric]:
        c = CounterMetricFamily(
            "api_requests_total",
            "RPC requests (POST /) answered, per HTTP status code.",
            labels=["status"],
        )
        if sampled:
            for status, n in sorted(self.by_status.items()):
                c.add_metric([str(status)], n)
        yield c
        h = HistogramMetricFamily(
            "api_duration_seconds",
            "Seconds spent answering an RPC request (POST /), every kind together.",
        )
        if sampled:
            h.add_metric([], self.latency.buckets(), self.latency.sum)
        yield h
        c = CounterMetricFamily(
            "resonate_request_total",
            "RPC requests per request kind and HTTP status code.",
            labels=["kind", "status"],
        )
        if sampled:
            for (kind, status), n in sorted(self.by_kind_status.items()):
                c.add_metric([kind, str(status)], n)
        yield c
        h = HistogramMetricFamily(
            "resonate_request_duration_seconds",
            "Seconds spent answering an RPC request, per request kind.",
            labels=["kind"],
        )
        if sampled:
            for kind, latency in sorted(self.kind_latency.items()):
                h.add_metric([kind], latency.buckets(), latency.sum)
        yield h


class _StateCollector(Collector):
    """Scrape-time samples of the state gauges and of ``coroutines_in_flight``."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.m = metrics

    def describe(self) -> list[Metric]:
        return list(self._families(sampled=False))

    def collect(self) -> Iterator[Metric]:
        return self._families(sampled=True)

    def _families(self, sampled: bool) -> Iterator[Metric]:
        m = self.m
        for name, doc, counts in (
            ("promises_total", "Promises that exist now, per state.", m.promises),
            ("tasks_total", "Tasks that exist now, per state.", m.tasks),
            ("schedules_total", "Schedules that exist now, per state.", m.schedules),
        ):
            g = GaugeMetricFamily(name, doc, labels=["state"])
            if sampled:
                for state, n in sorted(counts.counts.items()):
                    g.add_metric([state], n)
            yield g
        for name, doc, read in (
            (
                "resonate_promises_pending",
                "Backlog: promises pending now (not yet settled or timed out).",
                lambda: m.promises["pending"],
            ),
            (
                "resonate_tasks_pending",
                "Backlog: tasks pending now (waiting for a worker to acquire them).",
                lambda: m.tasks["pending"],
            ),
            (
                "resonate_tasks_acquired",
                "Tasks acquired now (held by a worker under a lease).",
                lambda: m.tasks["acquired"],
            ),
        ):
            g = GaugeMetricFamily(name, doc)
            if sampled:
                g.add_metric([], read())
            yield g
        g = GaugeMetricFamily(
            "coroutines_in_flight",
            "Work in progress inside the server: RPC requests accepted and not yet answered "
            "(including those waiting for their commit).",
            labels=["kind"],
        )
        if sampled:
            g.add_metric(["request"], m.in_flight())
        yield g
        g = GaugeMetricFamily(
            "resonate_server_info",
            "Always 1: the server's version and store.",
            labels=["version", "store"],
        )
        if sampled:
            g.add_metric([m.version, m.store], 1)
        yield g
        stats = m.store_stats() if sampled else None
        family: type[GaugeMetricFamily | CounterMetricFamily]
        for family, name, doc, field in (
            (
                GaugeMetricFamily,
                "resonate_store_queued",
                "Transactions waiting for the store's next batch now (store saturation).",
                "queued",
            ),
            (
                GaugeMetricFamily,
                "resonate_store_lanes",
                "Connections new transactions go to now (PostgreSQL lanes in use; 0 for SQLite).",
                "lanes",
            ),
            (
                CounterMetricFamily,
                "resonate_store_transactions",
                "Transactions the store committed (one per request that reached the store, "
                "searches excepted, plus background work).",
                "transactions",
            ),
            (
                CounterMetricFamily,
                "resonate_store_commits",
                "Database commits; transactions / commits is the average group-commit batch.",
                "commits",
            ),
        ):
            metric = family(name, doc)
            if stats is not None:
                metric.add_metric([], getattr(stats, field))
            yield metric


class ServerMetrics:
    """Every metric family of one server, registered in its own :class:`CollectorRegistry`.

    ``in_flight`` is read at scrape time. The ``observe_*`` methods are the hooks' fast paths:
    they never raise on unexpected input.
    """

    def __init__(
        self,
        in_flight: Callable[[], int],
        version: str = "",
        store: str = "",
        process: bool = True,
        store_stats: Callable[[], StoreStats] = StoreStats,
    ) -> None:
        self.in_flight = in_flight
        self.store_stats = store_stats
        self.version = version
        self.store = store
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.promises = StateCounts(PROMISE_STATES)
        self.tasks = StateCounts(TASK_STATES)
        self.schedules = StateCounts(SCHEDULE_STATES)
        self.requests = _RequestCollector()
        r.register(self.requests)
        self.messages = Counter(
            "resonate_messages_total",
            "Messages taken from the outbox and handed to a transport, per kind.",
            ["kind"],
            registry=r,
        )
        self.deliveries = Counter(
            "resonate_deliveries_total",
            "Final outcomes of HTTP push deliveries (success, error, dropped).",
            ["status"],
            registry=r,
        )
        self.schedule_promises = Counter(
            "resonate_schedule_promises_total",
            "Promises created by schedules (one per firing).",
            registry=r,
        )
        r.register(_StateCollector(self))
        if process:
            ProcessCollector(registry=r)
        # Label children, cached so the per-request path skips prometheus-client's label lock.
        self._message_kinds: dict[str, Any] = {}
        self._delivery_status: dict[str, Any] = {}
        for kind in ("execute", "unblock"):
            self._message_kinds[kind] = self.messages.labels(kind=kind)
        for outcome in ("success", "error", "dropped"):
            self._delivery_status[outcome] = self.deliveries.labels(status=outcome)

    # --- store-derived gauges ------------------------------------------------------------------

    def load_counts(self, counts: dict[str, dict[str, int]]) -> None:
        """Seed the state gauges from :meth:`StoreTx.count_states`."""
        self.promises.load(counts.get("promises", {}))
        self.tasks.load(counts.get("tasks", {}))
        self.schedules.load(counts.get("schedules", {}))

    def clear_counts(self) -> None:
        """Every state gauge to zero (after ``debug.reset`` emptied the store)."""
        self.promises.clear()
        self.tasks.clear()
        self.schedules.clear()

    def observe_changes(self, changes: Iterable[Any]) -> None:
        """Apply one transaction's :class:`StateChange` list to the gauges and counters."""
        for c in changes:
            entity = c.entity
            if entity == "promise":
                self.promises.move(c.before, c.after)
            elif entity == "task":
                self.tasks.move(c.before, c.after)
            elif entity == "schedule":
                if c.after == "fired":
                    self.schedule_promises.inc()
                elif c.after == "deleted":
                    self.schedules.move(c.before, None)
                else:
                    self.schedules.move(c.before, c.after)

    # --- per request -----------------------------------------------------------------------------

    def observe_request(self, kind: str, status: int, duration: float) -> None:
        """Count one answered RPC request in the seed's and the upstream families."""
        self.requests.observe(kind, status, duration)

    # --- deliveries ------------------------------------------------------------------------------

    def observe_delivery(self, kind: str, address: str, outcome: str) -> None:
        """Count one outbox message; HTTP push outcomes also go to the deliveries counter."""
        counter = self._message_kinds.get(kind)
        if counter is None:
            counter = self._message_kinds[kind] = self.messages.labels(kind=kind)
        counter.inc()
        if address.startswith(PUSH_SCHEMES):
            status = self._delivery_status.get(outcome)
            if status is None:
                status = self._delivery_status[outcome] = self.deliveries.labels(status=outcome)
            status.inc()
