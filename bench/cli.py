"""``python -m bench``: run the benchmark suite and print (and optionally save) the results.

Each workload × store gets a fresh database and a fresh server process; the run starts and
stops everything it needs (servers, a throwaway PostgreSQL cluster, the SDK process) and only
talks to 127.0.0.1. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

from resonate_server.core_plugin import parse_cpus

from . import seed as seeding
from . import workloads as wl
from .load import Phase, Stats, Window
from .procs import (
    ROOT,
    CpuMeter,
    PgEnv,
    Process,
    Store,
    ceiling_server,
    machine_info,
    machine_jiffies,
    migrate,
    plugins,
    remove_store,
    resonate_server,
    rss_mb,
    sqlite_store,
    temp_workdir,
)

WORKLOADS = ("create", "create-rate", "create-settle", "get", "task", "sdk", "scale", "sse-idle")
STORES = ("sqlite", "postgres")

# The targets of issue 6.
TARGET_CREATE = 5000.0
TARGET_CEILING_RATIO = 0.7
TARGET_CREATE_P99_MS = 50.0
TARGET_TASKS = 2000.0
TARGET_SCALE_GET_P99_MS = 10.0
#: Throughput with the scale seed stored, as a fraction of the empty database (create, task).
TARGET_SCALE_RATIO = 0.8

#: CPU (100% = one core) used by other processes during a window above which a row is
#: marked as measured on a busy machine.
NOISY_CPU = 25.0

#: Seconds in a row the machine must be that quiet before a run (--wait-quiet).
QUIET_SECONDS = 3

#: scale-search: concurrent searches (each may read thousands of rows).
SEARCH_CLIENTS = 4

#: Which number picks the median run of a workload repeated with --repeat.
MEDIAN_BY = {
    "create-rate": "p99",
    "scale-get": "p99",
    "scale-get-searching": "p99",
    "sse-idle": "server_rss_mb",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the Resonate server over loopback (see docs/benchmarks.md).",
    )
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all). The no-storage "
        "ceiling runs right before each store's create.",
    )
    p.add_argument("--stores", default=",".join(STORES), help="sqlite, postgres (default: both)")
    p.add_argument("--duration", type=float, default=None, help="seconds measured per run (10)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of warm-up per run (2)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="closed-loop clients, task producers, and the connections of open-loop runs (64)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="create-rate: fixed promise.create rate (default 0.8 x the create throughput "
        "measured on the same store in this run)",
    )
    p.add_argument("--get-rate", type=float, default=1000.0, help="scale: promise.get rate (1000)")
    p.add_argument(
        "--seed", type=int, default=None, help="scale: promises bulk-loaded first (1,000,000)"
    )
    p.add_argument("--get-seeded", type=int, default=None, help="get: promises seeded (10,000)")
    p.add_argument("--workers", type=int, default=None, help="task: SSE worker coroutines (64)")
    p.add_argument("--sdk-concurrency", type=int, default=None, help="sdk: workflows at once (32)")
    p.add_argument("--sdk-steps", type=int, default=5, help="sdk: ctx.run steps per workflow (5)")
    p.add_argument(
        "--sse-connections", type=int, default=None, help="sse-idle: streams held open (1000)"
    )
    p.add_argument(
        "--max-ops", type=int, default=None, help="most operations recorded per run (1,000,000)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each workload N times and report the median run (1)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to use less than "
        f"{NOISY_CPU:.0f}%% CPU (0: do not wait)",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every `resonate serve` (repeatable; use --server-arg=--flag)",
    )
    p.add_argument(
        "--pg-delay-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="reach PostgreSQL through a proxy that holds every packet MS milliseconds each way, "
        "as a database across a network would (default 0: direct)",
    )
    p.add_argument(
        "--pg-statements",
        type=int,
        default=0,
        metavar="N",
        help="load pg_stat_statements into the PostgreSQL cluster and, after each PostgreSQL "
        "row, print the N statements with the most execution time in that run, warm-up "
        "included; it slows the database, so do not compare such runs with others "
        "(default 0: off)",
    )
    p.add_argument(
        "--server-cpus",
        default="",
        metavar="CPUS",
        help="pin the server (resonate serve --cpu-affinity CPUS) and the ceiling server to "
        "these CPUs, e.g. 1, and this benchmark process (load generator, PostgreSQL, SDK) to "
        "the others (default: no pinning; docs/operations.md#cpu-placement)",
    )
    p.add_argument(
        "--ceiling-front",
        choices=("aiohttp", "lean"),
        default="aiohttp",
        help="the ceiling's HTTP layer: an aiohttp handler (issue 6's ceiling, the default) or "
        "the server's lean RPC front, for comparison",
    )
    p.add_argument(
        "--timeline",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also report each run's latency over time: operations, p50 and max per SECONDS "
        "of (scheduled) starts, e.g. 0.1 (default: off)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="JSON",
        help="a --json file of an earlier run (e.g. bench/results/baseline.json): "
        "add a table of this run against it",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every workload for ~2 s, SQLite only, small sizes: keeps the tool working",
    )
    p.add_argument("--workdir", type=Path, default=None, help="databases and logs (temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults: dict[str, Any] = {
        "duration": 2.0 if smoke else 10.0,
        "warmup": 0.5 if smoke else 2.0,
        "concurrency": 8 if smoke else 64,
        "seed": 10_000 if smoke else 1_000_000,
        "get_seeded": 1_000 if smoke else 10_000,
        "workers": 4 if smoke else 64,
        "sdk_concurrency": 4 if smoke else 32,
        "sse_connections": 100 if smoke else 1000,
        "max_ops": 50_000 if smoke else 1_000_000,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if smoke and args.stores == ",".join(STORES):
        args.stores = "sqlite"
    if smoke:
        args.sdk_steps = min(args.sdk_steps, 3)
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.store_list = [s.strip() for s in args.stores.split(",") if s.strip()]
    for w in args.workload_list:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r} (choose from {', '.join(WORKLOADS)})")
    for s in args.store_list:
        if s not in STORES:
            p.error(f"unknown store {s!r} (choose from {', '.join(STORES)})")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.timeline < 0 or math.isnan(args.timeline):
        p.error("--timeline must be a number of seconds, 0 for none")
    if not 0 <= args.pg_delay_ms <= 1000:
        p.error("--pg-delay-ms must be between 0 and 1000")
    if not 0 <= args.pg_statements <= 100:
        p.error("--pg-statements must be between 0 and 100")
    return args


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


class Suite:
    """One run of the benchmark: the machine, the settings, and one row per measurement."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir: Path = args.workdir or temp_workdir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.all_runs: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.pg: PgEnv | None = None
        self.run_id = f"b{int(time.time()) % 100000}-"
        self.machine: dict[str, Any] = {}

    # --- helpers -----------------------------------------------------------------------------

    def say(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def extra_flags(self) -> list[str]:
        pin = ["--cpu-affinity", self.args.server_cpus] if self.args.server_cpus else []
        return ["--api-http-timeout", "2s", *pin, *self.args.server_arg]

    def pg_env(self) -> PgEnv:
        """The run's PostgreSQL cluster, started on first use with the run's options."""
        if self.pg is None:
            self.say("starting a throwaway PostgreSQL cluster")
            self.pg = PgEnv(self.args.pg_delay_ms, self.args.pg_statements > 0)
        return self.pg

    def new_store(self, kind: str, label: str) -> Store:
        if kind == "sqlite":
            return sqlite_store(self.workdir, label)
        return self.pg_env().store(label)

    def window(self, server: Process, store: Store | None) -> Window:
        meters = {"server": CpuMeter([server.pid])}
        statements_of = None
        if store is not None and store.pg is not None:
            meters["db"] = CpuMeter(pid_fn=store.db_pids)
            if self.args.pg_statements:
                store.pg.reset_statements(store)
                statements_of = store
        return Window(meters, statements_of)

    def report_statements(self, r: dict[str, Any], window: Window | None) -> None:
        """With ``--pg-statements``: the busiest statements of the run ``r`` just measured
        (a failure to read them is reported, and the row kept)."""
        store: Store | None = window.statements_of if window else None
        if store is None or store.pg is None:
            return
        try:
            top = store.pg.top_statements(store, self.args.pg_statements)
        except Exception as e:
            self.failures.append(f"{r['workload']}-{r['store']}: pg_stat_statements: {e}")
            self.say(f"    pg_stat_statements FAILED: {e}")
            return
        r["extra"]["pg_statements"] = top
        self.say("    pg_stat_statements: calls, total ms, mean µs, rows, statement")
        for s in top:
            query = s["query"] if len(s["query"]) <= 140 else s["query"][:137] + "..."
            self.say(
                f"    {s['calls']:>8} {s['total_ms']:>9.1f} {1000 * s['mean_ms']:>8.1f} "
                f"{s['rows']:>8}  {query}"
            )

    def phase(self, window: Window) -> Phase:
        a = self.args
        return Phase(a.warmup, a.duration, a.max_ops, window, a.timeline)

    @staticmethod
    def other_cpu(window: Window, stats: Stats, workload: str) -> float:
        """Machine CPU in the window not used by the server, the database or the load."""
        ours = sum(window.cpu.values()) + window.loadgen_cpu
        if workload == "sdk":
            ours += stats.loadgen_cpu  # the SDK process is the load generator there
        return max(0.0, window.machine_cpu - ours)

    def row(
        self,
        workload: str,
        store: str,
        stats: Stats,
        window: Window | None,
        server: Process | None,
        unit: str = "ops/s",
        note: str = "",
    ) -> dict[str, Any]:
        other = self.other_cpu(window, stats, workload) if window else None
        r: dict[str, Any] = {
            "workload": workload,
            "store": store,
            "unit": unit,
            **{k: v for k, v in asdict(stats).items() if k not in ("extra",)},
            "server_cpu": round(window.cpu.get("server", math.nan), 1) if window else None,
            "db_cpu": round(window.cpu["db"], 1) if window and "db" in window.cpu else None,
            "server_rss_mb": round(rss_mb(server.pid), 1) if server else None,
            "machine_cpu": round(window.machine_cpu, 1) if window else None,
            "other_cpu": round(other, 1) if other is not None else None,
            "noisy": other is not None and other > NOISY_CPU,
            "server_us_per_op": _per_op(window.cpu.get("server") if window else None, stats),
            "db_us_per_op": _per_op(window.cpu.get("db") if window else None, stats),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "note": note,
            "extra": stats.extra,
        }
        self.rows.append(r)
        self.all_runs.append(r)
        self.say(
            f"  {workload:<14} {store:<9} {stats.throughput:>9.1f} {unit:<12} "
            f"p50 {stats.p50:7.2f} p90 {stats.p90:7.2f} p99 {stats.p99:7.2f} ms  "
            f"errors {stats.errors}  server cpu {r['server_cpu']}% "
            f"({r['server_us_per_op']} µs/op)"
            + (f"  db cpu {r['db_cpu']}%" if r["db_cpu"] is not None else "")
            + f"  loadgen cpu {stats.loadgen_cpu:.0f}%  other cpu {r['other_cpu']}%"
            + f"  rss {r['server_rss_mb']} MB"
            + (f"  {note}" if note else "")
        )
        if stats.error_kinds:
            self.say(f"    errors: {stats.error_kinds}")
        if stats.extra.get("unstarted"):
            self.say(
                f"    {stats.extra['unstarted']} scheduled starts were still waiting for a free "
                "connection at the end (in the percentiles, with their lateness then)"
            )
        for start, ops, p50, worst in stats.extra.get("timeline", []):
            self.say(f"    at {start:6.2f} s  {ops:6d} ops  p50 {p50:8.2f}  max {worst:8.2f} ms")
        self.report_statements(r, window)
        return r

    def find(self, workload: str, store: str) -> dict[str, Any] | None:
        """The (median) row of ``workload`` on ``store`` measured so far."""
        for r in reversed(self.rows):
            if r["workload"] == workload and r["store"] == store:
                return r
        return None

    def ceiling_for(self, kind: str) -> dict[str, Any] | None:
        for r in reversed(self.rows):
            if r["workload"] == "ceiling" and r["extra"].get("for") == kind:
                return r
        return None

    def run_async(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run one measurement; a stuck one is cut off well after its planned end."""
        limit = self.args.warmup + self.args.duration + 120.0
        return asyncio.run(asyncio.wait_for(coro, limit))

    def wait_quiet(self) -> None:
        """Wait (up to --wait-quiet seconds) until the machine is idle apart from us."""
        limit = self.args.wait_quiet
        if limit <= 0:
            return
        deadline = time.monotonic() + limit
        ncpu = os.cpu_count() or 1
        quiet = 0
        while quiet < QUIET_SECONDS:
            b0, t0 = machine_jiffies()
            time.sleep(1.0)
            b1, t1 = machine_jiffies()
            busy = 100.0 * ncpu * (b1 - b0) / max(1, t1 - t0)
            quiet = quiet + 1 if busy < NOISY_CPU else 0
            if quiet < QUIET_SECONDS and time.monotonic() > deadline:
                self.say(f"  the machine stays busy ({busy:.0f}% CPU used by others); going on")
                return

    def with_server(
        self,
        label: str,
        store: Store | None,
        body: Callable[[Process], None],
        prepare: Callable[[], None] | None = None,
        flags: list[str] | None = None,
    ) -> None:
        """Fresh database (``prepare`` may seed it), a server on it, ``body``, then clean up."""
        server: Process | None = None
        try:
            if prepare is not None:
                prepare()
            if store is None:
                server = ceiling_server(
                    self.workdir, self.args.ceiling_front, self.args.server_cpus
                )
            else:
                server = resonate_server(
                    store, self.workdir, label, [*self.extra_flags(), *(flags or [])]
                )
            self.wait_quiet()
            server.start()
            body(server)
            if not server.alive():
                raise RuntimeError(f"{server.name} died during the run:\n{server.tail()}")
        except Exception as e:
            self.failures.append(f"{label}: {e}")
            self.say(f"  {label} FAILED: {e}")
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
        finally:
            if server is not None:
                code = server.stop()
                if code not in (0, None, -15):
                    self.say(f"  note: {server.name} exited with {code}")
            if store is not None:
                remove_store(store)

    def repeated(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` --repeat times; keep the median run of each workload it measures."""
        n = self.args.repeat
        start = len(self.rows)
        for _ in range(n):
            fn()
        if n == 1:
            return
        new = self.rows[start:]
        chosen: list[dict[str, Any]] = []
        for workload in dict.fromkeys(r["workload"] for r in new):
            runs = [r for r in new if r["workload"] == workload]
            key = MEDIAN_BY.get(workload, "throughput")
            runs_sorted = sorted(runs, key=lambda r: (r[key] is None, r[key] or 0))
            median = dict(runs_sorted[(len(runs_sorted) - 1) // 2])
            median["runs"] = [r[key] for r in runs]
            median["median_of"] = len(runs)
            median["median_by"] = key
            if workload == "create":
                ratios = [r["extra"].get("pair_ratio") for r in runs]
                median["extra"] = dict(median["extra"], pair_ratios=ratios)
            chosen.append(median)
        self.rows[start:] = chosen

    # --- the workloads -----------------------------------------------------------------------

    def run_ceiling(self, kind: str) -> None:
        front_note = "; lean front" if self.args.ceiling_front == "lean" else ""
        a = self.args

        def body(server: Process) -> None:
            w = self.window(server, None)
            stats = self.run_async(
                wl.create(server.port, self.run_id + "ceil-", a.concurrency, self.phase(w))
            )
            stats.extra["for"] = kind
            self.row(
                "ceiling", "none", stats, w, server, note=f"no storage; next to {kind}" + front_note
            )

        self.with_server("ceiling", None, body)

    def run_create_pair(self, kind: str) -> None:
        self.run_ceiling(kind)
        self.run_workload("create", kind)

    def run_workload(self, name: str, kind: str) -> None:
        a = self.args
        label = f"{name}-{kind}"
        prefix = f"{self.run_id}{name}-"
        store = self.new_store(kind, label)

        if name == "create":

            def body(server: Process) -> None:
                w = self.window(server, store)
                stats = self.run_async(wl.create(server.port, prefix, a.concurrency, self.phase(w)))
                ceiling = self.ceiling_for(kind)
                if ceiling is not None and ceiling["throughput"] > 0:
                    # the ceiling measured just before, on the same (busy or idle) machine
                    stats.extra["pair_ceiling"] = round(ceiling["throughput"], 1)
                    stats.extra["pair_ratio"] = round(stats.throughput / ceiling["throughput"], 3)
                self.row("create", kind, stats, w, server)

            self.with_server(label, store, body)

        elif name == "create-rate":
            create = self.find("create", kind)
            rate = a.rate or (0.8 * create["throughput"] if create else 1000.0)
            rate = max(10.0, rate)

            def body(server: Process) -> None:
                w = self.window(server, store)
                stats = self.run_async(
                    wl.create_rate(server.port, prefix, rate, a.concurrency, self.phase(w))
                )
                how = "0.8 x create" if create and not a.rate else "--rate"
                self.row(
                    "create-rate", kind, stats, w, server, note=f"open loop at {rate:.0f}/s ({how})"
                )

            self.with_server(label, store, body)

        elif name == "create-settle":

            def body(server: Process) -> None:
                w = self.window(server, store)
                stats = self.run_async(
                    wl.create_settle(server.port, prefix, a.concurrency, self.phase(w))
                )
                note = f"{stats.extra['requests_per_s']:.0f} req/s"
                self.row("create-settle", kind, stats, w, server, unit="pairs/s", note=note)

            self.with_server(label, store, body)

        elif name == "get":
            n = a.get_seeded
            created: list[int] = []

            def prepare() -> None:
                migrate(store, self.workdir / f"{label}.log")
                created.append(seeding.seed(store, n)[0])

            def body(server: Process) -> None:
                self.run_async(wl.check_seeded(server.port, n, created[0]))
                w = self.window(server, store)
                stats = self.run_async(wl.get_closed(server.port, n, a.concurrency, self.phase(w)))
                self.row("get", kind, stats, w, server, note=f"{n:,} promises stored")

            self.with_server(label, store, body, prepare=prepare)

        elif name == "task":

            def body(server: Process) -> None:
                w = self.window(server, store)
                stats = self.run_async(
                    wl.task_round_trip(server.port, prefix, a.concurrency, a.workers, self.phase(w))
                )
                note = f"{a.workers} workers, {stats.extra['requests_per_s']:.0f} req/s"
                self.row("task", kind, stats, w, server, unit="tasks/s", note=note)

            self.with_server(label, store, body)

        elif name == "sdk":
            python = wl.sdk_python(ROOT)
            if python is None:
                self.failures.append(
                    f"{label}: the SDK is not installed (.interop/py312; run make interop-setup)"
                )
                self.say(f"  {label} FAILED: the Python SDK is not installed (.interop/py312)")
                remove_store(store)
                return

            def body(server: Process) -> None:
                w = self.window(server, store)
                log = self.workdir / f"{label}-sdk.log"
                stats = self.run_async(
                    wl.sdk_workflows(
                        python, server.port, a.sdk_concurrency, a.sdk_steps, self.phase(w), log
                    )
                )
                note = (
                    f"{stats.extra['steps_per_s']:.0f} steps/s; {a.sdk_steps} steps, "
                    f"{a.sdk_concurrency} at once; loadgen = the SDK process"
                )
                self.row("sdk", kind, stats, w, server, unit="workflows/s", note=note)

            self.with_server(label, store, body)

        elif name == "scale":
            n = a.seed
            info: dict[str, Any] = {}

            def prepare() -> None:
                migrate(store, self.workdir / f"{label}.log")
                self.say(f"  seeding {n:,} promises into {kind}")
                created_at, secs = seeding.seed(store, n)
                info.update(created_at=created_at, seed_s=secs)
                self.say(f"  seeded in {secs:.1f} s ({n / secs:,.0f} rows/s)")

            def body(server: Process) -> None:
                time.sleep(0.5)
                info["rss_start"] = round(rss_mb(server.pid), 1)
                self.run_async(wl.check_seeded(server.port, n, info["created_at"]))
                w = self.window(server, store)
                stats = self.run_async(
                    wl.get_rate(server.port, n, a.get_rate, a.concurrency, self.phase(w))
                )
                stats.extra.update(
                    seeded=n,
                    seed_seconds=round(info["seed_s"], 1),
                    rss_at_start_mb=info["rss_start"],
                )
                note = (
                    f"{n:,} stored; open loop at {a.get_rate:.0f}/s; "
                    f"RSS at start {info['rss_start']} MB"
                )
                self.row("scale-get", kind, stats, w, server, note=note)
                w = self.window(server, store)
                stats = self.run_async(wl.search(server.port, SEARCH_CLIENTS, self.phase(w)))
                stats.extra["seeded"] = n
                note = f"{n:,} stored; pending of one shard by tag, {SEARCH_CLIENTS} clients"
                self.row("scale-search", kind, stats, w, server, note=note)
                w = self.window(server, store)
                stats, searched = self.run_async(
                    wl.get_rate_while_searching(
                        server.port, n, a.get_rate, a.concurrency, SEARCH_CLIENTS, self.phase(w)
                    )
                )
                stats.extra.update(seeded=n, searches=searched.ops, search_p50=searched.p50)
                note = (
                    f"{n:,} stored; gets at {a.get_rate:.0f}/s while {SEARCH_CLIENTS} clients "
                    f"search ({searched.throughput:.0f} searches/s, p50 {searched.p50:.0f} ms)"
                )
                self.row("scale-get-searching", kind, stats, w, server, note=note)
                w = self.window(server, store)
                stats = self.run_async(wl.create(server.port, prefix, a.concurrency, self.phase(w)))
                stats.extra["seeded"] = n
                self.row("scale-create", kind, stats, w, server, note=f"{n:,} stored")
                w = self.window(server, store)
                stats = self.run_async(
                    wl.task_round_trip(
                        server.port, f"{prefix}t-", a.concurrency, a.workers, self.phase(w)
                    )
                )
                stats.extra["seeded"] = n
                note = f"{n:,} stored; {a.workers} workers"
                self.row("scale-task", kind, stats, w, server, unit="tasks/s", note=note)

            self.with_server(label, store, body, prepare=prepare)

        elif name == "sse-idle":
            n = a.sse_connections
            flags = ["--transports-poll-max-connections", str(n + 100)]

            def body(server: Process) -> None:
                time.sleep(0.5)
                w = self.window(server, store)
                w.start()
                res = self.run_async(wl.sse_idle(server.port, server.pid, n, hold=2.0))
                w.stop()
                nan = math.nan
                stats = Stats(
                    ops=res["open"], errors=res["errors"], seconds=0.0, throughput=0.0,
                    p50=nan, p90=nan, p99=nan, max=nan, error_kinds=res["error_kinds"],
                    loadgen_cpu=w.loadgen_cpu, extra=res,
                )  # fmt: skip
                note = (
                    f"{res['open']} streams open: RSS {res['rss_before_mb']} -> "
                    f"{res['rss_after_mb']} MB ({res['kib_per_connection']} KiB each)"
                )
                self.row("sse-idle", kind, stats, w, server, unit="streams", note=note)

            self.with_server(label, store, body, flags=flags)

    def finish_notes(self) -> None:
        """Ratios that need other rows: create vs the ceiling, create with 1M vs empty."""
        for r in self.rows:
            if r["workload"] == "create":
                pairs = r["extra"].get("pair_ratios") or [r["extra"].get("pair_ratio")]
                pairs = sorted(x for x in pairs if x is not None)
                if pairs:
                    ratio = pairs[(len(pairs) - 1) // 2]
                    r["extra"]["ceiling_ratio"] = ratio
                    r["note"] = f"{ratio:.2f} x ceiling" + (
                        f" (median of {len(pairs)} ceiling/create pairs)" if len(pairs) > 1 else ""
                    )
            elif r["workload"] in ("scale-create", "scale-task"):
                what = r["workload"].removeprefix("scale-")
                empty = self.find(what, r["store"])
                if empty and empty["throughput"] > 0:
                    ratio = r["throughput"] / empty["throughput"]
                    r["extra"][f"vs_empty_{what}"] = round(ratio, 3)
                    r["note"] = f"{r['extra']['seeded']:,} stored; {ratio:.2f} x empty-db {what}"
            if r.get("median_of"):
                r["note"] = (r["note"] + "; " if r["note"] else "") + (
                    f"median of {r['median_of']} by {r['median_by']}"
                )
            if r["noisy"]:
                r["note"] = (r["note"] + "; " if r["note"] else "") + "BUSY MACHINE"

    # --- the suite ---------------------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        t0 = time.perf_counter()
        pg_version = None
        try:
            if "postgres" in a.store_list:
                pg_version = self.pg_env().version()
            self.machine = machine_info(pg_version)
            self.machine["server_plugins"] = plugins()
            self.machine["server_cpus"] = a.server_cpus or None
            self.say(
                f"machine: {self.machine['nproc']} cores ({self.machine['cpu']}), "
                f"{self.machine['memory_gib']} GiB, Python {self.machine['python']}, "
                f"SQLite {self.machine['sqlite']}, PostgreSQL {pg_version or '-'}; "
                f"load average {self.machine['loadavg_start']}"
            )
            self.say(f"work directory: {self.workdir}")
            for kind in a.store_list:
                self.say(f"store: {kind}")
                for name in a.workload_list:
                    if name == "create":
                        # ceiling and create in pairs, so each ratio compares like with like
                        self.repeated(lambda kind=kind: self.run_create_pair(kind))
                    else:
                        self.repeated(lambda name=name, kind=kind: self.run_workload(name, kind))
        finally:
            if self.pg is not None:
                self.pg.close()
        self.finish_notes()
        self.machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        self.machine["suite_seconds"] = round(time.perf_counter() - t0, 1)
        print(self.report())
        if a.json is not None:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(
                json.dumps(_no_nan(self.as_json()), indent=2, default=_json_default) + "\n"
            )
        if self.failures:
            self.say("FAILED: " + "; ".join(self.failures))
            self.say(f"logs kept in {self.workdir}")
        elif not a.keep and a.workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return 1 if self.failures else 0

    def targets(self) -> list[dict[str, Any]]:
        """Issue 6's targets against this run's numbers (only those this run measured)."""
        out: list[dict[str, Any]] = []

        def add(name: str, value: float, goal: str, ok: bool) -> None:
            out.append({"target": name, "value": round(value, 3), "goal": goal, "met": ok})

        a = self.args
        for kind in a.store_list:
            c = self.find("create", kind)
            if c:
                tp = c["throughput"]
                add(f"create/s ({kind})", tp, f">= {TARGET_CREATE:.0f}", tp >= TARGET_CREATE)
                if "ceiling_ratio" in c["extra"]:
                    ratio = c["extra"]["ceiling_ratio"]
                    goal = f">= {TARGET_CEILING_RATIO}"
                    add(f"create / ceiling ({kind})", ratio, goal, ratio >= TARGET_CEILING_RATIO)
            cr = self.find("create-rate", kind)
            if cr:
                ok = cr["p99"] < TARGET_CREATE_P99_MS and cr["errors"] == 0
                name = f"create p99 ms at {cr['extra'].get('target_rate', 0):.0f}/s ({kind})"
                add(name, cr["p99"], f"< {TARGET_CREATE_P99_MS:.0f}", ok)
            t = self.find("task", kind)
            if t:
                tp = t["throughput"]
                add(f"tasks/s ({kind})", tp, f">= {TARGET_TASKS:.0f}", tp >= TARGET_TASKS)
            sg = self.find("scale-get", kind)
            if sg:
                ok = sg["p99"] < TARGET_SCALE_GET_P99_MS and sg["errors"] == 0
                name = f"get p99 ms at {a.get_rate:.0f}/s, {a.seed:,} stored ({kind})"
                add(name, sg["p99"], f"< {TARGET_SCALE_GET_P99_MS:.0f}", ok)
            for what in ("create", "task"):
                sc = self.find(f"scale-{what}", kind)
                if sc and f"vs_empty_{what}" in sc["extra"]:
                    ratio = sc["extra"][f"vs_empty_{what}"]
                    name = f"{what} with {a.seed:,} stored / empty ({kind})"
                    goal = f">= {TARGET_SCALE_RATIO}"
                    add(name, ratio, goal, ratio >= TARGET_SCALE_RATIO)
        return out

    def report(self) -> str:
        lines = [
            "",
            "| workload | store | throughput | p50 ms | p90 ms | p99 ms | errors | server CPU % "
            "| server µs/op | db CPU % | loadgen CPU % | other CPU % | server RSS MB | notes |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| ---: | --- |",
        ]
        for r in self.rows:
            tp = "-" if r["workload"] == "sse-idle" else f"{_fmt(r['throughput'], 0)} {r['unit']}"
            lines.append(
                f"| {r['workload']} | {r['store']} | {tp} | {_fmt(r['p50'], 2)} "
                f"| {_fmt(r['p90'], 2)} | {_fmt(r['p99'], 2)} | {r['errors']} "
                f"| {_fmt(r['server_cpu'], 0)} | {_fmt(r['server_us_per_op'], 0)} "
                f"| {_fmt(r['db_cpu'], 0)} "
                f"| {_fmt(r['loadgen_cpu'], 0)} | {_fmt(r['other_cpu'], 0)} "
                f"| {_fmt(r['server_rss_mb'])} | {r['note']} |"
            )
        if self.args.compare is not None:
            lines += self.comparison(self.args.compare)
        t = self.targets()
        if t:
            lines += [
                "",
                "| target (issue 6) | this run | goal | met |",
                "| --- | ---: | --- | --- |",
            ]
            for x in t:
                met = "yes" if x["met"] else "no"
                lines.append(f"| {x['target']} | {x['value']:,} | {x['goal']} | {met} |")
        m = self.machine
        lines += [
            "",
            f"{m['date']}; commit {m['commit']}; {m['nproc']} cores ({m['cpu']}), "
            f"{m['memory_gib']} GiB; Python "
            f"{m['python']}, aiohttp {m['aiohttp']}, SQLite {m['sqlite']}, PostgreSQL "
            f"{m['postgres'] or '-'}; load average at start {m['loadavg_start']}, at end "
            f"{m['loadavg_end']}; suite took {m['suite_seconds']} s"
            + (f"; server pinned to CPUs {m['server_cpus']}" if m.get("server_cpus") else "")
            + (
                f"; PostgreSQL behind a proxy holding packets {self.args.pg_delay_ms:g} ms each way"
                if self.args.pg_delay_ms
                else ""
            ),
        ]
        if any(r["noisy"] for r in self.rows):
            lines.append(
                f"BUSY MACHINE: other processes used more than {NOISY_CPU:.0f}% CPU during some "
                "runs (column 'other CPU %'); rerun those when the machine is idle."
            )
        return "\n".join(lines)

    def comparison(self, path: Path) -> list[str]:
        """This run against an earlier ``--json`` file, row by row."""
        try:
            before = json.loads(path.read_text())["results"]
        except (OSError, ValueError, KeyError) as e:
            return ["", f"(cannot compare with {path}: {e})"]

        def key(r: dict[str, Any]) -> tuple[str, str]:
            if r["workload"] == "ceiling":
                return ("ceiling", r["extra"].get("for", ""))
            return (r["workload"], r["store"])

        old = {key(r): r for r in before}
        lines = [
            "",
            f"Compared with {path}:",
            "",
            "| workload | store | measure | before | now | now / before | server µs/op before "
            "| now |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.rows:
            b = old.get(key(r))
            if b is None:
                continue
            measure = MEDIAN_BY.get(r["workload"], "throughput")
            was, now = b.get(measure), r.get(measure)
            ratio = now / was if isinstance(was, (int, float)) and was and now is not None else None
            label = {"throughput": r["unit"], "p99": "p99 ms", "server_rss_mb": "RSS MB"}[measure]
            store = r["store"] if r["workload"] != "ceiling" else f"none ({key(r)[1]})"
            lines.append(
                f"| {r['workload']} | {store} | {label} | {_fmt(was)} | {_fmt(now)} "
                f"| {_fmt(ratio, 2)} | {_fmt(b.get('server_us_per_op'), 0)} "
                f"| {_fmt(r.get('server_us_per_op'), 0)} |"
            )
        return lines

    def as_json(self) -> dict[str, Any]:
        a = self.args
        config = {
            k: getattr(a, k)
            for k in (
                "duration", "warmup", "concurrency", "rate", "get_rate", "seed", "get_seeded",
                "workers", "sdk_concurrency", "sdk_steps", "sse_connections", "max_ops",
                "repeat", "wait_quiet", "server_arg", "smoke", "compare", "timeline",
                "pg_delay_ms", "pg_statements",
            )
        }  # fmt: skip
        config["workloads"] = a.workload_list
        config["stores"] = a.store_list
        ceilings = {
            r["extra"]["for"]: r["throughput"] for r in self.rows if r["workload"] == "ceiling"
        }
        return {
            "machine": self.machine,
            "config": config,
            "ceiling": ceilings,
            "results": self.rows,
            "targets": self.targets(),
            "failures": self.failures,
            "all_runs": self.all_runs if a.repeat > 1 else [],
        }


def _per_op(cpu_percent: float | None, stats: Stats) -> float | None:
    """CPU microseconds spent per completed operation: steadier than throughput on a
    machine shared with other work."""
    if cpu_percent is None or stats.throughput <= 0:
        return None
    return round(cpu_percent / 100.0 / stats.throughput * 1e6, 1)


def _json_default(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    raise TypeError(type(x).__name__)


def _no_nan(x: Any) -> Any:
    """NaN (no samples) as null, so the file is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_no_nan(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.server_cpus:
        try:
            server_cpus = parse_cpus(args.server_cpus)
        except ValueError as e:
            print(f"--server-cpus: {e}", file=sys.stderr)
            return 2
        others = os.sched_getaffinity(0) - server_cpus
        if others:  # PostgreSQL and the SDK process, started later, inherit it
            os.sched_setaffinity(0, others)
    suite = Suite(args)
    with contextlib.suppress(KeyboardInterrupt):
        return suite.run()
    return 130
