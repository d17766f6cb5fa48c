"""Loading a causal LM, finding its parts and its plannable layer groups.

Fused groups are detected from the architecture itself: Linear modules of one
parent that read the *same input tensor* in a forward pass (q/k/v, gate/up) are
the ones vLLM fuses, whatever their names. Names only decide the label. Running
the model one decoder layer at a time is ``samp_jobs.layer_runner``.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samp_core.groups import FUSED_SIBLINGS, GroupKind, LayerGroup, kind_of_module
from samp_jobs.layer_runner import capture_layer0_inputs, on_device, run_layer, to_device

DTYPES: dict[str, torch.dtype] = {
    "torch.bfloat16": torch.bfloat16,
    "torch.float16": torch.float16,
    "torch.float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


class ModelLoadError(RuntimeError):
    """The model source cannot be loaded as a supported causal LM."""


def pick_device(requested: str | None = None) -> torch.device:
    """cuda when available (the H200 path), else cpu; an explicit request wins."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    source: str | Path,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any]:
    """Load (model, tokenizer) from a local directory onto the CPU, in eval mode.

    Remote code stays off unless the manifest allows it: a model repository's
    Python runs inside the job with its credentials.
    """
    from transformers import AutoConfig, AutoTokenizer

    path = Path(source)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{source}: no config.json (expected a local model directory)")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise ModelLoadError(f"{source}: {e}") from None
    torch_dtype: Any = "auto" if dtype == "auto" else DTYPES[dtype]
    model: nn.Module = load_weights_checked(
        path, config=config, dtype=torch_dtype, trust_remote_code=trust_remote_code
    )
    model.train(False)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, tokenizer


def load_weights_checked(path: Path, **kwargs: Any) -> Any:
    """AutoModelForCausalLM.from_pretrained, refusing weights the config does not match."""
    from transformers import AutoModelForCausalLM

    loaded: Any
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as e:  # a truncated or corrupt weight file
        raise ModelLoadError(f"{path}: the weights cannot be read: {e}") from None
    except RuntimeError as e:  # transformers refuses weights whose shapes differ
        if "mismatched" not in str(e):
            raise
        raise ModelLoadError(
            f"{path}/config.json does not match the weights in {_weight_files(path)}: "
            "weight shapes differ from the config (the table above lists them). Put the "
            "config.json that belongs to these weights beside them"
        ) from None
    model, info = loaded
    refuse_mismatched_weights(path, info)
    return model


def _weight_files(path: Path) -> str:
    files = sorted(p.name for p in path.glob("*.safetensors")) or sorted(
        p.name for p in path.glob("*.bin")
    )
    return ", ".join(files) or "the directory"


