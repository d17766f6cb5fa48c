"""compressed-tensors schemes and quantization parameters for an export.

The plan becomes one ``config_groups`` entry per format (preset scheme from the format
catalog, exact module names as targets) and an ``ignore`` list for 16-bit Linears.
Weight scales are computed as compressed-tensors' min-max observer does, with the
arithmetic on the CPU so the checkpoint's bytes do not depend on the device; on an
accelerator, modules are filled and compressed one at a time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from samp_core.formats import ExportFormat, Format, format_spec
from samp_core.results import PlanResult
from samp_jobs.export_timing import PhaseClock
from samp_jobs.layer_runner import layer0_inputs, on_device, run_layer, to_device
from samp_jobs.modeling import DecoderParts

__all__ = [
    "ExportError",
    "build_quantization_config",
    "collect_input_absmax",
    "fill_module_qparams",
    "move_own_tensors",
    "preset_for",
    "quantize_and_compress_per_module",
    "quantized_modules",
    "weight_qparams",
]


class ExportError(RuntimeError):
    """The plan cannot be written in the requested checkpoint format."""


def preset_for(fmt: Format, profile: str) -> str:
    """compressed-tensors preset scheme name for a format on a profile (from the catalog)."""
    preset = format_spec(fmt).scheme_for(profile).preset
    if preset is None:
        raise ExportError(f"format {fmt} has no compressed-tensors scheme")
    return preset


def build_quantization_config(plan: PlanResult, all_linears: list[str]) -> Any:
    """QuantizationConfig: one config group per quantized format, 16-bit Linears ignored."""
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    groups: dict[str, Any] = {}
    quantized: set[str] = set()
    for fmt, modules in sorted(plan.modules_by_format().items(), key=lambda kv: kv[0].value):
        if fmt.is_unquantized:
            continue
        if format_spec(fmt).family is not ExportFormat.COMPRESSED_TENSORS:
            raise ExportError(
                "NF4 groups cannot go into a compressed-tensors checkpoint; "
                "plan with exportFormat bitsandbytes-nf4"
            )
        scheme = preset_name_to_scheme(preset_for(fmt, plan.profile), sorted(modules))
        fixed = format_spec(fmt).fixed_group_size
        if scheme.weights is not None and scheme.weights.group_size and fixed is None:
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


def fill_module_qparams(
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


def quantized_modules(model: nn.Module) -> list[tuple[str, Any]]:
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
    for name, mod in quantized_modules(model):
        t0 = clock.lap()
        move_own_tensors(mod, device)
        t1 = clock.lap()
        fill_module_qparams(name, mod, amax, codes)
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
        ins = layer0_inputs(parts, batches, device)
        kwargs = to_device(ins[0].kwargs, device)
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
