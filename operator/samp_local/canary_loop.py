"""The canary on one machine: the operator's driver with local processes behind it.

:class:`CanaryLoop` runs samp_operator.canary_driver.CanaryDriver — the same driver the
operator runs — with :class:`ProcessServing` (a local vLLM server; the callbacks start
and stop processes in the demo, or record what happened in the tests),
samp_local.load.LocalWeights as the traffic router and the real PrometheusProvider. The
operator comes back through Kopf timers; this loop sleeps for the decision's requeue
instead (capped by ``max_sleep``), which is the one thing it adds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from samp_core.decision import Decision, EnsureCanary, PromoteStable, StartReplan
from samp_core.events import Event
from samp_core.gates import Measurement
from samp_core.spec import QuantizedModelSpec
from samp_core.status import Phase, QuantizedModelStatus
from samp_local.load import LocalWeights
from samp_operator.canary_driver import CanaryDriver, MeasurementProvider

__all__ = ["Applied", "CanaryLoop", "ProcessServing"]

_ACTIVE = (Phase.EVALUATED, Phase.CANARY, Phase.PAUSED)


@dataclass
class ProcessServing:
    """Serving over a local canary process: readiness is its /health; the rest is what
    the callbacks do (the demo starts its servers itself and only says what happens)."""

    ready: Callable[[], bool]
    on_ensure: Callable[[EnsureCanary], None] = lambda a: None
    on_remove: Callable[[], None] = lambda: None
    on_promote: Callable[[PromoteStable], None] = lambda a: None

    def canary_ready(self) -> bool:
        return self.ready()

    def canary_exists(self) -> bool:
        return self.ready()  # the demo's canary process is there while it answers

    def ensure_canary(self, action: EnsureCanary) -> None:
        self.on_ensure(action)

    def promote(self, action: PromoteStable) -> None:
        self.on_promote(action)

    def remove_canary(self) -> None:
        self.on_remove()


@dataclass
class Applied:
    """What the loop did, in order: for the printout and the tests."""

    at: datetime
    phase: str
    actions: list[str]
    events: list[str]


def _action_names(d: Decision) -> list[str]:
    return [repr(a) if not isinstance(a, StartReplan) else f"StartReplan({a.attempt})"
            for a in d.actions]


@dataclass
class CanaryLoop:
    """Turns of the canary driver until the canary ends, on the local clock.

    ``canary_ready`` answers whether the canary server is ready; ``annotations``
    returns the object's annotations now (pause/promote/abort); the ``on_*`` callbacks
    run the serving actions (see :class:`ProcessServing`); ``on_event`` sees each
    decision's Events before its actions run. ``max_sleep`` caps each wait so a test
    stays responsive.
    """

    spec: QuantizedModelSpec
    name: str
    provider: MeasurementProvider
    router: LocalWeights
    canary_ready: Callable[[], bool]
    annotations: Callable[[], Mapping[str, str]] = dict
    on_ensure: Callable[[EnsureCanary], None] = lambda a: None
    on_remove: Callable[[], None] = lambda: None
    on_promote: Callable[[PromoteStable], None] = lambda a: None
    on_event: Callable[[Event], None] = lambda e: None
    max_sleep: float = 1.0
    log: list[Applied] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def driver(self) -> CanaryDriver:
        serving = ProcessServing(self.canary_ready, self.on_ensure, self.on_remove,
                                 self.on_promote)
        return CanaryDriver(serving, self.router, self.provider)

    def step(self, status: QuantizedModelStatus, now: datetime) -> Decision:
        driver = self.driver
        turn = driver.observe(self.spec, status, self.name, self.annotations(), None, now)
        if turn.measurement is not None:
            self.measurements.append(turn.measurement)
        d = turn.decision
        for e in d.events:  # what was decided, then what is done about it
            self.on_event(e)
        driver.apply(d.canary_actions())
        self.log.append(Applied(now, d.status.phase.value, _action_names(d),
                                [f"{e.reason}: {e.message}" for e in d.events]))
        return d

    def run(
        self,
        status: QuantizedModelStatus,
        timeout: float,
        on_step: Callable[[QuantizedModelStatus], None] | None = None,
    ) -> QuantizedModelStatus:
        """Until the canary ends (Promoted, RolledBack, Planning for a re-plan) or timeout.

        ``on_step`` sees the status after every decision (the tests use it to stop
        Prometheus mid-rollout, or to record what happened while it was down)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.step(status, datetime.now(UTC))
            status = d.status
            if on_step is not None:
                on_step(status)
            if status.phase not in _ACTIVE:
                return status
            wait = d.requeue_after if d.requeue_after is not None else self.max_sleep
            time.sleep(max(0.05, min(wait, self.max_sleep)))
        raise TimeoutError(f"canary still {status.phase.value} after {timeout}s: {status.message}")
