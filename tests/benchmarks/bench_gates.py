"""False-promote and false-rollback rates of the latency gates over simulated windows.

    env PYTHONPATH=operator:tests .venv/bin/python tests/benchmarks/bench_gates.py \
        [--windows 200] [--seed 17] [--out tests/benchmarks/results/gates.md]

Each window draws canary and stable requests from log-normal latencies (median 0.6 s
end to end, 0.08 s to first token, 0.04 s per output token, sigma 0.45; the canary's
scaled by ``slowdown``), bins them into vLLM's default buckets, and asks two deciders:

* **plain**: the gate before issue 17 — point P99 (interpolated from the buckets, as
  ``histogram_quantile``) divided by the stable's, against ``p99MaxRatioToStable``,
  once both sides have ``minRequests`` (20) requests;
* **stats**: ``samp_core.gates.evaluate`` with the spec's defaults: minimum evidence
  (500 requests per side for a P99), the 95% interval of the P99 ratio, the judge
  (Mann-Whitney U per metric, score), fairness (the split here is fair).

A slowdown at or below the limit should promote: a Failed analysis is a false rollback.
Above it, a Successful analysis is a false promotion. Inconclusive is neither: the
rollout waits (a longer window) and, past ``inconclusiveLimit``, rolls back without a
re-plan. Rates are per analysis window.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests")]

from latency_sim import E2E_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS  # noqa: E402
from samp_core import gates as g  # noqa: E402
from samp_core.spec import GatesSpec, LatencyGate  # noqa: E402
from samp_core.stats.histogram import Histogram, quantile  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LEVELS = (24, 100, 300, 1000, 3000, 10000)  # canary requests per window (stable: the same)
CASES = ((1.1, 1.0), (1.1, 1.05), (1.1, 1.3), (1.5, 1.0), (1.5, 2.0))  # (limit, slowdown)
MEDIANS = {"e2e": (0.6, E2E_BUCKETS), "ttft": (0.08, TTFT_BUCKETS), "itl": (0.04, ITL_BUCKETS)}
SIGMA = 0.45


def side(rng: np.random.Generator, n: int, slowdown: float) -> g.SideFigures:
    hists = {}
    for key, (median, bounds) in MEDIANS.items():
        xs = median * slowdown * rng.lognormal(0.0, SIGMA, n)
        counts = np.bincount(np.searchsorted(np.asarray(bounds), xs, side="left"),
                             minlength=len(bounds) + 1)
        hists[key] = Histogram(bounds, tuple(int(c) for c in counts), float(xs.sum()))
    return g.SideFigures(requests=float(n), errors=0.0, histograms=hists, replicas=1.0)


def plain(m: g.Measurement, limit: float, min_requests: int = 20) -> g.Verdict:
    assert m.stable is not None
    if (m.canary.requests or 0) < min_requests or (m.stable.requests or 0) < min_requests:
        return g.Verdict.INCONCLUSIVE
    c = quantile(m.canary.histograms["e2e"], 0.99)
    s = quantile(m.stable.histograms["e2e"], 0.99)
    if c is None or s is None or not s > 0 or c == float("inf"):
        return g.Verdict.INCONCLUSIVE
    return g.Verdict.SUCCESSFUL if c / s <= limit else g.Verdict.FAILED


@dataclass
class Cell:
    plain: Counter[g.Verdict]
    stats: Counter[g.Verdict]


def run(windows: int, seed: int) -> dict[tuple[float, float, int], Cell]:
    out: dict[tuple[float, float, int], Cell] = {}
    for limit, slowdown in CASES:
        spec = GatesSpec(latency=LatencyGate(p99_max_ratio_to_stable=limit), min_requests=20)
        for n in LEVELS:
            rng = np.random.default_rng([seed, n, int(slowdown * 100), int(limit * 100)])
            cell = Cell(Counter(), Counter())
            for _ in range(windows):
                m = g.Measurement(window_seconds=60, taken_at=NOW,
                                  canary=side(rng, n, slowdown), stable=side(rng, n, 1.0))
                cell.plain[plain(m, limit)] += 1
                cell.stats[g.overall(g.evaluate(spec, m, has_stable=True))] += 1
            out[(limit, slowdown, n)] = cell
    return out


def pct(c: Counter[g.Verdict], v: g.Verdict, total: int) -> str:
    return f"{100 * c[v] / total:.1f}"


def table(cells: dict[tuple[float, float, int], Cell], windows: int) -> str:
    rows = [
        "| limit | true ratio | canary req/window | should | plain: false % | plain: "
        "inconcl. % | stats: false % | stats: inconcl. % | stats: right % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (limit, slowdown, n), cell in cells.items():
        good = slowdown <= limit
        wrong = g.Verdict.FAILED if good else g.Verdict.SUCCESSFUL
        right = g.Verdict.SUCCESSFUL if good else g.Verdict.FAILED
        rows.append(
            f"| {limit} | {slowdown} | {n} | {'promote' if good else 'roll back'} | "
            f"{pct(cell.plain, wrong, windows)} | "
            f"{pct(cell.plain, g.Verdict.INCONCLUSIVE, windows)} | "
            f"{pct(cell.stats, wrong, windows)} | "
            f"{pct(cell.stats, g.Verdict.INCONCLUSIVE, windows)} | "
            f"{pct(cell.stats, right, windows)} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    a = ap.parse_args()
    t0 = time.perf_counter()
    cells = run(a.windows, a.seed)
    text = (f"{a.windows} windows per row, seed {a.seed}; false % = false rollback when the "
            f"canary should promote, false promotion when it should roll back\n\n"
            f"{table(cells, a.windows)}\n\n({time.perf_counter() - t0:.0f} s)")
    print(text)
    if a.out is not None:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
