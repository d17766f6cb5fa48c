"""The stage contract: spec -> StageInputs, the one inputs-hash chain, the invocation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from samp_core.api import parse
from samp_core.formats import Format
from samp_core.groups import LayerGroup
from samp_core.hardware import get_profile
from samp_core.planner import request_from_spec
from samp_core.results import Stage
from samp_core.stage_contract import (
    RuntimeOptions,
    StageInvocation,
    StagePaths,
    inputs_from_spec,
    plan_request,
    stage_hashes,
)

STAGES = list(Stage)


def _manifest(**quantization: Any) -> dict[str, Any]:
    return {
        "apiVersion": "samp.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {
            "model": {"source": "hf://org/model@v1", "dtype": "bfloat16"},
            "calibration": {"source": "pvc://data/prompts.jsonl", "samples": 64},
            "quantization": {"budget": {"maxWeightBytes": "38Gi"}, **quantization},
            "hardware": {"target": "h100"},
            "gates": {"latency": {"p99MaxSeconds": 2.0}},
            "artifacts": {"uri": "pvc://out/samp"},
        },
    }


def _hashes(attempt: int = 1, **quantization: Any) -> dict[Stage, str]:
    return stage_hashes(inputs_from_spec(parse(_manifest(**quantization)).spec), attempt)


def _changed(a: dict[Stage, str], b: dict[Stage, str]) -> list[bool]:
    return [a[s] != b[s] for s in STAGES]


def test_spec_maps_to_job_terms() -> None:
    inputs = inputs_from_spec(parse(_manifest(
        overrides=[{"match": "lm_head", "keepUnquantized": True}])).spec)
    q = inputs.quantization
    assert inputs.profile == "sm90"  # the target h100 as its profile
    assert q.budget is not None and q.budget.max_weight_bytes == 38 * 2**30  # bytes
    assert q.overrides[0].format is None  # keep 16-bit, resolved against the profile at plan
    assert inputs.calibration is not None and inputs.calibration.samples == 64
    assert inputs.model.dtype == "bfloat16" and inputs.evaluation.max_new_tokens == 32


def test_each_change_reruns_from_the_first_stage_that_reads_it() -> None:
    base = _hashes()
    assert _changed(base, _hashes(budget={"fractionOf16Bit": 0.4})) == [
        False, False, True, True, True]
    # Scoring quantizes with the group size, so a new group size rescoring is required.
    assert _changed(base, _hashes(groupSize=64)) == [False, True, True, True, True]
    assert _changed(base, _hashes(sensitivity={"method": "activation"})) == [
        False, True, True, True, True]
    assert _changed(base, _hashes(2)) == [False, False, True, True, True]  # re-plan attempt
    assert base == _hashes()  # deterministic


def test_paths_and_runtime_are_not_hashed() -> None:
    inputs = inputs_from_spec(parse(_manifest()).spec)
    a = StageInvocation(stage=Stage.EXPORT, inputs=inputs,
                        paths=StagePaths(workdir="/a", artifact="/a/x"))
    b = StageInvocation(stage=Stage.EXPORT, inputs=inputs,
                        paths=StagePaths(workdir="/b", artifact="/b/y", model="/m"),
                        runtime=RuntimeOptions(device="cpu", progress=False, micro_batch=1))
    assert a.inputs_hash == b.inputs_hash == stage_hashes(inputs)[Stage.EXPORT]
    assert a.for_stage(Stage.PLAN).inputs_hash == stage_hashes(inputs)[Stage.PLAN]


def test_a_hash_that_does_not_match_its_inputs_is_refused() -> None:
    inputs = inputs_from_spec(parse(_manifest()).spec)
    doc = StageInvocation(stage=Stage.PLAN, inputs=inputs,
                          paths=StagePaths(workdir="/w", artifact="/a")).to_json()
    assert StageInvocation.model_validate_json(doc).inputs_hash.startswith("sha256:")
    with pytest.raises(ValidationError, match="does not match the plan inputs"):
        StageInvocation.model_validate_json(doc.replace('"sm90"', '"sm80"'))


def test_request_from_spec_is_the_contracts_plan_request() -> None:
    spec = parse(_manifest(overrides=[{"match": "layers\\.0\\.", "keepUnquantized": True}],
                           allowedFormats=["int4-w4a16", "fp16"])).spec
    group = LayerGroup.model_validate({
        "name": "model.layers.0.mlp.down_proj", "kind": "mlp_down", "layerIndex": 0,
        "modules": ["model.layers.0.mlp.down_proj"], "inFeatures": 512, "outFeatures": 256})
    scores = {group.name: {Format.INT4_W4A16: 1.0}}
    profile = get_profile("sm90")
    via_contract = plan_request(inputs_from_spec(spec).quantization, groups=[group],
                                scores=scores, profile=profile)
    assert via_contract == request_from_spec(spec.quantization, groups=[group], scores=scores,
                                             profile=profile)
    assert via_contract.overrides == [("layers\\.0\\.", Format.FP16)]  # the listed 16-bit one
