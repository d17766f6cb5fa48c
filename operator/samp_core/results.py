"""Typed, versioned result documents that every job stage writes and the operator reads.

Each stage (calibrate, sensitivity, plan, export, evaluate) is a separate Job; the
only thing that crosses from a Job back to the operator is one of these
documents (full JSON in the artifact store, ``summary()`` in the pod's
termination message, which Kubernetes caps at 4096 bytes, so summaries stay under
:data:`SUMMARY_MAX_BYTES`). ``inputs_hash`` lets the operator skip a stage whose
inputs did not change and detect a stale document. JSON uses camelCase aliases
because the same fields surface in ``QuantizedModel.status``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic.alias_generators import to_camel

from samp_core.formats import (
    GPTQ_DEFAULT_FORMATS,
    ExportFormat,
    Format,
    RoundingMethod,
    SensitivityMethod,
)
from samp_core.groups import GroupKind, LayerGroup

__all__ = [
    "API_VERSION",
    "SUMMARY_MAX_BYTES",
    "AnyResult",
    "CalibrationResult",
    "ConfigGroupSummary",
    "CurvePoint",
    "DroppedCounts",
    "EvaluationResult",
    "ExcludedFormat",
    "ExportResult",
    "ExportedFile",
    "GroupAssignment",
    "LengthStats",
    "PlanResult",
    "ResultBase",
    "Rounding",
    "SensitivityResult",
    "Stage",
    "canonical_json",
    "inputs_hash",
    "parse_result",
]

API_VERSION: Final = "samp.dev/v1alpha1"
SUMMARY_MAX_BYTES = 3000


class Stage(StrEnum):
    CALIBRATE = "calibrate"
    SENSITIVITY = "sensitivity"
    PLAN = "plan"
    EXPORT = "export"
    EVALUATE = "evaluate"


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("non-finite floats cannot be hashed canonically")
    return value


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, enums and models flattened."""
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def inputs_hash(**inputs: Any) -> str:
    """``sha256:<hex>`` over the canonical JSON of the named inputs.

    Pass what determines a stage's output, e.g.
    ``inputs_hash(model_revision=..., calibration_digest=..., policy=spec.quantization,
    profile=profile.name)``. Key order and dict order do not matter; values may be
    pydantic models, enums, lists, sets, dicts and JSON scalars.
    """
    digest = hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest()
    return f"sha256:{digest}"


class _Model(BaseModel):
    # inf/NaN are real outcomes (a broken quantization has infinite perplexity) and
    # must survive the JSON round trip instead of silently becoming null.
    model_config = ConfigDict(
        populate_by_name=True,
        alias_generator=to_camel,
        extra="forbid",
        ser_json_inf_nan="strings",
    )


class ResultBase(_Model):
    """Fields every stage document carries."""

    STAGE: ClassVar[Stage]
    kind: str

    api_version: Literal["samp.dev/v1alpha1"] = API_VERSION
    inputs_hash: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    stage: Stage | None = None

    @model_validator(mode="after")
    def _stage_default(self) -> ResultBase:
        if self.stage is None:
            self.stage = self.STAGE
        elif self.stage != self.STAGE:
            raise ValueError(f"{type(self).__name__} must have stage {self.STAGE}")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    def _header(self) -> dict[str, Any]:
        return {"kind": self.kind, "stage": str(self.stage), "inputsHash": self.inputs_hash}

    def summary(self) -> dict[str, Any]:
        """A small dict (< SUMMARY_MAX_BYTES as JSON) for a pod termination message."""
        return self._header()

    def summary_json(self) -> str:
        """Compact JSON of summary(), guaranteed to fit the termination-message budget."""
        s = self.summary()
        text = json.dumps(s, separators=(",", ":"), sort_keys=True)
        # Drop the largest optional entries until it fits; the header always stays.
        header = set(self._header())
        while len(text.encode()) > SUMMARY_MAX_BYTES:
            optional = [k for k in s if k not in header]
            if not optional:
                break
            biggest = max(optional, key=lambda k: len(json.dumps(s[k])))
            del s[biggest]
            s["truncated"] = True
            text = json.dumps(s, separators=(",", ":"), sort_keys=True)
        return text


