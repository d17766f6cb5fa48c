"""The layer-by-layer passes behind sensitivity scoring: one forward (activation sums,
boundaries kept for the others), a backward replayed layer by layer (fisher), and the
exact KL with one group at a time fake-quantized (kl). See ``samp_jobs.sensitivity``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from samp_core.groups import LayerGroup
from samp_jobs.deltas import GroupCandidates, activation_sums, fisher_sums
from samp_jobs.layer_runner import (
    capture_layer0_inputs,
    non_layer_modules,
    run_layer,
    to_device,
)
from samp_jobs.modeling import DecoderParts
from samp_jobs.placement import (
    GIB,
    MemoryPlan,
    WeightPlacer,
    host_available_bytes,
    module_bytes,
    plan_memory,
)
from samp_jobs.runlog import progress
from samp_jobs.scoring import (
    Accumulator,
    ScoringOptions,
    candidate_formats,
    make_quantizer,
    perturbed,
)

__all__ = ["SequentialScorer"]

Tensor = torch.Tensor


@dataclass
class _Captured:
    """One group's input X, per-module ∂L/∂Y and the gradient it sent back to X."""

    x: Tensor | None = None
    grad_out: dict[str, Tensor] = field(default_factory=dict)
    grad_in: Tensor | None = None


Boundaries = list[list[Tensor]]  # [boundary][micro-batch] hidden states


