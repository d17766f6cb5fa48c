"""A stage's result summary (the JSON its pod leaves in the termination message) into
status: parsed, checked for the expected kind, and copied into plan/artifact/accuracy."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from samp_core.reconcile.decision import clip
from samp_core.results import Stage
from samp_core.status import AccuracySummary, PlanSummary, QuantizedModelStatus

_RESULT_KIND = {
    Stage.CALIBRATE: "CalibrationResult",
    Stage.SENSITIVITY: "SensitivityResult",
    Stage.PLAN: "PlanResult",
    Stage.EXPORT: "ExportResult",
    Stage.EVALUATE: "EvaluationResult",
}


class ResultError(ValueError):
    """A termination message that is not the expected result summary."""

def parse_summary(stage: Stage, message: str) -> dict[str, Any]:
    """The result summary a stage's pod wrote (results.ResultBase.summary_json)."""
    try:
        data = json.loads(message)
    except ValueError as err:
        raise ResultError(f"termination message is not JSON: {clip(message, 200)!r}") from err
    if not isinstance(data, dict):
        raise ResultError("termination message is not a JSON object")
    kind = data.get("kind")
    if kind != _RESULT_KIND[stage]:
        raise ResultError(f"expected a {_RESULT_KIND[stage]} summary, got kind={kind!r}")
    return data


def _num(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def plan_summary(data: Mapping[str, Any]) -> PlanSummary:
    b16 = int(_num(data, "bytes16Bit") or 0)
    total = int(_num(data, "totalBytes") or 0)
    fraction = _num(data, "fractionOf16Bit")
    if fraction is None:
        fraction = total / b16 if b16 else 1.0
    by_format = data.get("byFormat") or {}
    return PlanSummary(
        profile=str(data.get("profile", "")),
        bytes16_bit=b16,
        bytes_quantized=total,
        effective_bits=round(_num(data, "effectiveBits") or 0.0, 3),
        memory_saved_percent=round(100.0 * (1.0 - fraction), 2),
        predicted_loss=_num(data, "predictedLoss") or 0.0,
        groups_per_format={str(k): int(v) for k, v in by_format.items()
                           if isinstance(v, int)},
    )


def accuracy_summary(data: Mapping[str, Any]) -> AccuracySummary:
    base = _num(data, "perplexityBase")
    quant = _num(data, "perplexityQuant")
    increase = round(100.0 * (quant / base - 1.0), 4) if base and quant else None
    return AccuracySummary(
        perplexity_base=base,
        perplexity_quantized=quant,
        perplexity_increase_percent=increase,
        mean_kl=_num(data, "meanKl") if "meanKl" in data else _num(data, "meanKL"),
        top1_agreement=_num(data, "top1Agreement"),
        exact_match_recovery_percent=_num(data, "taskRecoveryPct"),
        json_validity_recovery_percent=_num(data, "jsonRecoveryPct"),
    )


def describe(stage: Stage, data: Mapping[str, Any]) -> str:
    if stage == Stage.CALIBRATE:
        return f"{data.get('numSamples')} prompts, {data.get('numTokens')} tokens"
    if stage == Stage.SENSITIVITY:
        return f"{data.get('numGroups')} groups scored by {data.get('method')}"
    if stage == Stage.PLAN:
        return (f"{data.get('effectiveBits')} effective bits, "
                f"{data.get('fractionOf16Bit')} of 16-bit, formats {data.get('byFormat')}")
    if stage == Stage.EXPORT:
        return f"checkpoint written ({data.get('bytesOnDisk')} bytes)"
    ppl_b, ppl_q = _num(data, "perplexityBase"), _num(data, "perplexityQuant")
    return f"perplexity {ppl_b} -> {ppl_q}, top-1 agreement {data.get('top1Agreement')}"


def apply_result(
    status: QuantizedModelStatus, stage: Stage, data: Mapping[str, Any], out_uri: str
) -> None:
    if stage == Stage.PLAN:
        status.plan = plan_summary(data)
    elif stage == Stage.EXPORT:
        # The job reports where it wrote; a pod-local path (/mnt/pvc/...) means nothing
        # outside the pod, so status names the artifact by its URI (pvc://, s3://, gs://).
        uri = data.get("artifactUri")
        status.artifact_uri = uri if isinstance(uri, str) and "://" in uri else out_uri
    elif stage == Stage.EVALUATE:
        status.accuracy = accuracy_summary(data)


def clear_stale_outputs(status: QuantizedModelStatus, done: set[str]) -> None:
    """Figures of a stage that must rerun describe an obsolete spec: drop them."""
    if Stage.PLAN.value not in done:
        status.plan = None
    if Stage.EXPORT.value not in done:
        status.artifact_uri = None
    if Stage.EVALUATE.value not in done:
        status.accuracy = None

