"""SmoothQuant: move per-channel activation outliers into the weights before rounding.

For a Linear consuming X, ``Y = X W^T = (X diag(1/s)) (W diag(s))^T`` for any positive
per-input-channel ``s``. With ``s_j = max|X_j|^a / max|W_j|^(1-a)`` the input's outlier
channels shrink (per-token int8 activations lose less) and the weight columns grow by the
same factor. The ``1/s`` is folded exactly into whatever produces X, so the smoothed model
is still a plain checkpoint of the same architecture:

- RMSNorm -> q/k/v and RMSNorm -> gate/up: the norm's weight is divided by ``s``;
- up_proj -> down_proj: ``act(gate) * up`` is linear in up's output rows;
- v_proj -> o_proj: attention is linear in V per channel; with grouped-query attention
  one v channel feeds one channel of every query head sharing it, so ``s`` is shared
  across those heads.

Pure torch on modules; the caller collects the activation maxima (``channel_absmax_hooks``).
Benchmark code (bench_smoothquant.py): measured not to help the tiny example, so not in the
product (tests/benchmarks/results/rounding.md, "SmoothQuant").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Tensor = torch.Tensor


@dataclass(frozen=True)
class SmoothMapping:
    """``producer``'s output is the input of every module in ``consumers``."""

    producer: str
    consumers: tuple[str, ...]
    kv_repeat: int = 0  # v_proj -> o_proj: query heads per kv head (0: not attention)
    head_dim: int = 0


def llama_mappings(model: nn.Module, layers_path: str, num_layers: int) -> list[SmoothMapping]:
    """The exact foldings of a Llama-style decoder (Llama, Mistral, Qwen2 names); layers
    whose modules are named otherwise get none."""
    mods = dict(model.named_modules())
    cfg = getattr(model, "config", None)
    heads = int(getattr(cfg, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(cfg, "num_key_value_heads", 0) or heads)
    out: list[SmoothMapping] = []
    for i in range(num_layers):
        p = f"{layers_path}.{i}"
        attn, mlp = f"{p}.self_attn", f"{p}.mlp"
        candidates = [
            SmoothMapping(f"{p}.input_layernorm", tuple(f"{attn}.{x}_proj" for x in "qkv")),
            SmoothMapping(f"{p}.post_attention_layernorm", (f"{mlp}.gate_proj", f"{mlp}.up_proj")),
            SmoothMapping(f"{mlp}.up_proj", (f"{mlp}.down_proj",)),
        ]
        o_proj = mods.get(f"{attn}.o_proj")
        if heads and kv_heads and isinstance(o_proj, nn.Linear):
            head_dim = o_proj.in_features // heads
            candidates.append(
                SmoothMapping(f"{attn}.v_proj", (f"{attn}.o_proj",), heads // kv_heads, head_dim)
            )
        out += [m for m in candidates if all(n in mods for n in (m.producer, *m.consumers))]
    return out


def smoothing_scales(
    act_absmax: Tensor, weights: list[Tensor], alpha: float, mapping: SmoothMapping
) -> Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha), 1 where either maximum is zero; shared
    across the query heads of one kv head for v_proj -> o_proj (returned per o_proj input)."""
    a = act_absmax.float()
    w = torch.stack([x.detach().float().abs().amax(dim=0).cpu() for x in weights]).amax(dim=0)
    if mapping.kv_repeat:
        a, w = (_per_kv_channel(t, mapping) for t in (a, w))
    s = a.clamp(min=1e-12).pow(alpha) / w.clamp(min=1e-12).pow(1.0 - alpha)
    s = torch.where((a > 0) & (w > 0), s, torch.ones_like(s)).clamp(min=1e-5, max=1e5)
    return _to_o_proj(s, mapping) if mapping.kv_repeat else s


def _per_kv_channel(t: Tensor, m: SmoothMapping) -> Tensor:
    """[heads*head_dim] -> [kv_heads*head_dim], max over the query heads sharing a kv head."""
    return t.reshape(-1, m.kv_repeat, m.head_dim).amax(dim=1).reshape(-1)


def _to_o_proj(s_kv: Tensor, m: SmoothMapping) -> Tensor:
    """Per-kv-channel scales laid out as o_proj's input channels (head h uses kv h // rep)."""
    per_kv = s_kv.reshape(-1, 1, m.head_dim).expand(-1, m.kv_repeat, -1)
    return per_kv.reshape(-1)


@torch.no_grad()
def fold(model: nn.Module, mapping: SmoothMapping, s: Tensor) -> None:
    """Divide the producer's output channels by ``s`` and multiply the consumers' input
    columns by it (in float32, stored back in each tensor's dtype)."""
    mods = dict(model.named_modules())
    producer = mods[mapping.producer]
    for name in mapping.consumers:
        w = mods[name].weight
        w.copy_((w.float() * s.to(w.device)[None, :]).to(w.dtype))
    s_out = (
        s.reshape(-1, mapping.kv_repeat, mapping.head_dim)[:, 0].reshape(-1)
        if (mapping.kv_repeat)
        else s
    )
    if isinstance(producer, nn.Linear):
        w = producer.weight
        w.copy_((w.float() / s_out.to(w.device)[:, None]).to(w.dtype))
        if producer.bias is not None:
            b = producer.bias
            b.copy_((b.float() / s_out.to(b.device)).to(b.dtype))
        return
    weight = getattr(producer, "weight", None)
    if not isinstance(weight, Tensor) or weight.shape != s_out.shape:
        raise ValueError(f"{mapping.producer}: no per-channel weight to fold the scales into")
    if getattr(producer, "bias", None) is not None:
        raise ValueError(f"{mapping.producer}: a norm with a bias cannot take the fold")
    weight.copy_((weight.float() / s_out.to(weight.device)).to(weight.dtype))


def smooth(
    model: nn.Module,
    mappings: list[SmoothMapping],
    act_absmax: dict[str, Tensor],
    alpha: float,
) -> dict[str, Tensor]:
    """Apply every mapping whose first consumer has activation maxima; returns the scales
    per first consumer (the input of every consumer in its mapping is divided by them)."""
    mods = dict(model.named_modules())
    done: dict[str, Tensor] = {}
    for m in mappings:
        amax = act_absmax.get(m.consumers[0])
        if amax is None:
            continue
        s = smoothing_scales(amax, [mods[c].weight for c in m.consumers], alpha, m)
        fold(model, m, s)
        done[m.consumers[0]] = s
    return done


def channel_absmax_hooks(
    model: nn.Module, names: list[str]
) -> tuple[dict[str, Tensor], list[torch.utils.hooks.RemovableHandle]]:
    """Forward pre-hooks that keep each named module's per-input-channel max |x|."""
    mods = dict(model.named_modules())
    amax: dict[str, Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach()
            cur = x.abs().reshape(-1, x.shape[-1]).amax(dim=0).float().cpu()
            prev = amax.get(name)
            amax[name] = cur if prev is None else torch.maximum(prev, cur)

        return hook

    return amax, [mods[n].register_forward_pre_hook(hook_for(n)) for n in names]
