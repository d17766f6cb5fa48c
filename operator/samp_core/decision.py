"""The one answer of both pure machines: :class:`Decision`, with its typed actions.

The quantization machine (samp_core.reconcile) and the canary machine (samp_core.canary)
each return a Decision: the complete new status, the actions to run in order, the Events
to post, and when to look again. The operator runs one reconcile as
``reconcile(...).then(canary turn)``: the canary's status replaces the quantization's, its
actions and Events come after, and the sooner requeue wins.

Actions are small frozen records, one per thing the adapters do: the quantization
machine's children (:class:`CreateChild`, :class:`DeleteChild`, run by
samp_operator.engine) and the canary's serving and traffic (:class:`EnsureCanary` ...
:class:`StartReplan`, run by samp_operator.canary_driver). Every action is idempotent
against the world, so running a decision again after a restart is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from samp_core.api import QuantizedModel
from samp_core.events import Event
from samp_core.status import GateResult, QuantizedModelStatus

__all__ = [
    "Action",
    "CanaryAction",
    "ChildAction",
    "CreateChild",
    "Decision",
    "DeleteChild",
    "EnsureCanary",
    "Facts",
    "PromoteStable",
    "RemoveCanary",
    "SetWeight",
    "StartReplan",
    "sooner",
]


# ------------------------------------------------- the quantization machine's children


@dataclass(frozen=True)
class CreateChild:
    """Create a stage Job or its ConfigMap (``manifest``, owned by the QuantizedModel);
    one that exists already is left as it is."""

    manifest: Mapping[str, Any]


@dataclass(frozen=True)
class DeleteChild:
    """Delete a Job or ConfigMap of the QuantizedModel, by name (gone already: a no-op)."""

    kind: Literal["Job", "ConfigMap"]
    name: str


# ------------------------------------------------------------- the canary's serving


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
    """Start attempt ``attempt`` from a more conservative plan (samp_core.replan). Nothing
    to run: the decision's status already opened the attempt (phase Planning), whose plan
    Job the quantization machine creates on the next reconcile."""

    attempt: int
    reason: str
    failed_gates: tuple[GateResult, ...]


ChildAction = CreateChild | DeleteChild
CanaryAction = EnsureCanary | SetWeight | PromoteStable | RemoveCanary | StartReplan
Action = ChildAction | CanaryAction


# ---------------------------------------------------------------------- the answer


@dataclass(frozen=True)
class Facts:
    """What the quantization machine found on the way, for the canary hand-over and the
    metrics; none of it is an instruction, so it is kept apart from the actions.

    ``resource`` is the parsed QuantizedModel (None when the spec is invalid), which the
    canary turn reads its spec from. ``quantized``: every stage is done and the canary may
    take over; it is the walk's own verdict, not something read back from ``status``: while
    a canary owns the phase (Paused, Promoted, ...) the phase alone does not say whether
    this reconcile found every stage done. ``stage_durations`` (stage, seconds) and
    ``job_failures`` (stage, reason) are counted once, on the transition that produced
    them. A canary decision has no facts of its own (the defaults); :meth:`Decision.then`
    keeps the first machine's.
    """

    resource: QuantizedModel | None = None
    quantized: bool = False
    stage_durations: tuple[tuple[str, float], ...] = ()
    job_failures: tuple[tuple[str, str], ...] = ()


def sooner(a: float | None, b: float | None) -> float | None:
    """The earlier of two requeue wishes; None is no wish."""
    if a is None:
        return b
    return a if b is None else min(a, b)


@dataclass(frozen=True)
class Decision:
    """A machine's answer: the complete new ``status``, the ``actions`` to run in order
    once that status is written, the ``events`` to post, ``requeue_after`` seconds until
    the next look (None: nothing to wait for) and the quantization machine's ``facts``."""

    status: QuantizedModelStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    facts: Facts = field(default_factory=Facts)

    def then(self, later: Decision) -> Decision:
        """This decision followed by ``later`` (made from this one's status): ``later``'s
        status, both decisions' actions and Events in order, the sooner requeue, and this
        decision's facts."""
        return Decision(
            status=later.status,
            actions=self.actions + later.actions,
            events=self.events + later.events,
            requeue_after=sooner(self.requeue_after, later.requeue_after),
            facts=self.facts,
        )

    def child_actions(self) -> tuple[ChildAction, ...]:
        """The creates and deletes of Jobs and ConfigMaps, in order."""
        return tuple(a for a in self.actions if isinstance(a, CreateChild | DeleteChild))

    def canary_actions(self) -> tuple[CanaryAction, ...]:
        """The serving and traffic actions, in order."""
        return tuple(a for a in self.actions if not isinstance(a, CreateChild | DeleteChild))
