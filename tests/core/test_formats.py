"""The format catalog: byte accounting, group-size rule, families, activation types, presets."""

from __future__ import annotations

import pytest

from samp_core.formats import (
    CATALOG,
    GPTQ_DEFAULT_FORMATS,
    GPTQ_FORMATS,
    ExportFormat,
    Format,
    activation_type,
    bytes_per_weight,
    checkpoint_bytes,
    effective_group_size,
    export_format_of,
    format_spec,
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


def test_catalog_has_one_entry_per_format_keyed_by_itself() -> None:
    assert set(CATALOG) == set(Format)
    assert all(spec.format is fmt for fmt, spec in CATALOG.items())


def test_w4a8_is_described_once_per_target_kind() -> None:
    """int4 weights everywhere; int8 activations (W4A8 preset) on the CPU, fp8 (W4AFP8) on GPUs."""
    w4a8 = format_spec(Format.INT4_W4A8)
    assert w4a8.weight_type == "int4"
    assert (w4a8.scheme_for("cpu").activation, w4a8.scheme_for("cpu").preset) == ("int8", "W4A8")
    for gpu in ("sm80", "sm89", "sm90", "sm100"):
        assert (w4a8.scheme_for(gpu).activation, w4a8.scheme_for(gpu).preset) == ("fp8", "W4AFP8")


def test_presets_exist_exactly_for_compressed_tensors_formats() -> None:
    for fmt, spec in CATALOG.items():
        has_preset = spec.scheme_for("sm90").preset is not None
        assert has_preset is (spec.family is ExportFormat.COMPRESSED_TENSORS), fmt


def test_group_size_rule_fixed_or_requested_and_divisibility() -> None:
    assert effective_group_size(Format.NVFP4, 128) == 16
    assert effective_group_size(Format.NF4, 128) == 64
    assert effective_group_size(Format.INT4_W4A16, 32) == 32
    assert not format_spec(Format.INT4_W4A8).fits(200, 128)
    assert format_spec(Format.INT4_W4A8).fits(256, 128)
    assert format_spec(Format.NVFP4).fits(208, 128)  # 16 divides 208 whatever was requested
    assert format_spec(Format.NF4).fits(7, 128)  # flat blocks: no divisibility rule
    assert format_spec(Format.INT8_W8A8).fits(7, 128)  # per channel


def test_gptq_scopes_come_from_the_catalog() -> None:
    assert GPTQ_FORMATS == (Format.INT4_W4A16, Format.INT4_W4A8, Format.INT8_W8A8)
    assert GPTQ_DEFAULT_FORMATS == (Format.INT4_W4A16, Format.INT4_W4A8)
