"""Typed, versioned result documents that every job stage writes and the operator reads.

One module per stage: its document (the full JSON in the work directory) and its typed
summary (what the pod leaves in its termination message, < :data:`SUMMARY_MAX_BYTES`).
The jobs write both (samp_jobs.runlog); the operator reads the summary back with
:func:`samp_core.results.summaries.parse_summary`. Every document and summary carries the
stage's ``inputs_hash`` from the one chain of samp_core.stage_contract.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from samp_core.results.base import (
    API_VERSION,
    SUMMARY_MAX_BYTES,
    ResultBase,
    Stage,
    SummaryBase,
    canonical_json,
    inputs_hash,
)
from samp_core.results.calibration import (
    CalibrationResult,
    CalibrationResultSummary,
    DroppedCounts,
    LengthStats,
)
from samp_core.results.evaluation import EvaluationResult, EvaluationResultSummary
from samp_core.results.export import (
    ConfigGroupCount,
    ConfigGroupSummary,
    ExportedFile,
    ExportResult,
    ExportResultSummary,
)
from samp_core.results.plan import (
    CurvePoint,
    ExcludedFormat,
    GroupAssignment,
    PlanResult,
    PlanResultSummary,
    Rounding,
)
from samp_core.results.sensitivity import SensitivityResult, SensitivityResultSummary

__all__ = [
    "API_VERSION",
    "SUMMARY_MAX_BYTES",
    "AnyResult",
    "CalibrationResult",
    "CalibrationResultSummary",
    "ConfigGroupCount",
    "ConfigGroupSummary",
    "CurvePoint",
    "DroppedCounts",
    "EvaluationResult",
    "EvaluationResultSummary",
    "ExcludedFormat",
    "ExportResult",
    "ExportResultSummary",
    "ExportedFile",
    "GroupAssignment",
    "LengthStats",
    "PlanResult",
    "PlanResultSummary",
    "ResultBase",
    "Rounding",
    "SensitivityResult",
    "SensitivityResultSummary",
    "Stage",
    "SummaryBase",
    "canonical_json",
    "inputs_hash",
    "parse_result",
]

AnyResult = Annotated[
    CalibrationResult | SensitivityResult | PlanResult | ExportResult | EvaluationResult,
    Field(discriminator="kind"),
]
_ANY: TypeAdapter[
    CalibrationResult | SensitivityResult | PlanResult | ExportResult | EvaluationResult
] = TypeAdapter(AnyResult)


def parse_result(
    data: str | bytes | dict[str, Any],
) -> CalibrationResult | SensitivityResult | PlanResult | ExportResult | EvaluationResult:
    """Parse any stage document by its ``kind``; rejects unknown kinds and api versions."""
    if isinstance(data, str | bytes):
        return _ANY.validate_json(data)
    return _ANY.validate_python(data)
