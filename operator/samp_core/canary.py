"""The canary step machine: spec + status + observation + now in, decision out. Pure, no I/O.

Contract with the operator (samp_core.reconcile / samp_operator):

    from samp_core import canary
    req = canary.analysis_due(spec, status, name, now)        # AnalysisRequest | None
    m = provider.measure(req) if req else None                  # samp_operator.prometheus
    d = canary.decide(spec, status, canary.Observation(name=name, annotations=...,
                      canary_ready=..., weight_verified=..., measurement=m), now)
    # apply d.actions in order (EnsureCanary, SetWeight, PromoteStable, RemoveCanary,
    # StartReplan), emit d.events, write d.status in one status write,
    # come back after d.requeue_after seconds (None: nothing to wait for).

``decide`` handles phases Evaluated (accuracy gate, then start the canary),
CanaryProgressing and Paused; for any other phase it returns the status unchanged
with no actions. Everything it needs is in the arguments; it never reads the
clock (``now`` is an aware datetime) and never raises on odd input.

The machine, step by step:

* **Evaluated** — accuracy failed (or was never measured) → RolledBack before any
  traffic moves (re-plan if allowed); else phase CanaryProgressing and
  ``EnsureCanary`` (Deployment + Service serving the artifact as ``<name>-canary``).
* **Waiting for pods** — weight 0 until ``observation.canary_ready``; then
  ``SetWeight(steps[0].weight)`` and the step clock starts.
* **Analysis** — each ``analysisInterval`` the operator measures the last window
  (``analysis_due``); the gates (samp_core.gates) give a verdict. Failed counts
  toward ``failureLimit``, Inconclusive toward ``inconclusiveLimit``, Error toward
  ``consecutiveErrorLimit`` (reset by any answered analysis); exceeding a limit
  rolls back. Inconclusive never counts as a pass.
* **Step done** — the step's duration has elapsed and the latest analysis at this
  step was Successful; then the next weight, or at the last step promotion
  (automatic, or on the ``samp.dev/promote`` annotation when promotion is manual).
* **Progress deadline** — from canary start, paused time excluded: rolls back.
* **Annotations** (metadata only, so GitOps sees no drift; the operator never
  writes spec): ``samp.dev/pause: "true"`` pauses while present (remove it or set
  "false" to resume); ``samp.dev/promote`` and ``samp.dev/abort`` act when their
  value is ``"true"`` or an RFC 3339 time not before the canary's start (the CLI
  writes the current time, so a request left over from an earlier rollout is
  ignored). Promote skips the remaining steps and gates, and says so.
* **Promotion** — UpdateStable: ``PromoteStable`` (stable Deployment switches to
  the artifact), ``SetWeight(0)``, ``RemoveCanary``; ShiftRoute: ``SetWeight(100)``,
  ``PromoteStable``. Condition Promoted carries the measured figures.
* **Rollback** — ``SetWeight(0)``, ``RemoveCanary``; condition RolledBack names the
  failing gate, its value and threshold. When a gate *failed* (accuracy, latency,
  errors or a custom query — not no-traffic, errors, deadline or abort) and
  ``spec.rollout.replan`` allows another attempt, the decision also carries
  ``StartReplan`` and the status already opens the next attempt (phase Planning,
  ``attempt + 1``, a new history entry). The operator then builds the
  conservative plan with :func:`conservative_plan` from the previous plan and
  sensitivity documents, exports and evaluates it, and comes back to Evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from samp_core import gates as g
from samp_core.conditions import rfc3339
from samp_core.conditions import with_condition as set_condition
from samp_core.formats import Format
from samp_core.hardware import HardwareProfile
from samp_core.planner import Budget as PlanBudget
from samp_core.planner import PlanRequest, plan
from samp_core.results import PlanResult, SensitivityResult, inputs_hash
from samp_core.spec import QuantizationSpec, QuantizedModelSpec, ReplanSpec
from samp_core.status import (
    MAX_GATE_RESULTS,
    MAX_HISTORY,
    Attempt,
    CanaryStatus,
    ConditionType,
    GateResult,
    Phase,
    QuantizedModelStatus,
)
from samp_core.units import parse_duration

__all__ = [
    "ANNOTATION_ABORT",
    "ANNOTATION_PAUSE",
    "ANNOTATION_PROMOTE",
    "Action",
    "AnalysisRequest",
    "CanaryDecision",
    "CanaryEvent",
    "EnsureCanary",
    "Observation",
    "PromoteStable",
    "RemoveCanary",
    "SetWeight",
    "StartReplan",
    "analysis_due",
    "canary_model_name",
    "conservative_plan",
    "decide",
    "set_condition",
    "stable_model_name",
]

ANNOTATION_PAUSE = "samp.dev/pause"
ANNOTATION_PROMOTE = "samp.dev/promote"
ANNOTATION_ABORT = "samp.dev/abort"

# How soon to look again while waiting on something the operator does (pods, weights).
POLL_SECONDS = 5.0
PAUSED_POLL_SECONDS = 30.0
_ACTIVE = (Phase.EVALUATED, Phase.CANARY, Phase.PAUSED)

# Rollback reasons that a more conservative plan can fix (a gate measured and failed).
REASON_GATE_FAILED = "GateFailed"
REASON_ACCURACY = "AccuracyGateFailed"
REASON_ACCURACY_UNMEASURED = "AccuracyNotMeasured"
REASON_INCONCLUSIVE = "InconclusiveLimitExceeded"
REASON_ERRORS = "MeasurementErrorLimitExceeded"
REASON_DEADLINE = "ProgressDeadlineExceeded"
REASON_ABORTED = "Aborted"
_REPLANNABLE = (REASON_GATE_FAILED, REASON_ACCURACY)


# ------------------------------------------------------------------ names


def served_model_name(spec: QuantizedModelSpec, name: str) -> str:
    """The name clients use for the quantized model (spec.serving.servedModelName or name)."""
    return spec.serving.served_model_name or name


def canary_model_name(spec: QuantizedModelSpec, name: str) -> str:
    """``--served-model-name`` of the canary: its ``model_name`` label in Prometheus."""
    return f"{served_model_name(spec, name)}-canary"


def stable_model_name(spec: QuantizedModelSpec, name: str) -> str | None:
    """``model_name`` label of the stable series, or None without a stable target."""
    stable = spec.serving.stable
    if stable is None:
        return None
    return stable.served_model_name or served_model_name(spec, name)


# ------------------------------------------------------------- data in/out


@dataclass(frozen=True)
class AnalysisRequest:
    """What to measure now: the last ``window_seconds`` ending at ``end``."""

    canary_model: str
    stable_model: str | None
    window_seconds: float
    end: datetime
    step: int
    weight: int


@dataclass(frozen=True)
class Observation:
    """What the operator saw of the world this time round.

    ``canary_ready``: the canary Deployment has all its replicas ready (readiness
    probe on /health). ``weight_verified``: the traffic router read back the weight
    in ``status.canary.weight`` (None: not checked this time). ``measurement``: the
    analysis for :func:`analysis_due`'s request, when one was due.
    """

    name: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    canary_ready: bool = False
    weight_verified: bool | None = None
    measurement: g.Measurement | None = None
    generation: int | None = None


@dataclass(frozen=True)
class EnsureCanary:
    """Create or keep the canary Deployment and Service (samp_operator.serving)."""

    served_model_name: str
    artifact_uri: str | None
    attempt: int
    # Names clients already send (the public and the stable's served name): the canary
    # answers them too, or a client of the shared Service/route gets 404 from it.
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class SetWeight:
    """Send ``weight`` percent of traffic to the canary, then verify it (samp_operator.traffic)."""

    weight: int


@dataclass(frozen=True)
class PromoteStable:
    """Make the artifact the stable serving target, per spec.rollout.promotionStrategy."""

    strategy: Literal["UpdateStable", "ShiftRoute"]
    artifact_uri: str | None


@dataclass(frozen=True)
class RemoveCanary:
    """Delete the canary Deployment and Service (after the weight is back to 0)."""


@dataclass(frozen=True)
class StartReplan:
    """Start attempt ``attempt`` from a more conservative plan (see conservative_plan)."""

    attempt: int
    reason: str
    failed_gates: tuple[GateResult, ...]


Action = EnsureCanary | SetWeight | PromoteStable | RemoveCanary | StartReplan


@dataclass(frozen=True)
class CanaryEvent:
    """A Kubernetes Event to emit on the QuantizedModel."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class CanaryDecision:
    status: QuantizedModelStatus
    actions: tuple[Action, ...] = ()
    events: tuple[CanaryEvent, ...] = ()
    requeue_after: float | None = None


