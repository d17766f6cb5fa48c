"""GPTQ rounding inside the export: codes for every module the plan rounds with GPTQ,
from the sensitivity stage's stored Hessians when they cover the plan
(``samp_jobs.hessians``), else computed layer by layer on calibration inputs (the
arithmetic is in ``samp_jobs.gptq``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from samp_core.results import PlanResult
from samp_jobs.export_schemes import ExportError, weight_qparams
from samp_jobs.layer_runner import layer0_inputs, on_device, run_layer, to_device
from samp_jobs.modeling import DecoderParts
from samp_jobs.runlog import log

__all__ = ["gptq_codes_for_plan", "gptq_group_codes", "gptq_pass"]


def _weight_args(qcfg: Any) -> dict[str, Any]:
    """Module name -> its config group's weight QuantizationArgs (targets are exact names)."""
    return {t: g.weights for g in qcfg.config_groups.values() for t in g.targets}


def _grid(args: Any) -> Any:
    from samp_jobs.gptq import IntGrid

    kind = str(getattr(args.type, "value", args.type))
    if kind != "int":
        raise ExportError(f"GPTQ rounds integer grids only, not {kind}")
    return IntGrid(bits=int(args.num_bits), symmetric=bool(args.symmetric))


def _hidden_store(sample: torch.Tensor, rows: int, device: torch.device) -> torch.device:
    """Where the GPTQ pass keeps hidden states between layers: on the GPU when all of them
    (twice, old and new layer) fit in a quarter of its free memory, else on the host.

    Measured on an H200: moving an 8B's hidden states (64 × 2048 tokens, 1 GB) costs
    0.12 s up and 0.68 s down per layer from pageable host memory, ~30 s for 32 layers.
    """
    if device.type != "cuda":
        return torch.device("cpu")
    per_row = sample[0].numel() * sample.element_size()
    free, _total = torch.cuda.mem_get_info(device)
    return device if 2 * per_row * rows < free // 4 else torch.device("cpu")


def gptq_group_codes(
    names: tuple[str, ...],
    weights: list[torch.Tensor],
    h: torch.Tensor,
    qcfg: Any,
    *,
    plan: PlanResult,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], Any]:
    """GPTQ int8 codes (on the CPU) of one plan group's modules, which share Hessian ``h``.

    GPTQ treats rows independently given H, so the modules' stacked rows go through one
    call: one Cholesky and one column loop per group, not per module.
    """
    from samp_jobs.gptq import gptq_codes

    r = plan.rounding
    if r is None:
        raise ExportError("GPTQ codes asked for a plan without rounding")
    args_of = _weight_args(qcfg)
    qp = [weight_qparams(w, args_of[n]) for w, n in zip(weights, names, strict=True)]
    q, st = gptq_codes(
        torch.cat([w.to(device) for w in weights]),
        h,
        torch.cat([p[0] for p in qp]).to(device),
        torch.cat([p[1] for p in qp]).to(device),
        _grid(args_of[names[0]]),
        dampening_fraction=r.dampening_fraction,
        act_order=r.act_order,
    )
    split = torch.split(q.to(torch.int8).cpu(), [w.shape[0] for w in weights])
    return {n: c.contiguous() for n, c in zip(names, split, strict=True)}, st


def gptq_codes_for_plan(
    parts: DecoderParts,
    plan: PlanResult,
    qcfg: Any,
    input_ids: torch.Tensor | None,
    device: torch.device,
    *,
    hessians: Path | None,
) -> dict[str, torch.Tensor]:
    """GPTQ codes from the sensitivity stage's Hessians when they cover the plan, else
    from export's own layer-by-layer calibration pass."""
    from samp_jobs.hessians import gptq_from_hessians, load_hessians

    stored = load_hessians(hessians, plan) if hessians is not None else None
    if stored is not None:
        return gptq_from_hessians(parts, plan, qcfg, stored, device)
    if input_ids is None:
        raise ExportError(
            "GPTQ rounding needs the calibration tokens (run calibrate first), or plan "
            "with spec.quantization.rounding.method: rtn"
        )
    return gptq_pass(parts, plan, qcfg, input_ids, device)