# ---------------------------------------------------------------- calibration


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
    # "file:line: reason" of the dropped malformed and over-long lines (the first 100);
    # the document only, not the size-limited termination summary.
    dropped_lines: list[str] = Field(default_factory=list)
    # max_sequence_length after capping at the model's context, when it was capped
    max_sequence_length_capped_to: int | None = None

    def summary(self) -> dict[str, Any]:
        return {
            **self._header(),
            "source": self.source[:300],
            "numSamples": self.num_samples,
            "numTokens": self.num_tokens,
            "lengths": self.lengths.model_dump(by_alias=True),
            "dropped": self.dropped.model_dump(by_alias=True),
            "datasetDigest": self.dataset_digest,
        }


# ---------------------------------------------------------------- sensitivity


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

    @model_validator(mode="after")
    def _scores_name_groups(self) -> SensitivityResult:
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

    def summary(self) -> dict[str, Any]:
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
        return {
            **self._header(),
            "method": self.method.value,
            "numTokens": self.num_tokens,
            "numGroups": len(self.groups),
            "formats": [f.value for f in formats],
            "mostSensitive": top,
            "wallSeconds": round(self.wall_seconds, 1),
            "peakMemoryBytes": self.peak_memory_bytes,
        }


# ----------------------------------------------------------------------- plan


class GroupAssignment(_Model):
    group: str
    kind: GroupKind
    format: Format
    bytes: int = Field(ge=0)
    score: float
    num_params: int = Field(ge=0)
    modules: list[str]
    pinned_by: str | None = None  # "pin", "override:<pattern>", "keep16bit"


class ExcludedFormat(_Model):
    """A format left out of the plan: everywhere (groups empty) or for the listed groups."""

    format: Format
    reason: str
    groups: list[str] = Field(default_factory=list)


class CurvePoint(_Model):
    budget_bytes: int
    bytes: int
    predicted_loss: float


class Rounding(_Model):
    """How the exporter rounds each planned format (part of the plan, so part of its hash).

    ``method: gptq`` rounds the groups whose format is in ``formats`` with GPTQ (Hessian
    from the calibration inputs, act-order, damping, the exporter's static group-wise
    scales); every other quantized group is rounded to nearest. ``rtn`` rounds all to
    nearest.
    """

    method: RoundingMethod = RoundingMethod.GPTQ
    formats: list[Format] = Field(default_factory=lambda: list(GPTQ_DEFAULT_FORMATS))
    dampening_fraction: float = Field(default=0.01, gt=0.0, le=1.0)
    act_order: bool = True
    max_tokens: int = Field(default=131_072, ge=1)  # calibration tokens for the Hessians

    def uses_gptq(self, fmt: Format) -> bool:
        return self.method is RoundingMethod.GPTQ and fmt in self.formats


