"""A stage's typed result summary (samp_core.results.summaries.parse_summary) into status:
the plan, artifact and accuracy figures, and dropping figures of stages that must rerun."""

from __future__ import annotations

from samp_core.results import (
    EvaluationResultSummary,
    ExportResultSummary,
    PlanResultSummary,
    Stage,
    SummaryBase,
)
from samp_core.results.summaries import accuracy_figures, plan_figures
from samp_core.status import QuantizedModelStatus


def apply_result(status: QuantizedModelStatus, summary: SummaryBase, out_uri: str) -> None:
    if isinstance(summary, PlanResultSummary):
        status.plan = plan_figures(summary)
    elif isinstance(summary, ExportResultSummary):
        # The job reports where it wrote; a pod-local path (/mnt/pvc/...) means nothing
        # outside the pod, so status names the artifact by its URI (pvc://, s3://, gs://).
        uri = summary.artifact_uri
        status.artifact_uri = uri if "://" in uri else out_uri
    elif isinstance(summary, EvaluationResultSummary):
        status.accuracy = accuracy_figures(summary)


def clear_stale_outputs(status: QuantizedModelStatus, done: set[str]) -> None:
    """Figures of a stage that must rerun describe an obsolete spec: drop them."""
    if Stage.PLAN.value not in done:
        status.plan = None
    if Stage.EXPORT.value not in done:
        status.artifact_uri = None
    if Stage.EVALUATE.value not in done:
        status.accuracy = None
