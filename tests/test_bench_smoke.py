"""A short run of the benchmark tool (``python -m bench --smoke``) so that it keeps working.

The benchmark is not a test: nothing here looks at a timing. It checks that every workload
ran against a real server on SQLite, produced a result with a positive throughput, and saw
no error (a non-2xx reply or a broken connection).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every row a smoke run must produce: (workload, store).
EXPECTED = [
    ("ceiling", "none"),
    ("create", "sqlite"),
    ("create-rate", "sqlite"),
    ("create-settle", "sqlite"),
    ("get", "sqlite"),
    ("task", "sqlite"),
    ("sdk", "sqlite"),
    ("scale-get", "sqlite"),
    ("scale-search", "sqlite"),
    ("scale-get-searching", "sqlite"),
    ("scale-create", "sqlite"),
    ("scale-task", "sqlite"),
    ("sse-idle", "sqlite"),
]


@pytest.mark.timeout(180)
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out), "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(out.read_text())
    assert report["failures"] == []
    rows = {(r["workload"], r["store"]): r for r in report["results"]}
    missing = [key for key in EXPECTED if key not in rows]
    assert not missing, f"no result for {missing}:\n{proc.stderr}"
    for key in EXPECTED:
        r = rows[key]
        assert r["errors"] == 0, f"{key}: {r['errors']} errors: {r['error_kinds']}"
        if key[0] == "sse-idle":
            assert r["extra"]["open"] == r["extra"]["connections"] > 0, r
        else:
            assert r["ops"] > 0 and r["throughput"] > 0, f"{key}: nothing measured: {r}"
        assert r["server_rss_mb"] > 0, f"{key}: no server RSS: {r}"
    assert report["ceiling"]["sqlite"] > 0
    # The table printed for people names every workload.
    for workload, _ in EXPECTED:
        assert f"| {workload} |" in proc.stdout


@pytest.mark.timeout(120)
def test_inprocess_smoke() -> None:
    """``python -m bench.inprocess`` runs creates through the real server and store."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.inprocess", "--creates", "300", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, f"bench.inprocess failed:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "envelope work (what the ceiling does besides HTTP)",
        "Server.rpc, store included",
        "metrics observe_request",
    ], proc.stdout


def run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """``python -m bench ARGS`` with a JSON report in ``tmp_path``; (the report, stderr).
    Fails the test when the run fails."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "bench", *args, "--json", str(out), "--workdir", str(tmp_path)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text()), proc.stderr


@pytest.mark.timeout(120)
def test_bench_pinned_with_the_lean_ceiling(tmp_path: Path) -> None:
    """``--server-cpus`` and ``--ceiling-front lean`` keep working (no timing is looked at)."""
    cpu = str(min(os.sched_getaffinity(0)))
    report, _ = run_bench(
        tmp_path,
        *("--stores", "sqlite", "--workloads", "create", "--duration", "1", "--warmup", "0.5"),
        *("--concurrency", "8", "--server-cpus", cpu, "--ceiling-front", "lean"),
    )
    assert report["failures"] == []
    rows = {r["workload"]: r for r in report["results"]}
    assert rows["create"]["errors"] == 0 and rows["create"]["throughput"] > 0
    assert "lean front" in rows["ceiling"]["note"] and rows["ceiling"]["throughput"] > 0
    assert report["machine"]["server_cpus"] == cpu


@pytest.mark.timeout(120)
def test_bench_timeline(tmp_path: Path) -> None:
    """``--timeline`` splits each run's operations into buckets of their (scheduled) starts:
    every measured operation is in exactly one bucket, and the report prints them."""
    report, stderr = run_bench(
        tmp_path,
        *("--stores", "sqlite", "--workloads", "create-rate", "--rate", "200"),
        *("--duration", "1", "--warmup", "0.3", "--timeline", "0.25"),
    )
    row = next(r for r in report["results"] if r["workload"] == "create-rate")
    buckets = row["extra"]["timeline"]
    assert row["ops"] > 0 and sum(b[1] for b in buckets) == row["ops"]
    starts = [b[0] for b in buckets]
    assert starts == sorted(starts) and all(s % 0.25 < 1e-9 for s in starts)
    assert all(0 < p50 <= worst for _, _, p50, worst in buckets)
    assert report["config"]["timeline"] == 0.25
    assert stderr.count(" ops  p50 ") == len(buckets)


@pytest.mark.timeout(120)
def test_bench_pg_delay(tmp_path: Path) -> None:
    """``--pg-delay-ms`` puts the delay proxy between the server and PostgreSQL: creates still
    succeed, and none can answer before the round trip to the database that its commit needs
    (twice the delay)."""
    report, _ = run_bench(
        tmp_path,
        *("--stores", "postgres", "--workloads", "create", "--duration", "1", "--warmup", "0.3"),
        *("--concurrency", "4", "--pg-delay-ms", "5"),
    )
    row = next(r for r in report["results"] if r["workload"] == "create")
    assert row["errors"] == 0 and row["ops"] > 0
    assert row["p50"] >= 10.0, row
    assert report["config"]["pg_delay_ms"] == 5.0


@pytest.mark.timeout(120)
def test_bench_pg_statements(tmp_path: Path) -> None:
    """``--pg-statements N`` reports, with each PostgreSQL row, the statements of that run with
    the most execution time. The scale rows share one database: the tag searches of
    ``scale-search`` do not show up under the rows measured after it."""
    report, stderr = run_bench(
        tmp_path,
        *("--stores", "postgres", "--workloads", "scale", "--seed", "2000", "--duration", "1"),
        *("--warmup", "0.3", "--concurrency", "4", "--get-rate", "200", "--pg-statements", "5"),
    )
    rows = {r["workload"]: r["extra"]["pg_statements"] for r in report["results"]}

    def searches(top: list[dict[str, Any]]) -> int:
        return sum(s["calls"] for s in top if "tags @>" in s["query"])

    assert 0 < len(rows["scale-search"]) <= 5
    assert all(s["calls"] > 0 and s["total_ms"] >= 0 for s in rows["scale-search"])
    assert searches(rows["scale-search"]) > 0, rows["scale-search"]
    assert any(s["query"].startswith("INSERT INTO promises") for s in rows["scale-create"])
    assert searches(rows["scale-create"]) == 0, rows["scale-create"]
    assert searches(rows["scale-task"]) == 0, rows["scale-task"]
    assert "pg_stat_statements: calls" in stderr
    assert report["config"]["pg_statements"] == 5
