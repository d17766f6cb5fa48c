"""Per group × candidate format: how much worse does the model get if only that group is quantized?

Three estimators, all run layer by layer (one decoder layer on the device):

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
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from samp_core.formats import Format, SensitivityMethod
from samp_core.groups import LayerGroup
from samp_core.hardware import FIXED_GROUP_SIZE, requires_group_divisibility
from samp_jobs.fakequant import FormatQuantizer, quantizer
from samp_jobs.modeling import (
    DecoderParts,
    LayerInputs,
    PeakMemory,
    _to,
    capture_layer0_inputs,
    on_device,
    run_layer,
)

Scores = dict[str, dict[Format, float]]


@dataclass
class ScoringOptions:
    formats: list[Format]
    profile: str = "sm90"
    group_size: int = 128
    micro_batch: int = 4
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    quant_dtype: torch.dtype = torch.bfloat16  # dtype the checkpoint stores and exports
    progress: bool = True
    kl_cache_bytes: int = 8 * 2**30  # CPU memory for the 16-bit log-probs the KL compares to


@dataclass
class ScoringRun:
    scores: dict[SensitivityMethod, Scores]
    num_tokens: int
    num_sequences: int
    wall_seconds: float
    peak_memory_bytes: int
    device: str


def candidate_formats(group: LayerGroup, formats: list[Format], group_size: int) -> list[Format]:
    """Quantized formats this group can take (group sizes must divide in_features)."""
    out: list[Format] = []
    for f in formats:
        if f.is_unquantized:
            continue
        if requires_group_divisibility(f):
            g = FIXED_GROUP_SIZE.get(f, group_size)
            if group.in_features % g:
                continue
        out.append(f)
    return out


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


def _sq_sum(d: torch.Tensor) -> float:
    """Σ d² accumulated in float64 without a float64 copy of d (it is token×features big)."""
    return float(torch.sum(torch.square(d), dtype=torch.float64))


def _grad(h: torch.Tensor) -> torch.Tensor:
    if h.grad is None:
        raise RuntimeError("no gradient reached the layer input; is the loss connected?")
    return h.grad.detach().cpu()


class _Accumulator:
    """Float64 running sums per (group, format)."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[Format, float]] = {}

    def add(self, group: str, fmt: Format, value: float) -> None:
        per = self.sums.setdefault(group, {})
        per[fmt] = per.get(fmt, 0.0) + value

    def normalised(self, denom: float, scale: float = 1.0) -> Scores:
        return {g: {f: scale * v / denom for f, v in per.items()} for g, per in self.sums.items()}


