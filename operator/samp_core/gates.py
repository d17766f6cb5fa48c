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
  and both must pass.

One analysis's verdict is the worst of its gates, in the order Failed, Error,
Inconclusive, Successful (:func:`overall`). The accuracy gate
(:func:`evaluate_accuracy`) reads the offline
:class:`~samp_core.results.EvaluationResult` under the same rules: a check that
cannot be computed is Inconclusive and the gate does not pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from samp_core.results import EvaluationResult
from samp_core.spec import AccuracyGate, GatesSpec
from samp_core.status import AccuracySummary, GateResult

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
GATE_ACCURACY_PREFIX = "accuracy:"


class Verdict(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


# Worst first: one analysis takes the verdict of its worst gate.
_SEVERITY = (Verdict.FAILED, Verdict.ERROR, Verdict.INCONCLUSIVE, Verdict.SUCCESSFUL)


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


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _num(x: float | None) -> str:
    if x is None:
        return "none"
    if not math.isfinite(x):
        return str(x)
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:.4g}"
    return f"{x:.3e}"


def _result(
    gate: str,
    verdict: Verdict,
    *,
    value: float | None = None,
    baseline: float | None = None,
    threshold: str = "",
    message: str = "",
) -> GateResult:
    # JSON (and the API server) cannot hold NaN/inf: store them as absent, say so in text.
    return GateResult(
        gate=gate,
        verdict=verdict.value,
        value=value if _finite(value) else None,
        baseline=baseline if _finite(baseline) else None,
        threshold=threshold[:256],
        message=message[:1024],
    )


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
    if not _finite(n):
        return Verdict.INCONCLUSIVE, "no canary request count in the window (no series yet)"
    assert n is not None
    if n < min_requests:
        return (
            Verdict.INCONCLUSIVE,
            f"canary finished {n:.0f} requests in {m.window_seconds:.0f}s, fewer than "
            f"minRequests {min_requests}; figures do not count",
        )
    return None


def _ceiling(  # noqa: PLR0917
    gate: str,
    value: float | None,
    limit: float,
    unit: str,
    what: str,
    baseline: float | None = None,
) -> GateResult:
    threshold = f"<= {_num(limit)}{unit}"
    if not _finite(value):
        return _result(
            gate,
            Verdict.INCONCLUSIVE,
            value=value,
            baseline=baseline,
            threshold=threshold,
            message=f"{what} is {_num(value)} (no observations in the window)",
        )
    assert value is not None
    ok = value <= limit
    return _result(
        gate,
        Verdict.SUCCESSFUL if ok else Verdict.FAILED,
        value=value,
        baseline=baseline,
        threshold=threshold,
        message=f"{what} {_num(value)}{unit} {'within' if ok else 'above'} the ceiling "
        f"{_num(limit)}{unit}",
    )


def _ratio(  # noqa: PLR0917
    gate: str,
    canary: float | None,
    stable: float | None,
    stable_requests: float | None,
    limit: float,
    min_requests: int,
    what: str,
) -> GateResult:
    threshold = f"<= {_num(limit)}x stable"
    if not _finite(stable_requests) or (stable_requests or 0.0) < min_requests:
        return _result(
            gate,
            Verdict.INCONCLUSIVE,
            value=canary,
            baseline=stable,
            threshold=threshold,
            message=f"stable baseline finished {_num(stable_requests)} requests, fewer than "
            f"minRequests {min_requests}; no comparison",
        )
    if not _finite(canary) or not _finite(stable) or (stable or 0.0) <= 0.0:
        return _result(
            gate,
            Verdict.INCONCLUSIVE,
            value=canary,
            baseline=stable,
            threshold=threshold,
            message=f"{what}: canary {_num(canary)}s, stable {_num(stable)}s; cannot form a ratio",
        )
    assert canary is not None and stable is not None
    ratio = canary / stable
    ok = ratio <= limit
    # The row holds the ratio; the seconds on both sides are in its message and in the
    # absolute gate's row (value = canary, baseline = stable).
    return _result(
        gate,
        Verdict.SUCCESSFUL if ok else Verdict.FAILED,
        value=ratio,
        threshold=threshold,
        message=f"{what} canary {_num(canary)}s / stable {_num(stable)}s = {ratio:.3f}, "
        f"{'within' if ok else 'above'} {_num(limit)}",
    )


