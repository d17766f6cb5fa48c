"""Export: compressed-tensors configs per profile, reload parity, bitsandbytes NF4."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from samp_core.formats import ExportFormat, Format
from samp_core.hardware import get_profile
from samp_core.planner import Budget, PlanRequest, plan
from samp_core.results import PlanResult
from samp_jobs.evaluate import load_quantized
from samp_jobs.export import ExportError, bnb_skip_modules, build_quantization_config, export
from samp_jobs.modeling import decoder_parts, discover_groups, load_model
from samp_jobs.sensitivity import ScoringOptions, make_quantizer, perturbed


def recipe(model_dir: Path, profile: str, mlp: Format, attn: Format) -> PlanResult:
    """The fixed recipe through the planner: MLP → mlp, attention → attn, head 16-bit."""
    model, _ = load_model(model_dir)
    groups = discover_groups(decoder_parts(model))
    scores = {g.name: {f: 1.0 for f in Format if not f.is_unquantized} for g in groups}
    return plan(
        PlanRequest(
            groups=groups,
            scores=scores,
            profile=get_profile(profile),
            budget=Budget(fraction_of_16bit=1.0),
            allowed_formats=[mlp, attn, Format.BF16],
            overrides=[(r"\.mlp\.", mlp), (r"\.self_attn\.", attn)],
            allow_non_native=True,
            group_size=64,
        )
    )


def qconfig(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "config.json").read_text())["quantization_config"]


def test_cpu_profile_w4a8_mlp_w8a8_attention(tiny_llama: Path, tmp_path: Path):
    p = recipe(tiny_llama, "cpu", Format.INT4_W4A8, Format.INT8_W8A8)
    res = export(tiny_llama, p, tmp_path / "cpu")
    cfg = qconfig(tmp_path / "cpu")
    assert cfg["quant_method"] == "compressed-tensors"
    assert cfg["ignore"] == ["lm_head"]
    by_bits = {g["weights"]["num_bits"]: g for g in cfg["config_groups"].values()}
    w4, w8 = by_bits[4], by_bits[8]
    assert w4["weights"]["group_size"] == 64 and w4["weights"]["strategy"] == "group"
    assert w4["input_activations"]["type"] == "int" and w4["input_activations"]["dynamic"]
    assert all(".mlp." in t for t in w4["targets"]) and len(w4["targets"]) == 6
    assert all(".self_attn." in t for t in w8["targets"]) and len(w8["targets"]) == 8
    assert res.bytes_on_disk > 0 and {g.format for g in res.config_groups} == {
        Format.INT4_W4A8,
        Format.INT8_W8A8,
    }
    assert (tmp_path / "cpu" / "samp_plan.md").read_text().count("| model.layers.") == 8


def test_gpu_profile_is_mixed_precision_and_reloads_like_the_fake_quant_model(
    tiny_llama: Path, tmp_path: Path
):
    p = recipe(tiny_llama, "sm90", Format.INT4_W4A16, Format.FP8_W8A8)
    out = tmp_path / "sm90"
    export(tiny_llama, p, out)
    cfg = qconfig(out)
    assert cfg["format"] == "mixed-precision"
    assert {g["format"] for g in cfg["config_groups"].values()} == {
        "pack-quantized",
        "float-quantized",
    }
    for g in cfg["config_groups"].values():  # fused shards never split across schemes
        names = set(g["targets"])
        for t in g["targets"]:
            for a, b in (("q_proj", "k_proj"), ("q_proj", "v_proj"), ("gate_proj", "up_proj")):
                if t.endswith(a):
                    assert t.replace(a, b) in names

    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    loaded = load_quantized(out, dtype=torch.float32)
    fake, _ = load_model(tiny_llama)
    fake.float()
    opts = ScoringOptions(formats=[], profile="sm90", group_size=64)
    mods = dict(fake.named_modules())
    lm = dict(loaded.named_modules())
    with torch.no_grad(), ExitStack() as stack:
        base = fake(input_ids=ids).logits
        got = loaded(input_ids=ids).logits  # first forward decompresses the checkpoint
        for a in p.assignments:
            if not a.format.is_unquantized:
                qz = make_quantizer(a.format, opts)
                stack.enter_context(perturbed([mods[m] for m in a.modules], qz))
        want = fake(input_ids=ids).logits
        # Weights: the checkpoint decompresses to the fake-quant weights within one bf16
        # ulp (the fake quant rounds q*scale to bf16, the fp32 load keeps the product).
        for a in p.assignments:
            for m in a.modules:
                assert torch.allclose(lm[m].weight, mods[m].weight, rtol=2**-7, atol=1e-6), m
    # Logits: fp8 activation rounding amplifies those ulps a little, nothing more.
    effect = (want - base).abs().mean()
    assert effect > 1e-2  # quantization visibly changes the logits ...
    assert (got - want).abs().mean() < 0.2 * effect  # ... and the checkpoint reproduces it
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean()
    assert agree > 0.95


def test_nvfp4_uses_its_own_compressor(tiny_llama: Path, tmp_path: Path):
    p = recipe(tiny_llama, "sm100", Format.NVFP4, Format.FP8_W8A8)
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    export(tiny_llama, p, tmp_path / "b200", input_ids=ids)
    formats = {g["format"] for g in qconfig(tmp_path / "b200")["config_groups"].values()}
    assert formats == {"nvfp4-pack-quantized", "float-quantized"}
    with pytest.raises(ExportError, match="calibration data"):
        export(tiny_llama, p, tmp_path / "b200-nocal")


def test_bitsandbytes_nf4_mlp_only(tiny_llama: Path, tmp_path: Path):
    model, _ = load_model(tiny_llama)
    groups = discover_groups(decoder_parts(model))
    scores = {g.name: {Format.NF4: 1.0} for g in groups}
    p = plan(
        PlanRequest(
            groups=groups,
            scores=scores,
            profile=get_profile("sm80"),
            budget=Budget(fraction_of_16bit=1.0),
            allowed_formats=[Format.NF4, Format.BF16],
            overrides=[(r"\.mlp\.", Format.NF4), (r"\.self_attn\.", Format.BF16)],
            allow_non_native=True,
            export_format=ExportFormat.BITSANDBYTES_NF4,
        )
    )
    assert bnb_skip_modules(p) == ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"]
    res = export(tiny_llama, p, tmp_path / "nf4")
    cfg = json.loads((tmp_path / "nf4" / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "bitsandbytes" and cfg["bnb_4bit_quant_type"] == "nf4"
    assert res.export_format is ExportFormat.BITSANDBYTES_NF4
    loaded = load_quantized(tmp_path / "nf4")
    ids = torch.randint(3, 300, (1, 8))
    with torch.no_grad():
        assert torch.isfinite(loaded(input_ids=ids).logits).all()
    with pytest.raises(ExportError, match="NF4 groups cannot"):
        build_quantization_config(p, ["model.layers.0.mlp.up_proj"])
