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

The preset scheme of each format, per hardware profile, comes from the format
catalog (``samp_core.formats.CATALOG``).

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
arithmetic stays on the CPU (see ``export_schemes.weight_qparams``) so that the checkpoint's
bytes do not depend on the device; ``test_cuda_export_is_byte_identical_to_cpu``
checks that on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samp_core.formats import ExportFormat, format_spec
from samp_core.results import ConfigGroupSummary, ExportResult, PlanResult
from samp_jobs.export_files import (
    PLAN_JSON,
    PLAN_TABLE,
    export_result,
    exported_files,
    save_checkpoint,
    sha256_file,
)
from samp_jobs.export_gptq import gptq_codes_for_plan, gptq_group_codes, gptq_pass
from samp_jobs.export_nf4 import bnb_skip_modules, export_bitsandbytes_nf4
from samp_jobs.export_schemes import (
    ExportError,
    build_quantization_config,
    collect_input_absmax,
    fill_module_qparams,
    move_own_tensors,
    preset_for,
    quantize_and_compress_per_module,
    quantized_modules,
    weight_qparams,
)
from samp_jobs.export_timing import PhaseClock, QuietGC
from samp_jobs.modeling import DecoderParts, decoder_parts, load_weights_checked
from samp_jobs.runlog import log

# The stage's public surface; the parts live in export_schemes (compressed-tensors config
# and qparams), export_gptq (GPTQ codes), export_nf4 (bitsandbytes), export_files (saving,
# report, hashes, the result) and export_timing.
__all__ = [
    "PLAN_JSON",
    "PLAN_TABLE",
    "ExportError",
    "QuietGC",
    "bnb_skip_modules",
    "build_quantization_config",
    "export",
    "export_bitsandbytes_nf4",
    "export_compressed_tensors",
    "exported_files",
    "gptq_group_codes",
    "gptq_pass",
    "move_own_tensors",
    "preset_for",
    "sha256_file",
    "weight_qparams",
]

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
        import compressed_tensors.compressors
        import compressed_tensors.quantization  # noqa: F401
        import transformers  # noqa: F401
    model, parts, linears, qcfg = _load_planned(model_dir, plan, clock, quiet, trust_remote_code)
    if dev.type == "cuda":  # context creation is its own cost, not the first phase's
        with clock.phase("device"):
            torch.empty(1, device=dev)
    amax, codes = _calibrated(
        plan, parts, qcfg, input_ids, dev=dev, clock=clock, hessians=hessians
    )
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
    compressor = _quantize_and_compress(model, qcfg, amax, codes, clock, by_module=by_module)
    with clock.phase("save"):
        save_checkpoint(model, model_dir, plan, out, trust_remote_code, compressor=compressor)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    with clock.phase("hash"):
        files = exported_files(out)
    return export_result(
        clock,
        artifact_uri=str(out),
        export_format=ExportFormat.COMPRESSED_TENSORS,
        config_groups=_config_group_summaries(plan, cfg),
        ignore=list(cfg.get("ignore") or []),
        files=files,
    )


def _load_planned(
    model_dir: Path, plan: PlanResult, clock: PhaseClock, quiet: QuietGC, trust_remote_code: bool
) -> tuple[Any, DecoderParts, list[str], Any]:
    """The base model, its decoder parts, its Linears and the plan's QuantizationConfig."""
    with clock.phase("load"):
        with quiet.held():
            model: Any = load_weights_checked(
                Path(model_dir), dtype="auto", trust_remote_code=trust_remote_code
            )
        model.train(False)
        parts = decoder_parts(model)
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        known = set(linears)
        planned = {m for a in plan.assignments for m in a.modules}
        if planned - known:
            raise ExportError(f"plan names modules the model lacks: {sorted(planned - known)[:5]}")
        qcfg = build_quantization_config(plan, linears)
    return model, parts, linears, qcfg


def _calibrated(
    plan: PlanResult,
    parts: DecoderParts,
    qcfg: Any,
    input_ids: torch.Tensor | None,
    *,
    dev: torch.device,
    clock: PhaseClock,
    hessians: Path | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """What the calibration tokens give the export: the input absmax of formats with a static
    activation scale (NVFP4), and the GPTQ codes of the modules the plan rounds with GPTQ
    (from the sensitivity stage's ``hessians`` when they cover the plan)."""
    static = sorted(
        m
        for fmt, mods in plan.modules_by_format().items()
        if format_spec(fmt).static_activation_scale
        for m in mods
    )
    amax: dict[str, float] = {}
    if static:
        if input_ids is None:
            raise ExportError("NVFP4 needs calibration data for its static activation scale")
        with clock.phase("calibrate"):
            amax = collect_input_absmax(parts, static, input_ids[:64], dev)
    codes: dict[str, torch.Tensor] = {}
    if plan.gptq_modules():
        from samp_jobs.gptq import single_thread_on_cpu

        width = int(parts.head.weight.shape[1])
        with clock.phase("gptq"), single_thread_on_cpu(dev, width):
            codes = gptq_codes_for_plan(
                parts, plan, qcfg, input_ids, dev, hessians=hessians
            )
    return amax, codes


def _quantize_and_compress(
    model: Any,
    qcfg: Any,
    amax: dict[str, float],
    codes: dict[str, torch.Tensor],
    clock: PhaseClock,
    *,
    by_module: bool,
) -> Any:
    """Attach the schemes, fill qparams and compress; returns the ModelCompressor."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    if by_module:
        t = clock.lap()
        apply_quantization_config(model, qcfg)
        compressor = ModelCompressor.from_pretrained_model(model)
        clock.add("quantize", clock.lap() - t)
        with torch.no_grad():
            quantize_and_compress_per_module(
                model, compressor, amax, clock.device, clock, codes=codes
            )
        for name in ("transfer", "quantize", "compress"):
            log(
                "export.phase",
                phase=name,
                seconds=round(clock.seconds.get(name, 0.0), 4),
                perModule=True,
            )
        return compressor
    with clock.phase("quantize"):
        apply_quantization_config(model, qcfg)
        with torch.no_grad():
            for name, mod in quantized_modules(model):
                fill_module_qparams(name, mod, amax, codes)
    with clock.phase("compress"):
        compressor = ModelCompressor.from_pretrained_model(model)
        compressor.compress_model(model)
    return compressor


def _config_group_summaries(plan: PlanResult, cfg: dict[str, Any]) -> list[ConfigGroupSummary]:
    fmt_of = {m: a.format for a in plan.assignments for m in a.modules}
    return [
        ConfigGroupSummary(
            name=name,
            format=fmt_of[g["targets"][0]],
            scheme=preset_for(fmt_of[g["targets"][0]], plan.profile),
            num_targets=len(g["targets"]),
            targets_sample=g["targets"][:4],
        )
        for name, g in cfg["config_groups"].items()
    ]


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
