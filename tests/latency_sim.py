"""Simulated analysis windows: lognormal request latencies binned into vLLM's default
histogram buckets (vllm/v1/metrics/buckets.py), for the gate property tests and
tests/benchmarks/bench_gates.py. Seeded, so every run draws the same windows."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from statistics import NormalDist

from samp_core import gates as g
from samp_core.stats.histogram import Histogram, quantile

E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def binned(xs: list[float], bounds: tuple[float, ...]) -> Histogram:
    counts = [0] * (len(bounds) + 1)
    for x in xs:
        lo, hi = 0, len(bounds)
        while lo < hi:  # first bound >= x
            mid = (lo + hi) // 2
            if bounds[mid] >= x:
                hi = mid
            else:
                lo = mid + 1
        counts[lo] += 1
    return Histogram(bounds, tuple(counts), sum(xs))


@dataclass(frozen=True)
class Service:
    """Median latencies (seconds) and the log-normal spread of one side."""

    e2e: float = 0.6
    ttft: float = 0.08
    itl: float = 0.04
    sigma: float = 0.45

    def slower(self, factor: float) -> Service:
        return Service(self.e2e * factor, self.ttft * factor, self.itl * factor, self.sigma)


def side(rng: random.Random, svc: Service, n: int, replicas: float = 1.0) -> g.SideFigures:
    def draw(median: float) -> list[float]:
        return [median * rng.lognormvariate(0.0, svc.sigma) for _ in range(n)]

    e2e = binned(draw(svc.e2e), E2E_BUCKETS)
    return g.SideFigures(
        requests=float(n),
        errors=0.0,
        histograms={"e2e": e2e, "ttft": binned(draw(svc.ttft), TTFT_BUCKETS),
                    "itl": binned(draw(svc.itl), ITL_BUCKETS)},
        replicas=replicas,
    )


def window(  # noqa: PLR0917
    rng: random.Random, n_canary: int, n_stable: int, slowdown: float = 1.0,
    base: Service = Service(), replicas: tuple[float, float] | None = None,
) -> g.Measurement:
    """One window; by default replicas in proportion to the requests (a fair split)."""
    c_rep, s_rep = replicas or (1.0, max(n_stable, 1) / max(n_canary, 1))
    return g.Measurement(
        window_seconds=60,
        taken_at=NOW,
        canary=side(rng, base.slower(slowdown), n_canary, c_rep),
        stable=side(rng, base, n_stable, s_rep),
    )


def steady_side(
    n: int, p99: float | None, *, sigma: float = 0.45, replicas: float = 1.0
) -> g.SideFigures:
    """A side whose ``n`` requests sit at the log-normal's quantiles (no randomness),
    scaled so its end-to-end P99 is ``p99``; TTFT and time per output token scale with
    it. ``p99`` None or NaN: no observations reported (empty histograms, NaN P99)."""
    if p99 is None or not math.isfinite(p99) or n <= 0:
        nan = math.nan
        return g.SideFigures(requests=float(max(n, 0)), errors=0.0, p99_seconds=nan,
                             ttft_p99_seconds=nan, replicas=replicas)
    median = p99 / math.exp(NormalDist().inv_cdf(0.99) * sigma)
    grid = [math.exp(sigma * NormalDist().inv_cdf((i + 0.5) / n)) for i in range(n)]
    e2e = binned([median * x for x in grid], E2E_BUCKETS)
    ttft = binned([0.1 * median * x for x in grid], TTFT_BUCKETS)
    return g.SideFigures(
        requests=float(n),
        errors=0.0,
        p99_seconds=quantile(e2e, 0.99),
        ttft_p99_seconds=quantile(ttft, 0.99),
        histograms={"e2e": e2e, "ttft": ttft,
                    "itl": binned([0.05 * median * x for x in grid], ITL_BUCKETS)},
        replicas=replicas,
    )
