"""The export stage's document: the checkpoint written, its config groups and files."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from samp_core.formats import ExportFormat, Format
from samp_core.results.base import ResultBase, Stage, SummaryBase, _Model


class ConfigGroupSummary(_Model):
    """One compressed-tensors config_groups entry (or the ignore list) in short form."""

    name: str
    format: Format
    scheme: str = ""  # e.g. "W4A16", "FP8_DYNAMIC"
    num_targets: int = Field(ge=0)
    targets_sample: list[str] = Field(default_factory=list)


class ExportedFile(_Model):
    path: str
    bytes: int = Field(ge=0)
    sha256: str = ""


class ExportResult(ResultBase):
    STAGE: ClassVar[Stage] = Stage.EXPORT
    kind: Literal["ExportResult"] = "ExportResult"

    artifact_uri: str
    export_format: ExportFormat
    config_groups: list[ConfigGroupSummary] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=list)
    files: list[ExportedFile] = Field(default_factory=list)
    bytes_on_disk: int = Field(ge=0)
    # Where the export's time went (absent in documents from older jobs): wall seconds
    # and seconds per phase (import, load, device, calibrate, transfer, quantize, compress,
    # save, hash; samp_jobs.export says what each covers), and the device it ran on.
    wall_seconds: float | None = Field(default=None, ge=0)
    phase_seconds: dict[str, float] | None = None
    device: str | None = None

    def summary(self) -> ExportResultSummary:
        return ExportResultSummary(
            **self._summary_header(),
            artifact_uri=self.artifact_uri[:500],
            export_format=self.export_format,
            config_groups={
                g.name: ConfigGroupCount(format=g.format, targets=g.num_targets)
                for g in self.config_groups[:12]
            },
            ignored=len(self.ignore),
            files=len(self.files),
            bytes_on_disk=self.bytes_on_disk,
            wall_seconds=None if self.wall_seconds is None else round(self.wall_seconds, 2),
            phase_seconds={k: round(v, 2) for k, v in list(self.phase_seconds.items())[:12]}
            if self.phase_seconds else None,
            device=self.device[:40] if self.device else None,
        )



class ConfigGroupCount(_Model):
    format: Format
    targets: int = Field(ge=0)


class ExportResultSummary(SummaryBase):
    DROPPABLE: ClassVar[tuple[str, ...]] = ("config_groups", "phase_seconds", "device")
    kind: Literal["ExportResult"] = "ExportResult"

    artifact_uri: str
    export_format: ExportFormat
    config_groups: dict[str, ConfigGroupCount] | None = None
    ignored: int = Field(default=0, ge=0)
    files: int = Field(default=0, ge=0)
    bytes_on_disk: int = Field(ge=0)
    wall_seconds: float | None = None
    phase_seconds: dict[str, float] | None = None
    device: str | None = None

    def describe(self) -> str:
        return f"checkpoint written ({self.bytes_on_disk} bytes)"
