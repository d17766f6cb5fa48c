"""Triton kernels for the GPU matmul cost benchmark (``gpu_matmul_costs.py``).

torch's own int4 kernel (tinygemm) is slower than bf16 at decode on Hopper, which
says more about that kernel than about int4. These kernels show what a plain
Triton kernel gets, so the planner's costs are not set by one weak kernel:

- ``w4a16_matmul``: ``y = x @ dequant(w).T`` with ``x`` bf16 [M, K], ``w`` int4
  codes in [-8, 7] packed two per byte, one bf16 scale per group of 128 inputs
  per output channel (the arithmetic of ``samp_jobs.fakequant.int_qdq(w, 4, 128)``),
  fp32 accumulate, bf16 out. Dequantization is fused into the K loop, so only
  the packed bytes leave HBM. Small M splits K over several programs (fp32
  atomics), so decode, which only streams weights, has enough loads in flight.
- ``quant_per_token``: per-token (row) fp8 e4m3 or int8 activation quantization
  in one pass (row absmax, scale, cast), as vLLM fuses it before its W8A8 GEMMs.

Layout: ``packed[n, g * 64 + j]`` holds column ``g * 128 + j`` in its low nibble
and column ``g * 128 + 64 + j`` in its high nibble (two's complement). Each half
is a contiguous 64-column slice of x, so the kernel needs no nibble interleave
shuffle: two ``tl.dot`` calls per group. Scales are stored transposed,
``[K / 128, N]``, so a group's scales are one contiguous load.

The kernel computes ``y.T = w @ x.T`` ("swap AB"): the dequantized weight tile
is the left operand, which Hopper's wgmma can take straight from registers, and
the few decode tokens sit in the MMA's narrow N slot instead of padding its
64-row M slot.

Self check (small shapes, against the fp32 product of the dequantized weights):
    python tests/benchmarks/triton_w4a16.py --selfcheck                     # CUDA
    TRITON_INTERPRET=1 python tests/benchmarks/triton_w4a16.py --selfcheck  # CPU
"""

# Triton kernels name their sizes and compile-time constants in capitals and take
# every argument positionally.
# ruff: noqa: N803, PLR0917

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

GROUP = 128  # int4 group size along in_features
MAX_ERR = 1e-2  # relative error a kernel must beat to be timed at all
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

Tensor = torch.Tensor


# ---------------------------------------------------------------- torch side


