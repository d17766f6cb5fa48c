"""The calibration stage's document: what it kept from the production sample, and dropped."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from samp_core.results.base import ResultBase, Stage, SummaryBase, _Model


class LengthStats(_Model):
    p50: int = Field(ge=0)
    p90: int = Field(ge=0)
    max: int = Field(ge=0)


class DroppedCounts(_Model):
    duplicates: int = Field(default=0, ge=0)
    too_short: int = Field(default=0, ge=0)
    too_long: int = Field(default=0, ge=0)
    malformed: int = Field(default=0, ge=0)

    @property
    def total(self) -> int:
        return self.duplicates + self.too_short + self.too_long + self.malformed


class CalibrationResult(ResultBase):
    """What the calibration stage kept from the production sample, and what it dropped."""

    STAGE: ClassVar[Stage] = Stage.CALIBRATE
    kind: Literal["CalibrationResult"] = "CalibrationResult"

    source: str
    num_samples: int = Field(ge=0)
    num_tokens: int = Field(ge=0)
    lengths: LengthStats
    dropped: DroppedCounts = Field(default_factory=DroppedCounts)
    dataset_digest: str = ""
    dataset_uri: str = ""

    def summary(self) -> CalibrationResultSummary:
        return CalibrationResultSummary(
            **self._summary_header(),
            source=self.source[:300],
            num_samples=self.num_samples,
            num_tokens=self.num_tokens,
            lengths=self.lengths,
            dropped=self.dropped,
            dataset_digest=self.dataset_digest,
        )



class CalibrationResultSummary(SummaryBase):
    DROPPABLE: ClassVar[tuple[str, ...]] = ("source", "dataset_digest")
    kind: Literal["CalibrationResult"] = "CalibrationResult"

    source: str | None = None
    num_samples: int = Field(ge=0)
    num_tokens: int = Field(ge=0)
    lengths: LengthStats
    dropped: DroppedCounts = Field(default_factory=DroppedCounts)
    dataset_digest: str | None = None

    def describe(self) -> str:
        return f"{self.num_samples} prompts, {self.num_tokens} tokens"
