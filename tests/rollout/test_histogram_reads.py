"""The latency histograms as the gates read them from a real Prometheus.

Two exporters (prometheus_client, the same exposition format vLLM's /metrics uses, with
vLLM's metric names, labels and default buckets) stand in for the stable and canary
servers: they let the test choose every latency, which a real vLLM on a shared 2-core
machine cannot. Debian's Prometheus scrapes them every second; the real
``PrometheusProvider`` reads bucket increases, sums and replicas over the window, and
the gates judge them. What vLLM itself exports is covered by test_rollout_real.py.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from latency_sim import E2E_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS
from samp_core import gates as g
from samp_core.canary import AnalysisRequest
from samp_core.spec import GatesSpec, LatencyGate
from samp_local.processes import PrometheusProcess, ScrapeTarget, free_port
from samp_operator.prometheus import PrometheusProvider

pytestmark = [pytest.mark.prometheus]

STABLE, CANARY = "tiny-llama", "tiny-llama-canary"


@dataclass
class Exporter:
    """One side's vLLM-shaped metrics on its own port."""

    model: str
    port: int
    e2e: Histogram
    ttft: Histogram
    itl: Histogram
    success: Counter

    def serve(self, n: int, median: float, rng: random.Random) -> None:
        for _ in range(n):
            x = median * rng.lognormvariate(0.0, 0.45)
            self.e2e.labels(self.model, "0").observe(x)
            self.ttft.labels(self.model, "0").observe(x / 8)
            self.itl.labels(self.model, "0").observe(x / 15)
            self.success.labels(self.model, "0", "stop").inc()


def exporter(model: str) -> Exporter:
    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    port = free_port()
    ex = Exporter(
        model,
        port,
        Histogram("vllm:e2e_request_latency_seconds", "e2e", labels, registry=reg,
                  buckets=E2E_BUCKETS),
        Histogram("vllm:time_to_first_token_seconds", "ttft", labels, registry=reg,
                  buckets=TTFT_BUCKETS),
        Histogram("vllm:inter_token_latency_seconds", "itl", labels, registry=reg,
                  buckets=ITL_BUCKETS),
        Counter("vllm:request_success", "done", [*labels, "finished_reason"], registry=reg),
    )
    ex.serve(0, 1.0, random.Random(0))  # the series exist at zero before any request
    for h in (ex.e2e, ex.ttft, ex.itl):
        h.labels(model, "0")
    for reason in ("stop", "length", "abort", "error"):  # vLLM creates every reason's series
        ex.success.labels(model, "0", reason)
    _serve_text_format(port, reg)
    return ex


def _serve_text_format(port: int, reg: CollectorRegistry) -> None:
    """/metrics in the text format 0.0.4, as vLLM's server answers Prometheus
    (prometheus_client's own server would answer OpenMetrics, whose sample names lose
    the colon of vLLM's metric names)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(reg)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def scraped(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PrometheusProcess, Exporter, Exporter]]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed; run .ci/system-packages")
    stable, canary = exporter(STABLE), exporter(CANARY)
    prom = PrometheusProcess(
        Path(tmp_path_factory.mktemp("hist")) / "prometheus",
        [ScrapeTarget(stable.port, STABLE, "stable"), ScrapeTarget(canary.port, CANARY, "canary")],
    )
    prom.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and prom.targets_up() != {STABLE: True, CANARY: True}:
            time.sleep(0.5)
        assert prom.targets_up() == {STABLE: True, CANARY: True}
        time.sleep(3)  # a few scrapes at zero, so increase() starts from them
        yield prom, stable, canary
    finally:
        prom.stop()


def _measure(prom: PrometheusProcess, window: float, gates: GatesSpec) -> g.Measurement:
    provider = PrometheusProvider(prom.url)
    req = AnalysisRequest(CANARY, STABLE, window, datetime.now(UTC), 0, 50)
    return provider.measure(req, gates)


def _wait_scraped(prom: PrometheusProcess, model: str, total: int) -> None:
    provider = PrometheusProvider(prom.url)
    deadline = time.monotonic() + 20
    q = f'sum(vllm:e2e_request_latency_seconds_count{{model_name="{model}"}})'
    while time.monotonic() < deadline:
        if (provider.query(q) or 0) >= total:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{model}: {total} observations not scraped")


def test_histograms_from_prometheus_judge_a_slow_canary(scraped: tuple) -> None:
    prom, stable, canary = scraped
    rng = random.Random(1)
    t0 = time.monotonic()
    stable.serve(1500, 0.6, rng)
    canary.serve(1500, 0.6 * 3, rng)  # three times slower
    _wait_scraped(prom, STABLE, 1500)
    _wait_scraped(prom, CANARY, 1500)
    gates = GatesSpec(latency=LatencyGate(p99_max_ratio_to_stable=1.5), min_requests=20)
    m = _measure(prom, time.monotonic() - t0 + 6, gates)
    assert m.error is None and not m.query_errors, (m.error, m.query_errors)
    assert m.stable is not None
    for side in (m.canary, m.stable):
        assert set(side.histograms) == {"e2e", "ttft", "itl"}
        assert side.replicas == 1
        e2e = side.histograms["e2e"]
        assert e2e.bounds == E2E_BUCKETS
        assert e2e.n == 1500  # exact: the counters' change, not increase()'s extrapolation
        assert e2e.mean is not None
    c_mean, s_mean = m.canary.histograms["e2e"].mean, m.stable.histograms["e2e"].mean
    assert c_mean is not None and s_mean is not None
    assert c_mean / s_mean == pytest.approx(3, rel=0.1)
    rows = {r.gate: r for r in g.evaluate(gates, m, has_stable=True)}
    assert rows["p99RatioToStable"].verdict == "Failed", rows["p99RatioToStable"].message
    assert rows["judge"].verdict == "Failed", rows["judge"].message
    assert rows["loadBalance"].verdict == "Successful"
    assert g.overall(rows.values()) is g.Verdict.FAILED


def test_histograms_from_prometheus_pass_an_equal_canary(scraped: tuple) -> None:
    prom, stable, canary = scraped
    # The previous test's observations stay out of this window, and the window reaches 4 s
    # before the first observation, so a scrape at the old totals lies inside it even when a
    # loaded machine delays scrapes (a 1 s margin failed once here, with load average 8).
    time.sleep(6)
    rng = random.Random(2)
    t0 = time.monotonic()
    stable.serve(3000, 0.6, rng)
    canary.serve(3000, 0.6, rng)
    _wait_scraped(prom, STABLE, 4500)
    _wait_scraped(prom, CANARY, 4500)
    time.sleep(1)
    gates = GatesSpec(latency=LatencyGate(p99_max_ratio_to_stable=1.5), min_requests=20)
    m = _measure(prom, time.monotonic() - t0 + 4, gates)
    assert m.error is None and not m.query_errors
    rows = {r.gate: r for r in g.evaluate(gates, m, has_stable=True)}
    assert m.canary.histograms["e2e"].n == 3000  # exact: the change, not increase()
    assert rows["p99RatioToStable"].verdict == "Successful", rows["p99RatioToStable"].message
    assert rows["judge"].verdict == "Successful", rows["judge"].message
    assert g.overall(rows.values()) is g.Verdict.SUCCESSFUL
