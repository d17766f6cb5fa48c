"""The gate evaluator: measurements in, one verdict per gate out. Pure, no I/O.

Measuring is separate from deciding, as in Argo Rollouts: a metric provider
(``samp_operator.prometheus``) turns PromQL answers into a :class:`Measurement`;
this module turns a measurement and the spec's gates into
:class:`~samp_core.status.GateResult` rows, each Successful, Failed, Inconclusive or
Error, with the measured value, the stable baseline and the threshold as text, so
``status.gates`` and the Events say exactly why.

Rules (README, "How the gates work"):

* An unreachable metrics backend is **Error** for every gate (``Measurement.error``);
  a single query that failed is Error for the gates that need it. Errors are
  counted apart from failures (``consecutiveErrorLimit``).
* A window whose canary finished fewer than ``minRequests`` requests, a missing
  figure (empty PromQL result) or a NaN/inf figure (``histogram_quantile`` over no
  observations) is **Inconclusive** — never a pass.
* A ratio-to-stable gate also needs ``minRequests`` on the stable side and a
  positive stable figure; without a stable target (``spec.serving.stable`` unset)
  ratio gates are not evaluated and only absolute ceilings apply.
* Absolute ceilings and ratios to stable are separate gates, so both can be set
  and both must pass. They are judged on the P99's confidence interval from the
  histogram buckets, under a minimum-evidence rule, with canary and stable compared
  only under a fair split of the load (samp_core.latency_gates); a Kayenta-style
  ``judge`` row (a rank test per latency metric, scored) stands beside them.

One analysis's verdict is the worst of its gates, in the order Failed, Error,
Inconclusive, Successful (:func:`~samp_core.verdicts.overall`). The accuracy gate
(samp_core.accuracy_gate, re-exported here) reads the offline
:class:`~samp_core.results.EvaluationResult` under the same rules: a check that
cannot be computed is Inconclusive and the gate does not pass.
"""

from __future__ import annotations

from samp_core.accuracy_gate import (
    GATE_ACCURACY_PREFIX,
    AccuracyVerdict,
    evaluate_accuracy,
    evaluate_accuracy_summary,
)
from samp_core.gate_window import Window, error_for
from samp_core.latency_gates import (
    GATE_JUDGE,
    GATE_LOAD_BALANCE,
    LatencyStats,
    fair_rows,
    judge_row,
    latency_gate,
    stats_of,
)
from samp_core.measurement import HISTOGRAM_METRICS, Measurement, SideFigures
from samp_core.spec import GatesSpec
from samp_core.status import GateResult
from samp_core.verdicts import (
    Verdict,
    finite,
    first_of,
    format_result,
    num,
    overall,
    result,
)

__all__ = [
    "GATE_ACCURACY_PREFIX",
    "GATE_ERROR_RATE",
    "GATE_JUDGE",
    "GATE_LOAD_BALANCE",
    "GATE_P99",
    "GATE_P99_RATIO",
    "GATE_REQUESTS",
    "GATE_TTFT_P99",
    "GATE_TTFT_P99_RATIO",
    "HISTOGRAM_METRICS",
    "AccuracyVerdict",
    "Measurement",
    "SideFigures",
    "Verdict",
    "evaluate",
    "evaluate_accuracy",
    "evaluate_accuracy_summary",
    "first_of",
    "format_result",
    "overall",
]

GATE_REQUESTS = "requests"
GATE_ERROR_RATE = "errorRate"
GATE_P99 = "p99"
GATE_P99_RATIO = "p99RatioToStable"
GATE_TTFT_P99 = "ttftP99"
GATE_TTFT_P99_RATIO = "ttftP99RatioToStable"
GATE_CUSTOM_PREFIX = "query:"


COMPARATIVE = frozenset({GATE_P99_RATIO, GATE_TTFT_P99_RATIO, GATE_JUDGE})


def evaluate(
    gates: GatesSpec,
    m: Measurement,
    *,
    has_stable: bool,
    stable_serves: bool = True,
) -> list[GateResult]:
    """One GateResult per configured traffic gate for one analysis window.

    Always reports ``requests`` (the traffic precondition) and ``errorRate``; then
    ``p99``/``p99RatioToStable``/``ttftP99``/``ttftP99RatioToStable`` where the
    spec sets them (ratios only when ``has_stable``; without a stable and without
    ``p99MaxSeconds`` a ``p99`` row that is always Inconclusive), the ``judge`` when
    on, each custom query, and last the ``loadBalance`` check that may turn comparative
    verdicts Inconclusive.

    The stable's figures are this window's, never remembered from another.
    ``stable_serves``: False at weight 100, where the stable takes no traffic; the
    comparisons (ratio gates, judge, load balance) are then not judged (there is nothing
    in this window to compare with).
    """
    w = Window(gates, m, has_stable, stable_serves)
    st = stats_of(gates)
    rows = [_requests(w), _error_rate(w), *_latency(w, st), *_judge(w, st), *_custom(w)]
    if not w.compares:
        return rows
    rows, balance = fair_rows(w, st.max_load_imbalance, rows, COMPARATIVE)
    return [*rows, balance]


def _requests(w: Window) -> GateResult:
    """The precondition itself, shown so "no traffic" is visible in status."""
    m, minimum = w.m, w.gates.min_requests
    err = error_for(m, "canary.requests")
    if err is not None:
        return result(GATE_REQUESTS, Verdict.ERROR, threshold=f">= {minimum}", message=err)
    traffic = w.traffic
    verdict, message = traffic if traffic is not None else (
        Verdict.SUCCESSFUL,
        finished_text(m.canary.requests, m.window_seconds),
    )
    return result(
        GATE_REQUESTS,
        verdict,
        value=m.canary.requests,
        baseline=m.stable.requests if m.stable else None,
        threshold=f">= {minimum}",
        message=message,
    )