def evaluate(
    gates: GatesSpec,
    m: Measurement,
    *,
    has_stable: bool,
    stable_baseline: SideFigures | None = None,
) -> list[GateResult]:
    """One GateResult per configured traffic gate for one analysis window.

    Always reports ``requests`` (the traffic precondition) and ``errorRate``; then
    ``p99``/``p99RatioToStable``/``ttftP99``/``ttftP99RatioToStable`` where the
    spec sets them (ratios only when ``has_stable``; without a stable and without
    ``p99MaxSeconds`` a ``p99`` row that is always Inconclusive), then each custom query.

    ``stable_baseline``: the stable's figures from the last window in which it had
    at least ``minRequests`` requests. Ratio gates use it when the stable has too
    little traffic in this window — at weight 100 it has none — and say so.
    """
    out: list[GateResult] = []
    borrowed = False
    stable_short = (
        m.stable is None
        or not _finite(m.stable.requests)
        or (m.stable.requests or 0.0) < gates.min_requests
    )
    if has_stable and stable_baseline is not None and stable_short and m.error is None:
        m = replace(m, stable=stable_baseline)
        borrowed = True
    lat = gates.latency
    minimum = gates.min_requests
    traffic = _traffic_precondition(m, minimum)

    def guarded(name: str, keys: Sequence[str], threshold: str) -> GateResult | None:
        err = _error_for(m, *keys)
        if err is not None:
            return _result(name, Verdict.ERROR, threshold=threshold, message=err)
        if traffic is not None:
            return _result(name, traffic[0], value=None, threshold=threshold, message=traffic[1])
        return None

    # requests: the precondition itself, shown so "no traffic" is visible in status.
    err = _error_for(m, "canary.requests")
    if err is not None:
        out.append(_result(GATE_REQUESTS, Verdict.ERROR, threshold=f">= {minimum}", message=err))
    elif traffic is not None:
        out.append(
            _result(
                GATE_REQUESTS,
                traffic[0],
                value=m.canary.requests,
                baseline=m.stable.requests if m.stable else None,
                threshold=f">= {minimum}",
                message=traffic[1],
            )
        )
    else:
        out.append(
            _result(
                GATE_REQUESTS,
                Verdict.SUCCESSFUL,
                value=m.canary.requests,
                baseline=m.stable.requests if m.stable else None,
                threshold=f">= {minimum}",
                message=f"canary finished {_num(m.canary.requests)} requests in "
                f"{m.window_seconds:.0f}s",
            )
        )

    # error rate
    limit = gates.max_error_rate
    pre = guarded(GATE_ERROR_RATE, ("canary.requests", "canary.errors"), f"<= {_num(limit)}")
    if pre is not None:
        out.append(pre)
    else:
        req, errs = m.canary.requests, m.canary.errors
        if not _finite(errs):
            out.append(
                _result(
                    GATE_ERROR_RATE,
                    Verdict.INCONCLUSIVE,
                    threshold=f"<= {_num(limit)}",
                    message="no canary error count in the window",
                )
            )
        else:
            assert req is not None and errs is not None
            rate = max(0.0, errs) / req if req > 0 else 0.0
            base = None
            if m.stable and _finite(m.stable.requests) and _finite(m.stable.errors):
                s_req = m.stable.requests or 0.0
                base = (m.stable.errors or 0.0) / s_req if s_req > 0 else None
            ok = rate <= limit
            out.append(
                _result(
                    GATE_ERROR_RATE,
                    Verdict.SUCCESSFUL if ok else Verdict.FAILED,
                    value=rate,
                    baseline=base,
                    threshold=f"<= {_num(limit)}",
                    message=f"{errs:.0f} of {req:.0f} canary requests failed "
                    f"({100 * rate:.2f}%), {'within' if ok else 'above'} the ceiling "
                    f"{100 * limit:.2f}%",
                )
            )

    stable = m.stable or SideFigures()
    # latency: absolute ceilings and ratios to stable are separate gates.
    specs: list[tuple[str, str, float | None, bool, str]] = [
        (GATE_P99, "p99", lat.p99_max_seconds, False, "P99 end-to-end latency"),
        (GATE_P99_RATIO, "p99", lat.p99_max_ratio_to_stable, True, "P99 end-to-end latency"),
        (GATE_TTFT_P99, "ttft", lat.ttft_p99_max_seconds, False, "P99 time to first token"),
        (
            GATE_TTFT_P99_RATIO,
            "ttft",
            lat.ttft_p99_max_ratio_to_stable,
            True,
            "P99 time to first token",
        ),
    ]
    for name, figure, limit_or_none, is_ratio, what in specs:
        if limit_or_none is None or (is_ratio and not has_stable):
            continue
        key = "p99" if figure == "p99" else "ttftP99"
        keys = [f"canary.{key}", "canary.requests"]
        if is_ratio:
            keys += [f"stable.{key}", "stable.requests"]
        threshold = f"<= {_num(limit_or_none)}" + ("x stable" if is_ratio else "s")
        pre = guarded(name, keys, threshold)
        if pre is not None:
            out.append(pre)
            continue
        c_val = m.canary.p99_seconds if figure == "p99" else m.canary.ttft_p99_seconds
        s_val = stable.p99_seconds if figure == "p99" else stable.ttft_p99_seconds
        if is_ratio:
            r = _ratio(name, c_val, s_val, stable.requests, limit_or_none, minimum, what)
            if borrowed:
                note = "; stable baseline from the last window with enough stable traffic"
                r = r.model_copy(update={"message": (r.message + note)[:1024]})
            out.append(r)
        else:
            out.append(
                _ceiling(
                    name,
                    c_val,
                    limit_or_none,
                    "s",
                    f"canary {what}",
                    baseline=s_val if has_stable else None,
                )
            )

    if not has_stable and lat.p99_max_seconds is None:
        # The ratio gates (p99MaxRatioToStable has a default) have nothing to compare with:
        # without this row no latency gate would run and any P99 would promote.
        out.append(
            _result(
                GATE_P99,
                Verdict.INCONCLUSIVE,
                threshold="spec.gates.latency.p99MaxSeconds",
                message="no latency gate can be judged: without spec.serving.stable there is "
                "no stable to compare with, and spec.gates.latency.p99MaxSeconds is not set "
                "(never a pass; set an absolute ceiling)",
            )
        )

    for q in gates.custom_queries:
        name = f"{GATE_CUSTOM_PREFIX}{q.name}"
        bounds = [
            *([f">= {_num(q.min)}"] if q.min is not None else []),
            *([f"<= {_num(q.max)}"] if q.max is not None else []),
        ]
        threshold = " and ".join(bounds)
        pre = guarded(name, (name, "canary.requests"), threshold)
        if pre is not None:
            out.append(pre)
            continue
        value = m.custom.get(q.name)
        if not _finite(value):
            out.append(
                _result(
                    name,
                    Verdict.INCONCLUSIVE,
                    threshold=threshold,
                    message=f"query {q.name} returned {_num(value)} (empty or NaN)",
                )
            )
            continue
        assert value is not None
        ok = (q.min is None or value >= q.min) and (q.max is None or value <= q.max)
        out.append(
            _result(
                name,
                Verdict.SUCCESSFUL if ok else Verdict.FAILED,
                value=value,
                threshold=threshold,
                message=f"query {q.name} = {_num(value)}, "
                f"{'meets' if ok else 'violates'} {threshold}",
            )
        )
    return out


