"""GPTQ's block of columns as one Triton kernel (CUDA; the Triton interpreter on the CPU).

GPTQ's inner loop treats the rows of a weight independently given the inverse Hessian:
for every column i of a block, each row rounds its entry, scales the rounding error by
``hinv[i, i]`` and pushes ``err × hinv[i, i:]`` onto its remaining columns. So one
program can own a tile of rows and run the block's whole column loop in registers:
one launch per block of 128 columns instead of ~8 kernels per column (the CUDA-graph
path in ``samp_jobs.gptq``), which on an 8B made the column loop launch-bound.

The arithmetic is operation for operation the reference's (``gptq._block``): the same
divide, clamp, round-half-to-even, and a rounded product subtracted (fused multiply-add
contraction is switched off for the launch), so codes match the reference's up to the
reference's own kernels' contraction choices; ``tests/jobs/test_gptq.py`` compares them.
"""

from __future__ import annotations

import os
from typing import Any

import torch

Tensor = torch.Tensor
ROWS_PER_PROGRAM = 16
MAX_BLOCK = 128

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only images: the reference loop serves
    triton = None


_failed: list[str] = []  # set once the kernel failed to build or launch in this process


def usable(device: torch.device) -> bool:
    """The fused kernel runs on CUDA tensors, or on CPU ones under the Triton interpreter,
    unless it already failed here."""
    if triton is None or _failed:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def failure() -> str | None:
    """Why the kernel was switched off in this process, if it was."""
    return _failed[0] if _failed else None


def disable(error: Exception) -> None:
    """Fall back to the reference loop for the rest of the process, and say why once."""
    from samp_jobs.runlog import log

    _failed.append(f"{type(error).__name__}: {error}"[:500])
    log("gptq.fused.unavailable", error=_failed[0], fallback="cuda-graph or eager column loop")


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _gptq_block_kernel(  # type: ignore[no-untyped-def]  # noqa: PLR0917
        w_ptr, ldw, q_ptr, ldq, e_ptr, lde, s_ptr, z_ptr, lds, g_ptr, h_ptr, ldh,
        rows, width, qmin, qmax,
        BR: tl.constexpr, BC: tl.constexpr,  # noqa: N803 (Triton's constexpr style)
    ) -> None:
        pid = tl.program_id(0)
        r = pid * BR + tl.arange(0, BR)
        c = tl.arange(0, BC)
        rmask = r < rows
        tile_mask = rmask[:, None] & (c[None, :] < width)
        w = tl.load(w_ptr + r[:, None] * ldw + c[None, :], mask=tile_mask, other=0.0)
        qt = tl.zeros((BR, BC), dtype=tl.float32)
        et = tl.zeros((BR, BC), dtype=tl.float32)
        for i in range(width):
            here = c[None, :] == i
            g = tl.load(g_ptr + i)
            s = tl.load(s_ptr + r * lds + g, mask=rmask, other=1.0)
            z = tl.load(z_ptr + r * lds + g, mask=rmask, other=0.0)
            wcol = tl.sum(tl.where(here, w, 0.0), axis=1)
            x = tl.math.div_rn(wcol, s) + z
            x = tl.minimum(tl.maximum(x, qmin), qmax)
            q = (x + 12582912.0) - 12582912.0  # 1.5 × 2^23: rounds half to even in fp32
            d = tl.load(h_ptr + i * ldh + i)
            err = tl.math.div_rn(wcol - (q - z) * s, d)
            hrow = tl.load(h_ptr + i * ldh + c, mask=(c >= i) & (c < width), other=0.0)
            w = w - err[:, None] * hrow[None, :]
            qt = tl.where(here, q[:, None], qt)
            et = tl.where(here, err[:, None], et)
        tl.store(q_ptr + r[:, None] * ldq + c[None, :], qt, mask=tile_mask)
        tl.store(e_ptr + r[:, None] * lde + c[None, :], et, mask=tile_mask)


def block(  # noqa: PLR0917 (GPTQ's block state)
    wk: Tensor, qall: Tensor, e1: Tensor, qparams: tuple[Tensor, Tensor, Tensor],
    hinv: Tensor, cols: tuple[int, int], bounds: tuple[int, int],
) -> None:
    """Round columns ``cols`` = (i1, i2) of ``wk`` into ``qall`` and their scaled errors
    into ``e1[:, :i2 - i1]``; ``qparams``: scale and zero point [rows, groups] and each
    (permuted) column's group; ``bounds``: the grid's (qmin, qmax)."""
    if triton is None:
        raise RuntimeError("the fused GPTQ block needs Triton")
    s_all, z_all, col_group = qparams
    i1, i2 = cols
    rows = wk.shape[0]
    kwargs: dict[str, Any] = {"BR": ROWS_PER_PROGRAM, "BC": MAX_BLOCK}
    if wk.device.type == "cuda":
        kwargs |= {"num_warps": 4, "enable_fp_fusion": False}
    h = hinv[i1:, i1:]
    _gptq_block_kernel[(triton.cdiv(rows, ROWS_PER_PROGRAM),)](
        wk[:, i1:], wk.stride(0), qall[:, i1:], qall.stride(0), e1, e1.stride(0),
        s_all, z_all, s_all.stride(0), col_group[i1:i2], h, h.stride(0),
        rows, i2 - i1, float(bounds[0]), float(bounds[1]), **kwargs,
    )
