"""The sensitivity stage's document: per group and format, the estimated loss increase."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from samp_core.formats import Format, SensitivityMethod
from samp_core.groups import LayerGroup
from samp_core.results.base import ResultBase, Stage, SummaryBase


class SensitivityResult(ResultBase):
    """Per group and candidate format: estimated loss increase when only that group is quantized.

    Unquantized formats are implicitly 0 and may be omitted from ``scores``.
    """

    STAGE: ClassVar[Stage] = Stage.SENSITIVITY
    kind: Literal["SensitivityResult"] = "SensitivityResult"

    method: SensitivityMethod
    num_tokens: int = Field(ge=0)
    num_samples: int = Field(default=0, ge=0)
    groups: list[LayerGroup]
    scores: dict[str, dict[Format, float]]
    wall_seconds: float = Field(ge=0)
    peak_memory_bytes: int = Field(default=0, ge=0)
    device: str = ""
    group_size: int = Field(default=128, gt=0)
    # What the scores are measured in (method.score_unit); filled from the method.
    score_unit: str = ""

    @model_validator(mode="after")
    def _scores_name_groups(self) -> SensitivityResult:
        if not self.score_unit:
            self.score_unit = self.method.score_unit
        names = {g.name for g in self.groups}
        if len(names) != len(self.groups):
            raise ValueError("duplicate group names")
        unknown = sorted(set(self.scores) - names)
        if unknown:
            raise ValueError(f"scores for unknown groups: {unknown[:5]}")
        return self

    def formats_scored(self) -> list[Format]:
        seen = {f for per in self.scores.values() for f in per}
        return [f for f in Format if f in seen]

    def summary(self) -> SensitivityResultSummary:
        formats = self.formats_scored()
        top: dict[str, list[str]] = {}
        for f in formats:
            if f.is_unquantized:
                continue
            ranked = sorted(
                (n for n in self.scores if f in self.scores[n]),
                key=lambda n: self.scores[n][f],
                reverse=True,
            )
            top[f.value] = ranked[:3]
        return SensitivityResultSummary(
            **self._summary_header(),
            method=self.method,
            num_tokens=self.num_tokens,
            num_groups=len(self.groups),
            formats=formats,
            most_sensitive=top,
            wall_seconds=round(self.wall_seconds, 1),
            peak_memory_bytes=self.peak_memory_bytes,
        )



class SensitivityResultSummary(SummaryBase):
    DROPPABLE: ClassVar[tuple[str, ...]] = ("most_sensitive",)
    kind: Literal["SensitivityResult"] = "SensitivityResult"

    method: SensitivityMethod
    num_tokens: int = Field(ge=0)
    num_groups: int = Field(ge=0)
    formats: list[Format]
    most_sensitive: dict[str, list[str]] | None = None  # format -> top 3 groups
    wall_seconds: float = Field(ge=0)
    peak_memory_bytes: int = Field(default=0, ge=0)

    def describe(self) -> str:
        return f"{self.num_groups} groups scored by {self.method.value}"