# ---------------------------------------------------------------- helpers


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _request_active(value: str | None, since: datetime | None) -> bool:
    """An edge annotation (promote/abort) counts if "true" or a time not before ``since``."""
    if value is None:
        return False
    v = value.strip()
    if v.lower() in ("true", "yes", "1"):
        return True
    t = _parse_time(v)
    if t is None:
        return False
    return since is None or t >= since - timedelta(seconds=1)


def _paused(annotations: Mapping[str, str]) -> bool:
    return annotations.get(ANNOTATION_PAUSE, "").strip().lower() in ("true", "yes", "1")


def _figures(results: Sequence[GateResult]) -> str:
    return "; ".join(g.format_result(r) for r in results if r.gate != g.GATE_REQUESTS) or (
        "no gate figures"
    )


def _with_history(
    status: QuantizedModelStatus,
    now: datetime,
    generation: int | None,
    *,
    outcome: str | None = None,
    reason: str | None = None,
    gates: Sequence[GateResult] | None = None,
) -> list[Attempt]:
    """History with the current attempt's entry updated (created if missing)."""
    history = list(status.history)
    idx = next((i for i, a in enumerate(history) if a.attempt == status.attempt), None)
    if idx is None:
        history.append(
            Attempt(
                attempt=status.attempt,
                generation=generation or status.observed_generation or 0,
                inputs_hash=status.inputs_hash or "",
                started_at=rfc3339(now),
                plan=status.plan,
                artifact_uri=status.artifact_uri or "",
                accuracy=status.accuracy,
            )
        )
        idx = len(history) - 1
    a = history[idx]
    update: dict[str, object] = {}
    if outcome is not None:
        update["outcome"] = outcome
        update["finished_at"] = rfc3339(now)
    if reason is not None:
        update["reason"] = reason[:1024]
    if gates is not None:
        update["gates"] = list(gates)[:MAX_GATE_RESULTS]
    if a.plan is None and status.plan is not None:
        update["plan"] = status.plan
    if a.accuracy is None and status.accuracy is not None:
        update["accuracy"] = status.accuracy
    if not a.artifact_uri and status.artifact_uri:  # a re-plan's entry opens before its export
        update["artifact_uri"] = status.artifact_uri
    history[idx] = a.model_copy(update=update)
    return history[-MAX_HISTORY:]


