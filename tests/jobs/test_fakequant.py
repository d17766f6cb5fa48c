"""The fake-quant functions reproduce what the exporters store, on tiny tensors."""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.quantization import preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from compressed_tensors.quantization.utils.helpers import (
    calculate_qparams,
    compute_dynamic_scales_and_zp,
    generate_gparam,
)

from samp_core.formats import Format
from samp_jobs import fakequant as fq


def _ct_weight(w: torch.Tensor, preset: str, group_size: int | None = None) -> torch.Tensor:
    """compressed-tensors' own min-max fake quantization of a weight for a preset."""
    args = preset_name_to_scheme(preset, ["Linear"]).weights
    assert args is not None
    if group_size is not None:
        args.group_size = group_size
    strategy = str(getattr(args.strategy, "value", args.strategy))
    if strategy == "channel":
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    else:
        g = w.reshape(w.shape[0], -1, args.group_size)
        lo, hi = g.amin(-1), g.amax(-1)
    gs = generate_gparam(w.amin(), w.amax()) if strategy == "tensor_group" else None
    scale, zp = calculate_qparams(lo, hi, args, global_scale=gs)
    return fake_quantize(w, scale, zp, args, global_scale=gs)


@pytest.fixture
def weight() -> torch.Tensor:
    torch.manual_seed(0)
    w = torch.randn(24, 64) * torch.linspace(0.1, 3, 64)  # uneven column scales
    w[3] = 0.0  # an all-zero row must stay zero
    return w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_group_symmetric_matches_compressed_tensors(weight: torch.Tensor, dtype: torch.dtype):
    w = weight.to(dtype)
    assert torch.equal(fq.int_qdq(w, 4, 32), _ct_weight(w, "W4A16", 32))


def test_int4_group_asymmetric_matches_compressed_tensors(weight: torch.Tensor):
    assert torch.allclose(
        fq.int_qdq(weight, 4, 32, symmetric=False),
        _ct_weight(weight, "W4A16_ASYM", 32),
        atol=1e-6,
    )


def test_int8_channel_matches_compressed_tensors(weight: torch.Tensor):
    assert torch.equal(fq.int_qdq(weight, 8, None), _ct_weight(weight, "W8A8"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_channel_matches_compressed_tensors(weight: torch.Tensor, dtype: torch.dtype):
    w = weight.to(dtype)
    assert torch.equal(fq.fp8_qdq(w), _ct_weight(w, "FP8_DYNAMIC"))


def test_nvfp4_matches_compressed_tensors(weight: torch.Tensor):
    ours = fq.nvfp4_qdq(weight)
    theirs = _ct_weight(weight, "NVFP4")
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_nf4_matches_bitsandbytes(weight: torch.Tensor):
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    theirs = bnbf.dequantize_4bit(packed, state)
    assert torch.allclose(fq.nf4_qdq(weight), theirs, atol=1e-6)


@pytest.mark.parametrize(
    ("preset", "ours"), [("W8A8", fq.int8_token_qdq), ("FP8_DYNAMIC", fq.fp8_token_qdq)]
)
def test_dynamic_token_activations_match_compressed_tensors(preset: str, ours: object):
    torch.manual_seed(1)
    x = torch.randn(2, 5, 64) * 4
    args = preset_name_to_scheme(preset, ["Linear"]).input_activations
    assert args is not None
    scale, zp = compute_dynamic_scales_and_zp(x, args, module=torch.nn.Linear(1, 1))
    theirs = fake_quantize(x, scale, zp, args)
    assert torch.allclose(ours(x), theirs, atol=1e-6)  # type: ignore[operator]


def test_fp4_rounding_grid_and_ties():
    x = torch.tensor([0.25, 0.3, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.1, -2.6, 7.0])
    want = torch.tensor([0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -3.0, 6.0])
    assert torch.equal(fq.round_fp4(x), want)


def test_group_size_must_divide_in_features(weight: torch.Tensor):
    with pytest.raises(ValueError, match="does not divide"):
        fq.int_qdq(weight, 4, 48)


def test_zero_rows_stay_zero_in_every_format(weight: torch.Tensor):
    for fmt in (Format.INT4_W4A16, Format.FP8_W8A8, Format.INT8_W8A8, Format.NVFP4, Format.NF4):
        q = fq.quantizer(fmt, group_size=32)
        assert torch.equal(q.weight(weight)[3], torch.zeros(64)), fmt


def test_error_shrinks_with_more_bits(weight: torch.Tensor):
    def err(fmt: Format) -> float:
        return float((fq.quantizer(fmt, group_size=32).weight(weight) - weight).pow(2).sum())

    assert err(Format.INT8_W8A8) < err(Format.FP8_W8A8) < err(Format.INT4_W4A16)
    assert err(Format.BF16) == 0.0


def test_w4a8_activation_type_follows_profile():
    assert fq.quantizer(Format.INT4_W4A8, profile="cpu").activation is fq.int8_token_qdq
    assert fq.quantizer(Format.INT4_W4A8, profile="sm90").activation is fq.fp8_token_qdq


def test_output_delta_includes_activation_quantization():
    torch.manual_seed(2)
    x, w = torch.randn(3, 64), torch.randn(8, 64)
    w8 = fq.quantizer(Format.INT8_W8A8)
    weight_only = torch.nn.functional.linear(x, w8.weight(w)) - x @ w.T
    assert not torch.allclose(w8.output_delta(x, w), weight_only)


def test_registries_cover_every_format_and_activation_type():
    from samp_core.formats import CATALOG

    assert set(fq.WEIGHT_QDQ) == set(Format)
    assert {s.scheme_for(p).activation for s in CATALOG.values() for p in ("cpu", "sm90")} <= set(
        fq.ACTIVATION_QDQ
    )


def test_largest_dividing_group_size_falls_back_to_a_smaller_power_of_two():
    assert fq.largest_dividing_group_size(384, 128) == 128
    assert fq.largest_dividing_group_size(320, 128) == 64
    with pytest.raises(ValueError, match="divides"):
        fq.largest_dividing_group_size(24, 128)
