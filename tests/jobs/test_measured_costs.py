"""The plan stage's sm90 profile carries the costs measured on an H200 (package data)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from samp_core.formats import Format
from samp_core.groups import LayerGroup
from samp_core.hardware import MeasuredCosts, get_profile
from samp_core.planner import Budget
from samp_core.results import Stage
from samp_core.stage_contract import (
    ModelInputs,
    QuantizationInputs,
    StageInputs,
    StageInvocation,
    StagePaths,
)
from samp_jobs import measured_costs
from samp_jobs.stage_options import plan_request_for

SHIPPED = "sm90.measured.json"


def _doc() -> MeasuredCosts:
    text = resources.files("samp_core").joinpath("profiles", SHIPPED).read_text()
    return MeasuredCosts.model_validate_json(text)


def test_shipped_file_is_a_valid_sm90_benchmark() -> None:
    doc = _doc()
    assert doc.profile == "sm90"
    assert "H200" in doc.device
    assert doc.relative_cost[Format.BF16] == 1.0
    assert {Format.FP8_W8A8, Format.INT8_W8A8, Format.INT4_W4A16} <= set(doc.relative_cost)


def test_plan_stage_uses_measured_sm90_costs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(measured_costs.ENV_VAR, raising=False)
    doc = _doc()
    inv = StageInvocation(
        stage=Stage.PLAN,
        inputs=StageInputs(
            model=ModelInputs(source=""), profile="sm90",
            quantization=QuantizationInputs(budget=Budget(fraction_of_16bit=0.5),
                                            formats=[Format.INT4_W4A16, Format.BF16])),
        paths=StagePaths(workdir=str(tmp_path), artifact=str(tmp_path / "artifact")),
    )
    group = LayerGroup.model_validate(
        {
            "name": "model.layers.0.mlp.down_proj",
            "kind": "mlp_down",
            "layerIndex": 0,
            "modules": ["model.layers.0.mlp.down_proj"],
            "inFeatures": 512,
            "outFeatures": 256,
        }
    )
    req = plan_request_for(inv, [group], {group.name: {Format.INT4_W4A16: 1.0}})
    for fmt, cost in doc.relative_cost.items():
        sup = req.profile.support(fmt)
        assert sup.cost_source == f"measured:{SHIPPED}"
        assert sup.relative_cost == pytest.approx(cost)
    # Formats the benchmark could not run keep their assumed cost.
    assert req.profile.support(Format.NVFP4).cost_source == "assumed"
    assert req.profile.relative_cost(Format.NVFP4) == get_profile("sm90").relative_cost(
        Format.NVFP4
    )


def test_profiles_without_a_file_stay_assumed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(measured_costs.ENV_VAR, raising=False)
    assert measured_costs.profile_with_measured_costs("sm80") == get_profile("sm80")
    h100 = measured_costs.profile_with_measured_costs("h100")
    assert h100.support(Format.BF16).cost_source.startswith("measured:")


def test_env_override_and_off_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"profile": "sm90", "relativeCost": {"bf16": 2.0, "fp8-w8a8": 1.0}}))
    monkeypatch.setenv(measured_costs.ENV_VAR, str(path))
    p = measured_costs.profile_with_measured_costs("sm90")
    assert p.support(Format.FP8_W8A8).cost_source == "measured:bench.json"
    assert p.relative_cost(Format.FP8_W8A8) == pytest.approx(0.5)  # normalised to bf16
    monkeypatch.setenv(measured_costs.ENV_VAR, "none")
    assert measured_costs.profile_with_measured_costs("sm90") == get_profile("sm90")
