"""GPTQ: calibration-aware rounding of integer weight formats.

Round-to-nearest (RTN) rounds every weight on its own. GPTQ (Frantar et al., 2022)
rounds the input columns of a Linear one after another and, after each, spreads the
rounding error over the columns not yet rounded, weighted by the inverse Hessian of the
layer's reconstruction loss ``‖(W − Q)X‖²`` (H = 2 X Xᵀ over calibration inputs), so the
layer's *output* error is what gets minimised, not the weight error.

What this implementation does, as the literature and llm-compressor's GPTQModifier do:

* **Hessian** from the calibration inputs each Linear really sees, accumulated in fp32
  (:class:`HessianAccumulator`); columns never activated (diag 0) are treated as dead.
* **Damping**: ``dampening_fraction × mean(diag H)`` added to the diagonal.
* **Act-order**: columns are rounded in order of decreasing ``diag H`` (most important
  first, while there is the most freedom left to compensate).
* **Static group-wise scales**: scales and zero points are the exporter's own min-max
  ones, computed from the original weights *before* GPTQ (llm-compressor's
  ``actorder: static``). With act-order, groups therefore stay contiguous in the
  checkpoint: no ``g_idx`` tensor, so every kernel that serves the RTN checkpoint
  (Marlin/Machete, the CPU W4A8 kernel) serves the GPTQ one.
* **Lazy batch updates** in blocks of 128 columns.

The result is integer codes plus the scales they belong to; the exporter sets the
module's weight to ``(codes − zp) × scale`` in fp32 and lets compressed-tensors compress
it, which re-derives exactly these codes (``fp32 / scale`` is exact for such values,
unlike bf16, where 127 × s rounds off by up to half a step).

Pure tensor functions, device-agnostic; the layer-by-layer driver lives in
:func:`samp_jobs.export.gptq_pass`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class IntGrid:
    """An integer grid with per-(row, group) scales: ``q = clamp(round(w/s) + z)``."""

    bits: int
    symmetric: bool = True

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1


@dataclass
class GptqStats:
    """What one GPTQ call did: the proxy loss it reached and what RTN would have reached."""

    loss: float  # Σ over rows of (w − q)ᵀ H (w − q) / 2, with H = X Xᵀ / n (GPTQ's objective)
    rtn_loss: float
    dead_columns: int


class HessianAccumulator:
    """Running ``X Xᵀ / n`` of a Linear's inputs (fp32), fed batch by batch."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.h = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.h.device)
        m = x.shape[0]
        if m == 0:
            return
        total = self.n + m
        self.h.mul_(self.n / total)
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
            # 16-bit products are exact in fp32: tensor-core GEMM, fp32 accumulate and out
            # (an 8B's sensitivity pass: ~5 s for every layer's XᵀX instead of ~30 s).
            self.h.add_(torch.mm(x.T, x, out_dtype=torch.float32), alpha=1.0 / total)
        else:
            x = x.float()
            self.h.addmm_(x.T, x, alpha=1.0 / total)
        self.n = total


SMALL_CPU_WIDTH = 1024  # below this hidden size the CPU GPTQ pass runs on one thread


@contextmanager
def single_thread_on_cpu(device: torch.device, width: int = 0) -> Iterator[None]:
    """One intra-op thread on the CPU for work made of small operations.

    GPTQ's column loop is a handful of operations on one [rows] vector and a [rows, ≤128]
    block per column; with several threads, waking them costs more than the work. The
    same holds for a whole export pass of a small model (``width`` < SMALL_CPU_WIDTH):
    measured on our shared 2-core machine under load, the tiny example's GPTQ pass takes
    2.4 s on one thread and 13.9 s on two.
    """
    if device.type != "cpu" or width >= SMALL_CPU_WIDTH:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _block(  # noqa: PLR0917 (GPTQ's block state, all in place)
    w1: Tensor, s1: Tensor, z1: Tensor, hinv1: Tensor, q1: Tensor, e1: Tensor, grid: IntGrid
) -> None:
    """GPTQ's inner loop over one block of columns, in place (Q1 codes, E1 scaled errors)."""
    for i in range(w1.shape[1]):
        wcol = w1[:, i]
        q = _quantize_column(wcol, s1[:, i], z1[:, i], grid)
        q1[:, i] = q
        err = (wcol - (q - z1[:, i]) * s1[:, i]) / hinv1[i, i]
        w1[:, i:].addr_(err, hinv1[i, i:], alpha=-1.0)
        e1[:, i] = err