def refuse_mismatched_weights(path: Path, info: dict[str, Any]) -> None:
    """A config.json that does not describe the weights loads as a randomly initialised
    model (transformers only warns); every figure computed from it would be noise."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights the config expects are missing ({missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} weights the config does not know ({unexpected[:3]})")
    raise ModelLoadError(
        f"{path}/config.json does not match the weights in {_weight_files(path)}: "
        + "; ".join(parts)
        + "; they would be randomly initialised. Put the config.json that belongs to these "
        "weights beside them"
    )


@dataclass
class DecoderParts:
    """The pieces of a decoder-only LM the sequential runner drives."""

    model: nn.Module
    embed: nn.Module
    layers: nn.ModuleList
    layers_path: str  # e.g. "model.layers"
    norm: nn.Module
    head: nn.Linear
    head_name: str
    tied_head: bool


def decoder_parts(model: nn.Module) -> DecoderParts:
    """Find embeddings, decoder layers, final norm and output head (Llama/Mistral/Qwen2...)."""
    layers_path, layers = "", None
    for name, mod in model.named_modules():
        uniform = isinstance(mod, nn.ModuleList) and len({type(m) for m in mod}) == 1
        if uniform and (layers is None or len(mod) > len(layers)):
            layers_path, layers = name, mod
    if layers is None:
        raise ModelLoadError(f"{type(model).__name__}: no decoder layer stack found")
    parent = model.get_submodule(layers_path.rsplit(".", 1)[0]) if "." in layers_path else model
    norm = next(
        (getattr(parent, n) for n in ("norm", "final_layernorm", "ln_f") if hasattr(parent, n)),
        None,
    )
    hf: Any = model  # transformers PreTrainedModel API
    head = hf.get_output_embeddings()
    if norm is None or not isinstance(head, nn.Linear):
        raise ModelLoadError(f"{type(model).__name__}: final norm or Linear output head not found")
    head_name = next(n for n, m in model.named_modules() if m is head)
    config = getattr(model, "config", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        raise ModelLoadError(
            f"{type(model).__name__}: layers use different attention types "
            f"{sorted(set(layer_types))}; the sequential runner replays layer 0's mask"
        )
    embed = hf.get_input_embeddings()
    tied = embed.weight.data_ptr() == head.weight.data_ptr()
    return DecoderParts(model, embed, layers, layers_path, norm, head, head_name, tied)


def linear_modules(module: nn.Module, prefix: str = "") -> dict[str, nn.Linear]:
    return {f"{prefix}{n}": m for n, m in module.named_modules() if isinstance(m, nn.Linear) and n}


def _shared_input_sets(parts: DecoderParts, device: torch.device) -> list[list[str]]:
    """Leaf-relative names of Linears in a decoder layer that read the same input tensor."""
    layer = parts.layers[0]
    names = linear_modules(layer)
    seen: dict[str, int] = {}

    def make_hook(n: str) -> Any:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen[n] = args[0].data_ptr()

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in names.items()]
    try:
        ids = torch.zeros((1, 4), dtype=torch.long)
        inputs = capture_layer0_inputs(parts, ids, device)
        with torch.no_grad(), on_device(layer, device):
            run_layer(layer, inputs.hidden, to_device(inputs.kwargs, device))
    finally:
        for h in handles:
            h.remove()
    by_input: dict[tuple[str, int], list[str]] = {}
    for n in names:  # model order
        parent = n.rpartition(".")[0]
        by_input.setdefault((parent, seen.get(n, id(n))), []).append(n)
    return list(by_input.values())


def _fused_label(leaves: list[str]) -> tuple[str, list[str]]:
    """Label a fused set; known sibling sets keep vLLM's shard order and name."""
    for siblings, (suffix, _kind) in FUSED_SIBLINGS.items():
        if sorted(siblings) == sorted(leaves):
            return suffix, list(siblings)
    return "+".join(leaves), leaves


def discover_groups(parts: DecoderParts, device: torch.device | None = None) -> list[LayerGroup]:
    """One LayerGroup per fused set / single Linear in every decoder layer, plus lm_head."""
    dev = device or torch.device("cpu")
    sets = _shared_input_sets(parts, dev)
    groups: list[LayerGroup] = []
    for idx, layer in enumerate(parts.layers):
        prefix = f"{parts.layers_path}.{idx}."
        mods = linear_modules(layer)
        for members in sets:
            parent = members[0].rpartition(".")[0]
            leaves = [m.rpartition(".")[2] for m in members]
            if len(members) > 1:
                suffix, ordered = _fused_label(leaves)
                full = [f"{prefix}{parent + '.' if parent else ''}{leaf}" for leaf in ordered]
                name = f"{prefix}{parent + '.' if parent else ''}{suffix}"
            else:
                full = [prefix + members[0]]
                name = full[0]
            shapes = [mods[f[len(prefix) :]] for f in full]
            kind = kind_of_module(full[0])
            groups.append(
                LayerGroup(
                    name=name,
                    kind=kind if kind is not GroupKind.EMBEDDING else GroupKind.OTHER,
                    layer_index=idx,
                    modules=full,
                    in_features=shapes[0].in_features,
                    out_features=sum(m.out_features for m in shapes),
                    num_params=sum(m.in_features * m.out_features for m in shapes),
                )
            )
    if parts.tied_head:
        # A tied head shares the embedding matrix: quantizing it would quantize the
        # embeddings too, so it is not a group the planner may touch.
        return groups
    head = parts.head
    groups.append(
        LayerGroup(
            name=parts.head_name,
            kind=GroupKind.LM_HEAD,
            layer_index=None,
            modules=[parts.head_name],
            in_features=head.in_features,
            out_features=head.out_features,
        )
    )
    return groups


class PeakMemory:
    """Peak accelerator memory (CUDA allocator) or peak process RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)
