"""The evaluate stage's document: accuracy of the quantized model against the 16-bit one."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from samp_core.results.base import ResultBase, Stage, SummaryBase


def _pct(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return 100.0 * num / den


class EvaluationResult(ResultBase):
    """Offline accuracy of the quantized model against the unquantized one on held-out prompts.

    Recovery percentages and the accuracy delta are derived at construction when
    not given, so every consumer reads the same definitions: perplexity recovery
    = base/quant (lower perplexity is better), task and JSON recovery = quant/base,
    accuracy delta = quant - base exact match, in points (fractions x 100).
    """

    STAGE: ClassVar[Stage] = Stage.EVALUATE
    kind: Literal["EvaluationResult"] = "EvaluationResult"

    num_prompts: int = Field(ge=0)
    num_tokens: int = Field(default=0, ge=0)
    perplexity_base: float = Field(gt=0)
    perplexity_quant: float = Field(gt=0)
    mean_kl: float = Field(ge=0)
    top1_agreement: float = Field(ge=0, le=1)
    answer_flips: int = Field(default=0, ge=0)
    task_exact_match_base: float | None = Field(default=None, ge=0, le=1)
    task_exact_match_quant: float | None = Field(default=None, ge=0, le=1)
    json_validity_base: float | None = Field(default=None, ge=0, le=1)
    json_validity_quant: float | None = Field(default=None, ge=0, le=1)
    perplexity_recovery_pct: float | None = None
    task_recovery_pct: float | None = None
    json_recovery_pct: float | None = None
    accuracy_delta_pts: float | None = None

    @model_validator(mode="after")
    def _derive(self) -> EvaluationResult:
        if self.perplexity_recovery_pct is None:
            self.perplexity_recovery_pct = _pct(self.perplexity_base, self.perplexity_quant)
        if self.task_recovery_pct is None:
            self.task_recovery_pct = _pct(self.task_exact_match_quant, self.task_exact_match_base)
        if self.json_recovery_pct is None:
            self.json_recovery_pct = _pct(self.json_validity_quant, self.json_validity_base)
        if (
            self.accuracy_delta_pts is None
            and self.task_exact_match_base is not None
            and self.task_exact_match_quant is not None
        ):
            self.accuracy_delta_pts = 100.0 * (
                self.task_exact_match_quant - self.task_exact_match_base
            )
        return self

    def summary(self) -> EvaluationResultSummary:
        return EvaluationResultSummary(
            **self._summary_header(),
            **self.model_dump(exclude={"api_version", "created_at", "kind", "stage",
                                       "inputs_hash"}),
        )



class EvaluationResultSummary(SummaryBase):
    """Every figure of the evaluation document: the operator gates on them."""

    kind: Literal["EvaluationResult"] = "EvaluationResult"

    num_prompts: int = Field(ge=0)
    num_tokens: int = Field(default=0, ge=0)
    perplexity_base: float
    perplexity_quant: float
    mean_kl: float
    top1_agreement: float
    answer_flips: int = Field(default=0, ge=0)
    task_exact_match_base: float | None = None
    task_exact_match_quant: float | None = None
    json_validity_base: float | None = None
    json_validity_quant: float | None = None
    perplexity_recovery_pct: float | None = None
    task_recovery_pct: float | None = None
    json_recovery_pct: float | None = None
    accuracy_delta_pts: float | None = None

    def describe(self) -> str:
        return (f"perplexity {self.perplexity_base} -> {self.perplexity_quant}, "
                f"top-1 agreement {self.top1_agreement}")