class _GraphedBlock:
    """The block loop captured once as a CUDA graph and replayed per block.

    Eagerly, each column costs about eight kernel launches of a few microseconds of work
    on a [rows] vector, so an 8B model's ~850k columns are launch-bound; one graph replay
    per 128 columns removes the launch and Python overhead.
    """

    def __init__(self, rows: int, width: int, grid: IntGrid, device: torch.device) -> None:
        self.w1 = torch.zeros(rows, width, dtype=torch.float32, device=device)
        self.s1 = torch.ones(rows, width, dtype=torch.float32, device=device)
        self.z1 = torch.zeros(rows, width, dtype=torch.float32, device=device)
        self.h1 = torch.eye(width, dtype=torch.float32, device=device)
        self.q1 = torch.zeros(rows, width, dtype=torch.float32, device=device)
        self.e1 = torch.zeros(rows, width, dtype=torch.float32, device=device)
        self.grid = grid
        side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._run()

    def _run(self) -> None:
        _block(self.w1, self.s1, self.z1, self.h1, self.q1, self.e1, self.grid)

    def __call__(self, w1: Tensor, s1: Tensor, z1: Tensor, hinv1: Tensor) -> tuple[Tensor, Tensor]:
        self.w1.copy_(w1)
        self.s1.copy_(s1)
        self.z1.copy_(z1)
        self.h1.copy_(hinv1)
        self.graph.replay()
        return self.q1, self.e1


def _quantize_column(w: Tensor, s: Tensor, z: Tensor, grid: IntGrid) -> Tensor:
    """Integer codes of one column (compressed-tensors: divide, add zp, clamp, round)."""
    return torch.round(torch.clamp(w / s + z, grid.qmin, grid.qmax))


def rtn_codes(w: Tensor, scale: Tensor, zero_point: Tensor, grid: IntGrid) -> Tensor:
    """Round-to-nearest codes with the same scales (the baseline GPTQ is compared with)."""
    g = w.shape[1] // scale.shape[1]
    s = scale.float().repeat_interleave(g, dim=1)
    z = zero_point.float().repeat_interleave(g, dim=1)
    return _quantize_column(w.float(), s, z, grid)