def finished_text(requests: float | None, window_seconds: float) -> str:
    """Prometheus' increase() extrapolates to fractions: whole requests and a rate."""
    n = max(0.0, requests or 0.0)
    rate = f" ({n / window_seconds:.2f} requests/s)" if window_seconds > 0 else ""
    return f"canary finished {n:.0f} requests in {window_seconds:.0f}s{rate}"


def _error_rate(w: Window) -> GateResult:
    m, limit = w.m, w.gates.max_error_rate
    pre = w.guarded(GATE_ERROR_RATE, ("canary.requests", "canary.errors"), f"<= {num(limit)}")
    if pre is not None:
        return pre
    req, errs = m.canary.requests, m.canary.errors
    if not finite(errs):
        return result(
            GATE_ERROR_RATE,
            Verdict.INCONCLUSIVE,
            threshold=f"<= {num(limit)}",
            message="no canary error count in the window",
        )
    assert req is not None and errs is not None
    rate = max(0.0, errs) / req if req > 0 else 0.0
    base = None
    if m.stable and finite(m.stable.requests) and finite(m.stable.errors):
        s_req = m.stable.requests or 0.0
        base = (m.stable.errors or 0.0) / s_req if s_req > 0 else None
    ok = rate <= limit
    return result(
        GATE_ERROR_RATE,
        Verdict.SUCCESSFUL if ok else Verdict.FAILED,
        value=rate,
        baseline=base,
        threshold=f"<= {num(limit)}",
        message=f"{errs:.0f} of {req:.0f} canary requests failed "
        f"({100 * rate:.2f}%), {'within' if ok else 'above'} the ceiling "
        f"{100 * limit:.2f}%",
    )


def _latency(w: Window, st: LatencyStats) -> list[GateResult]:
    """Absolute ceilings and ratios to stable are separate gates."""
    lat = w.gates.latency
    specs: list[tuple[str, str, float | None, bool, str]] = [
        (GATE_P99, "e2e", lat.p99_max_seconds, False, "P99 end-to-end latency"),
        (GATE_P99_RATIO, "e2e", lat.p99_max_ratio_to_stable, True, "P99 end-to-end latency"),
        (GATE_TTFT_P99, "ttft", lat.ttft_p99_max_seconds, False, "P99 time to first token"),
        (GATE_TTFT_P99_RATIO, "ttft", lat.ttft_p99_max_ratio_to_stable, True,
         "P99 time to first token"),
    ]
    out = [
        _latency_gate(w, name, figure, limit, is_ratio, what, st)
        for name, figure, limit, is_ratio, what in specs
        if limit is not None and (not is_ratio or w.compares)
    ]
    if not w.has_stable and lat.p99_max_seconds is None:
        # The ratio gates (p99MaxRatioToStable has a default) have nothing to compare with:
        # without this row no latency gate would run and any P99 would promote.
        out.append(
            result(
                GATE_P99,
                Verdict.INCONCLUSIVE,
                threshold="spec.gates.latency.p99MaxSeconds",
                message="no latency gate can be judged: without spec.serving.stable there is "
                "no stable to compare with, and spec.gates.latency.p99MaxSeconds is not set "
                "(never a pass; set an absolute ceiling)",
            )
        )
    return out


def _latency_gate(  # noqa: PLR0917
    w: Window, name: str, metric: str, limit: float, is_ratio: bool, what: str,
    st: LatencyStats,
) -> GateResult:
    key = "p99" if metric == "e2e" else "ttftP99"
    keys = [f"canary.{key}", f"canary.hist.{metric}", "canary.requests"]
    if is_ratio:
        keys += [f"stable.{key}", f"stable.hist.{metric}", "stable.requests"]
    threshold = f"<= {num(limit)}" + ("x stable" if is_ratio else "s")
    pre = w.guarded(name, keys, threshold)
    if pre is not None:
        return pre
    return latency_gate(w, name, metric, limit, is_ratio, what, st)


def _judge(w: Window, st: LatencyStats) -> list[GateResult]:
    keys = [f"{side}.hist.{k}" for side in ("canary", "stable") for k in HISTOGRAM_METRICS]
    if st.judge is None or not w.compares:
        return []
    pre = w.guarded(GATE_JUDGE, keys, f"score >= {num(st.judge.pass_score)}")
    if pre is not None:
        return [pre]
    row = judge_row(w, st)
    return [row] if row is not None else []


def _custom(w: Window) -> list[GateResult]:
    out: list[GateResult] = []
    for q in w.gates.custom_queries:
        name = f"{GATE_CUSTOM_PREFIX}{q.name}"
        bounds = [
            *([f">= {num(q.min)}"] if q.min is not None else []),
            *([f"<= {num(q.max)}"] if q.max is not None else []),
        ]
        threshold = " and ".join(bounds)
        pre = w.guarded(name, (name, "canary.requests"), threshold)
        if pre is not None:
            out.append(pre)
            continue
        value = w.m.custom.get(q.name)
        if not finite(value):
            out.append(
                result(
                    name,
                    Verdict.INCONCLUSIVE,
                    threshold=threshold,
                    message=f"query {q.name} returned {num(value)} (empty or NaN)",
                )
            )
            continue
        assert value is not None
        ok = (q.min is None or value >= q.min) and (q.max is None or value <= q.max)
        out.append(
            result(
                name,
                Verdict.SUCCESSFUL if ok else Verdict.FAILED,
                value=value,
                threshold=threshold,
                message=f"query {q.name} = {num(value)}, "
                f"{'meets' if ok else 'violates'} {threshold}",
            )
        )
    return out
