"""The canary step machine: spec + status + observation + now in, decision out. Pure.

:func:`decide` handles phases Evaluated (accuracy gate, then start the canary),
CanaryProgressing and Paused; for any other phase it returns the status unchanged
with no actions. It never reads the clock and never raises on odd input. Each
transition is one small function below, tried in this order:

* **start** (Evaluated) — accuracy failed (or was never measured) → RolledBack before
  any traffic moves (re-plan if allowed); else phase CanaryProgressing and
  ``EnsureCanary`` (Deployment + Service serving the artifact as ``<name>-canary``).
* **abort / promote requests** — the ``samp.dev/abort`` and ``samp.dev/promote``
  annotations act once per value: a value not yet in ``status.handledRequests`` acts
  (any token, or an RFC 3339 time not before the canary's start; the CLI writes the
  current time) and is recorded there before anything acts, so the same value never
  acts again. Promote skips the remaining steps and gates, and says so.
* **pause / resume** — ``samp.dev/pause: "true"`` pauses while present (no analysis, no
  steps, deadline stopped); removing it resumes with every clock shifted by the pause.
* **progress deadline** — from canary start, paused time excluded: rolls back.
* **waiting for pods** — weight 0 until ``observation.canary_ready``; then
  ``SetWeight(steps[0].weight)`` and the step clock starts.
* **weight not in effect** — the router's read-back disagrees: set it again.
* **analysis** — when a measurement came (samp_core.canary.analysis): judged, counted,
  assessed against the limits; a breach rolls back.
* **step done** — the step's duration has elapsed and the latest analysis at this
  step was Successful; then the next weight, or at the last step promotion
  (automatic, or on the ``samp.dev/promote`` annotation when promotion is manual).

Annotations are metadata only, so GitOps sees no drift; the operator never writes spec.
Endings (promotion, rollback, re-plan) are in samp_core.canary.endings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from samp_core import gates as g
from samp_core import history
from samp_core.canary import analysis
from samp_core.canary.endings import promote, rollback
from samp_core.canary.model import (
    ACTIVE_PHASES,
    ANNOTATION_ABORT,
    ANNOTATION_PAUSE,
    ANNOTATION_PROMOTE,
    PAUSED_POLL_SECONDS,
    POLL_SECONDS,
    REASON_ABORTED,
    REASON_DEADLINE,
    Observation,
    Turn,
    canary_of,
    forget_withdrawn,
    mark_handled,
    new_request,
    parse_time,
    paused,
    request_active,
)
from samp_core.canary.start import ensure_action, start
from samp_core.conditions import rfc3339
from samp_core.decision import Decision, SetWeight
from samp_core.events import Event
from samp_core.spec import QuantizedModelSpec
from samp_core.status import (
    MAX_GATE_RESULTS,
    CanaryStatus,
    ConditionType,
    GateResult,
    Phase,
    QuantizedModelStatus,
)
from samp_core.units import parse_duration

__all__ = ["decide"]


def decide(
    spec: QuantizedModelSpec,
    status: QuantizedModelStatus,
    observation: Observation,
    now: datetime,
) -> Decision:
    """One step of the canary machine (see the module docstring)."""
    if status.phase not in ACTIVE_PHASES:
        return Decision(status=status)
    t = Turn(spec, observation, now)
    if status.phase is Phase.EVALUATED:
        return start(t, status)
    status, request = _requested(t, status)
    if request is not None:
        return request
    if paused(observation.annotations):
        return _pause(t, status)
    c = canary_of(status)
    run = _Running(status, c, parse_time(c.started_at) or now, tuple(status.gates))
    if status.phase is Phase.PAUSED or run.canary.paused_at is not None:
        run = _resume(t, run)
    return _progress(t, run)


@dataclass(frozen=True)
class _Running:
    """The status as the turn goes on: its canary part, when the canary started (paused
    time excluded), the latest gate results and the Events so far."""

    status: QuantizedModelStatus
    canary: CanaryStatus
    started: datetime
    results: tuple[GateResult, ...]
    events: tuple[Event, ...] = ()


# ------------------------------------------------------- requests and pause


def _requested(
    t: Turn, status: QuantizedModelStatus
) -> tuple[QuantizedModelStatus, Decision | None]:
    """Abort or promote by annotation, once per value and only for this canary.

    A value not handled yet is recorded in ``status.handledRequests`` whether it acts
    (a token, or a time since this canary started) or is set aside (an older time); the
    status holding the record is written before anything acts, so the same value never
    acts twice (``"true"`` left in place used to promote every later rollout)."""
    c = canary_of(status)
    started = parse_time(c.started_at) or t.now
    ann = t.observation.annotations
    status = forget_withdrawn(status, ann)
    abort = new_request(status, ann, ANNOTATION_ABORT)
    if abort is not None:
        status = mark_handled(status, ANNOTATION_ABORT, abort)
        if request_active(abort, started):
            return status, rollback(
                t, status, REASON_ABORTED, f"aborted by the {ANNOTATION_ABORT} annotation",
                [], replan=False,
            )
    value = new_request(status, ann, ANNOTATION_PROMOTE)
    if value is not None:
        status = mark_handled(status, ANNOTATION_PROMOTE, value)
        if request_active(value, started):
            return status, _promote_now(t, status, c)
    return status, None


def _promote_now(t: Turn, status: QuantizedModelStatus, c: CanaryStatus) -> Decision:
    steps = len(t.spec.rollout.steps)
    skipped = c.step < steps - 1 or c.last_verdict != "Successful"
    note = (
        f"promoted by the {ANNOTATION_PROMOTE} annotation at step {c.step + 1} of "
        f"{steps}, weight {c.weight}%"
        + ("; remaining steps and gates skipped" if skipped else "")
    )
    return promote(t, status, "ManualPromotion", note)


def _pause(t: Turn, status: QuantizedModelStatus) -> Decision:
    if status.phase is Phase.PAUSED:
        return Decision(status=status, requeue_after=PAUSED_POLL_SECONDS)
    c = canary_of(status)
    msg = (
        f"paused by the {ANNOTATION_PAUSE} annotation at step {c.step + 1}, weight "
        f"{c.weight}%; no analysis, no steps, deadline stopped"
    )
    st = status.model_copy(
        update={
            "phase": Phase.PAUSED,
            "canary": c.model_copy(update={"paused_at": rfc3339(t.now)}),
            "message": msg,
            "conditions": t.condition(
                status.conditions, ConditionType.CANARY_PROGRESSING, "Unknown", "Paused", msg
            ),
        }
    )
    return Decision(
        status=st, events=(Event("Normal", "Paused", msg),), requeue_after=PAUSED_POLL_SECONDS
    )


def _resume(t: Turn, run: _Running) -> _Running:
    """Back to CanaryProgressing, every clock shifted by the time spent paused."""
    c = run.canary
    shift = max(timedelta(0), t.now - (parse_time(c.paused_at) or t.now))
    step_started = parse_time(c.step_started_at)
    c = c.model_copy(
        update={
            "paused_at": None,
            "started_at": rfc3339(run.started + shift),
            "step_started_at": rfc3339(step_started + shift) if step_started else None,
            # The window after resuming must be a fresh one.
            "last_analysis_at": rfc3339(t.now) if parse_time(c.last_analysis_at) else None,
        }
    )
    msg = f"resumed after {shift.total_seconds():.0f}s paused"
    status = run.status.model_copy(
        update={
            "phase": Phase.CANARY,
            "canary": c,
            "message": msg,
            "conditions": t.condition(
                run.status.conditions, ConditionType.CANARY_PROGRESSING, "True", "Resumed", msg
            ),
        }
    )
    return _Running(status, c, run.started + shift, run.results,
                    (Event("Normal", "Resumed", msg),))


# ------------------------------------------------------------- progressing


def _progress(t: Turn, run: _Running) -> Decision:
    spec, c = t.spec, run.canary
    if (t.now - run.started).total_seconds() > parse_duration(spec.rollout.progress_deadline):
        return rollback(
            t, run.status, REASON_DEADLINE,
            f"the canary did not finish within progressDeadline {spec.rollout.progress_deadline} "
            f"(at step {c.step + 1} of {len(spec.rollout.steps)}, weight {c.weight}%)",
            list(run.status.gates), replan=False,
        )
    if c.weight == 0:
        return _first_step(t, run)
    if t.observation.weight_verified is False:
        msg = f"traffic weight {c.weight}% not in effect yet; setting it again"
        return Decision(
            status=run.status.model_copy(update={"canary": c, "message": msg}),
            actions=(SetWeight(c.weight),),
            events=run.events,
            requeue_after=POLL_SECONDS,
        )
    m = t.observation.measurement
    if m is not None:
        analysed = _analyse(t, run, m)
        if isinstance(analysed, Decision):
            return analysed
        run = analysed
    return _step(t, run)


def _first_step(t: Turn, run: _Running) -> Decision:
    """Traffic moves only once the canary pods are ready."""
    steps = t.spec.rollout.steps
    if not t.observation.canary_ready:
        msg = "waiting for the canary pods to become ready (readiness on /health)"
        return Decision(
            status=run.status.model_copy(update={"canary": run.canary, "message": msg}),
            actions=(ensure_action(t, run.status),),
            events=run.events,
            requeue_after=POLL_SECONDS,
        )
    w = steps[0].weight
    c = run.canary.model_copy(
        update={"step": 0, "weight": w, "step_started_at": rfc3339(t.now), "step_successes": 0}
    )
    msg = f"step 1 of {len(steps)}: {w}% of traffic to the canary for {steps[0].duration}"
    return _step_started(t, run, c, msg)


def _step_started(t: Turn, run: _Running, c: CanaryStatus, msg: str) -> Decision:
    st = run.status.model_copy(
        update={
            "canary": c,
            "message": msg[:4096],
            "conditions": t.condition(
                run.status.conditions, ConditionType.CANARY_PROGRESSING, "True", "StepStarted",
                msg,
            ),
        }
    )
    return Decision(
        status=st,
        actions=(SetWeight(c.weight),),
        events=(*run.events, Event("Normal", "StepStarted", msg[:1024])),
        requeue_after=parse_duration(t.spec.rollout.analysis_interval),
    )


def _analyse(t: Turn, run: _Running, m: g.Measurement) -> _Running | Decision:
    """Judge, count and assess one analysis; a rollback when a limit is exceeded."""
    results, verdict = analysis.judge(t.spec, run.canary, m)
    waiting = analysis.waiting_for_evidence(t.spec, m, results)
    c = analysis.count(run.canary, results, verdict, t.now, waiting=waiting)
    head, event = analysis.analysis_event(c, len(t.spec.rollout.steps), m, results, verdict)
    events = (*run.events, event)
    status = run.status.model_copy(
        update={"canary": c, "gates": results[:MAX_GATE_RESULTS], "message": head}
    )
    status = history.record(status, t.now, t.generation, gates=results)
    breach = analysis.assess(t.spec.rollout, c, results)
    if breach is not None:
        return rollback(
            t, status, breach.reason, breach.message, results,
            replan=breach.replan, events=events, failing=breach.failing,
        )
    return _Running(status, c, run.started, tuple(results), events)


def _step(t: Turn, run: _Running) -> Decision:
    """Next step, promotion, waiting for manual promotion, or the next look."""
    steps, c = t.spec.rollout.steps, run.canary
    step = steps[c.step]
    elapsed = (t.now - (parse_time(c.step_started_at) or t.now)).total_seconds()
    done = (
        elapsed + 1e-6 >= parse_duration(step.duration)
        and c.last_verdict == "Successful"
        and c.step_successes >= 1
    )
    passed = analysis.figures(run.results)
    if done and c.step + 1 < len(steps):
        nxt = steps[c.step + 1]
        c = c.model_copy(
            update={"step": c.step + 1, "weight": nxt.weight,
                    "step_started_at": rfc3339(t.now), "step_successes": 0}
        )
        msg = (
            f"step {c.step + 1} of {len(steps)}: {nxt.weight}% of traffic to the canary for "
            f"{nxt.duration} (step {c.step} passed: {passed})"
        )
        return _step_started(t, run, c, msg)
    if done and t.spec.rollout.promotion == "automatic":
        return promote(
            t, run.status.model_copy(update={"canary": c}), "AllGatesPassed",
            f"all {len(steps)} steps passed their gates: {passed}", events=run.events,
        )
    if done:
        return _await_promotion(t, run, passed)
    wait = analysis.seconds_until_next(t.spec, c, t.now)
    remaining = parse_duration(step.duration) - elapsed
    if remaining > 0:
        wait = min(wait, max(1.0, remaining))
    return Decision(
        status=run.status.model_copy(update={"canary": c}), events=run.events,
        requeue_after=wait,
    )


def _await_promotion(t: Turn, run: _Running, passed: str) -> Decision:
    msg = (
        f"all {len(t.spec.rollout.steps)} steps passed; waiting for the {ANNOTATION_PROMOTE} "
        f"annotation (promotion: manual). Last figures: {passed}"
    )
    st = run.status.model_copy(
        update={
            "canary": run.canary,
            "message": msg[:4096],
            "conditions": t.condition(
                run.status.conditions, ConditionType.PROMOTED, "False", "AwaitingPromotion", msg
            ),
        }
    )
    return Decision(status=st, events=run.events, requeue_after=PAUSED_POLL_SECONDS)
