"""Running a causal LM one decoder layer at a time on an accelerator.

Why layer-sequential: a 70B model does not fit one accelerator in 16-bit, but
one decoder layer does. Every stage that needs activations (sensitivity, GPTQ,
evaluation) keeps the model on the CPU and moves one layer at a time to the
device, carrying the hidden states between layers (GPTQ-style). The inputs of
layer 0 (hidden states plus the keyword arguments the architecture passes:
rotary embeddings, causal mask, position ids) are captured by a hook that stops
the forward at layer 0, so no architecture-specific re-implementation of the
model's preamble is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from samp_jobs.modeling import DecoderParts


class _StopForwardError(Exception):
    """Raised by the layer-0 hook to end the forward once the inputs are captured."""


@dataclass
class LayerInputs:
    """What layer 0 receives for one micro-batch: hidden states and the keyword arguments."""

    hidden: torch.Tensor
    kwargs: dict[str, Any] = field(default_factory=dict)


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def capture_layer0_inputs(
    parts: DecoderParts, input_ids: torch.Tensor, device: torch.device, *, move: bool = True
) -> LayerInputs:
    """Run the model's own preamble (embeddings, rotary, mask) and stop at layer 0.

    With ``move=False`` the caller has already put the non-layer modules on the device
    (:func:`non_layers_on`); do that for more than one batch, since holding them per
    batch moves a 70B's 4 GB of embeddings and head once per batch.
    """
    if move:
        with non_layers_on(parts, device):
            return capture_layer0_inputs(parts, input_ids, device, move=False)
    captured: dict[str, Any] = {}

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForwardError

    handle = parts.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            parts.model(input_ids=input_ids.to(device), use_cache=False)
    except _StopForwardError:
        pass
    finally:
        handle.remove()
    kwargs = captured["kwargs"]
    kwargs.pop("past_key_values", None)
    kwargs["use_cache"] = False
    return LayerInputs(captured["hidden"], kwargs)


def layer0_inputs(
    parts: DecoderParts, batches: list[torch.Tensor], device: torch.device
) -> list[LayerInputs]:
    """:func:`capture_layer0_inputs` of every batch, the non-layer modules moved once."""
    with non_layers_on(parts, device):
        return [capture_layer0_inputs(parts, b, device, move=False) for b in batches]


def non_layer_modules(parts: DecoderParts) -> list[nn.Module]:
    """Modules outside the decoder layers that own tensors (embeddings, rotary, norm, head)."""
    found: list[nn.Module] = []
    layer_ids = {id(m) for m in parts.layers}
    for mod in parts.model.children():
        stack = [mod]
        while stack:
            m = stack.pop()
            if id(m) in layer_ids or m is parts.layers:
                continue
            if any(True for _ in m.parameters(recurse=False)) or any(
                True for _ in m.buffers(recurse=False)
            ):
                found.append(m)
            stack.extend(m.children())
    return found


@contextmanager
def non_layers_on(parts: DecoderParts, device: torch.device) -> Iterator[None]:
    """Hold everything except the decoder layers (embeddings, rotary, norm, head) on the device."""
    with ExitStack() as stack:
        for m in non_layer_modules(parts):
            stack.enter_context(on_device(m, device))
        yield


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    result: torch.Tensor = out[0] if isinstance(out, tuple) else out
    return result


@contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Hold one module on the accelerator for the duration of the block.

    On the way out the module gets its own host tensors back rather than copies of the
    device ones: no device-to-host copy, which for a 70B decoder layer (1.7 GB; the H200
    copies about 1.3 GB/s to pageable memory, ``gptq_speed_h200_70b.json``) is over a
    second per layer, and for a 70B's embeddings and head about 3 s each time. So the
    block must not change the module's tensors in place; the callers swap weights
    through ``.data`` and restore them.
    """
    if device.type == "cpu":
        yield module
        return
    tables: list[dict[str, Any]] = [
        t for owner in module.modules() for t in (owner._parameters, owner._buffers)
    ]
    saved = [(tb, name, t, t.data) for tb in tables for name, t in tb.items() if t is not None]
    module.to(device)  # may bind new tensor objects in the tables (e.g. to "meta")
    try:
        yield module
    finally:
        for table, name, t, host in saved:
            t.data = host  # the same Parameter object, in case a caller holds it
            table[name] = t
