"""``samp.dev/retry``: start a RolledBack or Failed QuantizedModel over, once per value. Pure.

``kubectl samp retry NAME`` writes the current time to the annotation (metadata only, so
GitOps sees no drift). A value not yet in ``status.handledRequests.retry`` is recorded
there and, when the phase is one retry is for, acts once:

* **RolledBack** — the canary starts over from its first step with the same checkpoint:
  the phase goes back to Evaluated and the canary machine, in the same reconcile, judges
  the accuracy gate and starts the canary (Argo Rollouts' retry of an aborted rollout).
* **Failed** — the failed stage runs again: ``handledRequests.retriedAt`` is set, and a
  stage that failed before it no longer stops the walk; its Job is deleted and a new one
  of the same name created once the old one is gone.

In any other phase the value is only recorded (set aside), so a value written while a
rollout runs cannot restart it after it ends. The CLI refuses those phases up front.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from samp_core.canary.model import (
    ANNOTATION_RETRY,
    mark_handled,
    new_request,
    parse_time,
)
from samp_core.conditions import rfc3339
from samp_core.events import Event
from samp_core.status import ConditionType, HandledRequests, Phase, QuantizedModelStatus

RETRY_PHASES = (Phase.ROLLED_BACK, Phase.FAILED)
_CANARY_OUTCOMES = (ConditionType.ROLLED_BACK, ConditionType.PROMOTED)


def apply_retry(
    old: QuantizedModelStatus, annotations: Mapping[str, str], now: datetime
) -> tuple[QuantizedModelStatus, Event | None]:
    """The status the machine goes on from, and the Event when a retry acted."""
    if old.handled_requests is not None and old.handled_requests.retry is not None \
            and ANNOTATION_RETRY not in annotations:
        old = mark_handled(old, ANNOTATION_RETRY, None)  # withdrawn: the value may act again
    value = new_request(old, annotations, ANNOTATION_RETRY)
    if value is None:
        return old, None
    status = mark_handled(old, ANNOTATION_RETRY, value)
    if old.phase not in RETRY_PHASES:
        return status, None  # set aside: nothing to start over
    handled = (status.handled_requests or HandledRequests()).model_copy(
        update={"retried_at": rfc3339(now)})
    if old.phase is Phase.ROLLED_BACK:
        status = status.model_copy(update={
            "handled_requests": handled, "phase": Phase.EVALUATED, "canary": None,
            "conditions": [c for c in status.conditions if c.type not in _CANARY_OUTCOMES],
        })
        return status, Event("Normal", "RetryRequested",
                             f"retry ({ANNOTATION_RETRY}={value}): the canary starts over "
                             f"from step 1 with the checkpoint of attempt {old.attempt}")
    failed = [r.stage for r in old.stages if r.state == "Failed"]
    status = status.model_copy(update={"handled_requests": handled})
    return status, Event("Normal", "RetryRequested",
                         f"retry ({ANNOTATION_RETRY}={value}): running "
                         f"{', '.join(failed) or 'the failed stage'} again")


def retried_at(status: QuantizedModelStatus) -> datetime | None:
    """When a retry last acted (a stage that failed before it runs again)."""
    handled = status.handled_requests
    return parse_time(handled.retried_at) if handled and handled.retried_at else None
