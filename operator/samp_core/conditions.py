"""Kubernetes-style conditions: one upsert rule for every part of the core.

lastTransitionTime moves only when a condition's status changes (API conventions), so a
reason or message update does not look like a transition to SREs or alerts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from samp_core.status import Condition

MESSAGE_LIMIT = 32768  # Condition.message maxLength in the CRD


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_condition(  # noqa: PLR0917 (mirrors the Condition fields)
    conditions: Sequence[Condition],
    type_: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[Condition]:
    """``conditions`` with ``type_`` set (replaced in place, or appended)."""
    kind = str(type_)
    previous = next((c for c in conditions if c.type == kind), None)
    updated = Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message[:MESSAGE_LIMIT],
        observed_generation=generation,
        last_transition_time=(
            previous.last_transition_time
            if previous is not None and previous.status == status
            else rfc3339(now)
        ),
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == kind else c for c in conditions]