def gptq_pass(
    parts: DecoderParts,
    plan: PlanResult,
    qcfg: Any,
    input_ids: torch.Tensor,
    device: torch.device,
    *,
    micro_batch: int = 4,
) -> dict[str, torch.Tensor]:
    """GPTQ codes for every module the plan rounds with GPTQ, layer by layer.

    Calibration sequences run through the model one decoder layer at a time (the layer
    on ``device``; hidden states between layers on the GPU when they fit, else on the
    host: ``_hidden_store``). For each layer: one forward accumulates the input Hessian of each GPTQ
    group, GPTQ rounds it, then the layer runs again with *every* quantized module of
    it fake-quantized (GPTQ codes, or round-to-nearest for the others) so the next layer
    sees the inputs it will see when served, as llm-compressor's sequential pipeline does.
    Returns int8 codes on the CPU; scales are recomputed from the unchanged weights by
    the exporter (``weight_qparams``), bit for bit the ones used here.
    """
    r = plan.rounding
    if r is None or not plan.gptq_modules():
        return {}
    run = _GptqPass(parts, plan, qcfg, device)
    seq = input_ids.shape[1]
    rows = max(1, min(len(input_ids), r.max_tokens // max(1, seq)))
    ids = input_ids[:rows]
    batches = [ids[i : i + micro_batch] for i in range(0, len(ids), micro_batch)]
    ins = layer0_inputs(parts, batches, device)
    kwargs = to_device(ins[0].kwargs, device)
    store = _hidden_store(ins[0].hidden, len(ids), device)
    hidden = [i.hidden.to(store) for i in ins]
    del ins
    log(
        "export.gptq.start",
        groups=len({run.group_of[n] for n in run.targets}),
        hiddenOn=str(store),
    )
    with torch.no_grad():
        for idx, layer in enumerate(parts.layers):
            hidden = run.layer(idx, layer, hidden, kwargs, store)
        run.head(hidden)
    log(
        "export.gptq",
        modules=len(run.codes),
        tokens=int(ids.numel()),
        proxyLoss=round(run.totals["gptq"], 6),
        rtnProxyLoss=round(run.totals["rtn"], 6),
        dampeningFraction=r.dampening_fraction,
        actOrder=r.act_order,
    )
    return run.codes


class _GptqPass:
    """The state of one GPTQ pass: which modules it rounds, their codes so far, and the
    GPTQ and round-to-nearest proxy losses.

    Modules of one plan group read the same input (q/k/v, gate/up), so they share one
    Hessian, and since GPTQ treats rows independently given H, their stacked rows go
    through one GPTQ call: one Hessian and one column loop per group, not per module.
    """

    def __init__(
        self, parts: DecoderParts, plan: PlanResult, qcfg: Any, device: torch.device
    ) -> None:
        self.parts, self.plan, self.device = parts, plan, device
        self.targets = set(plan.gptq_modules())
        self.qcfg = qcfg
        self.args_of = _weight_args(qcfg)
        self.fmt_of = {
            m: a.format for a in plan.assignments for m in a.modules if not a.format.is_unquantized
        }
        self.group_of = {m: tuple(a.modules) for a in plan.assignments for m in a.modules}
        self.mods = dict(parts.model.named_modules())
        self.codes: dict[str, torch.Tensor] = {}
        self.totals = {"gptq": 0.0, "rtn": 0.0}

    def round_group(self, names: tuple[str, ...], hess: Any) -> None:
        ws = [self.mods[n].weight.data for n in names]
        got, st = gptq_group_codes(
            names, ws, hess.h, self.qcfg, plan=self.plan, device=self.device
        )
        self.codes.update(got)
        self.totals["gptq"] += st.loss
        self.totals["rtn"] += st.rtn_loss

    def served_weight(self, name: str) -> torch.Tensor:
        """The weight as it will be served: GPTQ codes, else the format's fake-quant."""
        from samp_jobs.fakequant import quantizer
        from samp_jobs.gptq import dequantize

        m, dev = self.mods[name], self.device
        if name in self.codes:
            scale, zp, _ = weight_qparams(m.weight.data, self.args_of[name])
            return dequantize(self.codes[name].to(dev), scale.to(dev), zp.to(dev))
        fq = quantizer(
            self.fmt_of[name],
            profile=self.plan.profile,
            group_size=self.plan.group_size,
            in_features=m.weight.shape[1],
        )
        return fq.weight(m.weight.data)

    def run_groups(self, groups: list[tuple[str, ...]], forward: Any) -> None:
        """One input hook per group on its first module; ``forward`` feeds them; then round."""
        from samp_jobs.gptq import HessianAccumulator

        hess: dict[tuple[str, ...], Any] = {}

        def make(g: tuple[str, ...]) -> Any:
            def hook(_m: nn.Module, a: tuple[torch.Tensor, ...]) -> None:
                hess[g].add(a[0])

            return hook

        for g in groups:
            hess[g] = HessianAccumulator(self.mods[g[0]].weight.shape[1], self.device)
        handles = [self.mods[g[0]].register_forward_pre_hook(make(g)) for g in groups]
        try:
            forward()
        finally:
            for hd in handles:
                hd.remove()
        for g in groups:
            self.round_group(g, hess.pop(g))

    def layer(
        self,
        idx: int,
        layer: nn.Module,
        hidden: list[torch.Tensor],
        kwargs: dict[str, Any],
        store: torch.device,
    ) -> list[torch.Tensor]:
        """Round this layer's GPTQ groups, then its outputs with every module as served."""
        dev = self.device
        prefix = f"{self.parts.layers_path}.{idx}."
        in_layer = [n for n in self.fmt_of if n.startswith(prefix)]
        mine = list(dict.fromkeys(self.group_of[n] for n in in_layer if n in self.targets))
        with on_device(layer, dev):
            if mine:

                def forward() -> None:
                    for h in hidden:
                        run_layer(layer, h.to(dev), kwargs)

                self.run_groups(mine, forward)
            saved: dict[str, torch.Tensor] = {}
            try:
                for n in in_layer:
                    m = self.mods[n]
                    saved[n] = m.weight.data
                    m.weight.data = self.served_weight(n).to(m.weight.dtype)
                return [run_layer(layer, h.to(dev), kwargs).to(store) for h in hidden]
            finally:
                for n, w in saved.items():
                    self.mods[n].weight.data = w

    def head(self, hidden: list[torch.Tensor]) -> None:
        parts, dev = self.parts, self.device
        if parts.head_name not in self.targets:
            return
        with on_device(parts.norm, dev), on_device(parts.head, dev):

            def forward() -> None:
                for h in hidden:
                    parts.head(parts.norm(h.to(dev)))

            self.run_groups([self.group_of[parts.head_name]], forward)