class SequentialScorer:
    """Drives the layer-by-layer passes and hands each layer's modules to the estimators."""

    def __init__(
        self,
        parts: DecoderParts,
        groups: list[LayerGroup],
        input_ids: torch.Tensor,
        opts: ScoringOptions,
    ) -> None:
        self.parts = parts
        self.groups = groups
        self.input_ids = input_ids
        self.opts = opts
        self.dev = opts.device
        self.modules: dict[str, Any] = dict(parts.model.named_modules())
        self.by_layer: dict[int | None, list[LayerGroup]] = {}
        for g in groups:
            self.by_layer.setdefault(g.layer_index, []).append(g)
        self.cands = {g.name: candidate_formats(g, opts.formats, opts.group_size) for g in groups}
        self.quant = {f: make_quantizer(f, opts) for f in opts.formats if not f.is_unquantized}
        mb = max(1, opts.micro_batch)
        self.batches = [input_ids[i : i + mb] for i in range(0, input_ids.shape[0], mb)]
        self.num_tokens = int(input_ids.numel())

    # -------------------------------------------------------------- helpers
    def _linears(self, g: LayerGroup) -> list[nn.Linear]:
        return [self.modules[n] for n in g.modules]

    def _qweights(self, groups: list[LayerGroup]) -> dict[tuple[str, Format], torch.Tensor]:
        """Fake-quantized weights of one layer for every candidate, computed once per layer."""
        out: dict[tuple[str, Format], torch.Tensor] = {}
        for g in groups:
            for n, m in zip(g.modules, self._linears(g), strict=True):
                for f in self.cands[g.name]:
                    out[(n, f)] = self.quant[f].weight(m.weight.data)
        return out

    def _delta(
        self, x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor, fmt: Format
    ) -> torch.Tensor:
        act = self.quant[fmt].activation
        xq = act(x) if act is not None else x
        return nn.functional.linear(xq, wq) - nn.functional.linear(x, w)

    def _progress(self, it: Any, desc: str) -> Any:
        return tqdm(it, desc=desc, disable=not self.opts.progress, leave=False)

    def layer0_inputs(self) -> list[LayerInputs]:
        return [capture_layer0_inputs(self.parts, b, self.dev) for b in self.batches]

    # -------------------------------------------------------------- forward
    def forward(
        self, activation: _Accumulator | None, keep_boundaries: bool
    ) -> tuple[list[list[torch.Tensor]], dict[str, Any], list[torch.Tensor]]:
        """Run every layer over all micro-batches; optionally score ||ΔY||² on the way.

        Returns (boundary hidden states per layer if kept, layer kwargs, final hidden).
        """
        ins = self.layer0_inputs()
        kwargs = _to(ins[0].kwargs, self.dev)
        hidden = [i.hidden.cpu() for i in ins]
        boundaries: list[list[torch.Tensor]] = []
        for idx in self._progress(range(len(self.parts.layers)), "forward layers"):
            layer = self.parts.layers[idx]
            if keep_boundaries:
                boundaries.append(hidden)
            groups = self.by_layer.get(idx, [])
            with on_device(layer, self.dev), torch.no_grad(), ExitStack() as stack:
                if activation is not None:
                    qw = self._qweights(groups)
                    for g in groups:
                        for n, m in zip(g.modules, self._linears(g), strict=True):
                            stack.enter_context(self._act_hook(m, n, g, qw, activation))
                nxt = []
                for h in hidden:
                    nxt.append(run_layer(layer, h.to(self.dev), kwargs).cpu())
                hidden = nxt
        if activation is not None:
            self._score_head_activation(hidden, activation)
        return boundaries, kwargs, hidden

    @contextmanager
    def _act_hook(
        self,
        m: nn.Linear,
        name: str,
        g: LayerGroup,
        qw: dict[tuple[str, Format], torch.Tensor],
        acc: _Accumulator,
    ) -> Iterator[None]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            x = args[0]
            for f in self.cands[g.name]:
                d = self._delta(x, m.weight, qw[(name, f)], f)
                acc.add(g.name, f, _sq_sum(d))

        h = m.register_forward_hook(hook)
        try:
            yield
        finally:
            h.remove()

    def _head_groups(self) -> list[LayerGroup]:
        return self.by_layer.get(None, [])

    def _score_head_activation(self, hidden: list[torch.Tensor], acc: _Accumulator) -> None:
        parts = self.parts
        with on_device(parts.norm, self.dev), on_device(parts.head, self.dev), torch.no_grad():
            qw = self._qweights(self._head_groups())
            for g in self._head_groups():
                for h in hidden:
                    x = parts.norm(h.to(self.dev))
                    for f in self.cands[g.name]:
                        d = self._delta(x, parts.head.weight, qw[(g.modules[0], f)], f)
                        acc.add(g.name, f, _sq_sum(d))

    # -------------------------------------------------------------- fisher
    def fisher(
        self,
        boundaries: list[list[torch.Tensor]],
        kwargs: dict[str, Any],
        final: list[torch.Tensor],
    ) -> _Accumulator:
        acc = _Accumulator()
        for p in self.parts.model.parameters():
            p.requires_grad_(False)
        grads = self._head_backward(final, acc)
        for idx in self._progress(reversed(range(len(self.parts.layers))), "backward layers"):
            layer = self.parts.layers[idx]
            groups = self.by_layer.get(idx, [])
            with on_device(layer, self.dev):
                qw = self._qweights(groups)
                new_grads = []
                for h_cpu, g_out in zip(boundaries[idx], grads, strict=True):
                    h = h_cpu.to(self.dev).requires_grad_(True)
                    with self._capture(groups) as cap:
                        out = run_layer(layer, h, kwargs)
                        torch.autograd.backward(out, g_out.to(self.dev))
                    self._fisher_accumulate(groups, cap, qw, acc)
                    new_grads.append(_grad(h) if idx > 0 else h_cpu)
                grads = new_grads
        return acc

    def _head_backward(self, final: list[torch.Tensor], acc: _Accumulator) -> list[torch.Tensor]:
        parts = self.parts
        grads: list[torch.Tensor] = []
        with on_device(parts.norm, self.dev), on_device(parts.head, self.dev):
            groups = self._head_groups()
            qw = self._qweights(groups)
            for h_cpu, ids in zip(final, self.batches, strict=True):
                h = h_cpu.to(self.dev).requires_grad_(True)
                with self._capture(groups) as cap:
                    logits = parts.head(parts.norm(h))
                    loss = nn.functional.cross_entropy(
                        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                        ids[:, 1:].reshape(-1).to(self.dev),
                        reduction="sum",
                    )
                    torch.autograd.backward(loss)
                self._fisher_accumulate(groups, cap, qw, acc)
                grads.append(_grad(h))
        return grads

    @contextmanager
    def _capture(self, groups: list[LayerGroup]) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Record each module's input X and output gradient ∂L/∂Y during one fwd+bwd."""
        cap: dict[str, list[torch.Tensor]] = {}
        handles = []
        for g in groups:
            for n, m in zip(g.modules, self._linears(g), strict=True):

                def hook(
                    _m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor, n: str = n
                ) -> None:
                    cap[n] = [args[0].detach()]

                    def grad_hook(gr: torch.Tensor, n: str = n) -> None:
                        cap[n].append(gr.detach())

                    out.register_hook(grad_hook)  # type: ignore[no-untyped-call]

                handles.append(m.register_forward_hook(hook))
        try:
            yield cap
        finally:
            for h in handles:
                h.remove()

    def _fisher_accumulate(
        self,
        groups: list[LayerGroup],
        cap: dict[str, list[torch.Tensor]],
        qw: dict[tuple[str, Format], torch.Tensor],
        acc: _Accumulator,
    ) -> None:
        with torch.no_grad():
            for g in groups:
                for f in self.cands[g.name]:
                    dot: torch.Tensor | float = 0.0
                    for n, m in zip(g.modules, self._linears(g), strict=True):
                        x, gy = cap[n]
                        d = self._delta(x, m.weight, qw[(n, f)], f)
                        dot = dot + torch.sum(gy * d, dim=-1, dtype=torch.float64)
                    acc.add(g.name, f, float(torch.as_tensor(dot).pow(2).sum()))

    # ------------------------------------------------------------------ kl
    def kl(
        self,
        boundaries: list[list[torch.Tensor]],
        kwargs: dict[str, Any],
        final: list[torch.Tensor],
    ) -> tuple[_Accumulator, int]:
        """Exact KL per (group, format); returns the sums and the tokens they cover.

        The 16-bit next-token distributions are kept on the CPU (tokens × vocab
        floats), so only as many micro-batches as fit ``kl_cache_bytes`` are used.
        """
        acc = _Accumulator()
        per_token = 4 * self.parts.head.out_features
        n_mb, tokens = 0, 0
        for b in self.batches:
            if n_mb and (tokens + b.numel()) * per_token > self.opts.kl_cache_bytes:
                break
            n_mb, tokens = n_mb + 1, tokens + b.numel()
        base = [self._logprobs(h) for h in final[:n_mb]]
        todo = [(g, f) for g in self.groups for f in self.cands[g.name]]
        for g, f in self._progress(todo, "kl (group x format)"):
            start = len(self.parts.layers) if g.layer_index is None else g.layer_index
            with perturbed(self._linears(g), self.quant[f]), torch.no_grad():
                hidden = (boundaries[start] if start < len(boundaries) else final)[:n_mb]
                for idx in range(start, len(self.parts.layers)):
                    layer = self.parts.layers[idx]
                    with on_device(layer, self.dev):
                        hidden = [run_layer(layer, h.to(self.dev), kwargs).cpu() for h in hidden]
                for h, lp in zip(hidden, base, strict=True):
                    lq = self._logprobs(h)
                    acc.add(g.name, f, float((lp.exp() * (lp - lq)).sum(-1).double().sum()))
        return acc, tokens

    def _logprobs(self, h: torch.Tensor) -> torch.Tensor:
        parts = self.parts
        with on_device(parts.norm, self.dev), on_device(parts.head, self.dev), torch.no_grad():
            logits = parts.head(parts.norm(h.to(self.dev))).float()
            return torch.log_softmax(logits, dim=-1).cpu()


