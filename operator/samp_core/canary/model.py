"""What goes into the canary machine: names, annotations, observation, analysis request.

The operator (or the local demo) reads the world into an :class:`Observation`, measures
what an :class:`AnalysisRequest` asks for, and runs the actions of the
:class:`~samp_core.decision.Decision` that comes out, in order. Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from samp_core import gates as g
from samp_core.conditions import with_condition
from samp_core.spec import QuantizedModelSpec
from samp_core.status import (
    CanaryStatus,
    Condition,
    HandledRequests,
    Phase,
    QuantizedModelStatus,
)

ANNOTATION_PAUSE = "samp.dev/pause"
ANNOTATION_PROMOTE = "samp.dev/promote"
ANNOTATION_ABORT = "samp.dev/abort"
ANNOTATION_RETRY = "samp.dev/retry"

# How soon to look again while waiting on something the operator does (pods, weights).
POLL_SECONDS = 5.0
PAUSED_POLL_SECONDS = 30.0
ACTIVE_PHASES = (Phase.EVALUATED, Phase.CANARY, Phase.PAUSED)

# Rollback reasons; the first two are gates that measured and failed, which a more
# conservative plan can fix (the others cannot: no traffic, no answer, deadline, abort).
REASON_GATE_FAILED = "GateFailed"
REASON_ACCURACY = "AccuracyGateFailed"
REASON_ACCURACY_UNMEASURED = "AccuracyNotMeasured"
REASON_INCONCLUSIVE = "InconclusiveLimitExceeded"
REASON_ERRORS = "MeasurementErrorLimitExceeded"
REASON_DEADLINE = "ProgressDeadlineExceeded"
REASON_ABORTED = "Aborted"
REPLANNABLE = (REASON_GATE_FAILED, REASON_ACCURACY)


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


def client_model_names(spec: QuantizedModelSpec, name: str) -> tuple[str, ...]:
    """Model names clients of the shared Service or route send (public, then stable's)."""
    names = [served_model_name(spec, name)]
    stable = stable_model_name(spec, name)
    if stable is not None and stable not in names:
        names.append(stable)
    return tuple(names)


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
    analysis for :func:`~samp_core.canary.analysis.analysis_due`'s request, when one
    was due.
    """

    name: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    canary_ready: bool = False
    weight_verified: bool | None = None
    measurement: g.Measurement | None = None
    generation: int | None = None


@dataclass(frozen=True)
class Turn:
    """One call of the machine: the spec, what was observed, and the time."""

    spec: QuantizedModelSpec
    observation: Observation
    now: datetime

    @property
    def generation(self) -> int | None:
        return self.observation.generation

    def condition(
        self,
        conditions: Sequence[Condition],
        type_: str,
        status: Literal["True", "False", "Unknown"],
        reason: str,
        message: str,
    ) -> list[Condition]:
        """``conditions`` with ``type_`` set, stamped with this turn's time and generation."""
        return with_condition(conditions, type_, status, reason, message, self.now,
                              self.generation)


# ------------------------------------------------------------ small readers


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time from status or an annotation (naive means UTC); None if unreadable."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "yes", "1")


def request_active(value: str | None, since: datetime | None) -> bool:
    """A new promote/abort value asks this canary: any token, or a time not before
    ``since`` (the canary's start); never an empty or false-like value."""
    if value is None or value.strip().lower() in ("", "false", "no", "0"):
        return False
    t = parse_time(value.strip())
    if t is None:
        return True
    return since is None or t >= since - timedelta(seconds=1)


_REQUEST_FIELDS = {ANNOTATION_PROMOTE: "promote", ANNOTATION_ABORT: "abort",
                   ANNOTATION_RETRY: "retry"}


def new_request(
    status: QuantizedModelStatus, annotations: Mapping[str, str], key: str
) -> str | None:
    """The value of request annotation ``key`` when it was not handled yet, else None."""
    value = annotations.get(key)
    handled = status.handled_requests or HandledRequests()
    if value is None or value == getattr(handled, _REQUEST_FIELDS[key]):
        return None
    return value


def mark_handled(
    status: QuantizedModelStatus, key: str, value: str | None
) -> QuantizedModelStatus:
    """``status`` recording ``value`` as the handled value of ``key`` (None: forgotten)."""
    handled = status.handled_requests or HandledRequests()
    update = {_REQUEST_FIELDS[key]: None if value is None else value[:256]}
    return status.model_copy(update={"handled_requests": handled.model_copy(update=update)})


def forget_withdrawn(
    status: QuantizedModelStatus, annotations: Mapping[str, str]
) -> QuantizedModelStatus:
    """Records of annotations no longer present are dropped, so the same value can be
    set again later and act once more."""
    handled = status.handled_requests
    if handled is None:
        return status
    for key, name in _REQUEST_FIELDS.items():
        if getattr(handled, name) is not None and key not in annotations:
            status = mark_handled(status, key, None)
    return status


def paused(annotations: Mapping[str, str]) -> bool:
    return _truthy(annotations.get(ANNOTATION_PAUSE, ""))


def canary_of(status: QuantizedModelStatus) -> CanaryStatus:
    return status.canary or CanaryStatus(step=0, weight=0)
