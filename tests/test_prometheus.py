"""docs/monitoring/ checked by a real Prometheus (Debian's `prometheus` package).

``promtool`` validates the rules, the scrape config and the alert unit tests; then a throwaway
Prometheus on loopback scrapes a running server every 500 ms while traffic is driven, and the
availability guide's four queries (and every dashboard panel) are asked through its HTTP API.
In CI (``$CI`` set) a missing Prometheus fails; elsewhere tests/monitoring/setup.sh installs it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, Client, free_port
from .test_metrics import create, metrics_server, settle, wait_for

MONITORING = ROOT / "docs" / "monitoring"
SETUP = ROOT / "tests" / "monitoring" / "setup.sh"
JOB = "resonate-server"

# The availability guide's four queries, verbatim.
WORKLOAD = "rate(promises_total[5m])"
BACKLOG = 'promises_total{state="pending"}'
LATENCY = "histogram_quantile(0.95, rate(api_duration_seconds_bucket[5m]))"
CAPACITY = "sum(coroutines_in_flight)"


def _binaries() -> tuple[str, str] | None:
    found = shutil.which("prometheus"), shutil.which("promtool")
    return (found[0], found[1]) if found[0] and found[1] else None


@pytest.fixture(scope="session")
def prom_bins() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``; installs them outside CI, never skips."""
    found = _binaries()
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(
            "prometheus/promtool not on PATH (CI is set, so nothing is installed on demand): "
            f"run {SETUP.relative_to(ROOT)} before the tests",
            pytrace=False,
        )
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    found = _binaries()
    if proc.returncode != 0 or not found:
        pytest.fail(
            f"{SETUP.relative_to(ROOT)} failed (exit {proc.returncode}); install Debian's "
            "'prometheus' package (apt-get install --no-install-recommends prometheus) as root.\n"
            f"{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return found


def promtool(prom_bins: tuple[str, str], *args: str, cwd: Path = MONITORING) -> str:
    proc = subprocess.run(
        [prom_bins[1], *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


# --- the files, checked by promtool --------------------------------------------------------------


def test_rules_file_is_valid_and_has_the_guides_three_alerts(prom_bins: tuple[str, str]) -> None:
    out = promtool(prom_bins, "check", "rules", "alerts.yml")
    assert "SUCCESS: 3 rules found" in out
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"][0]["rules"]
    by_name = {r["alert"]: r for r in rules}
    assert set(by_name) == {"ResonateServerDown", "HighAPIErrorRate", "PromiseBacklogGrowing"}
    assert by_name["ResonateServerDown"]["expr"] == 'up{job="resonate-server"} == 0'
    assert by_name["HighAPIErrorRate"]["expr"] == (
        'rate(api_requests_total{status=~"5.."}[5m]) > 10'
    )
    assert [by_name[a]["for"] for a in sorted(by_name)] == ["5m", "10m", "1m"]


def test_scrape_config_is_valid(prom_bins: tuple[str, str]) -> None:
    promtool(prom_bins, "check", "config", "prometheus.yml")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert [j["job_name"] for j in config["scrape_configs"]] == [JOB]


def test_alert_unit_tests_pass(prom_bins: tuple[str, str]) -> None:
    """Each alert fires when it should and stays quiet on healthy traffic (alerts.test.yml)."""
    assert "SUCCESS" in promtool(prom_bins, "test", "rules", "alerts.test.yml")


def test_the_guides_increase_form_would_fire_on_a_steady_backlog(
    prom_bins: tuple[str, str], tmp_path: Path
) -> None:
    """Why alerts.yml uses delta(): increase() on the backlog gauge misfires with churn."""
    rules = (MONITORING / "alerts.yml").read_text()
    assert "delta(promises_total" in rules
    (tmp_path / "alerts.yml").write_text(
        rules.replace("delta(promises_total", "increase(promises_total")
    )
    shutil.copy(MONITORING / "alerts.test.yml", tmp_path)
    proc = subprocess.run(
        [prom_bins[1], "test", "rules", "alerts.test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert 'instance="steady:9090"' in proc.stdout + proc.stderr


def test_dashboard_carries_the_four_signals() -> None:
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    titles = [p["title"] for p in board["panels"]]
    for signal in ("Workload", "Backlog", "Latency", "Capacity"):
        assert any(t.startswith(signal) for t in titles), signal
    exprs = dashboard_queries()
    assert 'sum(promises_total{job="resonate-server", state="pending"})' in exprs
    assert 'sum(coroutines_in_flight{job="resonate-server"})' in exprs
    assert any(e.startswith("histogram_quantile(0.95,") for e in exprs)


def dashboard_queries() -> list[str]:
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"].replace("$job", JOB) for p in board["panels"] for t in p.get("targets", [])]


# --- a live Prometheus scraping a live server ----------------------------------------------------


class Prometheus:
    """A throwaway Prometheus on 127.0.0.1 with its own config and storage directory."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.dir = workdir / "prometheus"
        self.dir.mkdir()
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "500ms", "evaluation_interval": "500ms"}
        config["rule_files"] = [str(MONITORING / "alerts.yml")]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        config["scrape_configs"][0]["scrape_timeout"] = "500ms"
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
            )
        wait_for(self._ready, "Prometheus to be ready", timeout=30)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> dict[str, float]:
        """An instant query: each series (its labels, as a sorted string) → its value."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
            for r in data["result"]
        }

    def one(self, promql: str) -> float | None:
        """The value of a query that returns one series; None while it returns nothing."""
        result = self.query(promql)
        assert len(result) <= 1, (promql, result)
        return next(iter(result.values()), None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def live(prom_bins: tuple[str, str], make_server: Any, workdir: Path) -> Iterator[Any]:
    server, mport = metrics_server(make_server)
    prom = Prometheus(prom_bins[0], workdir, f"127.0.0.1:{mport}")
    yield server, prom
    prom.stop()


@pytest.mark.timeout(120)
def test_the_guides_four_queries_through_prometheus(live: Any) -> None:
    server, prom = live
    c: Client = server.client()
    up = f'up{{job="{JOB}"}}'
    wait_for(lambda: prom.one(up) == 1, "the first successful scrape")
    wait_for(lambda: prom.one(BACKLOG) == 0, "the empty backlog")
    rules = prom.api("rules")["groups"]
    assert [g["name"] for g in rules] == ["resonate-availability"]
    assert all(r["health"] == "ok" for r in rules[0]["rules"]), rules

    # Backlog rises: 40 pending promises.
    backlog = [f"b{i}" for i in range(40)]
    for pid in backlog:
        create(c, pid)
    wait_for(lambda: prom.one(BACKLOG) == 40, "the backlog to reach 40")

    # Workload: promises created and settled, some client errors.
    for i in range(60):
        create(c, f"w{i}")
        settle(c, f"w{i}", "resolved" if i % 3 else "rejected")
        if i % 10 == 0:
            assert c.call("promise.get", {"id": f"missing-{i}"}).status == 404
    wait_for(lambda: prom.one(BACKLOG) == 40, "the settled work to leave the backlog alone")
    workload = wait_for(lambda: prom.query(WORKLOAD), "the workload rate")
    assert {k.split("state=")[1] for k in workload} >= {"pending", "resolved", "rejected"}
    wait_for(
        lambda: (prom.one('rate(promises_total{state="resolved"}[5m])') or 0) > 0,
        "a positive rate of resolved promises",
    )
    assert (prom.one('sum(rate(promises_total{state!="pending"}[5m]))') or 0) > 0
    assert wait_for(
        lambda: prom.one('sum(rate(api_requests_total{status=~"4.."}[5m]))'), "the 404 rate"
    )
    errors = prom.query('api_requests_total{status=~"5.."}')  # exposed at 0 from the start
    assert errors and set(errors.values()) == {0.0}, errors
    assert prom.query('rate(api_requests_total{status=~"5.."}[5m]) > 10') == {}

    # Latency: a finite p95 in seconds.
    p95 = wait_for(lambda: prom.one(LATENCY), "the p95 latency")
    assert math.isfinite(p95) and 0 < p95 < 10, p95

    # Capacity: one sample, a count of requests in flight.
    capacity = wait_for(lambda: prom.query(CAPACITY), "the capacity series")
    (in_flight,) = capacity.values()
    assert math.isfinite(in_flight) and in_flight >= 0

    # Backlog falls: settle all 40.
    for pid in backlog:
        settle(c, pid)
    wait_for(lambda: prom.one(BACKLOG) == 0, "the backlog to fall back to 0")
    assert prom.one('promises_total{state="resolved"}') == 40 + 40
    assert prom.one('delta(promises_total{state="pending"}[5m])') is not None

    # Every dashboard panel is valid PromQL that answers.
    for expr in dashboard_queries():
        prom.api("query", query=expr)
    for expr in (
        'sum(promises_total{job="resonate-server", state="pending"})',
        "histogram_quantile(0.95, sum by (le) "
        '(rate(api_duration_seconds_bucket{job="resonate-server"}[5m])))',
        'sum(coroutines_in_flight{job="resonate-server"})',
    ):
        assert prom.one(expr) is not None, expr

    # The server goes away: up drops to 0 and ResonateServerDown becomes pending.
    c.close()
    server.stop()
    wait_for(lambda: prom.one(up) == 0, "up to drop to 0")

    def down_alert() -> str | None:
        for alert in prom.api("alerts")["alerts"]:
            if alert["labels"]["alertname"] == "ResonateServerDown":
                return str(alert["state"])
        return None

    assert wait_for(down_alert, "the ResonateServerDown alert") in ("pending", "firing")
