"""Layer groups follow vLLM's fusing, so a plan can never split a fused layer."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from samp_core.groups import GroupKind, LayerGroup, build_groups, kind_of_module


def _llama_block(
    prefix: str, h: int = 64, kv: int = 16, inter: int = 128
) -> dict[str, tuple[int, int]]:
    return {
        f"{prefix}.self_attn.q_proj": (h, h),
        f"{prefix}.self_attn.k_proj": (h, kv),
        f"{prefix}.self_attn.v_proj": (h, kv),
        f"{prefix}.self_attn.o_proj": (h, h),
        f"{prefix}.mlp.gate_proj": (h, inter),
        f"{prefix}.mlp.up_proj": (h, inter),
        f"{prefix}.mlp.down_proj": (inter, h),
    }


def test_llama_layers_fuse_qkv_and_gate_up() -> None:
    shapes = {"model.embed_tokens": (64, 1000)}
    shapes |= _llama_block("model.layers.0") | _llama_block("model.layers.1")
    shapes["lm_head"] = (64, 1000)
    groups = build_groups(shapes)
    names = [g.name for g in groups]
    assert names == [
        "model.embed_tokens",
        "model.layers.0.self_attn.qkv",
        "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.gate_up",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.qkv",
        "model.layers.1.self_attn.o_proj",
        "model.layers.1.mlp.gate_up",
        "model.layers.1.mlp.down_proj",
        "lm_head",
    ]
    qkv = groups[1]
    assert qkv.kind is GroupKind.ATTENTION_QKV
    assert qkv.modules == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
    ]
    assert (qkv.in_features, qkv.out_features) == (64, 96)
    assert qkv.num_params == 64 * 96 and qkv.layer_index == 0
    assert groups[3].kind is GroupKind.MLP_GATE_UP and groups[3].out_features == 256
    assert groups[0].kind is GroupKind.EMBEDDING and groups[-1].kind is GroupKind.LM_HEAD
    assert groups[-1].layer_index is None
    assert all(m in shapes for g in groups for m in g.modules)


def test_partial_fused_set_is_refused() -> None:
    shapes = _llama_block("model.layers.0")
    del shapes["model.layers.0.self_attn.v_proj"]
    with pytest.raises(ValueError, match="partly present"):
        build_groups(shapes)


def test_skip_drops_modules() -> None:
    shapes = _llama_block("model.layers.0") | {"lm_head": (64, 1000)}
    assert "lm_head" not in [g.name for g in build_groups(shapes, skip=["lm_head"])]


def test_kinds_by_name() -> None:
    assert kind_of_module("transformer.h.3.attn.c_attn") is GroupKind.ATTENTION_QKV
    assert kind_of_module("model.layers.1.block_sparse_moe.experts.0.w2") is GroupKind.MLP_DOWN
    assert kind_of_module("model.layers.1.mlp.gate_up_proj") is GroupKind.MLP_GATE_UP
    assert kind_of_module("vision.proj") is GroupKind.OTHER


def test_group_is_frozen_and_validated() -> None:
    g = LayerGroup(name="a", kind=GroupKind.OTHER, modules=["a"], in_features=4, out_features=8)
    assert g.num_params == 32
    with pytest.raises(ValidationError):
        g.name = "b"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        LayerGroup(
            name="a", kind=GroupKind.OTHER, modules=["a", "a"], in_features=4, out_features=8
        )
    with pytest.raises(ValidationError):
        LayerGroup(name="a", kind=GroupKind.OTHER, modules=[], in_features=4, out_features=8)
    assert LayerGroup.model_validate(g.model_dump(by_alias=True)) == g
    assert "inFeatures" in g.model_dump(by_alias=True)