class PlanResult(ResultBase):
    """The SAMP plan: one format per group, and why."""

    STAGE: ClassVar[Stage] = Stage.PLAN
    kind: Literal["PlanResult"] = "PlanResult"

    profile: str
    export_format: ExportFormat = ExportFormat.COMPRESSED_TENSORS
    group_size: int = Field(gt=0)
    assignments: list[GroupAssignment]
    total_bytes: int = Field(ge=0)  # serving memory of the planned weights
    checkpoint_bytes: int | None = Field(default=None, ge=0)  # what the exporter writes
    bytes_16bit: int = Field(ge=0)
    num_params: int = Field(ge=0)
    effective_bits: float
    predicted_loss: float
    budget_bytes: int = Field(ge=0)
    min_feasible_bytes: int = Field(ge=0)
    predicted_relative_latency: float | None = None
    excluded: list[ExcludedFormat] = Field(default_factory=list)
    pins_applied: dict[str, Format] = Field(default_factory=dict)
    curve: list[CurvePoint] = Field(default_factory=list)
    solver: str = "scipy.optimize.milp/HiGHS"
    solver_status: str = ""
    # How the exporter rounds; None in plans written before rounding was planned: RTN.
    rounding: Rounding | None = None
    warnings: list[str] = Field(default_factory=list)

    @property
    def fraction_of_16bit(self) -> float:
        return self.total_bytes / self.bytes_16bit if self.bytes_16bit else 0.0

    @property
    def memory_saved_percent(self) -> float:
        return 100.0 * (1.0 - self.fraction_of_16bit)

    @property
    def budget_used(self) -> float:
        return self.total_bytes / self.budget_bytes if self.budget_bytes else 0.0

    def rounding_of(self, fmt: Format) -> RoundingMethod:
        """The rounding the exporter applies to groups of format ``fmt``."""
        if fmt.is_unquantized or fmt is Format.NF4:
            return RoundingMethod.RTN
        r = self.rounding
        return RoundingMethod.GPTQ if r is not None and r.uses_gptq(fmt) else RoundingMethod.RTN

    def gptq_modules(self) -> list[str]:
        """Full names of the modules the exporter rounds with GPTQ."""
        return [
            m
            for a in self.assignments
            if self.rounding_of(a.format) is RoundingMethod.GPTQ
            for m in a.modules
        ]

    def format_of(self) -> dict[str, Format]:
        """group name -> format."""
        return {a.group: a.format for a in self.assignments}

    def modules_by_format(self) -> dict[Format, list[str]]:
        """Format -> full module names; what an exporter turns into config_groups / ignore."""
        out: dict[Format, list[str]] = {}
        for a in self.assignments:
            out.setdefault(a.format, []).extend(a.modules)
        return out

    def groups_per_format(self) -> dict[str, int]:
        """Format name -> number of layer groups planned in it (status, reports, logs)."""
        return dict(Counter(a.format.value for a in self.assignments))

    def summary(self) -> dict[str, Any]:
        by_format = self.groups_per_format()
        by_kind: dict[str, dict[str, int]] = {}
        for a in self.assignments:
            per = by_kind.setdefault(a.kind.value, {})
            per[a.format.value] = per.get(a.format.value, 0) + 1
        return {
            **self._header(),
            "profile": self.profile,
            "exportFormat": self.export_format.value,
            "groups": len(self.assignments),
            "byFormat": dict(by_format),
            "byKind": by_kind,
            "totalBytes": self.total_bytes,
            "bytes16Bit": self.bytes_16bit,
            "fractionOf16Bit": round(self.fraction_of_16bit, 4),
            "memorySavedPercent": round(100 * (1 - self.fraction_of_16bit), 2),
            "effectiveBits": round(self.effective_bits, 3),
            "predictedLoss": self.predicted_loss,
            "budgetBytes": self.budget_bytes,
            "budgetUsed": round(self.budget_used, 4),
            "predictedRelativeLatency": self.predicted_relative_latency,
            "excludedFormats": sorted({e.format.value for e in self.excluded if not e.groups}),
            "groupExclusions": sum(len(e.groups) for e in self.excluded),
            "pins": len(self.pins_applied),
            "solverStatus": self.solver_status,
            "rounding": self.rounding.method.value if self.rounding is not None else "rtn",
        }


# --------------------------------------------------------------------- export


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

    def summary(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            **self._header(),
            "artifactUri": self.artifact_uri[:500],
            "exportFormat": self.export_format.value,
            "configGroups": {
                g.name: {"format": g.format.value, "targets": g.num_targets}
                for g in self.config_groups[:12]
            },
            "ignored": len(self.ignore),
            "files": len(self.files),
            "bytesOnDisk": self.bytes_on_disk,
        }
        if self.wall_seconds is not None:
            s["wallSeconds"] = round(self.wall_seconds, 2)
        if self.phase_seconds:
            s["phaseSeconds"] = {k: round(v, 2) for k, v in list(self.phase_seconds.items())[:12]}
        if self.device:
            s["device"] = self.device[:40]
        return s


# ----------------------------------------------------------------- evaluation


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

    def summary(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", by_alias=True, exclude={"api_version", "created_at"})
        return {**self._header(), **{k: v for k, v in d.items() if k not in ("kind", "stage")}}


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
