"""``spec.quantization``: the SAMP policy (budget, candidate formats, scoring, rounding, pins)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, Strict, field_validator

from samp_core.formats import (
    GPTQ_DEFAULT_FORMATS,
    GPTQ_FORMATS,
    ExportFormat,
    Format,
    RoundingMethod,
    SensitivityMethod,
)
from samp_core.schema_base import ApiModel, Rule
from samp_core.spec.common import MAX_WEIGHT_BYTES, Quantity
from samp_core.units import parse_quantity

# Enums are written as strings in a manifest: they opt out of the models' strict mode.
FormatName = Annotated[Format, Strict(False)]


class BudgetSpec(ApiModel):
    """Memory budget of the quantized weights. Set exactly one form."""

    rules = (
        Rule(
            cel="[has(self.maxWeightBytes), has(self.fractionOf16Bit), "
            "has(self.effectiveBits)].filter(x, x).size() == 1",
            message="set exactly one of budget.maxWeightBytes, budget.fractionOf16Bit, "
            "budget.effectiveBits",
            holds=lambda b: [
                b.max_weight_bytes is not None,
                b.fraction_of_16bit is not None,
                b.effective_bits is not None,
            ].count(True)
            == 1,
        ),
        Rule(
            cel="!has(self.maxWeightBytes) || !isQuantity(self.maxWeightBytes) || "
            "(quantity(self.maxWeightBytes).compareTo(quantity('1Mi')) >= 0 && "
            "quantity(self.maxWeightBytes).compareTo(quantity('64Ti')) <= 0)",
            message="budget.maxWeightBytes must lie between 1Mi and 64Ti; check the suffix "
            "(38Gi, not 38Pi)",
            holds=lambda b: b.max_weight_bytes is None
            or 2**20 <= parse_quantity(b.max_weight_bytes) <= MAX_WEIGHT_BYTES,
            field_path=".maxWeightBytes",
        ),
    )

    max_weight_bytes: Quantity | None = Field(
        default=None,
        description="Largest total size of the quantized weights, as a quantity (e.g. 38Gi).",
    )
    fraction_of_16bit: float | None = Field(
        default=None,
        alias="fractionOf16Bit",
        gt=0.0,
        le=1.0,
        description="Largest size as a fraction of the 16-bit weights (0.4 = 60% saved).",
    )
    effective_bits: float | None = Field(
        default=None,
        ge=2.0,
        le=16.0,
        description="Largest average bits per weight, scales included (e.g. 5.0).",
    )

    def max_bytes(self) -> int | None:
        return None if self.max_weight_bytes is None else parse_quantity(self.max_weight_bytes)


class SensitivitySpec(ApiModel):
    """How each layer group's sensitivity to each format is measured."""

    method: Annotated[SensitivityMethod, Strict(False)] = Field(
        default=SensitivityMethod.FISHER,
        description="fisher: gradient-weighted output error (one forward+backward); "
        "activation: activation-weighted weight error (forward only, cheapest); "
        "kl: exact KL per group and format (slow reference, small models only).",
    )
    max_tokens: int = Field(
        default=262_144,
        ge=1024,
        le=16_777_216,
        description="Calibration tokens used for scoring.",
    )


class RoundingSpec(ApiModel):
    """How weights are rounded onto the planned formats' grids at export."""

    rules = (
        Rule(
            cel="self.gptqFormats.all(f, f in [{}])".format(
                ", ".join(f"'{f.value}'" for f in GPTQ_FORMATS)
            ),
            message="gptqFormats may list only {} (GPTQ rounds integer grids; fp8, nvfp4 and "
            "16-bit groups are rounded to nearest)".format(
                ", ".join(f.value for f in GPTQ_FORMATS)
            ),
            holds=lambda r: all(f in GPTQ_FORMATS for f in r.gptq_formats),
            field_path=".gptqFormats",
        ),
    )

    method: Annotated[RoundingMethod, Strict(False)] = Field(
        default=RoundingMethod.GPTQ,
        description="gptq: groups in gptqFormats are rounded with GPTQ (Hessian from the "
        "calibration prompts, act-order, damping, the same group-wise scales and checkpoint "
        "layout as round-to-nearest), the rest to nearest; rtn: round everything to nearest "
        "(fastest export).",
    )
    gptq_formats: list[FormatName] = Field(
        default_factory=lambda: list(GPTQ_DEFAULT_FORMATS),
        min_length=1,
        max_length=3,
        description="Formats GPTQ rounds when method is gptq (int4-w4a16, int4-w4a8, "
        "int8-w8a8); default the 4-bit ones.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    dampening_fraction: float = Field(
        default=0.01,
        gt=0.0,
        le=1.0,
        description="GPTQ damping: this fraction of the mean Hessian diagonal is added to it.",
    )
    act_order: bool = Field(
        default=True,
        description="GPTQ rounds columns in order of decreasing activation energy (scales "
        "stay static, so the checkpoint needs no g_idx).",
    )
    max_tokens: int = Field(
        default=131_072,
        ge=1024,
        le=16_777_216,
        description="Calibration tokens GPTQ's Hessians are accumulated from.",
    )