def _canary(status: QuantizedModelStatus) -> CanaryStatus:
    return status.canary or CanaryStatus(step=0, weight=0)


# ----------------------------------------------------------- the machine


def analysis_due(
    spec: QuantizedModelSpec, status: QuantizedModelStatus, name: str, now: datetime
) -> AnalysisRequest | None:
    """The window to measure now, or None when no analysis is due.

    Due while the canary runs (not paused) with traffic at a step, once the first
    full interval at this step has passed and then every ``analysisInterval``.
    The window is one interval long, so it never mixes two steps' weights.
    """
    if status.phase is not Phase.CANARY or status.canary is None:
        return None
    c = status.canary
    started = _parse_time(c.step_started_at)
    if c.weight <= 0 or started is None or c.paused_at is not None:
        return None
    interval = parse_duration(spec.rollout.analysis_interval)
    last = _parse_time(c.last_analysis_at)
    anchor = last if last is not None and last >= started else started
    if (now - anchor).total_seconds() + 1e-6 < interval:
        return None
    return AnalysisRequest(
        canary_model=canary_model_name(spec, name),
        stable_model=stable_model_name(spec, name),
        window_seconds=interval,
        end=now,
        step=c.step,
        weight=c.weight,
    )


def _seconds_until_next(spec: QuantizedModelSpec, c: CanaryStatus, now: datetime) -> float:
    interval = parse_duration(spec.rollout.analysis_interval)
    started = _parse_time(c.step_started_at) or now
    last = _parse_time(c.last_analysis_at)
    anchor = last if last is not None and last >= started else started
    due = anchor + timedelta(seconds=interval)
    return max(1.0, (due - now).total_seconds())


