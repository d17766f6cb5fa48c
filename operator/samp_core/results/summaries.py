"""The operator's side of the result transport: a termination message in, typed figures out.

:func:`parse_summary` validates a stage pod's termination message against that stage's
summary type (no key-by-key reads); :func:`plan_figures` and :func:`accuracy_figures`
turn the plan and evaluation summaries into the ``status.plan`` and ``status.accuracy``
the resource shows.
"""

from __future__ import annotations

import json
import math

from pydantic import ValidationError

from samp_core.results.base import Stage, SummaryBase
from samp_core.results.calibration import CalibrationResultSummary
from samp_core.results.evaluation import EvaluationResultSummary
from samp_core.results.export import ExportResultSummary
from samp_core.results.plan import PlanResultSummary
from samp_core.results.sensitivity import SensitivityResultSummary
from samp_core.status import AccuracySummary, PlanSummary

__all__ = ["SUMMARY_OF", "ResultError", "accuracy_figures", "parse_summary", "plan_figures"]

SUMMARY_OF: dict[Stage, type[SummaryBase]] = {
    Stage.CALIBRATE: CalibrationResultSummary,
    Stage.SENSITIVITY: SensitivityResultSummary,
    Stage.PLAN: PlanResultSummary,
    Stage.EXPORT: ExportResultSummary,
    Stage.EVALUATE: EvaluationResultSummary,
}


class ResultError(ValueError):
    """A termination message that is not the expected result summary."""


def parse_summary(stage: Stage, message: str) -> SummaryBase:
    """The typed summary a stage's pod wrote (ResultBase.summary_json)."""
    kind = SUMMARY_OF[stage]
    clipped = " ".join(message.split())[:200]
    try:
        data = json.loads(message)
    except ValueError as err:
        raise ResultError(f"termination message is not JSON: {clipped!r}") from err
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the message"
        raise ResultError(
            f"termination message is not a {kind.model_fields['kind'].default} summary "
            f"({where}: {first['msg']}): {clipped!r}"
        ) from err


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def plan_figures(s: PlanResultSummary) -> PlanSummary:
    """status.plan from the plan stage's summary."""
    return PlanSummary(
        profile=s.profile,
        bytes16_bit=s.bytes_16bit,
        bytes_quantized=s.total_bytes,
        effective_bits=round(s.effective_bits, 3),
        memory_saved_percent=round(100.0 * (1.0 - s.fraction_of_16bit), 2),
        predicted_loss=s.predicted_loss,
        groups_per_format=dict(s.by_format),
    )


def accuracy_figures(s: EvaluationResultSummary) -> AccuracySummary:
    """status.accuracy from the evaluation summary; a non-finite figure is shown as absent."""
    base, quant = _finite(s.perplexity_base), _finite(s.perplexity_quant)
    increase = round(100.0 * (quant / base - 1.0), 4) if base and quant else None
    return AccuracySummary(
        perplexity_base=base,
        perplexity_quantized=quant,
        perplexity_increase_percent=increase,
        mean_kl=_finite(s.mean_kl),
        top1_agreement=_finite(s.top1_agreement),
        exact_match_recovery_percent=_finite(s.task_recovery_pct),
        json_validity_recovery_percent=_finite(s.json_recovery_pct),
    )
