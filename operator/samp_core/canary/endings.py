"""How a canary ends: promotion, or rollback (and the re-plan it may open). Pure, no I/O.

* **Promotion** — UpdateStable: ``PromoteStable`` (stable Deployment switches to the
  artifact), ``SetWeight(0)``, ``RemoveCanary``; ShiftRoute: ``SetWeight(100)``,
  ``PromoteStable``. Condition Promoted carries the measured figures.
* **Rollback** — ``SetWeight(0)``, ``RemoveCanary`` (nothing when no traffic moved yet);
  condition RolledBack names the failing gate, its value and threshold. When a gate
  *failed* (accuracy, latency, errors or a custom query — not no-traffic, measurement
  errors, deadline or abort) and ``spec.rollout.replan`` allows another attempt, the
  decision also carries ``StartReplan`` and the status already opens the next attempt
  (phase Planning, ``attempt + 1``, a new history entry): the quantization machine's next
  pass runs that attempt's plan Job (samp_core.replan).
"""

from __future__ import annotations

from collections.abc import Sequence

from samp_core import history
from samp_core.canary.model import (
    ACTIVE_PHASES,
    REPLANNABLE,
    Turn,
    canary_of,
)
from samp_core.decision import (
    CanaryAction,
    Decision,
    PromoteStable,
    RemoveCanary,
    SetWeight,
    StartReplan,
)
from samp_core.events import Event
from samp_core.spec import QuantizedModelSpec
from samp_core.status import (
    MAX_GATE_RESULTS,
    ConditionType,
    GateResult,
    Phase,
    QuantizedModelStatus,
)

__all__ = ["promote", "rollback", "settle"]


def _promotion_actions(strategy: str, artifact_uri: str | None) -> tuple[CanaryAction, ...]:
    if strategy == "UpdateStable":
        return (PromoteStable("UpdateStable", artifact_uri), SetWeight(0), RemoveCanary())
    return (SetWeight(100), PromoteStable("ShiftRoute", artifact_uri))


def settle(spec: QuantizedModelSpec, status: QuantizedModelStatus) -> tuple[CanaryAction, ...]:
    """What serving and traffic must look like for a status the canary no longer drives.

    The operator writes a decision's status first and acts after; when acting fails (or
    the operator stops in between) the written status is the truth, and these actions,
    applied while a canary still exists, make the world match it: a promotion's actions
    for Promoted; otherwise weight 0 and no canary — after a rollback, during a re-plan,
    and when a spec change re-runs the stages under a running canary (its traffic is no
    longer analysed, and the next attempt must start a fresh canary, not adopt it).
    Empty for the phases the machine drives, and once the current attempt was promoted
    (a ShiftRoute canary is then the serving target)."""
    if status.phase in ACTIVE_PHASES:
        return ()
    if status.phase is Phase.PROMOTED:
        return _promotion_actions(spec.rollout.promotion_strategy, status.artifact_uri)
    if any(a.attempt == status.attempt and a.outcome == "Promoted" for a in status.history):
        return ()
    return (SetWeight(0), RemoveCanary())


def promote(
    t: Turn,
    status: QuantizedModelStatus,
    reason: str,
    message: str,
    events: Sequence[Event] = (),
) -> Decision:
    """Promoted: the artifact becomes the stable serving target."""
    strategy = t.spec.rollout.promotion_strategy
    actions = _promotion_actions(strategy, status.artifact_uri)
    weight = 0 if strategy == "UpdateStable" else 100
    c = canary_of(status).model_copy(update={"weight": weight, "paused_at": None})
    msg = f"promoted ({strategy}): {message}"[:4096]
    conds = t.condition(status.conditions, ConditionType.PROMOTED, "True", reason, msg)
    conds = t.condition(conds, ConditionType.CANARY_PROGRESSING, "False", "Promoted", msg)
    conds = t.condition(conds, ConditionType.ROLLED_BACK, "False", "Promoted", msg)
    conds = t.condition(conds, ConditionType.READY, "True", "Promoted", msg)
    st = status.model_copy(
        update={"phase": Phase.PROMOTED, "canary": c, "message": msg, "conditions": conds}
    )
    st = history.record(st, t.now, t.generation, outcome="Promoted", reason=msg,
                        gates=status.gates)
    return Decision(
        status=st,
        actions=actions,
        events=(*events, Event("Normal", "Promoted", msg[:1024])),
        requeue_after=None,
    )


def _rollback_message(t: Turn, status: QuantizedModelStatus, message: str,
                      replannable: bool) -> tuple[str, bool]:
    """(condition message, whether a re-plan follows)."""
    rp = t.spec.rollout.replan
    again = replannable and rp.enabled and status.attempt < rp.max_attempts
    msg = f"rolled back: {message}"
    if replannable and rp.enabled and not again:
        msg += f"; no re-plan left (attempt {status.attempt} of {rp.max_attempts})"
    if again:
        msg += (
            f"; re-planning more conservatively as attempt {status.attempt + 1} of "
            f"{rp.max_attempts}"
        )
    return msg[:4096], again


def rollback(
    t: Turn,
    status: QuantizedModelStatus,
    reason: str,
    message: str,
    results: Sequence[GateResult],
    *,
    replan: bool,
    had_traffic: bool = True,
    events: Sequence[Event] = (),
    failing: Sequence[GateResult] = (),
) -> Decision:
    """RolledBack for ``reason``; with ``replan`` (a gate failed), attempt n+1 may open."""
    actions: list[CanaryAction] = [SetWeight(0), RemoveCanary()] if had_traffic else []
    msg, again = _rollback_message(t, status, message, replan and reason in REPLANNABLE)
    c = status.canary.model_copy(update={"weight": 0, "paused_at": None}) if status.canary else None
    conds = t.condition(status.conditions, ConditionType.ROLLED_BACK, "True", reason, msg)
    conds = t.condition(conds, ConditionType.CANARY_PROGRESSING, "False", reason, msg)
    conds = t.condition(conds, ConditionType.PROMOTED, "False", reason, msg)
    conds = t.condition(
        conds, ConditionType.READY, "False", "Replanning" if again else reason, msg
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
    st = history.record(st, t.now, t.generation, outcome="RolledBack", reason=msg, gates=kept)
    evs = [*events, Event("Warning", "RolledBack", msg[:1024])]
    if not again:
        return Decision(status=st, actions=tuple(actions), events=tuple(evs))
    st, start = _open_replan(t, status, st, message, failing)
    rp = t.spec.rollout.replan
    evs.append(
        Event(
            "Normal",
            "Replanning",
            f"attempt {start.attempt} of {rp.max_attempts}: raising the most sensitive groups "
            f"toward 16-bit within {100 * rp.max_budget_increase_fraction:.0f}% budget headroom",
        )
    )
    return Decision(
        status=st, actions=(*actions, start), events=tuple(evs), requeue_after=1.0
    )


def _open_replan(
    t: Turn,
    before: QuantizedModelStatus,
    rolled_back: QuantizedModelStatus,
    message: str,
    failing: Sequence[GateResult],
) -> tuple[QuantizedModelStatus, StartReplan]:
    """The status of attempt n+1 (phase Planning) and the action that starts it."""
    nxt = before.attempt + 1
    entries = history.open_next(
        rolled_back, nxt, t.generation, t.now, f"re-plan after: {message}"
    )
    st = rolled_back.model_copy(
        update={
            "phase": Phase.PLANNING,
            "attempt": nxt,
            "history": entries,
            "canary": None,
            "accuracy": None,
        }
    )
    return st, StartReplan(attempt=nxt, reason=message[:1024], failed_gates=tuple(failing))
