"""One analysis window as the gates read it: the guards every traffic gate shares. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from samp_core.measurement import Measurement
from samp_core.spec import GatesSpec
from samp_core.status import GateResult
from samp_core.verdicts import Verdict, finite, result

__all__ = ["Window", "error_for", "traffic_precondition"]


def error_for(m: Measurement, *keys: str) -> str | None:
    if m.error is not None:
        return f"metrics backend unreachable: {m.error}"
    for k in keys:
        if k in m.query_errors:
            return f"query {k} failed: {m.query_errors[k]}"
    return None


def traffic_precondition(m: Measurement, min_requests: int) -> tuple[Verdict, str] | None:
    """Inconclusive when the canary has too little traffic in the window; None if enough."""
    n = m.canary.requests
    if not finite(n):
        return Verdict.INCONCLUSIVE, "no canary request count in the window (no series yet)"
    assert n is not None
    if n < min_requests:
        return (
            Verdict.INCONCLUSIVE,
            f"canary finished {n:.0f} requests in {m.window_seconds:.0f}s, fewer than "
            f"minRequests {min_requests}; figures do not count",
        )
    return None


@dataclass(frozen=True)
class Window:
    """One analysis window as the gates read it. ``stable_serves``: False at weight 100,
    where the stable takes no traffic and nothing in the window compares with it."""

    gates: GatesSpec
    m: Measurement
    has_stable: bool
    stable_serves: bool = True

    @property
    def compares(self) -> bool:
        """Whether canary and stable are compared in this window (ratios, judge)."""
        return self.has_stable and self.stable_serves

    @property
    def traffic(self) -> tuple[Verdict, str] | None:
        return traffic_precondition(self.m, self.gates.min_requests)

    def guarded(self, name: str, keys: Sequence[str], threshold: str) -> GateResult | None:
        """Error when a query it needs failed, the traffic verdict when traffic is short."""
        err = error_for(self.m, *keys)
        if err is not None:
            return result(name, Verdict.ERROR, threshold=threshold, message=err)
        traffic = self.traffic
        if traffic is not None:
            return result(name, traffic[0], value=None, threshold=threshold, message=traffic[1])
        return None