def decide(
    spec: QuantizedModelSpec,
    status: QuantizedModelStatus,
    observation: Observation,
    now: datetime,
) -> CanaryDecision:
    """One step of the canary machine (see the module docstring)."""
    if status.phase not in _ACTIVE:
        return CanaryDecision(status=status)
    gen = observation.generation
    ann = observation.annotations
    if status.phase is Phase.EVALUATED:
        return _start(spec, status, observation, now)

    c = _canary(status)
    started = _parse_time(c.started_at) or now

    if _request_active(ann.get(ANNOTATION_ABORT), started):
        return _rollback(
            spec,
            status,
            now,
            gen,
            REASON_ABORTED,
            f"aborted by the {ANNOTATION_ABORT} annotation",
            [],
            replan=False,
        )
    if _request_active(ann.get(ANNOTATION_PROMOTE), started):
        skipped = c.step < len(spec.rollout.steps) - 1 or c.last_verdict != "Successful"
        note = (
            f"promoted by the {ANNOTATION_PROMOTE} annotation at step {c.step + 1} of "
            f"{len(spec.rollout.steps)}, weight {c.weight}%"
            + ("; remaining steps and gates skipped" if skipped else "")
        )
        return _promote(spec, status, now, gen, "ManualPromotion", note)

    # pause / resume
    if _paused(ann):
        if status.phase is Phase.PAUSED:
            return CanaryDecision(status=status, requeue_after=PAUSED_POLL_SECONDS)
        c2 = c.model_copy(update={"paused_at": rfc3339(now)})
        msg = (
            f"paused by the {ANNOTATION_PAUSE} annotation at step {c.step + 1}, weight "
            f"{c.weight}%; no analysis, no steps, deadline stopped"
        )
        st = status.model_copy(
            update={
                "phase": Phase.PAUSED,
                "canary": c2,
                "message": msg,
                "conditions": set_condition(
                    status.conditions,
                    ConditionType.CANARY_PROGRESSING,
                    "Unknown",
                    "Paused",
                    msg,
                    now,
                    gen,
                ),
            }
        )
        return CanaryDecision(
            status=st,
            events=(CanaryEvent("Normal", "Paused", msg),),
            requeue_after=PAUSED_POLL_SECONDS,
        )
    if status.phase is Phase.PAUSED or c.paused_at is not None:
        paused_at = _parse_time(c.paused_at) or now
        shift = max(timedelta(0), now - paused_at)
        step_started = _parse_time(c.step_started_at)
        last = _parse_time(c.last_analysis_at)
        c = c.model_copy(
            update={
                "paused_at": None,
                "started_at": rfc3339(started + shift),
                "step_started_at": rfc3339(step_started + shift) if step_started else None,
                # The window after resuming must be a fresh one.
                "last_analysis_at": rfc3339(now) if last is not None else None,
            }
        )
        started = started + shift
        msg = f"resumed after {shift.total_seconds():.0f}s paused"
        status = status.model_copy(
            update={
                "phase": Phase.CANARY,
                "canary": c,
                "message": msg,
                "conditions": set_condition(
                    status.conditions,
                    ConditionType.CANARY_PROGRESSING,
                    "True",
                    "Resumed",
                    msg,
                    now,
                    gen,
                ),
            }
        )
        resumed_event: tuple[CanaryEvent, ...] = (CanaryEvent("Normal", "Resumed", msg),)
    else:
        resumed_event = ()

    deadline = parse_duration(spec.rollout.progress_deadline)
    if (now - started).total_seconds() > deadline:
        return _rollback(
            spec,
            status,
            now,
            gen,
            REASON_DEADLINE,
            f"the canary did not finish within progressDeadline {spec.rollout.progress_deadline} "
            f"(at step {c.step + 1} of {len(spec.rollout.steps)}, weight {c.weight}%)",
            list(status.gates),
            replan=False,
        )

    steps = spec.rollout.steps
    events: list[CanaryEvent] = list(resumed_event)

    # Waiting for the canary pods before any traffic moves.
    if c.weight == 0:
        if not observation.canary_ready:
            msg = "waiting for the canary pods to become ready (readiness on /health)"
            st = status.model_copy(update={"canary": c, "message": msg})
            return CanaryDecision(
                status=st,
                actions=(_ensure(spec, status, observation.name),),
                events=tuple(events),
                requeue_after=POLL_SECONDS,
            )
        w = steps[0].weight
        c = c.model_copy(
            update={"step": 0, "weight": w, "step_started_at": rfc3339(now), "step_successes": 0}
        )
        msg = f"step 1 of {len(steps)}: {w}% of traffic to the canary for {steps[0].duration}"
        st = status.model_copy(
            update={
                "canary": c,
                "message": msg,
                "conditions": set_condition(
                    status.conditions,
                    ConditionType.CANARY_PROGRESSING,
                    "True",
                    "StepStarted",
                    msg,
                    now,
                    gen,
                ),
            }
        )
        events.append(CanaryEvent("Normal", "StepStarted", msg))
        return CanaryDecision(
            status=st,
            actions=(SetWeight(w),),
            events=tuple(events),
            requeue_after=parse_duration(spec.rollout.analysis_interval),
        )

    if observation.weight_verified is False:
        msg = f"traffic weight {c.weight}% not in effect yet; setting it again"
        st = status.model_copy(update={"canary": c, "message": msg})
        return CanaryDecision(
            status=st,
            actions=(SetWeight(c.weight),),
            events=tuple(events),
            requeue_after=POLL_SECONDS,
        )

    # Analysis.
    m = observation.measurement
    results: list[GateResult] = list(status.gates)
    if m is not None:
        has_stable = spec.serving.stable is not None
        baseline = None
        if c.stable_p99_seconds is not None:
            baseline = g.SideFigures(
                requests=float(c.stable_requests or spec.gates.min_requests),
                errors=0.0,
                p99_seconds=c.stable_p99_seconds,
                ttft_p99_seconds=c.stable_ttft_p99_seconds,
            )
        results = g.evaluate(spec.gates, m, has_stable=has_stable, stable_baseline=baseline)
        verdict = g.overall(results)
        upd: dict[str, object] = {
            "last_analysis_at": rfc3339(now),
            "last_verdict": verdict.value,
            "analyses": c.analyses + 1,
        }
        ratio = next(
            (r.value for r in results if r.gate == g.GATE_P99_RATIO and r.value is not None),
            None,
        )
        if ratio is not None:
            upd["p99_ratio"] = round(ratio, 4)
        s_fig = m.stable
        if (
            s_fig is not None
            and m.error is None
            and s_fig.requests is not None
            and math.isfinite(s_fig.requests)
            and s_fig.requests >= spec.gates.min_requests
            and s_fig.p99_seconds is not None
            and math.isfinite(s_fig.p99_seconds)
        ):
            upd["stable_p99_seconds"] = s_fig.p99_seconds
            upd["stable_requests"] = s_fig.requests
            if s_fig.ttft_p99_seconds is not None and math.isfinite(s_fig.ttft_p99_seconds):
                upd["stable_ttft_p99_seconds"] = s_fig.ttft_p99_seconds
        if verdict is g.Verdict.FAILED:
            upd["failures"] = c.failures + 1
            upd["consecutive_errors"] = 0
        elif verdict is g.Verdict.ERROR:
            upd["consecutive_errors"] = c.consecutive_errors + 1
        elif verdict is g.Verdict.INCONCLUSIVE:
            upd["inconclusives"] = c.inconclusives + 1
            upd["consecutive_errors"] = 0
        else:
            upd["step_successes"] = c.step_successes + 1
            upd["consecutive_errors"] = 0
        c = c.model_copy(update=upd)
        head = (
            f"analysis {c.analyses} at step {c.step + 1}/{len(steps)} (weight {c.weight}%, "
            f"window {m.window_seconds:.0f}s): {verdict.value}"
        )
        detail = _figures(results)
        req = next((r for r in results if r.gate == g.GATE_REQUESTS), None)
        if req is not None and req.verdict != "Successful":
            detail = f"{req.message}; {detail}"
        events.append(
            CanaryEvent(
                "Normal" if verdict is g.Verdict.SUCCESSFUL else "Warning",
                f"Analysis{verdict.value}",
                f"{head}: {detail}"[:1024],
            )
        )
        status = status.model_copy(
            update={"canary": c, "gates": results[:MAX_GATE_RESULTS], "message": head}
        )
        status = status.model_copy(
            update={"history": _with_history(status, now, gen, gates=results)}
        )
        lim = spec.rollout
        if c.failures > lim.failure_limit:
            failing = g.first_of(results, g.Verdict.FAILED)
            assert failing is not None
            return _rollback(
                spec,
                status,
                now,
                gen,
                REASON_GATE_FAILED,
                f"gate {failing.gate} failed: {failing.message} "
                f"(value {_fmt(failing.value)}, threshold {failing.threshold}); "
                f"{c.failures} failed analyses > failureLimit {lim.failure_limit}",
                results,
                replan=True,
                events=events,
                failing=[failing],
            )
        if c.consecutive_errors > lim.consecutive_error_limit:
            err = g.first_of(results, g.Verdict.ERROR)
            return _rollback(
                spec,
                status,
                now,
                gen,
                REASON_ERRORS,
                f"{c.consecutive_errors} consecutive measurement errors > "
                f"consecutiveErrorLimit {lim.consecutive_error_limit}: "
                f"{err.message if err else 'no answer'}",
                results,
                replan=False,
                events=events,
            )
        if c.inconclusives > lim.inconclusive_limit:
            inc = g.first_of(results, g.Verdict.INCONCLUSIVE)
            return _rollback(
                spec,
                status,
                now,
                gen,
                REASON_INCONCLUSIVE,
                f"{c.inconclusives} inconclusive analyses > inconclusiveLimit "
                f"{lim.inconclusive_limit} (never a pass): "
                f"{inc.message if inc else 'not enough data'}",
                results,
                replan=False,
                events=events,
            )

    # Step completion.
    step = steps[c.step]
    step_started = _parse_time(c.step_started_at) or now
    elapsed = (now - step_started).total_seconds()
    done = (
        elapsed + 1e-6 >= parse_duration(step.duration)
        and c.last_verdict == "Successful"
        and c.step_successes >= 1
    )
    if done and c.step + 1 < len(steps):
        nxt = steps[c.step + 1]
        c = c.model_copy(
            update={
                "step": c.step + 1,
                "weight": nxt.weight,
                "step_started_at": rfc3339(now),
                "step_successes": 0,
            }
        )
        msg = (
            f"step {c.step + 1} of {len(steps)}: {nxt.weight}% of traffic to the canary for "
            f"{nxt.duration} (step {c.step} passed: {_figures(results)})"
        )
        st = status.model_copy(
            update={
                "canary": c,
                "message": msg[:4096],
                "conditions": set_condition(
                    status.conditions,
                    ConditionType.CANARY_PROGRESSING,
                    "True",
                    "StepStarted",
                    msg,
                    now,
                    gen,
                ),
            }
        )
        events.append(CanaryEvent("Normal", "StepStarted", msg[:1024]))
        return CanaryDecision(
            status=st,
            actions=(SetWeight(nxt.weight),),
            events=tuple(events),
            requeue_after=parse_duration(spec.rollout.analysis_interval),
        )
    if done:
        if spec.rollout.promotion == "automatic":
            return _promote(
                spec,
                status.model_copy(update={"canary": c}),
                now,
                gen,
                "AllGatesPassed",
                f"all {len(steps)} steps passed their gates: {_figures(results)}",
                events=events,
            )
        msg = (
            f"all {len(steps)} steps passed; waiting for the {ANNOTATION_PROMOTE} annotation "
            f"(promotion: manual). Last figures: {_figures(results)}"
        )
        st = status.model_copy(
            update={
                "canary": c,
                "message": msg[:4096],
                "conditions": set_condition(
                    status.conditions,
                    ConditionType.PROMOTED,
                    "False",
                    "AwaitingPromotion",
                    msg,
                    now,
                    gen,
                ),
            }
        )
        return CanaryDecision(status=st, events=tuple(events), requeue_after=PAUSED_POLL_SECONDS)

    st = status.model_copy(update={"canary": c})
    wait = _seconds_until_next(spec, c, now)
    remaining = parse_duration(step.duration) - elapsed
    if remaining > 0:
        wait = min(wait, max(1.0, remaining))
    return CanaryDecision(status=st, events=tuple(events), requeue_after=wait)


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}"