class SequentialScorer:
    """Drives the layer-by-layer passes and hands each layer's groups to the estimators."""

    def __init__(
        self,
        parts: DecoderParts,
        groups: list[LayerGroup],
        input_ids: torch.Tensor,
        opts: ScoringOptions,
    ) -> None:
        self.parts = parts
        self.groups = groups
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
        self.store = torch.device("cpu")  # where boundary states live; set by use_plan
        self.placer = WeightPlacer(self.dev, pin=False)

    # ------------------------------------------------------------ placement
    def placement_inputs(self, keep_boundaries: bool) -> dict[str, Any]:
        """What ``plan_memory`` needs to know about this model, these tokens and this device."""
        parts, opts = self.parts, self.opts
        elem = next(parts.model.parameters()).element_size()
        hidden = parts.head.in_features
        tokens = int(self.batches[0].numel())
        layer_bytes = module_bytes(parts.layers[0])
        n_fmt = max((len(c) for c in self.cands.values()), default=0)
        widest = max(
            (max(g.in_features, g.out_features) for g in self.groups if g.layer_index is not None),
            default=hidden,
        )
        head_bytes = module_bytes(parts.head)
        # activations of one layer's forward+backward, captured inputs/gradients, candidates
        layer_work = layer_bytes * (1 + n_fmt) + tokens * widest * elem * 12
        head_work = head_bytes * (1 + n_fmt) + 4 * opts.head_slice_bytes + tokens * hidden * 16
        accelerator = self.dev.type == "cuda"
        device_budget = 0
        if accelerator:
            free, _total = torch.cuda.mem_get_info(self.dev)
            device_budget = int(free * opts.device_memory_fraction)
        return {
            "accelerator": accelerator,
            "device_budget": device_budget,
            "host_budget": int(host_available_bytes() * 0.8),
            "model_bytes": module_bytes(parts.model),
            "layer_bytes": layer_bytes,
            "working_bytes": max(layer_work, head_work) + GIB,
            "state_bytes_per_micro_batch": tokens * hidden * elem,
            "num_micro_batches": len(self.batches),
            "num_boundaries": len(parts.layers) + 1 if keep_boundaries else 2,
            "max_micro_batches_per_chunk": opts.max_micro_batches_per_chunk,
        }

    def memory_plan(self, keep_boundaries: bool) -> MemoryPlan:
        plan = plan_memory(**self.placement_inputs(keep_boundaries))
        forced = self.opts.resident_weights
        if self.dev.type == "cuda" and forced is not None:
            why = f"weights {'resident' if forced else 'streamed'} as asked"
            plan = MemoryPlan(
                forced,
                plan.boundaries_on_device,
                plan.micro_batches_per_chunk,
                plan.num_chunks,
                why,
            )
        return plan

    def use_plan(self, plan: MemoryPlan) -> None:
        self.store = self.dev if plan.boundaries_on_device else torch.device("cpu")
        self.placer = WeightPlacer(self.dev, pin=not plan.resident_weights)

    def chunks(self, plan: MemoryPlan) -> list[list[torch.Tensor]]:
        n = plan.micro_batches_per_chunk
        return [self.batches[i : i + n] for i in range(0, len(self.batches), n)]

    # -------------------------------------------------------------- helpers
    def _linears(self, g: LayerGroup) -> list[nn.Linear]:
        return [self.modules[n] for n in g.modules]

    def _candidates(self, groups: list[LayerGroup]) -> list[tuple[LayerGroup, GroupCandidates]]:
        """ΔW of every candidate format for these groups, built once per layer visit."""
        out = []
        for g in groups:
            if self.cands[g.name]:
                quant = {f: self.quant[f] for f in self.cands[g.name]}
                out.append((g, GroupCandidates.build(g.name, self._linears(g), quant)))
        return out

    def _progress(self, it: Any, desc: str) -> Any:
        """A bar on stderr (unless --no-progress) and progress records for the operator."""
        items = list(it)
        bar = tqdm(items, desc=desc, disable=not self.opts.progress, leave=False)
        return progress(bar, "sensitivity", desc, total=len(items))

    def _head_groups(self) -> list[LayerGroup]:
        return self.by_layer.get(None, [])

    def _head_slices(self, rows: int) -> list[slice]:
        """Token slices small enough that one slice's float32 logits fit head_slice_bytes."""
        n = max(1, self.opts.head_slice_bytes // (4 * self.parts.head.out_features))
        return [slice(i, min(i + n, rows)) for i in range(0, rows, n)]

    def layer0_inputs(self, batches: list[torch.Tensor]) -> tuple[list[Tensor], dict[str, Any]]:
        with self.placer.hold(*non_layer_modules(self.parts)):
            ins = [capture_layer0_inputs(self.parts, b, self.dev, move=False) for b in batches]
        return [i.hidden.to(self.store) for i in ins], to_device(ins[0].kwargs, self.dev)

    # -------------------------------------------------------------- forward
    def forward(
        self, batches: list[torch.Tensor], activation: Accumulator | None, keep: bool
    ) -> tuple[Boundaries, dict[str, Any], list[Tensor]]:
        """Run every layer over the micro-batches; optionally score ||ΔY||² on the way.

        Returns (boundary hidden states per layer if kept, layer kwargs, final hidden).
        """
        hidden, kwargs = self.layer0_inputs(batches)
        boundaries: Boundaries = []
        for idx in self._progress(range(len(self.parts.layers)), "forward layers"):
            layer = self.parts.layers[idx]
            if keep:
                boundaries.append(hidden)
            with self.placer.hold(layer), torch.no_grad(), ExitStack() as stack:
                if activation is not None:
                    cands = self._candidates(self.by_layer.get(idx, []))
                    for g, c in cands:
                        stack.enter_context(self._activation_hook(g, c, activation))
                if self.opts.hessians is not None:
                    stack.enter_context(self.opts.hessians.layer(idx))
                hidden = [
                    run_layer(layer, h.to(self.dev, non_blocking=True), kwargs).to(self.store)
                    for h in hidden
                ]
        if activation is not None:
            self._score_head_activation(hidden, activation)
        if self.opts.hessians is not None:
            with self.placer.hold(self.parts.norm), torch.no_grad():
                self.opts.hessians.add_head(self.parts.norm, hidden)
        return boundaries, kwargs, hidden

    @contextmanager
    def _activation_hook(
        self, g: LayerGroup, c: GroupCandidates, acc: Accumulator
    ) -> Iterator[None]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            acc.add(g.name, activation_sums(c, args[0]))

        # fused modules share their input: one hook on the first scores the whole group
        h = self._linears(g)[0].register_forward_pre_hook(hook)
        try:
            yield
        finally:
            h.remove()

    def _score_head_activation(self, hidden: list[Tensor], acc: Accumulator) -> None:
        parts = self.parts
        with self.placer.hold(parts.norm, parts.head), torch.no_grad():
            cands = self._candidates(self._head_groups())
            for h in hidden:
                flat = h.reshape(-1, h.shape[-1])
                for sl in self._head_slices(flat.shape[0]):
                    x = parts.norm(flat[sl].to(self.dev))
                    for g, c in cands:
                        acc.add(g.name, activation_sums(c, x))

    # -------------------------------------------------------------- fisher
    def fisher(
        self,
        batches: list[torch.Tensor],
        boundaries: Boundaries,
        kwargs: dict[str, Any],
        final: list[Tensor],
        acc: Accumulator,
    ) -> None:
        """Backward from the loss, one layer at a time, scoring each group on the way down.

        Frees each boundary once its layer is done, so memory falls as it descends.
        """
        grads = self._head_backward(batches, final, acc)
        for idx in self._progress(reversed(range(len(self.parts.layers))), "backward layers"):
            layer = self.parts.layers[idx]
            groups = self.by_layer.get(idx, [])
            with self.placer.hold(layer):
                cands = self._candidates(groups)
                new_grads = []
                for h_stored, g_out in zip(boundaries[idx], grads, strict=True):
                    h = h_stored.to(self.dev, non_blocking=True).detach().requires_grad_(True)
                    with self._capture(groups) as cap:
                        out = run_layer(layer, h, kwargs)
                        torch.autograd.backward(out, g_out.to(self.dev, non_blocking=True))
                    self._fisher_add(cands, cap, acc)
                    if idx > 0:
                        new_grads.append(self._grad(h).to(self.store))
                grads = new_grads
            boundaries[idx] = []

    @staticmethod
    def _grad(h: Tensor) -> Tensor:
        if h.grad is None:
            raise RuntimeError("no gradient reached the layer input; is the loss connected?")
        return h.grad.detach()

    def _head_backward(
        self, batches: list[torch.Tensor], final: list[Tensor], acc: Accumulator
    ) -> list[Tensor]:
        """∂L/∂(final hidden) per micro-batch, scoring the head on the way (token slices)."""
        parts = self.parts
        grads: list[Tensor] = []
        with self.placer.hold(parts.norm, parts.head):
            groups = self._head_groups()
            cands = self._candidates(groups)
            for h_stored, ids in zip(final, batches, strict=True):
                flat = h_stored.reshape(-1, h_stored.shape[-1])
                # next-token targets; the last position of each row has none
                targets = torch.full(ids.shape, -100, dtype=torch.long)
                targets[:, :-1] = ids[:, 1:]
                targets = targets.reshape(-1).to(self.dev)
                grad = torch.empty_like(flat, device=self.dev)
                for sl in self._head_slices(flat.shape[0]):
                    x = flat[sl].to(self.dev, non_blocking=True).detach().requires_grad_(True)
                    with self._capture(groups) as cap:
                        logits = parts.head(parts.norm(x))
                        loss = nn.functional.cross_entropy(
                            logits.float(), targets[sl], reduction="sum", ignore_index=-100
                        )
                        torch.autograd.backward(loss)
                    self._fisher_add(cands, cap, acc)
                    grad[sl] = self._grad(x)
                grads.append(grad.reshape(h_stored.shape).to(self.store))
        return grads

    @contextmanager
    def _capture(self, groups: list[LayerGroup]) -> Iterator[dict[str, _Captured]]:
        """Record each group's input X, its modules' ∂L/∂Y and the gradient sent back to X."""
        cap = {g.name: _Captured() for g in groups}
        handles = []
        for g in groups:
            rec = cap[g.name]
            for n, m in zip(g.modules, self._linears(g), strict=True):

                def pre(
                    _m: nn.Module, args: tuple[Tensor, ...], rec: _Captured = rec
                ) -> tuple[Any, ...] | None:
                    x = args[0]
                    if rec.x is None:
                        rec.x = x.detach()
                    if not x.requires_grad:
                        return None
                    # a private view of X, so its gradient is this module's share alone
                    xv = x.view_as(x)

                    def on_grad(gr: Tensor, rec: _Captured = rec) -> None:
                        gr = gr.detach()
                        rec.grad_in = gr if rec.grad_in is None else rec.grad_in + gr

                    xv.register_hook(on_grad)  # type: ignore[no-untyped-call]
                    return (xv, *args[1:])

                def post(
                    _m: nn.Module, _args: Any, out: Tensor, rec: _Captured = rec, n: str = n
                ) -> None:
                    def on_grad(gr: Tensor) -> None:
                        rec.grad_out[n] = gr.detach()

                    out.register_hook(on_grad)  # type: ignore[no-untyped-call]

                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post))
        try:
            yield cap
        finally:
            for h in handles:
                h.remove()

    def _fisher_add(
        self,
        cands: list[tuple[LayerGroup, GroupCandidates]],
        cap: dict[str, _Captured],
        acc: Accumulator,
    ) -> None:
        with torch.no_grad():
            for g, c in cands:
                rec = cap[g.name]
                missing = [n for n in g.modules if n not in rec.grad_out]
                if rec.x is None or missing:
                    raise RuntimeError(f"{g.name}: no gradient reached {missing or g.modules}")
                grads = [rec.grad_out[n] for n in g.modules]
                acc.add(g.name, fisher_sums(c, rec.x, grads, rec.grad_in))

    # ------------------------------------------------------------------ kl
    def kl(
        self,
        batches: list[torch.Tensor],
        boundaries: Boundaries,
        kwargs: dict[str, Any],
        final: list[Tensor],
    ) -> tuple[Accumulator, int]:
        """Exact KL per (group, format); returns the sums and the tokens they cover.

        The 16-bit next-token distributions are kept on the CPU (tokens × vocab
        floats), so only as many micro-batches as fit ``kl_cache_bytes`` are used.
        """
        acc = Accumulator()
        per_token = 4 * self.parts.head.out_features
        n_mb, tokens = 0, 0
        for b in batches:
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
                    with self.placer.hold(layer):
                        hidden = [run_layer(layer, h.to(self.dev), kwargs) for h in hidden]
                kl = torch.zeros((), dtype=torch.float64)
                for h, lp in zip(hidden, base, strict=True):
                    lq = self._logprobs(h)
                    kl += (lp.exp() * (lp - lq)).sum(-1).double().sum()
                acc.add(g.name, {f: kl})
        return acc, tokens

    def _logprobs(self, h: torch.Tensor) -> torch.Tensor:
        parts = self.parts
        with self.placer.hold(parts.norm, parts.head), torch.no_grad():
            logits = parts.head(parts.norm(h.to(self.dev))).float()
            return torch.log_softmax(logits, dim=-1).cpu()