def overall(results: Iterable[GateResult]) -> Verdict:
    """The worst verdict: Failed, then Error, then Inconclusive; Successful only if all are.

    No gates at all is Inconclusive: nothing was shown to pass.
    """
    verdicts = {Verdict(r.verdict) for r in results}
    if not verdicts:
        return Verdict.INCONCLUSIVE
    for v in _SEVERITY:
        if v in verdicts:
            return v
    return Verdict.INCONCLUSIVE  # pragma: no cover


def first_of(results: Iterable[GateResult], verdict: Verdict) -> GateResult | None:
    """The first gate with this verdict (the one to name in a rollback reason)."""
    for r in results:
        if r.verdict == verdict.value:
            return r
    return None


def format_result(r: GateResult) -> str:
    """One line for events and messages: ``p99RatioToStable=1.82 (threshold <= 1.5x stable,
    stable 1): Failed``."""
    value = _num(r.value) if r.value is not None else "n/a"
    base = f", stable {_num(r.baseline)}" if r.baseline is not None else ""
    return f"{r.gate}={value} (threshold {r.threshold}{base}): {r.verdict}"


# --------------------------------------------------------------------- accuracy


@dataclass(frozen=True)
class AccuracyVerdict:
    """The accuracy gate over one EvaluationResult."""

    verdict: Verdict
    results: list[GateResult]
    summary: AccuracySummary

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.SUCCESSFUL


def evaluate_accuracy(gate: AccuracyGate, ev: EvaluationResult) -> AccuracyVerdict:
    """Check the offline evaluation against ``spec.gates.accuracy``.

    Perplexity increase is ``100 * (ppl_quant / ppl_base - 1)``. Optional checks
    (mean KL, top-1 agreement, exact-match and JSON-validity recovery) run only
    when the gate sets them; a set check whose figure is missing (e.g. the eval
    set has no expected answers) or not finite is Inconclusive, so the gate does
    not pass. An evaluation over zero prompts is Inconclusive.
    """
    increase = 100.0 * (ev.perplexity_quant / ev.perplexity_base - 1.0)
    summary = AccuracySummary(
        perplexity_base=ev.perplexity_base,
        perplexity_quantized=ev.perplexity_quant,
        perplexity_increase_percent=increase if math.isfinite(increase) else None,
        mean_kl=ev.mean_kl if math.isfinite(ev.mean_kl) else None,
        top1_agreement=ev.top1_agreement,
        exact_match_recovery_percent=ev.task_recovery_pct,
        json_validity_recovery_percent=ev.json_recovery_pct,
    )
    return evaluate_accuracy_summary(gate, summary, num_prompts=ev.num_prompts)


