"""What the quantization machine sees (``ObservedJob``), the :class:`Draft` it builds its
Decision (samp_core.decision) in, and the small status helpers every part of it shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from samp_core.api import QuantizedModel
from samp_core.conditions import with_condition
from samp_core.decision import Action, CreateChild, Decision, DeleteChild, Facts
from samp_core.events import Event
from samp_core.status import Condition, QuantizedModelStatus

MESSAGE_MAX = 900

JobState = Literal["Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class ObservedJob:
    """A stage Job as the adapter saw it, with what its pods left behind."""

    name: str
    stage: str
    inputs_hash: str
    generation: int
    state: JobState
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failed_pods: int = 0
    reason: str = ""  # Job failure reason (BackoffLimitExceeded, DeadlineExceeded, ...)
    message: str = ""  # Job failure message, or the last failed pod's termination message
    result: str | None = None  # termination message of the succeeded pod (result summary)
    deleting: bool = False


@dataclass
class Draft:
    """The decision while the machine builds it: the status being written, the actions
    and Events in the order they arise, and the facts gathered on the way.
    :meth:`decision` freezes it into the :class:`~samp_core.decision.Decision` it returns."""

    status: QuantizedModelStatus
    resource: QuantizedModel | None = None
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    quantized: bool = False
    stage_durations: list[tuple[str, float]] = field(default_factory=list)
    job_failures: list[tuple[str, str]] = field(default_factory=list)

    def create(self, manifest: Mapping[str, Any]) -> None:
        self.actions.append(CreateChild(manifest))

    def delete(self, kind: Literal["Job", "ConfigMap"], name: str) -> None:
        self.actions.append(DeleteChild(kind, name))

    def decision(self) -> Decision:
        return Decision(
            status=self.status,
            actions=tuple(self.actions),
            events=tuple(self.events),
            requeue_after=self.requeue_after,
            facts=Facts(
                resource=self.resource,
                quantized=self.quantized,
                stage_durations=tuple(self.stage_durations),
                job_failures=tuple(self.job_failures),
            ),
        )


def clip(text: str, limit: int = MESSAGE_MAX) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_status(raw: Any) -> QuantizedModelStatus:
    """The stored status, or a fresh one when absent or unreadable (never raises)."""
    if not isinstance(raw, Mapping):
        return QuantizedModelStatus()
    try:
        return QuantizedModelStatus.model_validate(dict(raw))
    except ValidationError:
        known = {k: v for k, v in raw.items() if k in ("conditions", "stages", "history")}
        try:
            return QuantizedModelStatus.model_validate(known)
        except ValidationError:
            return QuantizedModelStatus()


def put_condition(  # noqa: PLR0917 (mirrors samp_core.conditions.with_condition)
    conditions: list[Condition],
    ctype: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> None:
    """In place, for the status being built: with_condition with the message clipped."""
    conditions[:] = with_condition(conditions, ctype, status, reason, clip(message), now,
                                   generation)


def condition(status: QuantizedModelStatus, ctype: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == ctype), None)
