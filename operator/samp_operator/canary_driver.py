"""The one canary driver: observe, measure, decide (samp_core.canary), act.

Both the operator and the local demo run this class; what differs is only what sits
behind its three small interfaces, as Argo Rollouts puts traffic routers and metric
providers behind interfaces:

* :class:`Serving` — the canary server: is it ready, create it, promote it, remove it.
  Kubernetes: samp_operator.canary_kube.KubeServing (Deployment + Service); local:
  samp_local.canary_loop.ProcessServing (a vLLM process).
* :class:`~samp_operator.traffic.TrafficRouter` — set the canary's weight, read it back.
  Kubernetes: HTTPRouteRouter or ReplicaRatioRouter (samp_operator.traffic); local:
  samp_local.load.LocalWeights, which the load generator follows.
* :class:`MeasurementProvider` — figures for an analysis window.
  samp_operator.prometheus.PrometheusProvider in both; :class:`NoPrometheus` when no
  Prometheus is configured (every analysis is then an Error, never a pass).

One turn is :meth:`CanaryDriver.observe` (the router's read-back of the current weight,
one measurement when an analysis is due, the canary's readiness, the annotations) and
``samp_core.canary.decide``, then :meth:`CanaryDriver.apply` runs the decision's actions
(samp_core.decision) in order. The operator writes the status between the two (decide,
write with the resourceVersion, only then act) and calls :meth:`CanaryDriver.settle` for
a written status the machine no longer drives, so actions cut short are finished.
StartReplan needs nothing here: the decision's status already opened the next attempt
(phase Planning), whose plan Job the quantization machine creates (samp_core.replan).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, assert_never

from samp_core.canary import AnalysisRequest, Observation, analysis_due, decide, settle
from samp_core.decision import (
    CanaryAction,
    Decision,
    EnsureCanary,
    PromoteStable,
    RemoveCanary,
    SetWeight,
    StartReplan,
)
from samp_core.gates import Measurement
from samp_core.spec import GatesSpec, QuantizedModelSpec
from samp_core.status import Phase, QuantizedModelStatus
from samp_operator.traffic import TrafficRouter

log = logging.getLogger("samp.canary")

__all__ = [
    "CanaryDriver",
    "MeasurementProvider",
    "NoPrometheus",
    "Serving",
    "TrafficRouter",
    "Turn",
]


class Serving(Protocol):
    """The canary server of one QuantizedModel."""

    def canary_ready(self) -> bool:
        """All the canary's replicas answer their readiness probe."""

    def canary_exists(self) -> bool:
        """The canary is there (ready or not): something a settled status may need gone."""

    def ensure_canary(self, action: EnsureCanary) -> None:
        """Create the canary serving ``action.artifact_uri`` (a no-op when it exists)."""

    def promote(self, action: PromoteStable) -> None:
        """Make the artifact the stable serving target (per ``action.strategy``)."""

    def remove_canary(self) -> None:
        """Remove the canary (a no-op when it is gone)."""


class MeasurementProvider(Protocol):
    def measure(self, request: AnalysisRequest, gates: GatesSpec) -> Measurement:
        """Every figure the gates need for the request's window (errors inside it)."""


@dataclass(frozen=True)
class NoPrometheus:
    """No Prometheus configured: every analysis is an Error, never a pass."""

    message: str = "no Prometheus configured (spec.gates.prometheusUrl or --prometheus-url)"

    def measure(self, request: AnalysisRequest, gates: GatesSpec) -> Measurement:
        return Measurement(
            window_seconds=request.window_seconds, taken_at=request.end, error=self.message
        )


@dataclass(frozen=True)
class Turn:
    """One turn: the decision, and the analysis it was made from (if one was due)."""

    decision: Decision
    request: AnalysisRequest | None = None
    measurement: Measurement | None = None


@dataclass
class CanaryDriver:
    """Drives one QuantizedModel's canary through its serving, router and provider."""

    serving: Serving
    router: TrafficRouter
    provider: MeasurementProvider

    def observe(  # noqa: PLR0917
        self,
        spec: QuantizedModelSpec,
        status: QuantizedModelStatus,
        name: str,
        annotations: Mapping[str, str],
        generation: int | None,
        now: datetime,
    ) -> Turn:
        """What the world looks like now, and what the pure machine decides from it."""
        weight = status.canary.weight if status.canary else 0
        verified = (
            self.router.verify_weight(weight)
            if weight and status.phase is Phase.CANARY
            else None
        )
        request = analysis_due(spec, status, name, now)
        measurement = self._measure(request, spec.gates) if request else None
        observation = Observation(
            name=name,
            annotations=dict(annotations),
            canary_ready=self.serving.canary_ready(),
            weight_verified=verified,
            measurement=measurement,
            generation=generation,
        )
        return Turn(decide(spec, status, observation, now), request, measurement)

    def _measure(self, request: AnalysisRequest, gates: GatesSpec) -> Measurement:
        """The provider's measurement; a provider that raises is an Error analysis, which
        the consecutive-error limit counts, never an exception that stops the turn (and
        with it every limit and the progress deadline)."""
        try:
            return self.provider.measure(request, gates)
        except Exception as err:
            log.warning("measurement for %s failed: %s", request.canary_model, err,
                        exc_info=True)
            return Measurement(
                window_seconds=request.window_seconds,
                taken_at=request.end,
                # its text may hold a URL or an answer: the log has it, status gets the kind
                error=f"the measurement failed: {type(err).__name__} (see the operator log)",
            )

    def apply(self, actions: Iterable[CanaryAction]) -> bool:
        """A decision's canary actions, in order. Each is idempotent against the world.

        False when the canary had to stay: it is removed only once the stable serves the
        traffic on its own again; the caller comes back and settles the written status."""
        return all(self._run(action) for action in actions)  # stops at the first False

    def _run(self, action: CanaryAction) -> bool:
        match action:
            case SetWeight():
                self.router.set_weight(action.weight)
            case EnsureCanary():
                self.serving.ensure_canary(action)
            case PromoteStable():
                self.serving.promote(action)
            case RemoveCanary():
                if not self.router.stable_serving():
                    return False
                self.serving.remove_canary()
            case StartReplan():
                pass  # the status already opened the next attempt
            case _:
                assert_never(action)
        return True

    def settle(self, spec: QuantizedModelSpec, status: QuantizedModelStatus) -> bool:
        """Make serving and traffic match a written status the machine no longer drives
        (samp_core.canary.settle), while a canary exists; a weight already in effect is
        left alone. Idempotent: a promotion or rollback whose actions were cut short
        (a failed API call, a restart between the status write and the actions) ends
        here on the next reconcile. False while the canary has to stay (see :meth:`apply`)."""
        actions = settle(spec, status)
        if not actions or not self.serving.canary_exists():
            return True
        for action in actions:
            if isinstance(action, SetWeight) and self.router.verify_weight(action.weight):
                continue
            if not self._run(action):
                return False
        return True

    def step(  # noqa: PLR0917
        self,
        spec: QuantizedModelSpec,
        status: QuantizedModelStatus,
        name: str,
        annotations: Mapping[str, str],
        generation: int | None,
        now: datetime,
    ) -> Turn:
        """:meth:`observe`, then :meth:`apply`."""
        turn = self.observe(spec, status, name, annotations, generation, now)
        self.apply(turn.decision.canary_actions())
        return turn