class Override(ApiModel):
    """Pin a format for the modules matching a regex, or keep them unquantized."""

    rules = (
        Rule(
            cel="has(self.format) != (has(self.keepUnquantized) && self.keepUnquantized)",
            message="an override sets exactly one of format or keepUnquantized: true",
            holds=lambda o: (o.format is not None) != bool(o.keep_unquantized),
        ),
    )

    match: str = Field(
        min_length=1,
        max_length=512,
        description="Python/RE2 regular expression matched against module names "
        "(e.g. 'model\\.layers\\.(0|1)\\.mlp'). Fused groups take the override as a whole.",
    )
    format: FormatName | None = Field(default=None, description="Format pinned for the matches.")
    keep_unquantized: bool | None = Field(
        default=None, description="Keep the matches in 16-bit."
    )

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"{value!r} is not a valid regular expression: {err}") from err
        return value


DEFAULT_ALLOWED_FORMATS = [
    Format.INT4_W4A16,
    Format.INT4_W4A8,
    Format.FP8_W8A8,
    Format.INT8_W8A8,
    Format.NVFP4,
    Format.BF16,
]


class QuantizationSpec(ApiModel):
    """The SAMP policy: budget, candidate formats, scoring, pins and export."""

    rules = (
        Rule(
            cel="self.exportFormat != 'compressed-tensors' || !('nf4' in self.allowedFormats)",
            message="nf4 cannot be exported as compressed-tensors (vLLM has no nf4 scheme in "
            "it); use int4-w4a16, or set exportFormat: bitsandbytes-nf4",
            holds=lambda q: q.export_format != ExportFormat.COMPRESSED_TENSORS
            or Format.NF4 not in q.allowed_formats,
            field_path=".allowedFormats",
        ),
        Rule(
            cel="self.exportFormat != 'bitsandbytes-nf4' || "
            "self.allowedFormats.all(f, f in ['nf4', 'bf16', 'fp16'])",
            message="exportFormat bitsandbytes-nf4 can hold only nf4 and 16-bit layers; "
            "restrict allowedFormats to nf4, bf16, fp16",
            holds=lambda q: q.export_format != ExportFormat.BITSANDBYTES_NF4
            or all(f in (Format.NF4, Format.BF16, Format.FP16) for f in q.allowed_formats),
            field_path=".allowedFormats",
        ),
        Rule(
            cel="!has(self.overrides) || "
            "self.overrides.all(o, !has(o.format) || o.format in self.allowedFormats)",
            message="an override pins a format that allowedFormats does not list, so the "
            "planner could never honour it; add that format to quantization.allowedFormats "
            "or pin one it lists (keepUnquantized: true keeps 16-bit)",
            holds=lambda q: all(
                o.format is None or o.format in q.allowed_formats for o in q.overrides
            ),
            field_path=".overrides",
        ),
    )

    budget: BudgetSpec = Field(description="Memory budget; exactly one form.")
    allowed_formats: list[FormatName] = Field(
        default=DEFAULT_ALLOWED_FORMATS,
        min_length=1,
        max_length=8,
        description="Formats the planner may choose from; those the target GPU cannot run "
        "natively are dropped unless allowNonNativeFormats is true.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    sensitivity: SensitivitySpec = Field(
        default_factory=SensitivitySpec, description="Sensitivity scoring."
    )
    rounding: RoundingSpec = Field(
        default_factory=RoundingSpec,
        description="Weight rounding at export: GPTQ for the 4-bit groups by default.",
    )
    overrides: list[Override] = Field(
        default_factory=list,
        max_length=64,
        description="Per-module pins, applied in order; the first match wins.",
    )
    keep_lm_head16_bit: bool = Field(
        default=True,
        alias="keepLmHead16Bit",
        description=(
            "Keep the output head in 16-bit (the default recipe). false lets the planner "
            "quantize the head where that is cheap in loss: 9-40% lower KL to the 16-bit "
            "model at equal bytes on the benchmark models, perplexity within 0.5% either "
            "way; a quantized head is proven served by vLLM on the cpu profile."
        ),
    )
    keep_embeddings16_bit: bool = Field(
        default=True, alias="keepEmbeddings16Bit", description="Keep embeddings in 16-bit."
    )
    allow_non_native_formats: bool = Field(
        default=False,
        description="Let the planner pick formats the target runs only through emulation "
        "or fallback kernels (slower than 16-bit in some cases).",
    )
    export_format: Annotated[ExportFormat, Strict(False)] = Field(
        default=ExportFormat.COMPRESSED_TENSORS,
        description="compressed-tensors (vLLM-native mixed precision) or bitsandbytes-nf4 "
        "(transformers users; 4-bit MLP, the rest 16-bit).",
    )
    group_size: Literal[32, 64, 128, 256] = Field(
        default=128, description="Group size of int4 scales; must divide the layers' inputs."
    )

    @field_validator("allowed_formats")
    @classmethod
    def _unique(cls, value: list[Format]) -> list[Format]:
        if len(set(value)) != len(value):
            raise ValueError("allowedFormats lists a format twice; list each once")
        return value
