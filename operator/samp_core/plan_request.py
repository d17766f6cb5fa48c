"""What the planner is asked: the request, its budget, its errors, and how a spec maps to it.

``request_from_spec`` maps a spec to the request through the stage contract
(samp_core.stage_contract), the same mapping the plan Job uses, so the operator and the
plan job cannot drift. The planner itself is ``samp_core.planner``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from samp_core.formats import ExportFormat, Format, RoundingMethod, checkpoint_bytes
from samp_core.groups import LayerGroup
from samp_core.hardware import HardwareProfile
from samp_core.results import Rounding

__all__ = [
    "Budget",
    "PlanError",
    "PlanInfeasibleError",
    "PlanRequest",
    "group_bytes",
    "sixteen_bit_formats",
]

_QUANTIZED_DEFAULT: tuple[Format, ...] = tuple(f for f in Format if not f.is_unquantized)


class PlanError(ValueError):
    """The request cannot be planned as written (bad pin, unknown group, ...)."""


class PlanInfeasibleError(PlanError):
    """No assignment fits the budget; the message names the smallest budget that does."""

    def __init__(
        self,
        message: str,
        *,
        requested_bytes: int,
        min_feasible_bytes: int,
        min_effective_bits: float,
        min_fraction_of_16bit: float,
    ) -> None:
        super().__init__(message)
        self.requested_bytes = requested_bytes
        self.min_feasible_bytes = min_feasible_bytes
        self.min_effective_bits = min_effective_bits
        self.min_fraction_of_16bit = min_fraction_of_16bit


class Budget(BaseModel):
    """The memory budget for the planned weights: exactly one of three equivalent forms.

    It covers the groups handed to the planner (usually every Linear plus
    lm_head and embeddings); biases, norms and the KV cache are outside it.
    """

    model_config = ConfigDict(
        populate_by_name=True, alias_generator=to_camel, extra="forbid", frozen=True
    )

    max_weight_bytes: int | None = Field(default=None, gt=0)
    fraction_of_16bit: float | None = Field(default=None, gt=0)
    effective_bits: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        given = [
            n
            for n in ("max_weight_bytes", "fraction_of_16bit", "effective_bits")
            if getattr(self, n) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "budget needs exactly one of maxWeightBytes, fractionOf16Bit, effectiveBits; "
                f"got {given or 'none'}"
            )
        return self

    def resolve(self, bytes_16bit: int, num_params: int) -> int:
        """The byte limit, floored, for planned weights of this size."""
        if self.max_weight_bytes is not None:
            return self.max_weight_bytes
        if self.fraction_of_16bit is not None:
            return math.floor(self.fraction_of_16bit * bytes_16bit)
        assert self.effective_bits is not None
        return math.floor(self.effective_bits * num_params / 8)


class PlanRequest(BaseModel):
    """Everything the planner needs; no defaults hide a decision the user should see.

    ``scores[group][format]`` is the estimated loss increase when only that group
    uses that format (16-bit formats are 0 and may be omitted). ``pins`` maps a
    group name, or the name of any module in a group, to a format; ``overrides``
    are ``(regex, format)`` rules searched (``re.search``) in group and module
    names, first match wins, pins first. Pins and overrides are explicit user
    intent, so they bypass ``allowed_formats`` and the native check (with a
    warning), but never servability or shape constraints; use ``Format.BF16`` to keep
    matches unquantized. Embeddings always stay 16-bit: neither vLLM's
    compressed-tensors nor its bitsandbytes loader quantizes embedding tables.
    ``export_format`` None plans every checkpoint family the formats allow and
    keeps the best; set it to plan one family only.
    ``max_relative_latency`` bounds predicted decode time of the planned Linears
    as a fraction of all-bf16 (decode is memory-bound: time ~ params x relative
    cost of the format on this profile).
    """

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="forbid")

    groups: list[LayerGroup] = Field(min_length=1)
    scores: dict[str, dict[Format, float]]
    profile: HardwareProfile
    budget: Budget
    allowed_formats: list[Format] = Field(default_factory=lambda: list(_QUANTIZED_DEFAULT))
    pins: dict[str, Format] = Field(default_factory=dict)
    overrides: list[tuple[str, Format]] = Field(default_factory=list)
    keep_lm_head_16bit: bool = True
    keep_embeddings_16bit: bool = True
    export_format: ExportFormat | None = None
    allow_non_native: bool = False
    group_size: int = Field(default=128, gt=0)
    max_relative_latency: float | None = Field(default=None, gt=0)
    curve_points: int = Field(default=12, ge=0, le=64)
    time_limit_s: float = Field(default=60.0, gt=0)
    # Carried into the plan for the exporter. Round-to-nearest unless asked: GPTQ needs
    # calibration tokens at export; the API (request_from_spec) and `samp plan` default
    # to GPTQ for the 4-bit groups.
    rounding: Rounding = Field(default_factory=lambda: Rounding(method=RoundingMethod.RTN))

    @field_validator("overrides")
    @classmethod
    def _regexes_compile(cls, v: list[tuple[str, Format]]) -> list[tuple[str, Format]]:
        for pattern, _ in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"override pattern {pattern!r}: {e}") from None
        return v

    @model_validator(mode="after")
    def _names(self) -> PlanRequest:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError("duplicate group names")
        unknown = sorted(set(self.scores) - set(names))
        if unknown:
            raise ValueError(f"scores for unknown groups: {unknown[:5]}")
        return self


def group_bytes(group: LayerGroup, fmt: Format, group_size: int) -> int:
    """Bytes of ``group`` stored in ``fmt`` (all fused modules, scales included): what the
    checkpoint holds and the server loads, so budgets and savings count real bytes (W4A8's
    int8 containers, not the 4 bits its kernels compute with)."""
    return checkpoint_bytes(
        fmt, group.in_features, group.out_features, group_size, num_tensors=group.num_modules
    )



def sixteen_bit_formats(profile: HardwareProfile, allowed: Sequence[Format]) -> list[Format]:
    """16-bit formats usable on this profile: those listed, else the profile's preferred one."""
    listed = [f for f in allowed if f.is_unquantized and profile.is_servable(f)]
    if listed:
        return listed
    for f in (Format.BF16, Format.FP16):
        if profile.is_servable(f):
            return [f]
    raise PlanError(f"profile {profile.name} serves no 16-bit format")