def dequantize(codes: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """``(codes − zp) × scale`` in fp32, scales broadcast over their groups of columns."""
    g = codes.shape[1] // scale.shape[1]
    s = scale.float().repeat_interleave(g, dim=1)
    z = zero_point.float().repeat_interleave(g, dim=1)
    return (codes.float() - z) * s


def proxy_loss(w: Tensor, wq: Tensor, h: Tensor) -> float:
    """GPTQ's objective ``Σ_rows (w − q) H (w − q)ᵀ`` (= ‖(W − Q)X‖² / n)."""
    d = (w.float() - wq.float()).to(h.device)
    return float(((d @ h) * d).sum())


def gptq_codes(
    w: Tensor,
    h: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    grid: IntGrid,
    *,
    dampening_fraction: float = 0.01,
    act_order: bool = True,
    block_size: int = 128,
    cuda_graph: bool = True,
    fused: bool = True,
) -> tuple[Tensor, GptqStats]:
    """GPTQ integer codes for weight ``w`` [out, in] given the input Hessian ``h`` [in, in].

    ``scale``/``zero_point`` are [out, in/group] (per-channel: [out, 1]) and stay fixed.
    Computes in fp32 on ``h``'s device; returns codes (fp32 holding integers) there.
    ``fused``: one Triton kernel per block where Triton runs (``samp_jobs.gptq_fused``);
    else ``cuda_graph``: the per-column loop captured as a CUDA graph; else eager.
    """
    dev = h.device
    cols = w.shape[1]
    if h.shape != (cols, cols):
        raise ValueError(f"Hessian {tuple(h.shape)} does not match weight {tuple(w.shape)}")
    if cols % scale.shape[1]:
        raise ValueError(f"{scale.shape[1]} scale groups do not divide {cols} columns")
    group = cols // scale.shape[1]
    wk = w.to(dev, torch.float32).clone()
    hk = h.to(dev, torch.float32).clone()
    s_all = scale.to(dev, torch.float32)
    z_all = zero_point.to(dev, torch.float32)

    dead = torch.diag(hk) == 0
    hk[dead, dead] = 1.0
    wk[:, dead] = 0.0
    perm = torch.argsort(torch.diag(hk), descending=True) if act_order else None
    if perm is not None:
        wk = wk[:, perm]
        hk = hk[perm][:, perm]
    col_group = (perm if perm is not None else torch.arange(cols, device=dev)) // group

    hinv = _damped_inverse_cholesky(hk, dampening_fraction)

    qall = _solve_blocks(wk, hinv, (s_all, z_all, col_group), grid,
                         block_size=block_size, cuda_graph=cuda_graph, fused=fused)
    if perm is not None:
        qall = qall[:, torch.argsort(perm)]
    return qall, _stats(w, h, qall, s_all, z_all, grid, dead_columns=int(dead.sum()))


def _solve_blocks(
    wk: Tensor, hinv: Tensor, qparams: tuple[Tensor, Tensor, Tensor], grid: IntGrid,
    *, block_size: int, cuda_graph: bool, fused: bool = False,
) -> Tensor:
    """GPTQ's lazy-batch column loop: quantize ``block_size`` columns at a time, pushing
    each block's error onto the columns after it. ``qparams``: scale and zero point
    [out, groups], and the group of each (permuted) column. Updates ``wk`` in place;
    returns the codes."""
    from samp_jobs import gptq_fused

    if fused and block_size <= gptq_fused.MAX_BLOCK and gptq_fused.usable(wk.device):
        try:  # on a copy: a kernel that fails to build must leave wk for the fallback
            return _solve_blocks_fused(wk.clone(), hinv, qparams, grid, block_size)
        except Exception as e:
            gptq_fused.disable(e)
    s_all, z_all, col_group = qparams
    dev = wk.device
    rows, cols = wk.shape
    qall = torch.zeros_like(wk)
    graphed = (
        _GraphedBlock(rows, block_size, grid, dev)
        if cuda_graph and dev.type == "cuda" and cols >= 2 * block_size
        else None
    )
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        hinv1 = hinv[i1:i2, i1:i2]
        gidx = col_group[i1:i2]
        s1 = s_all[:, gidx]
        z1 = z_all[:, gidx]
        if graphed is not None and i2 - i1 == block_size:
            q1, e1 = graphed(wk[:, i1:i2], s1, z1, hinv1)
        else:
            w1 = wk[:, i1:i2].clone()
            q1 = torch.zeros_like(w1)
            e1 = torch.zeros_like(w1)
            with single_thread_on_cpu(dev):
                _block(w1, s1, z1, hinv1, q1, e1, grid)
        qall[:, i1:i2] = q1
        if i2 < cols:
            wk[:, i2:] -= e1 @ hinv[i1:i2, i2:]
    return qall


def _solve_blocks_fused(
    wk: Tensor, hinv: Tensor, qparams: tuple[Tensor, Tensor, Tensor], grid: IntGrid,
    block_size: int,
) -> Tensor:
    """:func:`_solve_blocks` with each block's column loop in one Triton kernel."""
    from samp_jobs import gptq_fused

    rows, cols = wk.shape
    wk, hinv = wk.contiguous(), hinv.contiguous()  # the kernel indexes rows with unit column stride
    s_all, z_all, col_group = (t.contiguous() for t in qparams)
    qall = torch.zeros_like(wk)
    e1 = torch.empty(rows, block_size, dtype=wk.dtype, device=wk.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        gptq_fused.block(wk, qall, e1, (s_all, z_all, col_group), hinv, (i1, i2),
                         (grid.qmin, grid.qmax))
        if i2 < cols:
            wk[:, i2:] -= e1[:, : i2 - i1] @ hinv[i1:i2, i2:]
    return qall


def _damped_inverse_cholesky(hk: Tensor, dampening_fraction: float) -> Tensor:
    """Upper Cholesky factor of (hk + damping)⁻¹, damping ``hk`` in place; more damping
    when it is numerically singular."""
    damp = dampening_fraction * torch.mean(torch.diag(hk))
    hk.diagonal().add_(damp)
    for attempt in range(6):
        try:
            hinv = torch.cholesky_inverse(torch.linalg.cholesky(hk))
            upper: Tensor = torch.linalg.cholesky(hinv, upper=True)
            return upper
        except RuntimeError:  # torch.linalg.LinAlgError: H not positive definite
            if attempt == 5:
                raise
            hk.diagonal().add_(damp * 10**attempt)
    raise AssertionError("unreachable")


def _stats(  # noqa: PLR0917
    w: Tensor, h: Tensor, codes: Tensor, scale: Tensor, zero_point: Tensor, grid: IntGrid,
    *, dead_columns: int,
) -> GptqStats:
    """The Hessian-weighted error of GPTQ's codes against round-to-nearest's."""
    dev = codes.device
    w_orig = w.to(dev, torch.float32)
    h_orig = h.to(dev, torch.float32)
    rtn = rtn_codes(w_orig, scale, zero_point, grid)
    return GptqStats(
        loss=proxy_loss(w_orig, dequantize(codes, scale, zero_point), h_orig),
        rtn_loss=proxy_loss(w_orig, dequantize(rtn, scale, zero_point), h_orig),
        dead_columns=dead_columns,
    )
