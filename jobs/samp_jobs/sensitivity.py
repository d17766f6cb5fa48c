"""Per group × candidate format: how much worse does the model get if only that group is quantized?

Three estimators, all run layer by layer:

- ``activation``: Σ_tokens ||ΔY||², ΔY = Q_a(X)·Q(W)ᵀ − X·Wᵀ on the calibration
  inputs X of each Linear, streamed in the forward pass (no backward). Cheap, but
  blind to how much the rest of the network amplifies or ignores an error.
- ``fisher``: ½ Σ_tokens (∂L/∂Y · ΔY)² — the ModelOpt ``auto_quantize`` Taylor
  term. Needs one forward (hidden states at layer boundaries kept on the CPU)
  and one backward replayed layer by layer from the loss down, so the output
  gradient of each group is known while its layer is on the device. For a
  fused group the dot product runs over all its modules' outputs before squaring.
- ``kl``: the exact mean next-token KL(base ‖ quantized) with only that group
  fake-quantized, replaying layers l..L from the stored boundary. The reference
  the others are judged against; cost grows with groups × formats × depth.

Every score is normalised per calibration token (nats/token for fisher and kl,
squared output units for activation), so runs with different sample counts
compare. ΔY includes activation quantization for formats that quantize
activations (W8A8, W4A8, NVFP4), because that is what the kernel computes.

How it runs fast: the per-format work is one GEMM per group (``samp_jobs.deltas``);
boundary hidden states stay on the accelerator when they fit, the whole model
too when it fits beside them, otherwise layers stream from pinned host memory
and the calibration tokens are scored in chunks (``samp_jobs.placement``); the
lm_head's 100k-wide logits are handled in token slices; sums stay on the device
until the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from samp_core.formats import SensitivityMethod
from samp_core.groups import LayerGroup
from samp_jobs.modeling import DecoderParts, PeakMemory
from samp_jobs.runlog import log
from samp_jobs.scorer import SequentialScorer
from samp_jobs.scoring import (
    Accumulator,
    Scores,
    ScoringOptions,
    ScoringRun,
    candidate_formats,
    make_quantizer,
    perturbed,
)

# The parts live in samp_jobs.scoring (options, candidates, fake-quant) and
# samp_jobs.scorer (the passes); this module is the stage's entry point.
__all__ = [
    "Scores",
    "ScoringOptions",
    "ScoringRun",
    "SequentialScorer",
    "candidate_formats",
    "make_quantizer",
    "perturbed",
    "score",
    "spearman",
]


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No weight gradients: scoring needs ∂L/∂activations only (half the backward FLOPs)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def score(
    parts: DecoderParts,
    groups: list[LayerGroup],
    input_ids: torch.Tensor,
    opts: ScoringOptions,
    methods: list[SensitivityMethod],
) -> ScoringRun:
    """Score every group × candidate format with the requested estimators (shared passes)."""
    t0 = time.monotonic()
    peak = PeakMemory(opts.device)
    s = SequentialScorer(parts, groups, input_ids, opts)
    want = set(methods)
    act = Accumulator() if SensitivityMethod.ACTIVATION in want else None
    fisher = Accumulator() if SensitivityMethod.FISHER in want else None
    keep = bool(want & {SensitivityMethod.FISHER, SensitivityMethod.KL})
    plan = s.memory_plan(keep)
    s.use_plan(plan)
    log("sensitivity.memory", tokens=s.num_tokens, **plan.as_log())
    kl_result: tuple[Accumulator, int] | None = None
    resident = s.placer.hold(parts.model) if plan.resident_weights else nullcontext()
    with resident, _frozen(parts.model):
        for i, chunk in enumerate(s.chunks(plan)):
            if plan.num_chunks > 1:
                log("sensitivity.chunk", chunk=i + 1, of=plan.num_chunks, microBatches=len(chunk))
            boundaries, kwargs, final = s.forward(chunk, act, keep)
            if SensitivityMethod.KL in want and kl_result is None:  # first chunk is enough
                kl_result = s.kl(chunk, boundaries, kwargs, final)
            if fisher is not None:
                s.fisher(chunk, boundaries, kwargs, final, fisher)
            del boundaries, final
    n = float(s.num_tokens)
    out: dict[SensitivityMethod, Scores] = {}
    if act is not None:
        out[SensitivityMethod.ACTIVATION] = act.normalised(n)
    if fisher is not None:
        out[SensitivityMethod.FISHER] = fisher.normalised(n, 0.5)
    if kl_result is not None:
        out[SensitivityMethod.KL] = kl_result[0].normalised(float(kl_result[1]))
    for sc in out.values():  # every group appears, even with no candidate format
        for g in groups:
            sc.setdefault(g.name, {})
    return ScoringRun(
        scores=out,
        num_tokens=s.num_tokens,
        num_sequences=int(input_ids.shape[0]),
        wall_seconds=time.monotonic() - t0,
        peak_memory_bytes=peak.peak_bytes(),
        device=str(opts.device),
        memory=plan,
    )


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (average ranks for ties); used to judge fisher/activation against kl."""

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(a) != len(b) or len(a) < 2:
        raise ValueError("need two equally long series of at least 2 values")
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else 0.0
