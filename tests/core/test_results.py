"""Result documents: JSON round trips, camelCase, summary size, input hashing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from samp_core.formats import ExportFormat, Format, SensitivityMethod
from samp_core.groups import GroupKind, LayerGroup
from samp_core.hardware import get_profile
from samp_core.planner import Budget, PlanRequest, plan
from samp_core.results import (
    SUMMARY_MAX_BYTES,
    CalibrationResult,
    ConfigGroupSummary,
    DroppedCounts,
    EvaluationResult,
    ExportedFile,
    ExportResult,
    LengthStats,
    PlanResult,
    SensitivityResult,
    Stage,
    inputs_hash,
    parse_result,
)
from samp_core.results.summaries import (
    ResultError,
    accuracy_figures,
    parse_summary,
    plan_figures,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _groups(n_layers: int) -> list[LayerGroup]:
    out = []
    for i in range(n_layers):
        for kind, suffix, fin, fout, mods in (
            (GroupKind.ATTENTION_QKV, "self_attn.qkv", 8192, 10240, 3),
            (GroupKind.ATTENTION_O, "self_attn.o_proj", 8192, 8192, 1),
            (GroupKind.MLP_GATE_UP, "mlp.gate_up", 8192, 57344, 2),
            (GroupKind.MLP_DOWN, "mlp.down_proj", 28672, 8192, 1),
        ):
            name = f"model.layers.{i}.{suffix}"
            out.append(
                LayerGroup(
                    name=name,
                    kind=kind,
                    layer_index=i,
                    modules=[f"{name}.m{j}" for j in range(mods)],
                    in_features=fin,
                    out_features=fout,
                )
            )
    return out


def _sensitivity(n_layers: int = 80) -> SensitivityResult:
    groups = _groups(n_layers)
    scores = {
        g.name: {
            Format.INT4_W4A16: 1e-3 * (k + 1),
            Format.FP8_W8A8: 1e-4 * (k + 1),
            Format.INT8_W8A8: 2e-4 * (k + 1),
        }
        for k, g in enumerate(groups)
    }
    return SensitivityResult(
        inputs_hash=inputs_hash(model="m", revision="abc"),
        created_at=T0,
        method=SensitivityMethod.FISHER,
        num_tokens=262144,
        num_samples=128,
        groups=groups,
        scores=scores,
        wall_seconds=123.4,
        peak_memory_bytes=43 * 2**30,
    )


def _all_kinds() -> list[
    CalibrationResult | SensitivityResult | PlanResult | ExportResult | EvaluationResult
]:
    sens = _sensitivity(4)
    plan_result = plan(
        PlanRequest(
            groups=sens.groups,
            scores=sens.scores,
            profile=get_profile("sm90"),
            budget=Budget(fraction_of_16bit=0.35),
            curve_points=5,
        )
    )
    return [
        CalibrationResult(
            created_at=T0,
            source="s3://bucket/prompts.jsonl",
            num_samples=512,
            num_tokens=400_000,
            lengths=LengthStats(p50=600, p90=1800, max=4096),
            dropped=DroppedCounts(duplicates=12, too_short=3, too_long=1, malformed=2),
            dataset_digest="sha256:00",
        ),
        sens,
        plan_result,
        ExportResult(
            created_at=T0,
            artifact_uri="s3://bucket/out/model",
            export_format=ExportFormat.COMPRESSED_TENSORS,
            config_groups=[
                ConfigGroupSummary(name="group_0", format=Format.INT4_W4A16, num_targets=8),
                ConfigGroupSummary(name="group_1", format=Format.FP8_W8A8, num_targets=8),
            ],
            ignore=["lm_head"],
            files=[ExportedFile(path="model.safetensors", bytes=1234, sha256="ab")],
            bytes_on_disk=1234,
        ),
        EvaluationResult(
            created_at=T0,
            num_prompts=200,
            perplexity_base=5.0,
            perplexity_quant=5.1,
            mean_kl=0.01,
            top1_agreement=0.97,
            answer_flips=3,
            task_exact_match_base=0.8,
            task_exact_match_quant=0.78,
            json_validity_base=1.0,
            json_validity_quant=0.99,
        ),
    ]


@pytest.mark.parametrize("index", range(5))
def test_every_kind_round_trips_through_json(index: int) -> None:
    doc = _all_kinds()[index]
    text = doc.to_json()
    back = parse_result(text)
    assert type(back) is type(doc)
    assert back == doc
    raw = json.loads(text)
    assert raw["apiVersion"] == "samp.dev/v1alpha1"
    assert raw["kind"] == type(doc).__name__
    assert "createdAt" in raw and "inputsHash" in raw
    assert not any("_" in k for k in raw)  # camelCase on the wire
    assert parse_result(raw) == doc  # also from a parsed dict


@pytest.mark.parametrize("index", range(5))
def test_summaries_fit_a_termination_message(index: int) -> None:
    doc = _all_kinds()[index]
    text = doc.summary_json()
    assert len(text.encode()) < SUMMARY_MAX_BYTES
    s = json.loads(text)
    assert s["kind"] == type(doc).__name__
    assert s["stage"] == str(doc.stage)


@pytest.mark.parametrize("index", range(5))
def test_the_operator_reads_back_the_typed_summary(index: int) -> None:
    """What a stage writes (summary_json) is what the operator parses (parse_summary)."""
    doc = _all_kinds()[index]
    doc.inputs_hash = "sha256:" + "ab" * 32
    assert doc.stage is not None
    back = parse_summary(doc.stage, doc.summary_json())
    assert back == doc.summary() and back.inputs_hash == doc.inputs_hash
    assert back.describe()
    other = _all_kinds()[(index + 1) % 5]
    with pytest.raises(ResultError, match=f"not a {type(doc).__name__} summary"):
        parse_summary(doc.stage, other.summary_json())


def test_summaries_become_status_figures() -> None:
    kinds = _all_kinds()
    plan_doc, ev = kinds[2], kinds[4]
    assert isinstance(plan_doc, PlanResult) and isinstance(ev, EvaluationResult)
    figures = plan_figures(plan_doc.summary())
    assert figures.bytes_quantized == plan_doc.total_bytes
    assert figures.groups_per_format == plan_doc.groups_per_format()
    assert figures.memory_saved_percent == pytest.approx(plan_doc.memory_saved_percent, abs=0.01)
    acc = accuracy_figures(ev.summary())
    assert acc.mean_kl == ev.mean_kl and acc.top1_agreement == ev.top1_agreement
    assert acc.perplexity_increase_percent == pytest.approx(
        100 * (ev.perplexity_quant / ev.perplexity_base - 1), abs=1e-4)
    # A broken quantization's infinite perplexity crosses the wire and shows as absent.
    broken = ev.model_copy(update={"perplexity_quant": float("inf")})
    read = parse_summary(Stage.EVALUATE, broken.summary_json())
    assert accuracy_figures(read).perplexity_quantized is None


def test_garbage_is_not_a_summary() -> None:
    with pytest.raises(ResultError, match="not JSON"):
        parse_summary(Stage.PLAN, "Traceback (most recent call last): boom")


def test_summary_of_a_70b_sized_sensitivity_and_plan_stays_small() -> None:
    sens = _sensitivity(80)
    assert len(sens.summary_json()) < SUMMARY_MAX_BYTES
    assert sens.summary().num_groups == 320
    result = plan(
        PlanRequest(
            groups=sens.groups,
            scores=sens.scores,
            profile=get_profile("sm90"),
            budget=Budget(fraction_of_16bit=0.35),
            curve_points=0,
        )
    )
    assert len(result.to_json()) > SUMMARY_MAX_BYTES  # the full doc would not fit
    assert len(result.summary_json()) < SUMMARY_MAX_BYTES


def test_summary_json_drops_largest_entries_rather_than_overflowing() -> None:
    cal = CalibrationResult(
        source="x" * 10_000,
        num_samples=1,
        num_tokens=1,
        lengths=LengthStats(p50=1, p90=1, max=1),
        dataset_digest="y" * 5000,
    )
    s = json.loads(cal.summary_json())
    assert s["truncated"] is True
    assert s["kind"] == "CalibrationResult" and "numSamples" in s
    assert parse_summary(Stage.CALIBRATE, cal.summary_json()).num_samples == 1


def test_fields_populate_by_name_or_alias() -> None:
    a = LengthStats.model_validate({"p50": 1, "p90": 2, "max": 3})
    d1 = DroppedCounts(too_short=2)
    d2 = DroppedCounts.model_validate({"tooShort": 2})
    assert d1 == d2 and d1.total == 2 and a.max == 3


def test_wrong_api_version_or_kind_is_rejected() -> None:
    raw = json.loads(_all_kinds()[0].to_json())
    with pytest.raises(ValidationError):
        parse_result({**raw, "apiVersion": "samp.dev/v2"})
    with pytest.raises(ValidationError):
        parse_result({**raw, "kind": "Nope"})
    with pytest.raises(ValidationError):
        CalibrationResult.model_validate({**raw, "stage": "plan"})


def test_stage_is_set_from_the_kind() -> None:
    kinds = _all_kinds()
    assert [d.stage for d in kinds] == [
        Stage.CALIBRATE,
        Stage.SENSITIVITY,
        Stage.PLAN,
        Stage.EXPORT,
        Stage.EVALUATE,
    ]


def test_sensitivity_scores_must_name_known_groups() -> None:
    sens = _sensitivity(1)
    with pytest.raises(ValidationError, match="unknown groups"):
        SensitivityResult(
            method=SensitivityMethod.ACTIVATION,
            num_tokens=1,
            groups=sens.groups,
            scores={"nope": {Format.FP8_W8A8: 1.0}},
            wall_seconds=1.0,
        )


def test_sensitivity_scores_say_their_unit() -> None:
    """fisher and kl estimate a loss in nats/token; activation's squared output error is
    another unit, and the document says so (kept through JSON)."""
    sens = _sensitivity(1)
    assert sens.score_unit.startswith("nats/token")
    act = sens.model_copy(update={"method": SensitivityMethod.ACTIVATION, "score_unit": ""})
    act = SensitivityResult.model_validate(act.model_dump())
    assert act.score_unit.startswith("squared output error per token")
    assert "not comparable with fisher or kl" in act.score_unit
    again = SensitivityResult.model_validate_json(act.model_dump_json(by_alias=True))
    assert again.score_unit == act.score_unit
    assert SensitivityMethod.KL.score_unit != SensitivityMethod.FISHER.score_unit


def test_evaluation_derives_recovery_and_delta() -> None:
    ev = _all_kinds()[4]
    assert isinstance(ev, EvaluationResult)
    assert ev.perplexity_recovery_pct == pytest.approx(100 * 5.0 / 5.1)
    assert ev.task_recovery_pct == pytest.approx(100 * 0.78 / 0.8)
    assert ev.json_recovery_pct == pytest.approx(99.0)
    assert ev.accuracy_delta_pts == pytest.approx(-2.0)
    bare = EvaluationResult(
        num_prompts=1, perplexity_base=2, perplexity_quant=2, mean_kl=0, top1_agreement=1
    )
    assert bare.task_recovery_pct is None and bare.accuracy_delta_pts is None


def test_plan_result_helpers() -> None:
    result = _all_kinds()[2]
    assert isinstance(result, PlanResult)
    by_fmt = result.modules_by_format()
    assert sum(len(v) for v in by_fmt.values()) == sum(len(a.modules) for a in result.assignments)
    assert result.budget_used <= 1.0
    assert 0 < result.fraction_of_16bit <= 0.35


def test_inputs_hash_is_stable_and_sensitive() -> None:
    a = inputs_hash(model_revision="r1", policy={"b": 1, "a": [Format.FP8_W8A8]}, profile="sm90")
    b = inputs_hash(profile="sm90", policy={"a": ["fp8-w8a8"], "b": 1}, model_revision="r1")
    assert a == b and a.startswith("sha256:") and len(a) == 7 + 64
    assert a != inputs_hash(model_revision="r2", policy={"b": 1, "a": ["fp8-w8a8"]}, profile="sm90")
    # models hash by their JSON form, so a budget given by alias or name is the same input
    assert inputs_hash(budget=Budget(fraction_of_16bit=0.4)) == inputs_hash(
        budget=Budget.model_validate({"fractionOf16Bit": 0.4})
    )
    assert inputs_hash(s={3, 1, 2}) == inputs_hash(s=[1, 2, 3])
    with pytest.raises(ValueError):
        inputs_hash(x=float("nan"))


def test_infinite_perplexity_survives_the_round_trip() -> None:
    """A broken quantization has infinite perplexity; JSON must not turn it into null."""
    ev = EvaluationResult(
        num_prompts=1,
        perplexity_base=5.0,
        perplexity_quant=float("inf"),
        mean_kl=3.0,
        top1_agreement=0.1,
    )
    back = parse_result(ev.to_json())
    assert isinstance(back, EvaluationResult)
    assert back.perplexity_quant == float("inf")
    assert back.perplexity_recovery_pct == 0.0
