"""Canary analysis, as Argo Rollouts' AnalysisRun: when one is due, what it counts, and
whether the counts exceed the limits. Pure, no I/O.

* :func:`analysis_due` — the window to measure now, or None: one ``analysisInterval``
  long, or after an Inconclusive analysis everything since the step started (up to
  ``maxAnalysisWindow``), so a canary with too little traffic for its gates gathers
  evidence instead of being judged on too few requests; never two steps' weights.
* :func:`judge` — the gates (samp_core.gates) over a measurement; the stable's figures
  are always the same window's (a remembered baseline once let an hour-old figure judge
  a canary); at weight 100 the stable serves nothing and ratio gates are not judged.
* :func:`count` — the canary status after one analysis: Failed counts toward
  ``failureLimit``, Inconclusive toward ``inconclusiveLimit``, Error toward
  ``consecutiveErrorLimit`` (reset by any answered analysis); a Successful analysis
  counts toward finishing the step. An analysis Inconclusive only because a P99 lacks
  evidence, in a window still shorter than ``maxAnalysisWindow``, does not count: the
  step waits for the longer window.
* :func:`assess` — whether a limit is exceeded, and the rollback that follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from samp_core import gates as g
from samp_core.canary.model import (
    REASON_ERRORS,
    REASON_GATE_FAILED,
    REASON_INCONCLUSIVE,
    AnalysisRequest,
    canary_model_name,
    parse_time,
    stable_model_name,
)
from samp_core.conditions import rfc3339
from samp_core.events import Event
from samp_core.latency_gates import EVIDENCE_SHORT
from samp_core.spec import QuantizedModelSpec, RolloutSpec
from samp_core.status import (
    CanaryStatus,
    GateResult,
    Phase,
    QuantizedModelStatus,
)
from samp_core.units import parse_duration

__all__ = ["Breach", "analysis_due", "assess", "count", "judge", "seconds_until_next"]


def _anchor(c: CanaryStatus, started: datetime) -> datetime:
    last = parse_time(c.last_analysis_at)
    return last if last is not None and last >= started else started


def analysis_due(
    spec: QuantizedModelSpec, status: QuantizedModelStatus, name: str, now: datetime
) -> AnalysisRequest | None:
    """The window to measure now, or None when no analysis is due.

    Due while the canary runs (not paused) with traffic at a step, once the first
    full interval at this step has passed and then every ``analysisInterval``.
    The window is one interval long; after an Inconclusive analysis it reaches back to
    the step's start, at most ``maxAnalysisWindow``. Either way it never mixes two
    steps' weights.
    """
    if status.phase is not Phase.CANARY or status.canary is None:
        return None
    c = status.canary
    started = parse_time(c.step_started_at)
    if c.weight <= 0 or started is None or c.paused_at is not None:
        return None
    interval = parse_duration(spec.rollout.analysis_interval)
    if (now - _anchor(c, started)).total_seconds() + 1e-6 < interval:
        return None
    return AnalysisRequest(
        canary_model=canary_model_name(spec, name),
        stable_model=stable_model_name(spec, name),
        window_seconds=_window(spec, c, started, now, interval),
        end=now,
        step=c.step,
        weight=c.weight,
    )


def _window(
    spec: QuantizedModelSpec, c: CanaryStatus, started: datetime, now: datetime,
    interval: float,
) -> float:
    """One interval; after an Inconclusive analysis, the step so far up to the limit."""
    if c.last_verdict != g.Verdict.INCONCLUSIVE.value:
        return interval
    limit = parse_duration(spec.rollout.max_analysis_window)
    return max(interval, min(limit, (now - started).total_seconds()))


def seconds_until_next(spec: QuantizedModelSpec, c: CanaryStatus, now: datetime) -> float:
    """How long until the next analysis is due (at least a second)."""
    interval = parse_duration(spec.rollout.analysis_interval)
    due = _anchor(c, parse_time(c.step_started_at) or now) + timedelta(seconds=interval)
    return max(1.0, (due - now).total_seconds())


def judge(
    spec: QuantizedModelSpec, c: CanaryStatus, m: g.Measurement
) -> tuple[list[GateResult], g.Verdict]:
    """The gates' results over ``m`` and the analysis's verdict (the worst of them)."""
    results = g.evaluate(
        spec.gates, m, has_stable=spec.serving.stable is not None, stable_serves=c.weight < 100
    )
    return results, g.overall(results)


def count(
    c: CanaryStatus,
    results: Sequence[GateResult],
    verdict: g.Verdict,
    now: datetime,
    *,
    waiting: bool = False,
) -> CanaryStatus:
    """The canary status after this analysis: its time, verdict and counters.

    ``waiting`` (:func:`waiting_for_evidence`): an Inconclusive analysis that waits for a
    longer window does not count toward ``inconclusiveLimit``."""
    upd: dict[str, object] = {
        "last_analysis_at": rfc3339(now),
        "last_verdict": verdict.value,
        "analyses": c.analyses + 1,
    }
    ratio = next(
        (r.value for r in results if r.gate == g.GATE_P99_RATIO and r.value is not None), None
    )
    if ratio is not None:
        upd["p99_ratio"] = round(ratio, 4)
    if verdict is g.Verdict.FAILED:
        upd["failures"] = c.failures + 1
        upd["consecutive_errors"] = 0
    elif verdict is g.Verdict.ERROR:
        upd["consecutive_errors"] = c.consecutive_errors + 1
    elif verdict is g.Verdict.INCONCLUSIVE:
        if not waiting:
            upd["inconclusives"] = c.inconclusives + 1
        upd["consecutive_errors"] = 0
    else:
        upd["step_successes"] = c.step_successes + 1
        upd["consecutive_errors"] = 0
    return c.model_copy(update=upd)


def waiting_for_evidence(
    spec: QuantizedModelSpec, m: g.Measurement, results: Sequence[GateResult]
) -> bool:
    """Inconclusive only for want of P99 evidence, and the window can still grow."""
    limit = parse_duration(spec.rollout.max_analysis_window)
    inconclusive = [r for r in results if r.verdict == g.Verdict.INCONCLUSIVE.value]
    return (
        bool(inconclusive)
        and m.window_seconds + 1e-6 < limit
        and all(EVIDENCE_SHORT in r.message for r in inconclusive)
    )


@dataclass(frozen=True)
class Breach:
    """A limit the analyses exceeded: roll back for ``reason``, saying ``message``.

    ``replan``: a gate measured and failed (a more conservative plan may pass it);
    ``failing``: the gate results that failed."""

    reason: str
    message: str
    replan: bool
    failing: tuple[GateResult, ...] = ()


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def figures(results: Sequence[GateResult]) -> str:
    """The gate figures of an analysis in one line (the requests gate left out)."""
    return "; ".join(g.format_result(r) for r in results if r.gate != g.GATE_REQUESTS) or (
        "no gate figures"
    )


def _analyses(n: int, kind: str) -> str:
    return f"{n} {kind} analys{'is' if n == 1 else 'es'}"


def assess(limits: RolloutSpec, c: CanaryStatus, results: Sequence[GateResult]) -> Breach | None:
    """Failures, then consecutive errors, then inconclusives, against their limits."""
    if c.failures > limits.failure_limit:
        failing = g.first_of(results, g.Verdict.FAILED)
        assert failing is not None
        return Breach(
            REASON_GATE_FAILED,
            f"gate {failing.gate} failed: {failing.message} "
            f"(value {fmt(failing.value)}, threshold {failing.threshold}); "
            f"{_analyses(c.failures, 'failed')} > failureLimit {limits.failure_limit}",
            replan=True,
            failing=(failing,),
        )
    if c.consecutive_errors > limits.consecutive_error_limit:
        err = g.first_of(results, g.Verdict.ERROR)
        return Breach(
            REASON_ERRORS,
            f"{c.consecutive_errors} consecutive measurement "
            f"error{'' if c.consecutive_errors == 1 else 's'} > "
            f"consecutiveErrorLimit {limits.consecutive_error_limit}: "
            f"{err.message if err else 'no answer'}",
            replan=False,
        )
    if c.inconclusives > limits.inconclusive_limit:
        inc = g.first_of(results, g.Verdict.INCONCLUSIVE)
        return Breach(
            REASON_INCONCLUSIVE,
            f"{_analyses(c.inconclusives, 'inconclusive')} > inconclusiveLimit "
            f"{limits.inconclusive_limit} (never a pass): "
            f"{inc.message if inc else 'not enough data'}",
            replan=False,
        )
    return None


def analysis_event(
    c: CanaryStatus, steps: int, m: g.Measurement, results: Sequence[GateResult],
    verdict: g.Verdict,
) -> tuple[str, Event]:
    """(status message, Event) describing one analysis and its figures."""
    head = (
        f"analysis {c.analyses} at step {c.step + 1}/{steps} (weight {c.weight}%, "
        f"window {m.window_seconds:.0f}s): {verdict.value}"
    )
    detail = figures(results)
    req = next((r for r in results if r.gate == g.GATE_REQUESTS), None)
    if req is not None and req.verdict != "Successful":
        detail = f"{req.message}; {detail}"
    elif verdict is g.Verdict.INCONCLUSIVE:
        # why, first: e.g. a P99 without enough evidence yet, or an unfair load split
        inc = g.first_of(results, g.Verdict.INCONCLUSIVE)
        if inc is not None:
            detail = f"{inc.gate}: {inc.message}; {detail}"
    event = Event(
        "Normal" if verdict is g.Verdict.SUCCESSFUL else "Warning",
        f"Analysis{verdict.value}",
        f"{head}: {detail}"[:1024],
    )
    return head, event
