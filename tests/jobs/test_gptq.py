"""GPTQ rounding: the tensor math on tiny tensors, the plan/spec plumbing, and the export
path (the checkpoint holds exactly the GPTQ codes, in the RTN checkpoint's layout, and
the quantized model is closer to the base than round-to-nearest on held-out tokens)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_export import recipe

from samp_core.formats import Format, RoundingMethod
from samp_core.hardware import get_profile
from samp_core.planner import request_from_spec
from samp_core.results import PlanResult, Rounding
from samp_core.spec import QuantizationSpec
from samp_jobs.evaluate import load_quantized
from samp_jobs.export import build_quantization_config, export, gptq_pass, weight_qparams
from samp_jobs.gptq import (
    HessianAccumulator,
    IntGrid,
    dequantize,
    gptq_codes,
    proxy_loss,
    rtn_codes,
    single_thread_on_cpu,
)
from samp_jobs.modeling import decoder_parts, discover_groups, load_model

CPU = torch.device("cpu")


def _problem(
    out: int = 32, inp: int = 128, n: int = 1024, group: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight, correlated inputs' Hessian, int4 group scales, zero points."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(inp, inp, generator=g) / inp**0.5
    x = torch.randn(n, inp, generator=g) @ mix + 0.3 * torch.randn(inp, generator=g)
    w = torch.randn(out, inp, generator=g)
    acc = HessianAccumulator(inp, CPU)
    for chunk in x.split(100):
        acc.add(chunk)
    scale = w.reshape(out, inp // group, group).abs().amax(-1) / 7.5
    return w, acc.h, scale, torch.zeros_like(scale)


def test_hessian_accumulator_is_the_mean_outer_product():
    x = torch.randn(300, 16)
    acc = HessianAccumulator(16, CPU)
    for chunk in (x[:7], x[7:200], x[200:]):
        acc.add(chunk.reshape(1, -1, 16))  # [batch, tokens, features] like a Linear's input
    assert acc.n == 300
    torch.testing.assert_close(acc.h, x.T @ x / 300, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_halves_the_output_error_of_round_to_nearest(act_order: bool):
    w, h, scale, zp = _problem()
    grid = IntGrid(4)
    codes, stats = gptq_codes(w, h, scale, zp, grid, act_order=act_order)
    assert torch.equal(codes, codes.round())
    assert codes.min() >= grid.qmin and codes.max() <= grid.qmax
    rtn = rtn_codes(w, scale, zp, grid)
    assert stats.rtn_loss == pytest.approx(proxy_loss(w, dequantize(rtn, scale, zp), h))
    assert stats.loss == pytest.approx(proxy_loss(w, dequantize(codes, scale, zp), h))
    assert stats.loss < 0.6 * stats.rtn_loss


def test_gptq_with_an_identity_hessian_is_round_to_nearest():
    w, _h, scale, zp = _problem()
    codes, _ = gptq_codes(w, torch.eye(w.shape[1]), scale, zp, IntGrid(4))
    assert torch.equal(codes, rtn_codes(w, scale, zp, IntGrid(4)))


def test_gptq_int8_per_channel_and_dead_columns():
    w, h, _, _ = _problem(group=128)
    h[5, :] = 0
    h[:, 5] = 0  # an input never activated in calibration
    scale = w.abs().amax(dim=1, keepdim=True) / 127.5
    codes, stats = gptq_codes(w, h, scale, torch.zeros_like(scale), IntGrid(8))
    assert stats.dead_columns == 1
    assert torch.all(codes[:, 5] == 0)
    assert codes.min() >= -128 and codes.max() <= 127
    assert stats.loss < stats.rtn_loss


# ------------------------------------------------------------------ spec and plan


def test_spec_defaults_to_gptq_for_the_4bit_groups(tiny_llama: Path):
    model, _ = load_model(tiny_llama)
    groups = discover_groups(decoder_parts(model))
    scores = {g.name: {f: 1.0 for f in Format if not f.is_unquantized} for g in groups}
    q = QuantizationSpec.model_validate({"budget": {"fractionOf16Bit": 0.5}, "groupSize": 64})
    req = request_from_spec(q, groups=groups, scores=scores, profile=get_profile("sm90"))
    assert req.rounding.method is RoundingMethod.GPTQ
    assert req.rounding.formats == [Format.INT4_W4A16, Format.INT4_W4A8]
    rtn = QuantizationSpec.model_validate(
        {"budget": {"fractionOf16Bit": 0.5}, "rounding": {"method": "rtn"}}
    )
    assert (
        request_from_spec(rtn, groups=groups, scores=scores, profile=get_profile("sm90"))
        .rounding.method
        is RoundingMethod.RTN
    )


def test_spec_refuses_gptq_for_float_formats():
    with pytest.raises(ValueError, match="gptqFormats may list only"):
        QuantizationSpec.model_validate(
            {"budget": {"fractionOf16Bit": 0.5}, "rounding": {"gptqFormats": ["fp8-w8a8"]}}
        )


def test_plan_documents_without_rounding_mean_round_to_nearest(tiny_llama: Path):
    p = recipe(tiny_llama, "sm90", Format.INT4_W4A16, Format.FP8_W8A8)
    doc = json.loads(p.model_dump_json(by_alias=True))
    doc.pop("rounding", None)
    old = PlanResult.model_validate(doc)
    assert old.rounding is None and old.gptq_modules() == []
    new = p.model_copy(update={"rounding": Rounding()})
    assert new.rounding_of(Format.INT4_W4A16) is RoundingMethod.GPTQ
    assert new.rounding_of(Format.FP8_W8A8) is RoundingMethod.RTN
    assert set(new.gptq_modules()) == set(p.modules_by_format()[Format.INT4_W4A16])
    assert new.summary().rounding == "gptq"


# ------------------------------------------------------------------------ export


def _tokens(model_dir: Path, rows: int, seq: int, seed: int) -> torch.Tensor:
    """Calibration-like token rows: the example's prompts (or seeded ids), packed."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = Path(__file__).resolve().parents[2] / "examples" / "tiny" / "prompts.jsonl"
    texts = [json.loads(line)["text"] for line in prompts.read_text().splitlines() if line]
    ids: list[int] = []
    for t in texts[seed::2]:
        ids.extend(tok(t)["input_ids"])
    need = rows * seq
    if len(ids) < need:
        g = torch.Generator().manual_seed(seed)
        ids.extend(torch.randint(0, len(tok), (need - len(ids),), generator=g).tolist())
    return torch.tensor(ids[:need]).reshape(rows, seq)