def score(
    parts: DecoderParts,
    groups: list[LayerGroup],
    input_ids: torch.Tensor,
    opts: ScoringOptions,
    methods: list[SensitivityMethod],
) -> ScoringRun:
    """Score every group × candidate format with the requested estimators (one shared forward)."""
    t0 = time.monotonic()
    peak = PeakMemory(opts.device)
    s = SequentialScorer(parts, groups, input_ids, opts)
    want = set(methods)
    act = _Accumulator() if SensitivityMethod.ACTIVATION in want else None
    need_bound = bool(want & {SensitivityMethod.FISHER, SensitivityMethod.KL})
    boundaries, kwargs, final = s.forward(act, keep_boundaries=need_bound)
    n = float(s.num_tokens)
    out: dict[SensitivityMethod, Scores] = {}
    if act is not None:
        out[SensitivityMethod.ACTIVATION] = act.normalised(n)
    if SensitivityMethod.FISHER in want:
        out[SensitivityMethod.FISHER] = s.fisher(boundaries, kwargs, final).normalised(n, 0.5)
    if SensitivityMethod.KL in want:
        kl_sums, kl_tokens = s.kl(boundaries, kwargs, final)
        out[SensitivityMethod.KL] = kl_sums.normalised(float(kl_tokens))
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
