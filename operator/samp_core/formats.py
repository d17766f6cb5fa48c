"""Names shared by every layer: weight formats, hardware targets, sensitivity methods.

These are the vocabulary of the API (spec.quantization.allowedFormats,
spec.hardware.target), of the planner and of the job-result documents, so they
live in one small module that imports nothing.
"""

from __future__ import annotations

from enum import StrEnum


class Format(StrEnum):
    """A weight (and activation) format a layer group can be stored and served in."""

    NF4 = "nf4"  # bitsandbytes NormalFloat4, weight-only (transformers / vLLM bnb loader)
    INT4_W4A16 = "int4-w4a16"  # int4 weights, 16-bit activations (Marlin / Machete)
    INT4_W4A8 = "int4-w4a8"  # int4 weights, int8 (cpu) or fp8 (sm90) activations
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


class RoundingMethod(StrEnum):
    """How weights are rounded onto a format's grid once the plan has chosen the format."""

    GPTQ = "gptq"  # Hessian-aware: rounding error compensated on calibration inputs
    RTN = "rtn"  # round to nearest with min-max scales


# Formats GPTQ rounds in this release: integer grids with static min-max scales.
GPTQ_FORMATS: tuple[Format, ...] = (Format.INT4_W4A16, Format.INT4_W4A8, Format.INT8_W8A8)
# GPTQ's default scope: the 4-bit integer formats, where it halves the loss of RTN.
GPTQ_DEFAULT_FORMATS: tuple[Format, ...] = (Format.INT4_W4A16, Format.INT4_W4A8)


class ExportFormat(StrEnum):
    COMPRESSED_TENSORS = "compressed-tensors"
    BITSANDBYTES_NF4 = "bitsandbytes-nf4"