def client_model_names(spec: QuantizedModelSpec, name: str) -> tuple[str, ...]:
    """Model names clients of the shared Service or route send (public, then stable's)."""
    names = [served_model_name(spec, name)]
    stable = stable_model_name(spec, name)
    if stable is not None and stable not in names:
        names.append(stable)
    return tuple(names)


def _ensure(spec: QuantizedModelSpec, status: QuantizedModelStatus, name: str) -> EnsureCanary:
    return EnsureCanary(
        served_model_name=canary_model_name(spec, name),
        artifact_uri=status.artifact_uri,
        attempt=status.attempt,
        aliases=client_model_names(spec, name),
    )


def _start(
    spec: QuantizedModelSpec,
    status: QuantizedModelStatus,
    obs: Observation,
    now: datetime,
) -> CanaryDecision:
    gen = obs.generation
    acc = status.accuracy
    if acc is not None and acc.passed is None:
        # The quantization machine stores the figures; the gate is judged here.
        verdict = g.evaluate_accuracy_summary(spec.gates.accuracy, acc)
        acc = verdict.summary
        status = status.model_copy(update={"accuracy": acc})
    if acc is None or acc.passed is None:
        return _rollback(
            spec,
            status,
            now,
            gen,
            REASON_ACCURACY_UNMEASURED,
            "no accuracy result for this attempt; the accuracy gate cannot pass unmeasured",
            [],
            replan=False,
            had_traffic=False,
        )
    if not acc.passed:
        checks = "; ".join(acc.failed_checks) or "accuracy gate failed"
        failed = [
            GateResult(
                gate="accuracy",
                verdict="Failed",
                value=acc.perplexity_increase_percent,
                threshold=f"<= {spec.gates.accuracy.max_perplexity_increase_percent}%",
                message=checks[:1024],
            )
        ]
        return _rollback(
            spec,
            status,
            now,
            gen,
            REASON_ACCURACY,
            f"accuracy gate failed before any traffic moved: {checks}",
            failed,
            replan=True,
            had_traffic=False,
            failing=failed,
        )
    if _request_active(obs.annotations.get(ANNOTATION_ABORT), None) and (
        obs.annotations.get(ANNOTATION_ABORT, "").strip().lower() in ("true", "yes", "1")
    ):
        return _rollback(
            spec,
            status,
            now,
            gen,
            REASON_ABORTED,
            f"aborted by the {ANNOTATION_ABORT} annotation before the canary started",
            [],
            replan=False,
            had_traffic=False,
        )
    c = CanaryStatus(step=0, weight=0, started_at=rfc3339(now))
    msg = (
        f"accuracy gate passed; starting canary {canary_model_name(spec, obs.name)} "
        f"({len(spec.rollout.steps)} steps: "
        + ", ".join(f"{s.weight}%/{s.duration}" for s in spec.rollout.steps)
        + ")"
    )
    conds = set_condition(
        status.conditions,
        ConditionType.CANARY_PROGRESSING,
        "True",
        "CanaryStarting",
        msg,
        now,
        gen,
    )
    conds = set_condition(conds, ConditionType.READY, "False", "CanaryProgressing", msg, now, gen)
    st = status.model_copy(
        update={"phase": Phase.CANARY, "canary": c, "message": msg, "conditions": conds}
    )
    st = st.model_copy(update={"history": _with_history(st, now, gen)})
    return CanaryDecision(
        status=st,
        actions=(_ensure(spec, status, obs.name),),
        events=(CanaryEvent("Normal", "CanaryStarted", msg),),
        requeue_after=POLL_SECONDS,
    )


