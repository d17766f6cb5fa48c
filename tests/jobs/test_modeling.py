"""Model loading, fused-group discovery and the layer-sequential runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from samp_core.groups import GroupKind
from samp_jobs.layer_runner import capture_layer0_inputs, run_layer
from samp_jobs.modeling import ModelLoadError, decoder_parts, discover_groups, load_model


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_four_groups_per_layer_plus_head(arch: str, model_factory: Callable[[str], Path]):
    model, _ = load_model(model_factory(arch))
    groups = discover_groups(decoder_parts(model))
    assert len(groups) == 4 * 2 + 1
    layer0 = {g.kind: g for g in groups if g.layer_index == 0}
    qkv = layer0[GroupKind.ATTENTION_QKV]
    assert [m.rsplit(".", 1)[1] for m in qkv.modules] == ["q_proj", "k_proj", "v_proj"]
    assert qkv.name == "model.layers.0.self_attn.qkv"
    assert qkv.out_features == 128 + 2 * 64  # 4 query heads, 2 kv heads of 32
    gate_up = layer0[GroupKind.MLP_GATE_UP]
    assert gate_up.in_features == 128 and gate_up.out_features == 2 * 256
    assert layer0[GroupKind.MLP_DOWN].in_features == 256
    assert groups[-1].kind is GroupKind.LM_HEAD and groups[-1].modules == ["lm_head"]


def test_fusion_is_detected_from_shared_inputs_not_names(tiny_llama: Path):
    """Rename the projections: the same-input structure still yields fused groups."""
    model, _ = load_model(tiny_llama)
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.add_module("wq", attn.q_proj)
        attn.add_module("wk", attn.k_proj)
        attn.add_module("wv", attn.v_proj)
        for n in ("q_proj", "k_proj", "v_proj"):
            delattr(attn, n)

        def fwd(hidden_states, position_embeddings, attention_mask=None, attn=attn, **kw):
            attn.q_proj, attn.k_proj, attn.v_proj = attn.wq, attn.wk, attn.wv
            try:
                return type(attn).forward(
                    attn, hidden_states, position_embeddings, attention_mask, **kw
                )
            finally:
                for n in ("q_proj", "k_proj", "v_proj"):
                    attn.__dict__.pop(n, None)

        attn.forward = fwd
    groups = discover_groups(decoder_parts(model))
    fused = [g for g in groups if g.layer_index == 0 and len(g.modules) == 3]
    assert len(fused) == 1
    assert fused[0].name == "model.layers.0.self_attn.wq+wk+wv"


def test_layer_by_layer_reproduces_the_full_forward(tiny_llama: Path):
    model, _ = load_model(tiny_llama, dtype="float32")
    parts = decoder_parts(model)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        inp = capture_layer0_inputs(parts, ids, torch.device("cpu"))
        h = inp.hidden
        for layer in parts.layers:
            h = run_layer(layer, h, inp.kwargs)
        got = parts.head(parts.norm(h))
    assert torch.allclose(got, want, atol=1e-5)


def test_missing_model_dir_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(tmp_path)


def test_tied_head_is_not_a_plannable_group(tiny_llama: Path):
    """Quantizing a tied lm_head would quantize the embeddings with it."""
    model, _ = load_model(tiny_llama)
    model.lm_head.weight = model.model.embed_tokens.weight
    parts = decoder_parts(model)
    assert parts.tied_head
    groups = discover_groups(parts)
    assert all(g.kind is not GroupKind.LM_HEAD for g in groups) and len(groups) == 8


def test_a_module_held_on_the_device_gets_its_own_host_tensors_back() -> None:
    """on_device puts back the module's host tensors (no device-to-host copy), tied
    weights included, whatever the block did to the device copies' bindings. The meta
    device stands in for CUDA here: moving to it and back exercises the same code."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from samp_jobs.layer_runner import non_layers_on, on_device

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    parts = decoder_parts(model)
    before = {n: t.data_ptr() for n, t in model.state_dict(keep_vars=True).items()}
    meta = torch.device("meta")
    with non_layers_on(parts, meta), on_device(parts.layers[0], meta):
        assert model.model.embed_tokens.weight.device.type == "meta"
        assert parts.head.weight.device.type == "meta"  # tied: the same parameter
        assert parts.layers[0].mlp.down_proj.weight.device.type == "meta"
        assert model.model.rotary_emb.inv_freq.device.type == "meta"  # a buffer
    after = {n: t.data_ptr() for n, t in model.state_dict(keep_vars=True).items()}
    assert after == before and all(t.device.type == "cpu" for t in model.state_dict().values())
    assert parts.head.weight is model.model.embed_tokens.weight
