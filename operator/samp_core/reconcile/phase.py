"""Conditions and phase from where the walk stopped: Calibrated, Quantized and Evaluated
per stage group, then phase and Ready (failed, suspended, a stage running, handed to the
canary, or Evaluated)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from samp_core.events import Event
from samp_core.reconcile.draft import Draft, clip, put_condition
from samp_core.reconcile.stages import Stop
from samp_core.results import Stage
from samp_core.stage_layout import STAGE_PHASE, STAGES
from samp_core.status import ConditionType, Phase, QuantizedModelStatus

CANARY_PHASES = frozenset({Phase.CANARY, Phase.PAUSED, Phase.PROMOTED, Phase.ROLLED_BACK})
_QUANTIZE_STAGES = (Stage.SENSITIVITY, Stage.PLAN, Stage.EXPORT)
_CANARY_CONDITIONS = (
    ConditionType.CANARY_PROGRESSING, ConditionType.PROMOTED, ConditionType.ROLLED_BACK,
)


@dataclass(frozen=True)
class Outcome:
    """The walk's result as the conditions need it."""

    stop: Stop
    suspended: bool
    generation: int
    now: datetime


def done_stages(status: QuantizedModelStatus) -> set[str]:
    return {r.stage for r in status.stages if r.state in ("Succeeded", "Reused")}


def set_conditions(
    status: QuantizedModelStatus, old: QuantizedModelStatus, draft: Draft, o: Outcome
) -> None:
    """Stage conditions, then phase and Ready, on ``status`` (the draft's)."""
    _stage_conditions(status, o)
    all_done = all(s.value in done_stages(status) for s in STAGES)
    canary_owns = old.phase in CANARY_PHASES and all_done
    _phase_and_ready(status, old, draft, o, all_done=all_done, canary_owns=canary_owns)
    if canary_owns:
        draft.quantized = True
    if not all_done and old.phase in CANARY_PHASES:
        # A spec change reran a stage under a canary: its conditions describe old figures.
        status.conditions = [c for c in status.conditions if c.type not in _CANARY_CONDITIONS]


def _stage_conditions(status: QuantizedModelStatus, o: Outcome) -> None:
    done = done_stages(status)
    active, failed = o.stop.active, o.stop.failed

    def stage_condition(ctype: ConditionType, stages: Sequence[Stage], true_reason: str,
                        true_message: str) -> None:
        conds, now, gen = status.conditions, o.now, o.generation
        if all(s.value in done for s in stages):
            put_condition(conds, ctype, "True", true_reason, true_message, now, gen)
        elif failed is not None and failed.stage in stages:
            put_condition(conds, ctype, "False", failed.reason, failed.message, now, gen)
        elif active is not None and active in stages:
            put_condition(conds, ctype, "Unknown", "InProgress",
                          f"{active.value} is running", now, gen)
        else:
            put_condition(conds, ctype, "Unknown", "Pending", "waiting for earlier stages",
                          now, gen)

    stage_condition(ConditionType.CALIBRATED, (Stage.CALIBRATE,), "Calibrated",
                    next((r.message for r in status.stages if r.stage == "calibrate"), ""))
    stage_condition(ConditionType.QUANTIZED, _QUANTIZE_STAGES, "Exported",
                    f"checkpoint at {status.artifact_uri}")
    acc = status.accuracy
    stage_condition(ConditionType.EVALUATED, (Stage.EVALUATE,), "Evaluated",
                    f"perplexity +{acc.perplexity_increase_percent}%" if acc else "evaluated")


def _phase_and_ready(
    status: QuantizedModelStatus, old: QuantizedModelStatus, draft: Draft, o: Outcome,
    *, all_done: bool, canary_owns: bool,
) -> None:
    conds, now, gen = status.conditions, o.now, o.generation
    active, failed = o.stop.active, o.stop.failed
    if failed is not None:
        status.phase = Phase.FAILED
        status.message = f"{failed.stage.value} failed: {failed.message}"
        put_condition(conds, ConditionType.READY, "False", failed.reason, status.message, now,
                      gen)
    elif o.suspended and not all_done:
        status.phase = Phase.SUSPENDED
        status.message = "suspended (spec.suspend): no new Jobs are created"
        put_condition(conds, ConditionType.READY, "False", "Suspended", status.message, now, gen)
        if old.phase != Phase.SUSPENDED:
            draft.events.append(Event("Normal", "Suspended", status.message))
    elif active is not None:
        status.phase = STAGE_PHASE[active]
        status.message = f"{active.value}: " + next(
            (r.message for r in status.stages if r.stage == active.value), "")
        put_condition(conds, ConditionType.READY, "False", status.phase.value,
                      f"{active.value} stage in progress", now, gen)
    elif not canary_owns:  # once the canary owns phase and Ready, this machine leaves them
        _evaluated(status, old, draft, o)


def _evaluated(
    status: QuantizedModelStatus, old: QuantizedModelStatus, draft: Draft, o: Outcome
) -> None:
    """Every stage done and no canary yet: phase Evaluated, and the canary may start."""
    draft.quantized = True
    status.phase = Phase.EVALUATED
    acc = status.accuracy
    acc_text = (f"perplexity +{acc.perplexity_increase_percent}%"
                if acc and acc.perplexity_increase_percent is not None else "evaluated")
    status.message = f"quantized and evaluated: {acc_text}; checkpoint at {status.artifact_uri}"
    put_condition(status.conditions, ConditionType.READY, "True", "Evaluated", status.message,
                  o.now, o.generation)
    if old.phase != Phase.EVALUATED or old.observed_generation != o.generation:
        draft.events.append(Event("Normal", "Evaluated", clip(status.message)))
