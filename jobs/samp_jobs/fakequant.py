"""Fake quantization (quantize then dequantize) for every candidate format.

Sensitivity scores are only worth something if the error they measure is the
error the exported checkpoint will have. So these functions mirror the
arithmetic of compressed-tensors (``calculate_qparams`` + ``_quantize_dequantize``:
symmetric int scale = absmax / ((qmax - qmin) / 2), round, clamp) and of
bitsandbytes NF4 (absmax blocks of 64, nearest NF4 code); tests compare them
with those libraries on tiny tensors. They compute in the dtype they are given,
so callers pass weights in the checkpoint's dtype to match the export bit for bit.

Pure tensor functions: no modules, no I/O, device-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from samp_core.formats import ActivationType, Format, format_spec

Tensor = torch.Tensor

FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
FP4_MAX = 6.0
NF4_CODE = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)  # bitsandbytes get_4bit_type("nf4")
_FP4_BOUNDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
_FP4_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_FP4_TIES_UP = torch.tensor([0.75, 1.75, 3.5])  # round-half-to-even on the mantissa


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def _safe(scale: Tensor) -> Tensor:
    """compressed-tensors replaces zero scales by eps so all-zero rows stay zero."""
    return torch.where(scale == 0, torch.full_like(scale, _eps(scale.dtype)), scale)


def _grouped(w: Tensor, group_size: int | None) -> Tensor:
    """[out, in] -> [out, in/g, g] (per-channel when group_size is None)."""
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if group_size is None:
        return w.unsqueeze(1)
    if w.shape[1] % group_size:
        raise ValueError(f"group size {group_size} does not divide in_features {w.shape[1]}")
    return w.reshape(w.shape[0], w.shape[1] // group_size, group_size)


def int_qdq(w: Tensor, bits: int, group_size: int | None, symmetric: bool = True) -> Tensor:
    """Integer weight fake-quant, per output channel or per group of input columns."""
    g = _grouped(w, group_size)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo = torch.clamp(g.amin(dim=-1, keepdim=True), max=0)
    hi = torch.clamp(g.amax(dim=-1, keepdim=True), min=0)
    if symmetric:
        scale = _safe(torch.maximum(lo.abs(), hi) / ((qmax - qmin) / 2))
        q = torch.clamp(g / scale, qmin, qmax).round()
        out = q * scale
    else:
        scale = _safe((hi - lo) / (qmax - qmin))
        zp = torch.clamp(qmin - lo / scale, qmin, qmax).round()
        q = torch.clamp(g / scale + zp, qmin, qmax).round()
        out = (q - zp) * scale
    return out.reshape(w.shape).to(w.dtype)


def fp8_qdq(w: Tensor, group_size: int | None = None) -> Tensor:
    """FP8 e4m3 weight fake-quant with per-channel scales (compressed-tensors FP8_DYNAMIC)."""
    g = _grouped(w, group_size)
    scale = _safe(g.abs().amax(dim=-1, keepdim=True) / FP8_MAX)
    q = torch.clamp(g / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(w.dtype)
    return (q * scale).reshape(w.shape).to(w.dtype)


def round_fp4(x: Tensor) -> Tensor:
    """Round to the FP4 e2m1 grid {0, .5, 1, 1.5, 2, 3, 4, 6} (ties to even mantissa)."""
    a = x.abs().float()
    bounds = _FP4_BOUNDS.to(a.device)
    idx = torch.bucketize(a, bounds) + torch.isin(a, _FP4_TIES_UP.to(a.device)).long()
    return (torch.sign(x.float()) * _FP4_VALUES.to(a.device)[idx]).to(x.dtype)


def nvfp4_qdq(w: Tensor, group_size: int = 16) -> Tensor:
    """NVFP4: fp4 e2m1 values, fp8 e4m3 scale per 16 values, one fp32 global scale."""
    g = _grouped(w, group_size).float()
    amax = torch.clamp(g.abs().amax(), min=torch.finfo(torch.float32).tiny)
    global_scale = FP8_MAX * FP4_MAX / amax
    local = g.abs().amax(dim=-1, keepdim=True) / FP4_MAX * global_scale
    local = torch.clamp(local, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
    local = torch.where(local == 0, torch.full_like(local, 0.125), local)
    scale = local / global_scale
    q = round_fp4(torch.clamp(g / scale, -FP4_MAX, FP4_MAX))
    return (q * scale).reshape(w.shape).to(w.dtype)


def nf4_qdq(w: Tensor, blocksize: int = 64) -> Tensor:
    """bitsandbytes NF4: absmax per block of 64 consecutive values, nearest NF4 code."""
    flat = w.float().reshape(-1)
    pad = (-flat.numel()) % blocksize
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    blocks = flat.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    normed = blocks / torch.where(absmax == 0, torch.ones_like(absmax), absmax)
    code = NF4_CODE.to(w.device)
    mids = (code[1:] + code[:-1]) / 2
    idx = torch.bucketize(normed, mids)
    out = (code[idx] * absmax).reshape(-1)
    return out[: w.numel()].reshape(w.shape).to(w.dtype)


def int8_token_qdq(x: Tensor) -> Tensor:
    """Dynamic symmetric per-token int8 activation fake-quant (W8A8 / W4A8 inputs)."""
    scale = _safe(x.abs().amax(dim=-1, keepdim=True) / 127.5)
    return (torch.clamp(x / scale, -128, 127).round() * scale).to(x.dtype)


def fp8_token_qdq(x: Tensor) -> Tensor:
    """Dynamic per-token fp8 e4m3 activation fake-quant (FP8 W8A8 / W4AFP8 inputs)."""
    scale = _safe(x.abs().amax(dim=-1, keepdim=True) / FP8_MAX)
    q = torch.clamp(x / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype)
    return (q * scale).to(x.dtype)


def nvfp4_act_qdq(x: Tensor) -> Tensor:
    """NVFP4 activations: per-16 fp8 scales with a dynamic (per-batch) global scale."""
    shape = x.shape
    return nvfp4_qdq(x.reshape(-1, shape[-1]), 16).reshape(shape)


@dataclass(frozen=True)
class FormatQuantizer:
    """How one format perturbs a Linear: weight fake-quant and optional input fake-quant."""

    format: Format
    weight: Callable[[Tensor], Tensor]
    activation: Callable[[Tensor], Tensor] | None

    def output_delta(self, x: Tensor, w: Tensor) -> Tensor:
        """ΔY = Q_a(X) Q(W)^T - X W^T (a Linear's unquantized bias cancels out)."""
        wq = self.weight(w)
        xq = self.activation(x) if self.activation is not None else x
        return torch.nn.functional.linear(xq, wq) - torch.nn.functional.linear(x, w)


def largest_dividing_group_size(in_features: int, requested: int) -> int:
    """Largest power-of-two group ≤ requested that divides in_features (≥ 16).

    compressed-tensors and vLLM need the group size to divide the input size;
    falling back to a smaller group keeps a layer quantizable rather than
    refusing the whole plan.
    """
    g = requested
    while g >= 16:
        if in_features % g == 0:
            return g
        g //= 2
    raise ValueError(f"no group size ≤ {requested} divides in_features {in_features}")


def _unchanged(w: Tensor) -> Tensor:
    return w


WeightQdq = Callable[[Tensor], Tensor]

# Weight fake-quant per format, given the group size the format uses (the catalog's
# fixed one for NVFP4 and NF4). Keyed by format, like samp_core.formats.CATALOG.
WEIGHT_QDQ: dict[Format, Callable[[int], WeightQdq]] = {
    Format.BF16: lambda _g: _unchanged,
    Format.FP16: lambda _g: _unchanged,
    Format.INT4_W4A16: lambda g: partial(int_qdq, bits=4, group_size=g),
    Format.INT4_W4A8: lambda g: partial(int_qdq, bits=4, group_size=g),
    Format.FP8_W8A8: lambda _g: fp8_qdq,
    Format.INT8_W8A8: lambda _g: partial(int_qdq, bits=8, group_size=None),
    Format.NVFP4: lambda g: partial(nvfp4_qdq, group_size=g),
    Format.NF4: lambda g: partial(nf4_qdq, blocksize=g),
}

# Input fake-quant per activation type (the catalog says which type a format has where).
ACTIVATION_QDQ: dict[ActivationType, WeightQdq | None] = {
    "16-bit": None,
    "int8": int8_token_qdq,
    "fp8": fp8_token_qdq,
    "fp4": nvfp4_act_qdq,
}


def quantizer(
    fmt: Format, *, profile: str = "sm90", group_size: int = 128, in_features: int | None = None
) -> FormatQuantizer:
    """The fake-quantizer for a format as it will be exported for a hardware profile."""
    g = largest_dividing_group_size(in_features, group_size) if in_features else group_size
    spec = format_spec(fmt)
    weight = WEIGHT_QDQ[fmt](spec.fixed_group_size or g)
    return FormatQuantizer(fmt, weight, ACTIVATION_QDQ[spec.scheme_for(profile).activation])