def _promote(  # noqa: PLR0917
    spec: QuantizedModelSpec,
    status: QuantizedModelStatus,
    now: datetime,
    gen: int | None,
    reason: str,
    message: str,
    events: Sequence[CanaryEvent] = (),
) -> CanaryDecision:
    strategy = spec.rollout.promotion_strategy
    actions: tuple[Action, ...]
    c = _canary(status)
    if strategy == "UpdateStable":
        actions = (PromoteStable("UpdateStable", status.artifact_uri), SetWeight(0), RemoveCanary())
        c = c.model_copy(update={"weight": 0, "paused_at": None})
    else:
        actions = (SetWeight(100), PromoteStable("ShiftRoute", status.artifact_uri))
        c = c.model_copy(update={"weight": 100, "paused_at": None})
    msg = f"promoted ({strategy}): {message}"[:4096]
    conds = set_condition(status.conditions, ConditionType.PROMOTED, "True", reason, msg, now, gen)
    conds = set_condition(
        conds, ConditionType.CANARY_PROGRESSING, "False", "Promoted", msg, now, gen
    )
    conds = set_condition(conds, ConditionType.ROLLED_BACK, "False", "Promoted", msg, now, gen)
    conds = set_condition(conds, ConditionType.READY, "True", "Promoted", msg, now, gen)
    st = status.model_copy(
        update={"phase": Phase.PROMOTED, "canary": c, "message": msg, "conditions": conds}
    )
    st = st.model_copy(
        update={
            "history": _with_history(
                st, now, gen, outcome="Promoted", reason=msg, gates=status.gates
            )
        }
    )
    return CanaryDecision(
        status=st,
        actions=actions,
        events=(*events, CanaryEvent("Normal", "Promoted", msg[:1024])),
        requeue_after=None,
    )


