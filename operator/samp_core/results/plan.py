"""The plan stage's document: one format per layer group, and why."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar, Literal

from pydantic import Field

from samp_core.formats import GPTQ_DEFAULT_FORMATS, ExportFormat, Format, RoundingMethod
from samp_core.groups import GroupKind
from samp_core.results.base import ResultBase, Stage, SummaryBase, _Model


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
    total_bytes: int = Field(ge=0)  # bytes of the planned weights as stored and loaded
    checkpoint_bytes: int | None = Field(default=None, ge=0)  # what the exporter writes
    bytes_16bit: int = Field(ge=0)
    num_params: int = Field(ge=0)
    effective_bits: float
    predicted_loss: float
    # The unit of predicted_loss and of each score: the sensitivity method's (fisher and kl
    # in nats/token, activation in squared output error); None in plans written before.
    score_unit: str | None = None
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

    def summary(self) -> PlanResultSummary:
        by_kind: dict[str, dict[str, int]] = {}
        for a in self.assignments:
            per = by_kind.setdefault(a.kind.value, {})
            per[a.format.value] = per.get(a.format.value, 0) + 1
        return PlanResultSummary(
            **self._summary_header(),
            profile=self.profile,
            export_format=self.export_format,
            groups=len(self.assignments),
            by_format=self.groups_per_format(),
            by_kind=by_kind,
            total_bytes=self.total_bytes,
            bytes_16bit=self.bytes_16bit,
            fraction_of_16bit=round(self.fraction_of_16bit, 4),
            memory_saved_percent=round(self.memory_saved_percent, 2),
            effective_bits=round(self.effective_bits, 3),
            predicted_loss=self.predicted_loss,
            budget_bytes=self.budget_bytes,
            budget_used=round(self.budget_used, 4),
            predicted_relative_latency=self.predicted_relative_latency,
            excluded_formats=sorted({e.format.value for e in self.excluded if not e.groups}),
            group_exclusions=sum(len(e.groups) for e in self.excluded),
            pins=len(self.pins_applied),
            solver_status=self.solver_status,
            rounding=self.rounding.method if self.rounding is not None else RoundingMethod.RTN,
        )



class PlanResultSummary(SummaryBase):
    DROPPABLE: ClassVar[tuple[str, ...]] = ("by_kind", "excluded_formats")
    kind: Literal["PlanResult"] = "PlanResult"

    profile: str
    export_format: ExportFormat
    groups: int = Field(ge=0)
    by_format: dict[str, int]  # format -> layer groups planned in it
    by_kind: dict[str, dict[str, int]] | None = None  # group kind -> format -> groups
    total_bytes: int = Field(ge=0)
    bytes_16bit: int = Field(ge=0)
    fraction_of_16bit: float
    memory_saved_percent: float
    effective_bits: float
    predicted_loss: float
    # The unit of predicted_loss and of each score: the sensitivity method's (fisher and kl
    # in nats/token, activation in squared output error); None in plans written before.
    score_unit: str | None = None
    budget_bytes: int = Field(ge=0)
    budget_used: float
    predicted_relative_latency: float | None = None
    excluded_formats: list[str] | None = None
    group_exclusions: int = 0
    pins: int = 0
    solver_status: str = ""
    rounding: RoundingMethod = RoundingMethod.RTN

    def describe(self) -> str:
        return (f"{self.effective_bits} effective bits, {self.fraction_of_16bit} of 16-bit, "
                f"formats {self.by_format}")
