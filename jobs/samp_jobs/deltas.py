"""What each candidate format changes in one layer group's output, computed without waste.

A group is one Linear or several fused ones that read the same input X (q/k/v,
gate/up). For a format with weight fake-quant Q(W) and optional activation
fake-quant Q_a(X), the output error is

    ΔY = Q_a(X)·Q(W)ᵀ − X·Wᵀ = X_q·ΔWᵀ + E·Wᵀ,   ΔW = Q(W) − W,  E = Q_a(X) − X,  X_q = X + E

Written this way nothing large is subtracted from something large, so bf16
matmuls stay accurate, and the work per format is one GEMM:

- activation score Σ‖ΔY‖²: ``linear(X_q, ΔW)`` per format, plus ``linear(E, W)``
  once per activation quantizer (shared by formats that quantize inputs alike);
- fisher score Σ_t (g_t·ΔY_t)² with g = ∂L/∂Y: g·ΔY = (gᵀΔW)·X_q + (gᵀW)·E, and
  gᵀW is the gradient that flowed into this group's input, which the backward
  pass already computed; so it is ``(G @ ΔW)`` per format and two row dots.

Fused modules are concatenated along the output dimension, so "the dot product
runs over all the group's outputs" falls out of one GEMM with K = Σ out_features.
Sums are taken in float32 per micro-batch and accumulated in float64 on the
device; nothing is copied to the host until the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from samp_core.formats import Format
from samp_jobs.fakequant import FormatQuantizer

Tensor = torch.Tensor
ActQuant = Callable[[Tensor], Tensor]


def _acc(t: Tensor) -> torch.dtype:
    """Accumulation dtype: float32 for 16-bit inputs, the input's own if wider."""
    return torch.promote_types(t.dtype, torch.float32)


def _cat_rows(ts: list[Tensor]) -> Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim=0)


def _cat_cols(ts: list[Tensor]) -> Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim=-1)


@dataclass
class GroupCandidates:
    """One group's concatenated weight and, per candidate format, ΔW and the input quantizer."""

    name: str
    modules: list[nn.Linear]
    deltas: dict[Format, Tensor]  # ΔW per format, [Σ out, in], in the weight's dtype
    act: dict[Format, ActQuant | None]

    @cached_property
    def weight(self) -> Tensor:
        """W of the fused group, [Σ out, in]; only the activation estimator needs the copy."""
        return _cat_rows([m.weight.detach() for m in self.modules])

    @classmethod
    def build(
        cls, name: str, modules: list[nn.Linear], quant: dict[Format, FormatQuantizer]
    ) -> GroupCandidates:
        deltas = {}
        for f, q in quant.items():
            # fake-quant each module on its own (per-row scales do not care, but keep it exact)
            dws = []
            for m in modules:
                w = m.weight.detach()
                dws.append((q.weight(w).to(_acc(w)) - w.to(_acc(w))).to(w.dtype))
            deltas[f] = _cat_rows(dws)
        return cls(name, modules, deltas, {f: q.activation for f, q in quant.items()})


@dataclass
class QuantizedInputs:
    """(Q_a(X), Q_a(X) − X) per activation quantizer, computed once per captured input."""

    x: Tensor
    _cache: dict[ActQuant, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def get(self, act: ActQuant) -> tuple[Tensor, Tensor]:
        if act not in self._cache:
            xq = act(self.x)
            self._cache[act] = (xq, xq - self.x)
        return self._cache[act]


def _sq_sum(t: Tensor) -> Tensor:
    return torch.sum(torch.square(t.to(_acc(t))))


def activation_sums(c: GroupCandidates, x: Tensor) -> dict[Format, Tensor]:
    """Σ over tokens of ‖ΔY‖² for every candidate, on one micro-batch of inputs x [..., in]."""
    qin = QuantizedInputs(x)
    shared: dict[ActQuant, Tensor] = {}  # E·Wᵀ per activation quantizer
    out: dict[Format, Tensor] = {}
    for f, dw in c.deltas.items():
        act = c.act[f]
        if act is None:
            out[f] = _sq_sum(nn.functional.linear(x, dw))
            continue
        xq, e = qin.get(act)
        if act not in shared:
            shared[act] = nn.functional.linear(e, c.weight)
        out[f] = _sq_sum(nn.functional.linear(xq, dw) + shared[act])
    return out


def fisher_sums(
    c: GroupCandidates, x: Tensor, grad_out: list[Tensor], grad_in: Tensor | None
) -> dict[Format, Tensor]:
    """Σ over tokens of (∂L/∂Y · ΔY)² for every candidate.

    ``grad_out`` holds ∂L/∂Y of each fused module in ``c.weight``'s row order;
    ``grad_in`` is Σ_m ∂L/∂Y_m · W_m (the gradient the group sent to its input),
    needed only by formats that quantize activations.
    """
    xf = x.reshape(-1, x.shape[-1])
    g = _cat_cols(grad_out).reshape(xf.shape[0], -1)
    qin = QuantizedInputs(xf)
    out: dict[Format, Tensor] = {}
    acc = _acc(xf)
    for f, dw in c.deltas.items():
        gdw = g @ dw  # [tokens, in]: gᵀΔW per token
        act = c.act[f]
        if act is None:
            s = torch.sum(gdw * xf, dim=-1, dtype=acc)
        else:
            if grad_in is None:
                raise RuntimeError(f"{c.name}: no input gradient captured for {f.value}")
            xq, e = qin.get(act)
            gi = grad_in.reshape(xf.shape)
            s = torch.sum(gdw * xq, dim=-1, dtype=acc)
            s = s + torch.sum(gi * e, dim=-1, dtype=acc)
        out[f] = torch.sum(torch.square(s))
    return out