def _rollback(  # noqa: PLR0917
    spec: QuantizedModelSpec,
    status: QuantizedModelStatus,
    now: datetime,
    gen: int | None,
    reason: str,
    message: str,
    results: Sequence[GateResult],
    *,
    replan: bool,
    had_traffic: bool = True,
    events: Sequence[CanaryEvent] = (),
    failing: Sequence[GateResult] = (),
) -> CanaryDecision:
    actions: list[Action] = [SetWeight(0), RemoveCanary()] if had_traffic else []
    rp = spec.rollout.replan
    again = replan and reason in _REPLANNABLE and rp.enabled and status.attempt < rp.max_attempts
    msg = f"rolled back: {message}"
    if replan and reason in _REPLANNABLE and rp.enabled and not again:
        msg += f"; no re-plan left (attempt {status.attempt} of {rp.max_attempts})"
    if again:
        msg += (
            f"; re-planning more conservatively as attempt {status.attempt + 1} of "
            f"{rp.max_attempts}"
        )
    msg = msg[:4096]
    c = status.canary.model_copy(update={"weight": 0, "paused_at": None}) if status.canary else None
    conds = set_condition(
        status.conditions, ConditionType.ROLLED_BACK, "True", reason, msg, now, gen
    )
    conds = set_condition(conds, ConditionType.CANARY_PROGRESSING, "False", reason, msg, now, gen)
    conds = set_condition(conds, ConditionType.PROMOTED, "False", reason, msg, now, gen)
    conds = set_condition(
        conds, ConditionType.READY, "False", "Replanning" if again else reason, msg, now, gen
    )
    kept = list(results) if results else list(status.gates)
    st = status.model_copy(
        update={
            "phase": Phase.ROLLED_BACK,
            "canary": c,
            "message": msg,
            "conditions": conds,
            "gates": kept[:MAX_GATE_RESULTS],
        }
    )
    st = st.model_copy(
        update={
            "history": _with_history(st, now, gen, outcome="RolledBack", reason=msg, gates=kept)
        }
    )
    evs = [*events, CanaryEvent("Warning", "RolledBack", msg[:1024])]
    if again:
        nxt = status.attempt + 1
        history = [
            *st.history,
            Attempt(
                attempt=nxt,
                generation=gen or status.observed_generation or 0,
                started_at=rfc3339(now),
                reason=f"re-plan after: {message}"[:1024],
            ),
        ][-MAX_HISTORY:]
        st = st.model_copy(
            update={
                "phase": Phase.PLANNING,
                "attempt": nxt,
                "history": history,
                "canary": None,
                "accuracy": None,
            }
        )
        actions.append(StartReplan(attempt=nxt, reason=message[:1024], failed_gates=tuple(failing)))
        evs.append(
            CanaryEvent(
                "Normal",
                "Replanning",
                f"attempt {nxt} of {rp.max_attempts}: raising the most sensitive groups toward "
                f"16-bit within {100 * rp.max_budget_increase_fraction:.0f}% budget headroom",
            )
        )
    return CanaryDecision(
        status=st,
        actions=tuple(actions),
        events=tuple(evs),
        requeue_after=None if not again else 1.0,
    )


# ---------------------------------------------------------------- re-plan


def _format_bytes(plan_result: PlanResult, sens: SensitivityResult) -> dict[str, dict[Format, int]]:
    from samp_core.planner import group_bytes

    return {
        grp.name: {
            f: group_bytes(grp, f, plan_result.group_size)
            for f in [*sens.scores.get(grp.name, {}), Format.BF16, Format.FP16]
        }
        for grp in sens.groups
    }


