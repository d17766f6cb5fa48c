"""``status.history``: one entry per attempt, written only here. Pure, no I/O.

An attempt is one quantize → evaluate → canary pass; a re-plan opens the next one. Both
machines write through these functions: the canary machine records what the canary
measured and how it ended (:func:`record`, :func:`open_next`), the quantization
machine keeps the current entry's inputs hash and ends it when a stage fails
(:func:`note_stages`). The list is bounded by ``MAX_HISTORY``, oldest dropped first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from samp_core.conditions import rfc3339
from samp_core.status import (
    MAX_GATE_RESULTS,
    MAX_HISTORY,
    Attempt,
    GateResult,
    QuantizedModelStatus,
)

__all__ = ["note_stages", "open_next", "record"]

REASON_LIMIT = 1024  # Attempt.reason maxLength


def _current_entry(status: QuantizedModelStatus, generation: int | None, now: datetime) -> Attempt:
    return Attempt(
        attempt=status.attempt,
        generation=generation or status.observed_generation or 0,
        inputs_hash=status.inputs_hash or "",
        started_at=rfc3339(now),
        plan=status.plan,
        artifact_uri=status.artifact_uri or "",
        accuracy=status.accuracy,
    )


def record(
    status: QuantizedModelStatus,
    now: datetime,
    generation: int | None,
    *,
    outcome: str | None = None,
    reason: str | None = None,
    gates: Sequence[GateResult] | None = None,
) -> QuantizedModelStatus:
    """``status`` with the current attempt's entry updated (created if missing).

    The entry takes the plan, accuracy and artifact of the status when it has none yet
    (a re-plan's entry opens before its plan and export exist); ``outcome`` ends it.
    """
    history = list(status.history)
    idx = next((i for i, a in enumerate(history) if a.attempt == status.attempt), None)
    if idx is None:
        history.append(_current_entry(status, generation, now))
        idx = len(history) - 1
    a = history[idx]
    update: dict[str, object] = {}
    if outcome is not None:
        update["outcome"] = outcome
        update["finished_at"] = rfc3339(now)
    if reason is not None:
        update["reason"] = reason[:REASON_LIMIT]
    if gates is not None:
        update["gates"] = list(gates)[:MAX_GATE_RESULTS]
    if a.plan is None and status.plan is not None:
        update["plan"] = status.plan
    if a.accuracy is None and status.accuracy is not None:
        update["accuracy"] = status.accuracy
    if not a.artifact_uri and status.artifact_uri:
        update["artifact_uri"] = status.artifact_uri
    history[idx] = a.model_copy(update=update)
    return status.model_copy(update={"history": history[-MAX_HISTORY:]})


def open_next(
    status: QuantizedModelStatus, attempt: int, generation: int | None, now: datetime, reason: str
) -> list[Attempt]:
    """History with a new Running entry for ``attempt`` (a re-plan) appended."""
    entry = Attempt(
        attempt=attempt,
        generation=generation or status.observed_generation or 0,
        started_at=rfc3339(now),
        reason=reason[:REASON_LIMIT],
    )
    return [*status.history, entry][-MAX_HISTORY:]


def note_stages(status: QuantizedModelStatus, failure: str | None, now: datetime) -> None:
    """Keep the current attempt's entry (opened by a re-plan) honest, in place: its inputs
    hash is this attempt's, and ``failure`` (a stage failed: why) ends it as Failed."""
    for i, entry in enumerate(status.history):
        if entry.attempt != status.attempt:
            continue
        update: dict[str, object] = {}
        if not entry.inputs_hash and status.inputs_hash:
            update["inputs_hash"] = status.inputs_hash
        mine = (update.get("inputs_hash") or entry.inputs_hash) == status.inputs_hash
        if failure is not None and mine and entry.outcome == "Running":
            update.update(outcome="Failed", finished_at=rfc3339(now),
                          reason=failure[:REASON_LIMIT])
        if update:
            status.history[i] = entry.model_copy(update=update)
