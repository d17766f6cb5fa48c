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
  positive stable figure, both from the same window as the canary's (a baseline from
  another window, under other load, is no baseline: Inconclusive); without a stable
  target (``spec.serving.stable`` unset) ratio gates are not evaluated and only absolute
  ceilings apply. At weight 100 the stable serves nothing, so no window holds both:
  ratio gates are judged at the steps below 100 and absolute ceilings at every step.
* Absolute ceilings and ratios to stable are separate gates, so both can be set
  and both must pass.

One analysis's verdict is the worst of its gates, in the order Failed, Error,
Inconclusive, Successful (:func:`~samp_core.verdicts.overall`). The accuracy gate
(samp_core.accuracy_gate, re-exported here) reads the offline
:class:`~samp_core.results.EvaluationResult` under the same rules: a check that
cannot be computed is Inconclusive and the gate does not pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from samp_core.accuracy_gate import (
    GATE_ACCURACY_PREFIX,
    AccuracyVerdict,
    evaluate_accuracy,
    evaluate_accuracy_summary,
)
from samp_core.spec import GatesSpec
from samp_core.status import GateResult
from samp_core.verdicts import (
    Verdict,
    ceiling,
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
    "GATE_P99",
    "GATE_P99_RATIO",
    "GATE_REQUESTS",
    "GATE_TTFT_P99",
    "GATE_TTFT_P99_RATIO",
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


@dataclass(frozen=True)
class SideFigures:
    """What one side (canary or stable) did during the window. None = no data."""

    requests: float | None = None  # requests finished in the window (every finished_reason)
    errors: float | None = None  # of which failed: engine abort/error + HTTP 4xx/5xx
    p99_seconds: float | None = None  # P99 end-to-end latency
    ttft_p99_seconds: float | None = None  # P99 time to first token


@dataclass(frozen=True)
class Measurement:
    """One analysis window as the metric provider saw it.

    ``error`` set means the backend did not answer at all; ``query_errors`` maps a
    figure key (``canary.p99``, ``stable.requests``, ``query:<name>``...) to the
    error of that one query. ``custom`` holds custom-query values by gate name.
    """

    window_seconds: float
    taken_at: datetime
    canary: SideFigures = field(default_factory=SideFigures)
    stable: SideFigures | None = None
    custom: Mapping[str, float | None] = field(default_factory=dict)
    error: str | None = None
    query_errors: Mapping[str, str] = field(default_factory=dict)


def _error_for(m: Measurement, *keys: str) -> str | None:
    if m.error is not None:
        return f"metrics backend unreachable: {m.error}"
    for k in keys:
        if k in m.query_errors:
            return f"query {k} failed: {m.query_errors[k]}"
    return None


def _traffic_precondition(m: Measurement, min_requests: int) -> tuple[Verdict, str] | None:
    """Inconclusive when the canary has too little traffic in the window; None if enough."""
    n = m.canary.requests
    if not finite(n):
        return Verdict.INCONCLUSIVE, "no canary request count in the window (no series yet)"
    assert n is not None
    if n < min_requests:
        return (
            Verdict.INCONCLUSIVE,
            f"canary finished {n:.0f} requests in {m.window_seconds:.0f}s, fewer than "
            f"minRequests {min_requests}; figures do not count",
        )
    return None


def _ratio(  # noqa: PLR0917
    gate: str,
    canary: float | None,
    stable: float | None,
    stable_requests: float | None,
    limit: float,
    min_requests: int,
    what: str,
) -> GateResult:
    threshold = f"<= {num(limit)}x stable"
    if not finite(stable_requests) or (stable_requests or 0.0) < min_requests:
        return result(
            gate,
            Verdict.INCONCLUSIVE,
            value=canary,
            baseline=stable,
            threshold=threshold,
            message=f"stable baseline finished {num(stable_requests)} requests, fewer than "
            f"minRequests {min_requests}; no comparison",
        )
    if not finite(canary) or not finite(stable) or (stable or 0.0) <= 0.0:
        return result(
            gate,
            Verdict.INCONCLUSIVE,
            value=canary,
            baseline=stable,
            threshold=threshold,
            message=f"{what}: canary {num(canary)}s, stable {num(stable)}s; cannot form a ratio",
        )
    assert canary is not None and stable is not None
    ratio = canary / stable
    ok = ratio <= limit
    # The row holds the ratio; the seconds on both sides are in its message and in the
    # absolute gate's row (value = canary, baseline = stable).
    return result(
        gate,
        Verdict.SUCCESSFUL if ok else Verdict.FAILED,
        value=ratio,
        threshold=threshold,
        message=f"{what} canary {num(canary)}s / stable {num(stable)}s = {ratio:.3f}, "
        f"{'within' if ok else 'above'} {num(limit)}",
    )


@dataclass(frozen=True)
class _Window:
    """One analysis window as the gates read it."""

    gates: GatesSpec
    m: Measurement
    has_stable: bool
    stable_serves: bool

    @property
    def traffic(self) -> tuple[Verdict, str] | None:
        return _traffic_precondition(self.m, self.gates.min_requests)

    def guarded(self, name: str, keys: Sequence[str], threshold: str) -> GateResult | None:
        """Error when a query it needs failed, the traffic verdict when traffic is short."""
        err = _error_for(self.m, *keys)
        if err is not None:
            return result(name, Verdict.ERROR, threshold=threshold, message=err)
        traffic = self.traffic
        if traffic is not None:
            return result(name, traffic[0], value=None, threshold=threshold, message=traffic[1])
        return None


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
    ``p99MaxSeconds`` a ``p99`` row that is always Inconclusive), then each custom query.

    The stable's figures are this window's, never remembered from another.
    ``stable_serves``: False at weight 100, where the stable takes no traffic; the
    ratio gates are then not judged (there is nothing in this window to compare with).
    """
    w = _Window(gates, m, has_stable, stable_serves)
    return [_requests(w), _error_rate(w), *_latency(w), *_custom(w)]


def _requests(w: _Window) -> GateResult:
    """The precondition itself, shown so "no traffic" is visible in status."""
    m, minimum = w.m, w.gates.min_requests
    err = _error_for(m, "canary.requests")
    if err is not None:
        return result(GATE_REQUESTS, Verdict.ERROR, threshold=f">= {minimum}", message=err)
    traffic = w.traffic
    verdict, message = traffic if traffic is not None else (
        Verdict.SUCCESSFUL,
        f"canary finished {num(m.canary.requests)} requests in {m.window_seconds:.0f}s",
    )
    return result(
        GATE_REQUESTS,
        verdict,
        value=m.canary.requests,
        baseline=m.stable.requests if m.stable else None,
        threshold=f">= {minimum}",
        message=message,
    )


def _error_rate(w: _Window) -> GateResult:
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


def _latency(w: _Window) -> list[GateResult]:
    """Absolute ceilings and ratios to stable are separate gates."""
    lat = w.gates.latency
    specs: list[tuple[str, str, float | None, bool, str]] = [
        (GATE_P99, "p99", lat.p99_max_seconds, False, "P99 end-to-end latency"),
        (GATE_P99_RATIO, "p99", lat.p99_max_ratio_to_stable, True, "P99 end-to-end latency"),
        (GATE_TTFT_P99, "ttft", lat.ttft_p99_max_seconds, False, "P99 time to first token"),
        (GATE_TTFT_P99_RATIO, "ttft", lat.ttft_p99_max_ratio_to_stable, True,
         "P99 time to first token"),
    ]
    out = [
        _latency_gate(w, name, figure, limit, is_ratio, what)
        for name, figure, limit, is_ratio, what in specs
        if limit is not None and (not is_ratio or (w.has_stable and w.stable_serves))
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
    w: _Window, name: str, figure: str, limit: float, is_ratio: bool, what: str
) -> GateResult:
    key = "p99" if figure == "p99" else "ttftP99"
    keys = [f"canary.{key}", "canary.requests"]
    if is_ratio:
        keys += [f"stable.{key}", "stable.requests"]
    threshold = f"<= {num(limit)}" + ("x stable" if is_ratio else "s")
    pre = w.guarded(name, keys, threshold)
    if pre is not None:
        return pre
    m, stable = w.m, w.m.stable or SideFigures()
    c_val = m.canary.p99_seconds if figure == "p99" else m.canary.ttft_p99_seconds
    s_val = stable.p99_seconds if figure == "p99" else stable.ttft_p99_seconds
    if not is_ratio:
        return ceiling(name, c_val, limit, "s", f"canary {what}",
                       baseline=s_val if w.has_stable else None)
    return _ratio(name, c_val, s_val, stable.requests, limit, w.gates.min_requests, what)


def _custom(w: _Window) -> list[GateResult]:
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