def replan_ceiling(
    previous: PlanResult, quantization: QuantizationSpec, replan: ReplanSpec, attempt: int
) -> tuple[int, int]:
    """(base budget bytes, ceiling for ``attempt``): the headroom opens linearly with attempts,
    reaching ``maxBudgetIncreaseFraction`` at the last attempt."""
    b = quantization.budget
    base = PlanBudget(
        max_weight_bytes=b.max_bytes(),
        fraction_of_16bit=b.fraction_of_16bit,
        effective_bits=b.effective_bits,
    ).resolve(previous.bytes_16bit, previous.num_params)
    span = max(1, replan.max_attempts - 1)
    share = min(1.0, max(0, attempt - 1) / span)
    return base, math.floor(base * (1.0 + replan.max_budget_increase_fraction * share))


def conservative_plan(  # noqa: PLR0917
    previous: PlanResult,
    sensitivity: SensitivityResult,
    profile: HardwareProfile,
    quantization: QuantizationSpec,
    replan: ReplanSpec,
    attempt: int,
) -> PlanResult | None:
    """A plan that raises the most sensitive groups of ``previous`` toward 16-bit.

    Groups the previous plan chose freely (not pinned, overridden or kept 16-bit)
    are taken in order of their current sensitivity score, highest first; each is
    raised one step: to the cheapest format with more bytes and a lower score that
    the spec allows and the profile serves (16-bit is always a step). A raise is
    taken while the total stays within this attempt's ceiling
    (:func:`replan_ceiling`). Nothing else changes, so the new plan differs from
    the failed one only where it is more precise. Returns None when no group can
    be raised within the headroom (the caller stops re-planning). The result is
    solved by the exact planner with every group pinned, so its accounting is the
    planner's own.
    """
    base, ceiling = replan_ceiling(previous, quantization, replan, attempt)
    sizes = _format_bytes(previous, sensitivity)
    allowed = set(quantization.allowed_formats)
    sixteen = next((a.format for a in previous.assignments if a.format.is_unquantized), Format.BF16)
    chosen: dict[str, Format] = {a.group: a.format for a in previous.assignments}
    total = previous.total_bytes
    notes: list[str] = []
    order = sorted(
        (
            a
            for a in previous.assignments
            if (a.pinned_by is None or a.pinned_by.startswith("replan"))
            and not a.format.is_unquantized
        ),
        key=lambda a: a.score,
        reverse=True,
    )
    for a in order:
        scores = sensitivity.scores.get(a.group, {})
        here = sizes[a.group]
        options: list[tuple[int, float, Format]] = []
        for f, s in scores.items():
            if f.is_unquantized or f not in allowed or not math.isfinite(s):
                continue
            sup = profile.support(f)
            if not sup.servable or (not sup.native and not quantization.allow_non_native_formats):
                continue
            if here[f] > here[a.format] and max(0.0, s) < a.score:
                options.append((here[f], max(0.0, s), f))
        options.append((here[sixteen], 0.0, sixteen))
        size, score, fmt = min(options, key=lambda o: (o[0], o[1]))
        delta = size - here[a.format]
        if total + delta <= ceiling:
            chosen[a.group] = fmt
            total += delta
            notes.append(
                f"attempt {attempt}: {a.group} {a.format.value} -> {fmt.value} "
                f"(score {a.score:.3g} -> {score:.3g}, +{delta} bytes)"
            )
    if not notes:
        return None
    request = PlanRequest(
        groups=sensitivity.groups,
        scores=sensitivity.scores,
        profile=profile,
        budget=PlanBudget(max_weight_bytes=max(ceiling, total)),
        allowed_formats=sorted(set(chosen.values()), key=list(Format).index),
        pins=chosen,
        keep_lm_head_16bit=False,
        export_format=previous.export_format,
        allow_non_native=True,
        group_size=previous.group_size,
        curve_points=0,
    )
    result = plan(request)
    # Pins were only the means: keep the user's pins visible as such, mark the raises.
    was = {a.group: a for a in previous.assignments}
    assignments = [
        a.model_copy(
            update={
                "pinned_by": was[a.group].pinned_by
                if a.format == was[a.group].format
                else f"replan:{attempt}"
            }
        )
        for a in result.assignments
    ]
    return result.model_copy(
        update={
            "assignments": assignments,
            "pins_applied": previous.pins_applied,
            "inputs_hash": inputs_hash(previous=previous.inputs_hash, attempt=attempt, pins=chosen),
            "warnings": [
                *notes,
                f"re-plan attempt {attempt}: {total} bytes, base budget {base}, "
                f"ceiling {ceiling} (+{100 * (ceiling / base - 1):.1f}%)",
            ],
        }
    )
