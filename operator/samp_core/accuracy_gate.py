"""The accuracy gate: the offline evaluation against ``spec.gates.accuracy``. Pure, no I/O.

It runs before any traffic moves (samp_core.canary.start). The perplexity increase is
``100 * (ppl_quant / ppl_base - 1)``; optional checks (mean KL, top-1 agreement,
exact-match and JSON-validity recovery) run only when the gate sets them. Under the same
rules as the traffic gates (samp_core.gates): a set check whose figure is missing or not
finite is Inconclusive, an evaluation over zero prompts is Inconclusive, and a
perplexity that is present but not finite and positive is an Error (a broken
evaluation) — none of them passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from samp_core.results import EvaluationResult
from samp_core.spec import AccuracyGate
from samp_core.status import AccuracySummary, GateResult
from samp_core.verdicts import Verdict, ceiling, finite, num, overall, result

__all__ = [
    "GATE_ACCURACY_PREFIX",
    "AccuracyVerdict",
    "evaluate_accuracy",
    "evaluate_accuracy_summary",
]

GATE_ACCURACY_PREFIX = "accuracy:"


@dataclass(frozen=True)
class AccuracyVerdict:
    """The accuracy gate over one EvaluationResult."""

    verdict: Verdict
    results: list[GateResult]
    summary: AccuracySummary

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.SUCCESSFUL


def evaluate_accuracy(gate: AccuracyGate, ev: EvaluationResult) -> AccuracyVerdict:
    """Check the offline evaluation against ``spec.gates.accuracy`` (module docstring)."""
    increase = 100.0 * (ev.perplexity_quant / ev.perplexity_base - 1.0)
    summary = AccuracySummary(
        perplexity_base=ev.perplexity_base,
        perplexity_quantized=ev.perplexity_quant,
        perplexity_increase_percent=increase if math.isfinite(increase) else None,
        mean_kl=ev.mean_kl if math.isfinite(ev.mean_kl) else None,
        top1_agreement=ev.top1_agreement,
        exact_match_recovery_percent=ev.task_recovery_pct,
        json_validity_recovery_percent=ev.json_recovery_pct,
    )
    return evaluate_accuracy_summary(gate, summary, num_prompts=ev.num_prompts)


def _impossible_perplexity(base: float | None, quant: float | None) -> bool:
    """A perplexity that is there but not finite and positive."""
    return any(x is not None and not (math.isfinite(x) and x > 0) for x in (base, quant))


def _perplexity(gate: AccuracyGate, summary: AccuracySummary) -> tuple[GateResult, float | None]:
    """The perplexity-increase row, and the increase it judged (None: not a figure)."""
    p = GATE_ACCURACY_PREFIX
    base, quant = summary.perplexity_base, summary.perplexity_quantized
    if _impossible_perplexity(base, quant):
        # A perplexity is finite and positive; anything else is a broken evaluation, and
        # any increase computed from it (inf base, 0 or negative quantized: "-100%") is not
        # a figure. Error: it never passes.
        row = result(
            f"{p}perplexityIncreasePercent",
            Verdict.ERROR,
            threshold=f"<= {num(gate.max_perplexity_increase_percent)}%",
            message=f"impossible perplexity figures (base {num(base)}, quantized "
            f"{num(quant)}): a perplexity is finite and positive; the evaluation is broken",
        )
        return row, None
    increase = summary.perplexity_increase_percent
    if base is not None and quant is not None:
        increase = 100.0 * (quant / base - 1.0)
    row = ceiling(
        f"{p}perplexityIncreasePercent",
        increase,
        gate.max_perplexity_increase_percent,
        "%",
        f"perplexity {num(base)} -> {num(quant)}, increase",
    )
    return row, increase


def _floor(name: str, value: float | None, minimum: float, unit: str, what: str) -> GateResult:
    threshold = f">= {num(minimum)}{unit}"
    if not finite(value):
        return result(
            f"{GATE_ACCURACY_PREFIX}{name}",
            Verdict.INCONCLUSIVE,
            threshold=threshold,
            message=f"{what} not measured (the eval set lacks what it needs)",
        )
    assert value is not None
    ok = value >= minimum
    return result(
        f"{GATE_ACCURACY_PREFIX}{name}",
        Verdict.SUCCESSFUL if ok else Verdict.FAILED,
        value=value,
        threshold=threshold,
        message=f"{what} {num(value)}{unit} {'meets' if ok else 'below'} {num(minimum)}{unit}",
    )


def _floors(gate: AccuracyGate, summary: AccuracySummary) -> list[GateResult]:
    """The optional checks the gate sets, each a minimum."""
    checks = (
        ("top1Agreement", summary.top1_agreement, gate.min_top1_agreement, "",
         "top-1 agreement"),
        ("exactMatchRecoveryPercent", summary.exact_match_recovery_percent,
         gate.min_exact_match_recovery_percent, "%", "exact-match recovery"),
        ("jsonValidityRecoveryPercent", summary.json_validity_recovery_percent,
         gate.min_json_validity_recovery_percent, "%", "JSON-validity recovery"),
    )
    return [
        _floor(name, value, minimum, unit, what)
        for name, value, minimum, unit, what in checks
        if minimum is not None
    ]


def evaluate_accuracy_summary(
    gate: AccuracyGate, summary: AccuracySummary, *, num_prompts: int | None = None
) -> AccuracyVerdict:
    """The accuracy gate over the figures already in ``status.accuracy``.

    Returns the summary with ``passed`` and ``failedChecks`` filled in. The
    perplexity increase is recomputed from the two perplexities when both are
    there, else taken from ``perplexityIncreasePercent``; missing → Inconclusive.
    """
    out: list[GateResult] = []
    p = GATE_ACCURACY_PREFIX
    if num_prompts == 0:
        out.append(
            result(
                f"{p}prompts",
                Verdict.INCONCLUSIVE,
                value=0.0,
                threshold=">= 1",
                message="the evaluation ran over no prompts",
            )
        )
    row, increase = _perplexity(gate, summary)
    out.append(row)
    if gate.max_mean_kl is not None:
        out.append(ceiling(f"{p}meanKL", summary.mean_kl, gate.max_mean_kl, "", "mean KL (nats)"))
    out += _floors(gate, summary)
    verdict = overall(out)
    filled = summary.model_copy(
        update={
            "perplexity_increase_percent": increase if finite(increase) else None,
            "passed": verdict is Verdict.SUCCESSFUL,
            "failed_checks": [
                f"{r.gate}: {r.message}"[:512] for r in out if r.verdict != Verdict.SUCCESSFUL.value
            ][:16],
        }
    )
    return AccuracyVerdict(verdict=verdict, results=out, summary=filled)
