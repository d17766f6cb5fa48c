"""Verdicts and gate result rows, shared by the traffic gates (samp_core.gates) and the
accuracy gate (samp_core.accuracy_gate). Pure, no I/O.

One analysis's verdict is the worst of its gates, in the order Failed, Error,
Inconclusive, Successful (:func:`overall`); no gates at all is Inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum

from samp_core.status import GateResult

__all__ = [
    "Verdict",
    "ceiling",
    "finite",
    "first_of",
    "format_result",
    "num",
    "overall",
    "result",
]


class Verdict(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


# Worst first: one analysis takes the verdict of its worst gate.
_SEVERITY = (Verdict.FAILED, Verdict.ERROR, Verdict.INCONCLUSIVE, Verdict.SUCCESSFUL)


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def num(x: float | None) -> str:
    if x is None:
        return "none"
    if not math.isfinite(x):
        return str(x)
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:.4g}"
    return f"{x:.3e}"


def result(
    gate: str,
    verdict: Verdict,
    *,
    value: float | None = None,
    baseline: float | None = None,
    threshold: str = "",
    message: str = "",
) -> GateResult:
    # JSON (and the API server) cannot hold NaN/inf: store them as absent, say so in text.
    return GateResult(
        gate=gate,
        verdict=verdict.value,
        value=value if finite(value) else None,
        baseline=baseline if finite(baseline) else None,
        threshold=threshold[:256],
        message=message[:1024],
    )


def ceiling(  # noqa: PLR0917
    gate: str,
    value: float | None,
    limit: float,
    unit: str,
    what: str,
    baseline: float | None = None,
) -> GateResult:
    threshold = f"<= {num(limit)}{unit}"
    if not finite(value):
        return result(
            gate,
            Verdict.INCONCLUSIVE,
            value=value,
            baseline=baseline,
            threshold=threshold,
            message=f"{what} is {num(value)} (no observations in the window)",
        )
    assert value is not None
    ok = value <= limit
    return result(
        gate,
        Verdict.SUCCESSFUL if ok else Verdict.FAILED,
        value=value,
        baseline=baseline,
        threshold=threshold,
        message=f"{what} {num(value)}{unit} {'within' if ok else 'above'} the ceiling "
        f"{num(limit)}{unit}",
    )


def overall(results: Iterable[GateResult]) -> Verdict:
    """The worst verdict: Failed, then Error, then Inconclusive; Successful only if all are.

    No gates at all is Inconclusive: nothing was shown to pass.
    """
    verdicts = {Verdict(r.verdict) for r in results}
    if not verdicts:
        return Verdict.INCONCLUSIVE
    for v in _SEVERITY:
        if v in verdicts:
            return v
    return Verdict.INCONCLUSIVE  # pragma: no cover


def first_of(results: Iterable[GateResult], verdict: Verdict) -> GateResult | None:
    """The first gate with this verdict (the one to name in a rollback reason)."""
    for r in results:
        if r.verdict == verdict.value:
            return r
    return None


def format_result(r: GateResult) -> str:
    """One line for events and messages: ``p99RatioToStable=1.82 (threshold <= 1.5x stable,
    stable 1): Failed``."""
    value = num(r.value) if r.value is not None else "n/a"
    base = f", stable {num(r.baseline)}" if r.baseline is not None else ""
    return f"{r.gate}={value} (threshold {r.threshold}{base}): {r.verdict}"