def _impossible_perplexity(base: float | None, quant: float | None) -> bool:
    """A perplexity that is there but not finite and positive."""
    return any(x is not None and not (math.isfinite(x) and x > 0) for x in (base, quant))


def evaluate_accuracy_summary(
    gate: AccuracyGate, summary: AccuracySummary, *, num_prompts: int | None = None
) -> AccuracyVerdict:
    """The accuracy gate over the figures already in ``status.accuracy``.

    Returns the summary with ``passed`` and ``failedChecks`` filled in. The
    perplexity increase is recomputed from the two perplexities when both are
    there, else taken from ``perplexityIncreasePercent``; missing → Inconclusive.
    """
    out: list[GateResult] = []
    p = GATE_ACCURACY_PREFIX
    if num_prompts == 0:
        out.append(
            _result(
                f"{p}prompts",
                Verdict.INCONCLUSIVE,
                value=0.0,
                threshold=">= 1",
                message="the evaluation ran over no prompts",
            )
        )
    base, quant = summary.perplexity_base, summary.perplexity_quantized
    increase = summary.perplexity_increase_percent
    if _impossible_perplexity(base, quant):
        # A perplexity is finite and positive; anything else is a broken evaluation, and
        # any increase computed from it (inf base, 0 or negative quantized: "-100%") is not
        # a figure. Error: it never passes.
        increase = None
        out.append(
            _result(
                f"{p}perplexityIncreasePercent",
                Verdict.ERROR,
                threshold=f"<= {_num(gate.max_perplexity_increase_percent)}%",
                message=f"impossible perplexity figures (base {_num(base)}, quantized "
                f"{_num(quant)}): a perplexity is finite and positive; the evaluation is broken",
            )
        )
    else:
        if base is not None and quant is not None:
            increase = 100.0 * (quant / base - 1.0)
        out.append(
            _ceiling(
                f"{p}perplexityIncreasePercent",
                increase,
                gate.max_perplexity_increase_percent,
                "%",
                f"perplexity {_num(base)} -> {_num(quant)}, increase",
            )
        )
    if gate.max_mean_kl is not None:
        out.append(_ceiling(f"{p}meanKL", summary.mean_kl, gate.max_mean_kl, "", "mean KL (nats)"))

    def floor(name: str, value: float | None, minimum: float, unit: str, what: str) -> None:
        threshold = f">= {_num(minimum)}{unit}"
        if not _finite(value):
            out.append(
                _result(
                    f"{p}{name}",
                    Verdict.INCONCLUSIVE,
                    threshold=threshold,
                    message=f"{what} not measured (the eval set lacks what it needs)",
                )
            )
            return
        assert value is not None
        ok = value >= minimum
        out.append(
            _result(
                f"{p}{name}",
                Verdict.SUCCESSFUL if ok else Verdict.FAILED,
                value=value,
                threshold=threshold,
                message=f"{what} {_num(value)}{unit} {'meets' if ok else 'below'} "
                f"{_num(minimum)}{unit}",
            )
        )

    if gate.min_top1_agreement is not None:
        floor(
            "top1Agreement", summary.top1_agreement, gate.min_top1_agreement, "", "top-1 agreement"
        )
    if gate.min_exact_match_recovery_percent is not None:
        floor(
            "exactMatchRecoveryPercent",
            summary.exact_match_recovery_percent,
            gate.min_exact_match_recovery_percent,
            "%",
            "exact-match recovery",
        )
    if gate.min_json_validity_recovery_percent is not None:
        floor(
            "jsonValidityRecoveryPercent",
            summary.json_validity_recovery_percent,
            gate.min_json_validity_recovery_percent,
            "%",
            "JSON-validity recovery",
        )
    verdict = overall(out)
    filled = summary.model_copy(
        update={
            "perplexity_increase_percent": increase if _finite(increase) else None,
            "passed": verdict is Verdict.SUCCESSFUL,
            "failed_checks": [
                f"{r.gate}: {r.message}"[:512] for r in out if r.verdict != Verdict.SUCCESSFUL.value
            ][:16],
        }
    )
    return AccuracyVerdict(verdict=verdict, results=out, summary=filled)