def _gptq_plan(model_dir: Path) -> PlanResult:
    p = recipe(model_dir, "cpu", Format.INT4_W4A8, Format.INT8_W8A8)
    rounding = Rounding(formats=[Format.INT4_W4A8, Format.INT8_W8A8])
    return p.model_copy(update={"rounding": rounding})


def test_gptq_export_writes_the_gptq_codes_in_the_rtn_layout(tiny_llama: Path, tmp_path: Path):
    p = _gptq_plan(tiny_llama)
    ids = _tokens(tiny_llama, 8, 64, seed=0)
    out_g, out_r = tmp_path / "gptq", tmp_path / "rtn"
    res = export(tiny_llama, p, out_g, input_ids=ids)
    export(tiny_llama, p.model_copy(update={"rounding": None}), out_r)
    assert "gptq" in (res.phase_seconds or {})

    # Same config and the same tensors (names, dtypes, shapes): vLLM sees one layout.
    cfg_g = json.loads((out_g / "config.json").read_text())["quantization_config"]
    cfg_r = json.loads((out_r / "config.json").read_text())["quantization_config"]
    assert cfg_g == cfg_r

    def tensors(d: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            return {
                k: (str(f.get_slice(k).get_dtype()), tuple(f.get_slice(k).get_shape()))
                for k in f.keys()  # noqa: SIM118
            }

    assert tensors(out_g) == tensors(out_r)
    assert not any("g_idx" in k for k in tensors(out_g))

    # The checkpoint decompresses to exactly (codes - zp) * scale of the GPTQ pass.
    model, _ = load_model(tiny_llama)
    parts = decoder_parts(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    qcfg = build_quantization_config(p, linears)
    with single_thread_on_cpu(CPU, parts.head.weight.shape[1]):  # as export runs it
        codes = gptq_pass(parts, p, qcfg, ids, CPU)
    assert set(codes) == set(p.gptq_modules())
    args = {t: g.weights for g in qcfg.config_groups.values() for t in g.targets}
    qg = load_quantized(out_g, dtype=torch.float32)
    qr = load_quantized(out_r, dtype=torch.float32)
    changed = 0
    for name, c in codes.items():
        orig = model.get_submodule(name).weight.data
        scale, zp, _ = weight_qparams(orig, args[name])
        got = qg.get_submodule(name).weight.data
        if got.dtype == torch.int8:  # int-quantized (W8A8) stays compressed when loaded
            assert torch.equal(got, c)
        else:
            want = dequantize(c, scale, zp).to(orig.dtype).float()
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        changed += int(not torch.equal(got, qr.get_submodule(name).weight.data))
    assert changed == len(codes)

    # Closer to the base model than round-to-nearest on held-out tokens.
    held = _tokens(tiny_llama, 4, 64, seed=1)
    base, _ = load_model(tiny_llama)
    base.float()
    with torch.no_grad():
        ref = torch.log_softmax(base(input_ids=held).logits, -1)

        def kl(m: torch.nn.Module) -> float:
            lp = torch.log_softmax(m(input_ids=held).logits, -1)
            return float((ref.exp() * (ref - lp)).sum(-1).mean())

        kl_g, kl_r = kl(qg), kl(qr)
    assert kl_g < kl_r, (kl_g, kl_r)


def test_gptq_export_needs_calibration_tokens(tiny_llama: Path, tmp_path: Path):
    from samp_jobs.export import ExportError

    with pytest.raises(ExportError, match="calibration tokens"):
        export(tiny_llama, _gptq_plan(tiny_llama), tmp_path / "x")


_FUSED_VS_REFERENCE = """
import torch
from samp_jobs.gptq import HessianAccumulator, IntGrid, gptq_codes
g = torch.Generator().manual_seed({seed})
out, inp, group = 24, 200, 40  # blocks of 64: the last one 8 wide
x = torch.randn(512, inp, generator=g) @ (torch.randn(inp, inp, generator=g) / inp**0.5)
x[:, 5] = 0.0  # a dead column
w = torch.randn(out, inp, generator=g)
acc = HessianAccumulator(inp, torch.device("cpu"))
acc.add(x)
scale = w.reshape(out, inp // group, group).abs().amax(-1) / 7.5
zp = torch.randint(-1, 2, scale.shape, generator=g).float()
for bits, act_order in ((4, True), (8, False)):
    args = (w, acc.h, scale, zp, IntGrid(bits))
    ref, rs = gptq_codes(*args, act_order=act_order, block_size=64, fused=False)
    fast, fs = gptq_codes(*args, act_order=act_order, block_size=64, fused=True)
    print(bits, int((ref != fast).sum()), rs.loss, fs.loss, rs.rtn_loss)
from samp_jobs import gptq_fused
assert gptq_fused.failure() is None, gptq_fused.failure()  # the kernel ran, no fallback
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
@pytest.mark.parametrize("seed", [0])
def test_fused_block_kernel_gives_the_reference_codes(seed: int):
    """The Triton block kernel (run by Triton's CPU interpreter here) against the
    reference column loop: same codes, same proxy loss, on fresh random problems with
    act-order on and off, a dead column, nonzero zero points and a partial last block."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=f"{root / 'operator'}{os.pathsep}{root / 'jobs'}")
    done = subprocess.run(
        [sys.executable, "-c", _FUSED_VS_REFERENCE.format(seed=seed)],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )
    lines = [ln.split() for ln in done.stdout.strip().splitlines()]
    assert [ln[0] for ln in lines] == ["4", "8"]
    for _bits, differing, ref_loss, fast_loss, rtn_loss in lines:
        assert int(differing) == 0
        assert float(fast_loss) == pytest.approx(float(ref_loss), rel=1e-6)
        assert float(fast_loss) < float(rtn_loss)


def test_a_kernel_that_cannot_build_falls_back_to_the_reference_loop(
    monkeypatch: pytest.MonkeyPatch,
):
    """A Triton build or launch failure (mocked: this machine's Triton builds it) switches
    the kernel off once, logged, and the reference loop's codes come back untouched."""
    from samp_jobs import gptq_fused

    def cannot_build(*_a: object, **_k: object) -> None:
        raise RuntimeError("ptxas: sm_90 not supported")

    monkeypatch.setattr(gptq_fused, "_failed", [])
    monkeypatch.setattr(gptq_fused, "triton", object())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(gptq_fused, "block", cannot_build)
    w, h, scale, zp = _problem(inp=320)
    assert gptq_fused.usable(CPU)
    got, st = gptq_codes(w, h, scale, zp, IntGrid(4))
    assert gptq_fused.failure() == "RuntimeError: ptxas: sm_90 not supported"
    assert not gptq_fused.usable(CPU)
    ref, rs = gptq_codes(w, h, scale, zp, IntGrid(4), fused=False)
    assert torch.equal(got, ref)
    assert st.loss == rs.loss
