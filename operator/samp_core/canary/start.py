"""The canary's first turn (phase Evaluated): judge the accuracy gate, then start. Pure.

Accuracy failed (or was never measured) → RolledBack before any traffic moves (re-plan
if allowed), as does a ``samp.dev/abort`` value not handled yet; else phase
CanaryProgressing and ``EnsureCanary`` (Deployment + Service serving the artifact as
``<name>-canary``, answering the names clients send too).
"""

from __future__ import annotations

from samp_core import gates as g
from samp_core import history
from samp_core.canary.endings import rollback
from samp_core.canary.model import (
    ANNOTATION_ABORT,
    ANNOTATION_PROMOTE,
    POLL_SECONDS,
    REASON_ABORTED,
    REASON_ACCURACY,
    REASON_ACCURACY_UNMEASURED,
    Turn,
    canary_model_name,
    client_model_names,
    forget_withdrawn,
    mark_handled,
    new_request,
    request_active,
)
from samp_core.conditions import rfc3339
from samp_core.decision import Decision, EnsureCanary
from samp_core.events import Event
from samp_core.status import CanaryStatus, ConditionType, GateResult, Phase, QuantizedModelStatus

__all__ = ["ensure_action", "start"]


def ensure_action(t: Turn, status: QuantizedModelStatus) -> EnsureCanary:
    return EnsureCanary(
        served_model_name=canary_model_name(t.spec, t.observation.name),
        artifact_uri=status.artifact_uri,
        attempt=status.attempt,
        aliases=client_model_names(t.spec, t.observation.name),
    )


def _requests_before_start(t: Turn, status: QuantizedModelStatus) -> QuantizedModelStatus:
    """A promote value present before the canary starts is set aside (recorded, never
    acted on): promotion is asked of a running canary, and a value left from an earlier
    rollout must not promote this one at its first turn."""
    ann = t.observation.annotations
    status = forget_withdrawn(status, ann)
    value = new_request(status, ann, ANNOTATION_PROMOTE)
    return status if value is None else mark_handled(status, ANNOTATION_PROMOTE, value)


def start(t: Turn, status: QuantizedModelStatus) -> Decision:
    status = _requests_before_start(t, status)
    acc = status.accuracy
    if acc is not None and acc.passed is None:
        # The quantization machine stores the figures; the gate is judged here.
        acc = g.evaluate_accuracy_summary(t.spec.gates.accuracy, acc).summary
        status = status.model_copy(update={"accuracy": acc})
    refused = _refuse_start(t, status)
    if refused is not None:
        return refused
    spec = t.spec
    c = CanaryStatus(step=0, weight=0, started_at=rfc3339(t.now))
    msg = (
        f"accuracy gate passed; starting canary {canary_model_name(spec, t.observation.name)} "
        f"({len(spec.rollout.steps)} steps: "
        + ", ".join(f"{s.weight}%/{s.duration}" for s in spec.rollout.steps)
        + ")"
    )
    conds = t.condition(
        status.conditions, ConditionType.CANARY_PROGRESSING, "True", "CanaryStarting", msg
    )
    conds = t.condition(conds, ConditionType.READY, "False", "CanaryProgressing", msg)
    st = status.model_copy(
        update={"phase": Phase.CANARY, "canary": c, "message": msg, "conditions": conds}
    )
    return Decision(
        status=history.record(st, t.now, t.generation),
        actions=(ensure_action(t, status),),
        events=(Event("Normal", "CanaryStarted", msg),),
        requeue_after=POLL_SECONDS,
    )


def _refuse_start(t: Turn, status: QuantizedModelStatus) -> Decision | None:
    """Rollback before any traffic moves: accuracy unmeasured or failed, or an abort."""
    acc = status.accuracy
    if acc is None or acc.passed is None:
        return rollback(
            t, status, REASON_ACCURACY_UNMEASURED,
            "no accuracy result for this attempt; the accuracy gate cannot pass unmeasured",
            [], replan=False, had_traffic=False,
        )
    if not acc.passed:
        checks = "; ".join(acc.failed_checks) or "accuracy gate failed"
        failed = [
            GateResult(
                gate="accuracy",
                verdict="Failed",
                value=acc.perplexity_increase_percent,
                threshold=f"<= {t.spec.gates.accuracy.max_perplexity_increase_percent}%",
                message=checks[:1024],
            )
        ]
        return rollback(
            t, status, REASON_ACCURACY,
            f"accuracy gate failed before any traffic moved: {checks}",
            failed, replan=True, had_traffic=False, failing=failed,
        )
    abort = new_request(status, t.observation.annotations, ANNOTATION_ABORT)
    if abort is not None and request_active(abort, None):
        status = mark_handled(status, ANNOTATION_ABORT, abort)
        return rollback(
            t, status, REASON_ABORTED,
            f"aborted by the {ANNOTATION_ABORT} annotation before the canary started",
            [], replan=False, had_traffic=False,
        )
    return None
