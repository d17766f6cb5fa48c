"""What sensitivity scoring works with: its options and result, each group's candidate
formats, the fake-quantizer of a format in the checkpoint's dtype, and the running sums."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from samp_core.formats import Format, SensitivityMethod, format_spec
from samp_core.groups import LayerGroup
from samp_jobs.fakequant import FormatQuantizer, quantizer
from samp_jobs.placement import GIB, MemoryPlan

__all__ = [
    "Accumulator",
    "Scores",
    "ScoringOptions",
    "ScoringRun",
    "candidate_formats",
    "make_quantizer",
    "perturbed",
]

Scores = dict[str, dict[Format, float]]
Tensor = torch.Tensor


@dataclass
class ScoringOptions:
    formats: list[Format]
    profile: str = "sm90"
    group_size: int = 128
    micro_batch: int = 4
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    quant_dtype: torch.dtype = torch.bfloat16  # dtype the checkpoint stores and exports
    progress: bool = True
    kl_cache_bytes: int = 8 * GIB  # CPU memory for the 16-bit log-probs the KL compares to
    # Memory placement (see samp_jobs.placement); the defaults choose by what is free.
    device_memory_fraction: float = 0.9  # of the accelerator's free memory scoring may use
    max_micro_batches_per_chunk: int | None = None  # cap tokens per pass (None: memory decides)
    resident_weights: bool | None = None  # force weights resident / streamed (None: auto)
    head_slice_bytes: int = GIB  # float32 logits per lm_head slice (vocab × tokens × 4 B)
    hessians: Any = None  # a samp_jobs.hessians.HessianCollector fed by the forward pass


@dataclass
class ScoringRun:
    scores: dict[SensitivityMethod, Scores]
    num_tokens: int
    num_sequences: int
    wall_seconds: float
    peak_memory_bytes: int
    device: str
    memory: MemoryPlan | None = None


def candidate_formats(group: LayerGroup, formats: list[Format], group_size: int) -> list[Format]:
    """Quantized formats this group can take (group sizes must divide in_features)."""
    return [
        f
        for f in formats
        if not f.is_unquantized and format_spec(f).fits(group.in_features, group_size)
    ]


def make_quantizer(fmt: Format, opts: ScoringOptions) -> FormatQuantizer:
    q = quantizer(fmt, profile=opts.profile, group_size=opts.group_size)
    qd = opts.quant_dtype

    def weight(w: torch.Tensor) -> torch.Tensor:
        return q.weight(w.to(qd)).to(w.dtype)

    return FormatQuantizer(fmt, weight, q.activation)


@contextmanager
def perturbed(modules: list[nn.Linear], fq: FormatQuantizer) -> Iterator[None]:
    """Temporarily run ``modules`` as the format would: fake-quant weights and inputs."""
    saved = [m.weight.data for m in modules]
    handles = []
    try:
        for m in modules:
            m.weight.data = fq.weight(m.weight.data)
            if fq.activation is not None:
                act = fq.activation

                def pre(_m: nn.Module, args: tuple[Any, ...], act: Any = act) -> tuple[Any, ...]:
                    return (act(args[0]), *args[1:])

                handles.append(m.register_forward_pre_hook(pre))
        yield
    finally:
        for m, w in zip(modules, saved, strict=True):
            m.weight.data = w
        for h in handles:
            h.remove()


class Accumulator:
    """Float64 running sums per (group, format), kept on the device until read."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[Format, Tensor]] = {}

    def add(self, group: str, values: dict[Format, Tensor]) -> None:
        per = self.sums.setdefault(group, {})
        for f, v in values.items():
            v64 = v.detach().double()
            per[f] = v64 if f not in per else per[f] + v64

    def normalised(self, denom: float, scale: float = 1.0) -> Scores:
        return {
            g: {f: scale * float(v) / denom for f, v in per.items()} for g, per in self.sums.items()
        }