def quantize_int4(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int4 per group of 128 inputs: (codes int8 [N, K] in [-8, 7], scales [N, K/128]).

    Same operations, in the same dtype, as ``fakequant.int_qdq(w, 4, 128)``:
    scale = max(|min|, max) / 7.5, zero scales -> eps, clamp then round.
    """
    n, k = w.shape
    if k % GROUP:
        raise ValueError(f"in_features {k} is not a multiple of {GROUP}")
    g = w.reshape(n, k // GROUP, GROUP)
    lo = torch.clamp(g.amin(dim=-1, keepdim=True), max=0)
    hi = torch.clamp(g.amax(dim=-1, keepdim=True), min=0)
    scale = torch.maximum(lo.abs(), hi) / 7.5
    scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(w.dtype).eps), scale)
    q = torch.clamp(g / scale, -8, 7).round()
    return q.to(torch.int8).reshape(n, k), scale.squeeze(-1)


def dequantize_int4(codes: Tensor, scales: Tensor) -> Tensor:
    """fp32 [N, K] = code * scale, exact (a 4-bit code times a bf16 scale fits fp32)."""
    n, k = codes.shape
    g = codes.float().reshape(n, k // GROUP, GROUP) * scales.float().unsqueeze(-1)
    return g.reshape(n, k)


@dataclass(frozen=True)
class Int4Weight:
    packed: Tensor  # int8 [N, K/2], layout in the module docstring
    scales_t: Tensor  # bf16 [K/128, N]
    n: int
    k: int


def pack_int4(codes: Tensor, scales: Tensor) -> Int4Weight:
    n, k = codes.shape
    halves = codes.to(torch.int16).reshape(n, k // GROUP, 2, GROUP // 2)
    byte = (halves[:, :, 0] & 0xF) | ((halves[:, :, 1] & 0xF) << 4)  # 0..255
    packed = torch.where(byte > 127, byte - 256, byte).to(torch.int8).reshape(n, k // 2)
    scales_t = scales.to(torch.bfloat16).t().contiguous()
    return Int4Weight(packed.contiguous(), scales_t, n, k)


def unpack_int4(wt: Int4Weight) -> Tensor:
    """Codes back from the packed layout (for the round-trip check)."""
    b = wt.packed.to(torch.int16).reshape(wt.n, wt.k // GROUP, 1, GROUP // 2)
    lo = ((b & 0xF) ^ 8) - 8  # sign-extend a nibble
    hi = (((b >> 4) & 0xF) ^ 8) - 8
    return torch.cat((lo, hi), dim=2).reshape(wt.n, wt.k).to(torch.int8)


def ref_quant_per_token(t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """torch's eager per-token quantization (the unfused baseline): (codes, fp32 scale [M, 1])."""
    qmax = float(torch.finfo(dtype).max) if dtype.is_floating_point else 127.0
    amax = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / qmax
    if dtype.is_floating_point:
        return (t.float() / scale).to(dtype), scale
    return (t.float() / scale).round().clamp(-128, 127).to(dtype), scale


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


# ---------------------------------------------------------------- W4A16 kernel


@triton.jit
def _dot(a, b, acc, FP32_OPERANDS: tl.constexpr):
    # Triton's interpreter multiplies the raw bits of bf16 operands (it does not
    # do bf16 arithmetic, triton#11584); exact fp32 copies give it the same
    # products and fp32 sums as bf16 tensor cores. Compiled kernels keep bf16.
    if FP32_OPERANDS:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def _w4a16_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    GROUP_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
    SCALE_WEIGHTS: tl.constexpr,
    SUPER_M: tl.constexpr,
    FP32_DOT: tl.constexpr,
):
    HALF: tl.constexpr = GROUP_K // 2
    # Tile order: SUPER_M token tiles sweep N together, so at prefill the weight
    # tiles are reused from L2 by neighbouring programs (at decode there is one
    # token tile and this is the identity).
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_super = SUPER_M * tiles_n
    first_m = (pid // per_super) * SUPER_M
    rows = tl.minimum(tiles_m - first_m, SUPER_M)
    pid_m = first_m + (pid % per_super) % rows
    pid_n = (pid % per_super) // rows
    pid_k = tl.program_id(1)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tl.arange(0, HALF)
    mask_n = offs_n < N
    mask_m = offs_m < M

    # This program's share of the K groups (split-K); the last share may be short or empty.
    n_groups = K // GROUP_K
    per_split = tl.cdiv(n_groups, SPLIT_K)
    g_start = pid_k * per_split
    g_end = tl.minimum(g_start + per_split, n_groups)

    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_j[None, :]  # [BLOCK_N, HALF] bytes
    xt_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_j[:, None]  # [HALF, BLOCK_M] = x.T
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for g in range(g_start, g_end):
        b = tl.load(w_ptrs + g * HALF, mask=mask_n[:, None], other=0)
        s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        x_lo = tl.load(xt_ptrs + g * GROUP_K, mask=mask_m[None, :], other=0.0)
        x_hi = tl.load(xt_ptrs + g * GROUP_K + HALF, mask=mask_m[None, :], other=0.0)
        # Arithmetic shifts on int32 sign-extend each nibble (int32 so the result
        # does not depend on how a Triton version types int8 << literal).
        # int -> fp32 -> bf16 because the interpreter gets int8 -> bf16 wrong.
        b = b.to(tl.int32)
        lo = ((b << 28) >> 28).to(tl.float32)
        hi = ((b << 24) >> 28).to(tl.float32)
        if SCALE_WEIGHTS:
            # Dequantize to bf16, then multiply (as Marlin/Machete do): one
            # accumulator chain across groups, with no per-group fp32 rescale
            # of a wide [BLOCK_N, BLOCK_M] tile.
            acc = _dot((lo * s[:, None]).to(tl.bfloat16), x_lo, acc, FP32_DOT)
            acc = _dot((hi * s[:, None]).to(tl.bfloat16), x_hi, acc, FP32_DOT)
        else:
            # Multiply by the integer codes (exact in bf16) and scale the fp32
            # partial: fewer multiplies when the token tile is narrow, and no
            # rounding of code * scale to bf16.
            part = _dot(lo.to(tl.bfloat16), x_lo, None, FP32_DOT)
            part = _dot(hi.to(tl.bfloat16), x_hi, part, FP32_DOT)
            acc += part * s[:, None]

    out_ptrs = out_ptr + offs_m[None, :] * stride_om + offs_n[:, None]  # out[m, n] = acc[n, m]
    mask = mask_n[:, None] & mask_m[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=mask)


@dataclass(frozen=True)
class W4A16Config:
    block_n: int  # output channels per program (the MMA's M)
    block_m: int  # tokens per program (the MMA's N)
    split_k: int = 1
    scale_weights: bool = False
    num_warps: int = 4
    num_stages: int = 3

    @property
    def name(self) -> str:
        mode = "sw" if self.scale_weights else "sacc"
        return (
            f"n{self.block_n}_m{self.block_m}_k{self.split_k}_{mode}"
            f"_w{self.num_warps}_s{self.num_stages}"
        )


# Decode (few tokens): memory-bound; split K so that N=4096 still gives every SM
# programs streaming weights. Wider BLOCK_N re-reads the (L2-resident) x tile
# less often per weight byte.
DECODE_CONFIGS = [
    W4A16Config(64, 16, 1, num_stages=4),
    W4A16Config(64, 16, 2, num_stages=4),
    W4A16Config(64, 16, 4, num_stages=4),
    W4A16Config(64, 16, 8, num_stages=3),
    W4A16Config(128, 16, 1, num_stages=4),
    W4A16Config(128, 16, 2, num_stages=4),
    W4A16Config(128, 16, 4, num_stages=3),
    W4A16Config(128, 16, 8, num_stages=3),
    W4A16Config(256, 16, 2, num_warps=8, num_stages=3),
    W4A16Config(256, 16, 4, num_warps=8, num_stages=3),
    W4A16Config(32, 16, 4, num_stages=4),
]
# Prefill (thousands of tokens): compute-bound; big tiles, no split. Configs that
# do not fit in shared memory fail to launch and are skipped by the tuner.
PREFILL_CONFIGS = [
    W4A16Config(128, 128, scale_weights=True, num_warps=8, num_stages=3),
    W4A16Config(128, 128, scale_weights=True, num_warps=8, num_stages=4),
    W4A16Config(128, 128, scale_weights=True, num_warps=4, num_stages=4),
    W4A16Config(128, 256, scale_weights=True, num_warps=8, num_stages=3),
    W4A16Config(256, 128, scale_weights=True, num_warps=8, num_stages=3),
    W4A16Config(64, 128, scale_weights=True, num_warps=4, num_stages=4),
    W4A16Config(128, 128, scale_weights=False, num_warps=8, num_stages=3),
]


def candidate_configs(m: int) -> list[W4A16Config]:
    if m > 64:
        return PREFILL_CONFIGS
    bm = max(16, triton.next_power_of_2(m))  # tl.dot needs >= 16
    return [replace(c, block_m=bm) for c in DECODE_CONFIGS]


def w4a16_matmul(x: Tensor, wt: Int4Weight, cfg: W4A16Config) -> Tensor:
    """bf16 [M, N] = x @ dequant(w).T; the split-K zero-fill and bf16 cast are part of the op."""
    if x.dtype != torch.bfloat16 or x.ndim != 2 or x.shape[1] != wt.k or x.stride(1) != 1:
        raise ValueError(f"need contiguous bf16 x [M, {wt.k}], got {x.dtype} {tuple(x.shape)}")
    m = x.shape[0]
    if cfg.split_k == 1:
        out = torch.empty(m, wt.n, device=x.device, dtype=torch.bfloat16)
    else:
        out = torch.zeros(m, wt.n, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(wt.n, cfg.block_n), cfg.split_k)
    _w4a16_kernel[grid](
        x,
        wt.packed,
        wt.scales_t,
        out,
        m,
        wt.n,
        wt.k,
        x.stride(0),
        wt.packed.stride(0),
        out.stride(0),
        GROUP_K=GROUP,
        BLOCK_N=cfg.block_n,
        BLOCK_M=cfg.block_m,
        SPLIT_K=cfg.split_k,
        SCALE_WEIGHTS=cfg.scale_weights,
        SUPER_M=8,
        FP32_DOT=INTERPRET,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out if cfg.split_k == 1 else out.to(torch.bfloat16)


def tune_w4a16(
    x: Tensor,
    wt: Int4Weight,
    ref: Tensor,
    bench: Callable[[Callable[[], Any]], float],
    configs: list[W4A16Config] | None = None,
) -> tuple[W4A16Config | None, list[dict[str, Any]]]:
    """Check, then time, every candidate; the fastest correct one wins.

    Tuned here rather than with ``triton.autotune`` so each config is timed as a
    whole op (zero-fill + kernel + cast for split-K) and a config that computes
    a wrong answer can never be picked.
    """
    rows: list[dict[str, Any]] = []
    best: tuple[float, W4A16Config] | None = None
    for cfg in configs or candidate_configs(x.shape[0]):
        row: dict[str, Any] = {"config": cfg.name}
        rows.append(row)
        try:
            err = rel_err(w4a16_matmul(x, wt, cfg), ref)
        except Exception as e:  # e.g. out of shared memory: skip the config
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            continue
        row["err"] = err
        if not err < MAX_ERR:  # also catches NaN
            row["error"] = f"relative error {err:.3g} >= {MAX_ERR}"
            continue
        ms = row["ms"] = bench(lambda cfg=cfg: w4a16_matmul(x, wt, cfg))
        if best is None or ms < best[0]:
            best = (ms, cfg)
    return (best[1] if best else None), rows


# ---------------------------------------------------------------- activation quant


@triton.jit
def _act_quant_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    K,
    stride_xm,
    stride_qm,
    QMAX: tl.constexpr,
    IS_INT: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # One program per token; the whole row stays in registers, so x is read once.
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12)  # all-zero rows stay zero
    scale = amax / QMAX
    v = x / scale
    if IS_INT:
        # Round half to even, like torch.round (portable: no libdevice rint).
        r = tl.floor(v + 0.5)
        r = tl.where(((r - v) == 0.5) & ((r % 2) != 0), r - 1.0, r)
        q = tl.clamp(r, -QMAX - 1.0, QMAX).to(tl.int8)
    else:
        q = tl.clamp(v, -QMAX, QMAX).to(q_ptr.dtype.element_ty)
    tl.store(q_ptr + row * stride_qm + offs, q, mask=mask)
    tl.store(s_ptr + row, scale)


def quant_per_token(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Fused per-token quantization: (codes [M, K] fp8 e4m3 or int8, fp32 scale [M, 1])."""
    if dtype not in (torch.float8_e4m3fn, torch.int8):
        raise ValueError(f"unsupported activation dtype {dtype}")
    if x.ndim != 2 or x.stride(1) != 1:
        raise ValueError("need a row-contiguous 2-D activation")
    m, k = x.shape
    q = torch.empty(m, k, device=x.device, dtype=dtype)
    s = torch.empty(m, 1, device=x.device, dtype=torch.float32)
    is_int = dtype == torch.int8
    block = triton.next_power_of_2(k)
    _act_quant_kernel[(m,)](
        x,
        q,
        s,
        k,
        x.stride(0),
        q.stride(0),
        QMAX=127.0 if is_int else float(torch.finfo(dtype).max),
        IS_INT=is_int,
        BLOCK_K=block,
        num_warps=8 if block >= 8192 else 4,
    )
    return q, s


# ---------------------------------------------------------------- self check


def _int_qdq() -> Callable[..., Tensor] | None:
    """``samp_jobs.fakequant.int_qdq`` when the repository's packages import here."""
    root = Path(__file__).resolve().parents[2]
    for sub in ("operator", "jobs"):
        if str(root / sub) not in sys.path:
            sys.path.insert(0, str(root / sub))
    try:
        from samp_jobs.fakequant import int_qdq
    except ImportError as e:
        print(f"SKIP int_qdq bit-equality: samp_jobs does not import here ({e})")
        return None
    return int_qdq


def _check(name: str, ok: bool, detail: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


# Hand-picked W4A16 edge cases: uneven and empty split-K shares, ragged M and N,
# both scaling modes.
EDGE_CONFIGS = [
    W4A16Config(64, 16, 1),
    W4A16Config(32, 16, 2),
    W4A16Config(64, 16, 3),
    W4A16Config(64, 64, 1, scale_weights=True),
    W4A16Config(128, 32, 2, scale_weights=True),
]


def selfcheck(device: torch.device, full: bool = True) -> dict[str, bool]:
    """Small-shape correctness; {"w4a16", "int8", "fp8"} -> passed.

    ``full`` also runs every config the benchmark may tune over (the benchmark
    itself checks those on its real shapes before timing them, so it skips them
    here to save compile time).
    """
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int, std: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(torch.bfloat16).to(device)

    # Quantizer: int_qdq arithmetic and the packed layout.
    w = randn(96, 384, std=0.02)
    w[3, :GROUP] = 0  # an all-zero group: eps scale, zero codes
    codes, scales = quantize_int4(w)
    wt = pack_int4(codes, scales)
    ok = _check("pack round trip", torch.equal(unpack_int4(wt), codes), "codes equal")
    int_qdq = _int_qdq()
    if int_qdq is not None:
        fake = int_qdq(w, 4, GROUP)
        ours = (codes.reshape(96, -1, GROUP) * scales.unsqueeze(-1)).reshape(w.shape).to(w.dtype)
        ok &= _check("int_qdq equality", torch.equal(fake, ours), "bf16 code*scale bit-equal")

    # W4A16 against the fp32 product of the dequantized weight.
    configs = EDGE_CONFIGS + (DECODE_CONFIGS + PREFILL_CONFIGS if full else [])
    for m, k, n in [(16, 256, 128), (64, 256, 128), (5, 384, 96), (200, 256, 64)]:
        x = randn(m, k)
        codes, scales = quantize_int4(randn(n, k, std=0.02))
        wt = pack_int4(codes, scales)
        ref = x.float() @ dequantize_int4(codes, scales).t()
        errs = []
        for cfg in configs:
            name = f"w4a16 M={m} K={k} N={n} {cfg.name}"
            try:
                err = rel_err(w4a16_matmul(x, wt, cfg), ref)
            except Exception as e:  # report every failing config, not just the first
                ok &= _check(name, False, repr(e)[:200])
                continue
            errs.append(err)
            if not err < MAX_ERR or cfg in EDGE_CONFIGS:  # short log: edge cases and failures
                ok &= _check(name, err < MAX_ERR, f"rel err {err:.2e}")
        print(f"     w4a16 M={m} K={k} N={n}: {len(configs)} configs run, "
              f"max rel err {max(errs, default=float('nan')):.2e}", flush=True)  # fmt: skip
    results = {"w4a16": ok}

    # Fused per-token quantization against torch's eager quantizer.
    for dtype, key in ((torch.int8, "int8"), (torch.float8_e4m3fn, "fp8")):
        ok = True
        for m, k in [(16, 256), (17, 300), (64, 4096)]:
            x = randn(m, k)
            x[1] = 0  # an all-zero row, like the benchmark's padding rows
            # A row with scale exactly 1 for int8 and exact ties: must round half to even.
            ties = torch.tensor([127, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, -1.5])
            x[2] = x[2].clamp(-1, 1)
            x[2, :8] = ties.to(x.dtype)
            name = f"act quant {key} M={m} K={k}"
            try:
                q, s = quant_per_token(x, dtype)
            except Exception as e:  # a compile error is a failed check
                ok &= _check(name, False, repr(e)[:200])
                continue
            q_ref, s_ref = ref_quant_per_token(x, dtype)
            s_diff = float(((s - s_ref).abs() / s_ref).max())
            qf, qf_ref = q.float(), q_ref.float()
            deq = qf * s
            err = rel_err(deq, qf_ref * s_ref)
            same = float((qf == qf_ref).float().mean())
            good = s_diff <= 1e-6 and bool(torch.isfinite(deq).all())
            if dtype == torch.int8:  # a division rounding apart at most: one step
                good &= float((qf - qf_ref).abs().max()) <= 1 and err < MAX_ERR
                good &= torch.equal(q[2, :8].cpu(), torch.tensor([127, 2, 4, -2, 0, 0, 2, -2]))
            elif INTERPRET:
                # The interpreter's fp32 -> e4m3 rounding is not the GPU's (ties go
                # away from zero, subnormals truncate, and a round-up into the next
                # power of two does not carry into the exponent: 127.9 -> 64). So
                # here each code need only be one of the two e4m3 values around
                # x / scale, or that no-carry half; on the GPU the codes must agree
                # with torch's within MAX_ERR (dequantized).
                v = x.float() / s_ref
                step = torch.exp2(torch.floor(torch.log2(v.abs())).clamp(min=-6) - 3)
                bracket = (qf - v).abs() < step
                no_carry = (torch.frexp(qf_ref)[0].abs() == 0.5) & (qf == qf_ref / 2)
                good &= bool((bracket | no_carry).all())
                print(f"NOTE {name}: {int((qf != qf_ref).sum())} of {q.numel()} codes differ"
                      " from torch's by the interpreter's fp8 rounding; checked to lie on"
                      " the e4m3 grid next to x / scale instead")  # fmt: skip
            else:
                good &= err < MAX_ERR
            ok &= _check(
                name,
                good,
                f"scale rel diff {s_diff:.1e}, codes equal {same:.4%}, "
                f"dequant rel diff vs torch {err:.1e}, vs x {rel_err(deq, x):.1e}",
            )
        results[key] = ok
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--selfcheck", action="store_true", help="check every kernel on small shapes")
    args = ap.parse_args(argv)
    if not args.selfcheck:
        ap.print_help()
        return 2
    if torch.cuda.is_available() and not INTERPRET:
        device = torch.device("cuda")
        where = f"CUDA ({torch.cuda.get_device_name(0)})"
    elif INTERPRET:
        device = torch.device("cpu")
        where = "CPU, Triton interpreter"
    else:
        print("no CUDA device: run with TRITON_INTERPRET=1 to use Triton's interpreter")
        return 2
    print(f"selfcheck on {where}: torch {torch.__version__}, triton {triton.__version__}")
    results = selfcheck(device)
    ok = all(results.values())
    print("selfcheck", "passed" if ok else f"FAILED: {results}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
