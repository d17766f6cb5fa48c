"""Build the :class:`~samp_core.stage_contract.StageInvocation` a stage runs from.

Three sources, one document: ``--invocation FILE`` (what the operator's Job mounts),
``--manifest qm.yaml`` (a QuantizedModel: samp_core.stage_contract.inputs_from_spec maps
its spec, the same mapping the operator uses), or flags (local runs on a directory). Paths
(``--model``, ``--prompts``, ``--eval-set``, ``--artifact``, plan copies) and runtime flags
apply to the manifest and flag forms alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from samp_core.formats import Format
from samp_core.hardware import get_profile
from samp_core.planner import Budget
from samp_core.results import Rounding, Stage
from samp_core.spec import ReplanSpec
from samp_core.stage_contract import (
    CalibrationInputs,
    EvaluationInputs,
    ModelInputs,
    OverrideRule,
    QuantizationInputs,
    RuntimeOptions,
    StageInputs,
    StageInvocation,
    StagePaths,
    inputs_from_spec,
)
from samp_jobs.sources import mounted_model, resolve_prompts

DEFAULT_FORMATS = [
    Format.INT4_W4A16,
    Format.INT4_W4A8,
    Format.FP8_W8A8,
    Format.INT8_W8A8,
    Format.NVFP4,
    Format.BF16,
]


class InvocationError(ValueError):
    """The command line or the document does not describe a runnable stage (exit 2)."""


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def from_args(ns: argparse.Namespace, stage: Stage) -> StageInvocation:
    """The invocation the command line describes (``quantize`` starts at calibrate)."""
    if ns.invocation is not None:
        inv = StageInvocation.model_validate_json(Path(ns.invocation).read_text())
        if inv.stage != stage:
            raise InvocationError(f"{ns.invocation} is a {inv.stage.value} invocation, "
                             f"not {stage.value}")
        return inv
    if ns.workdir is None:
        raise InvocationError("pass --workdir DIR (or --invocation FILE)")
    if ns.attempt < 1:
        raise InvocationError("--attempt counts from 1")
    inputs, paths = _from_manifest(ns) if ns.manifest is not None else _from_flags(ns)
    runtime = RuntimeOptions(device=ns.device, progress=not ns.no_progress,
                             termination_log=ns.termination_log, micro_batch=ns.micro_batch)
    return StageInvocation(stage=stage, attempt=ns.attempt, inputs=inputs, paths=paths,
                           runtime=runtime)


def _paths(ns: argparse.Namespace, model: str | None, prompts: str | None,
           eval_set: str | None) -> StagePaths:
    work = Path(ns.workdir)
    return StagePaths(
        workdir=str(work),
        artifact=str(ns.artifact or work / "artifact"),
        model=ns.model or model,
        prompts=ns.prompts or prompts,
        eval_set=_text(ns.eval_set) or eval_set,
        plan=_text(ns.plan),
        plan_copy=_text(ns.plan_copy),
        previous_plan=_text(ns.previous_plan),
    )


def _from_manifest(ns: argparse.Namespace) -> tuple[StageInputs, StagePaths]:
    """The spec's inputs; its pvc:// sources resolved under $SAMP_MODEL_ROOT/$SAMP_DATA_ROOT."""
    import yaml

    from samp_core.api import parse

    spec = parse(yaml.safe_load(Path(ns.manifest).read_text())).spec
    inputs = inputs_from_spec(spec)
    model = inputs.model.model_copy(update={
        "dtype": spec.model.dtype if ns.dtype == "auto" else ns.dtype,
        "trust_remote_code": ns.trust_remote_code or spec.model.trust_remote_code})
    evaluation = inputs.evaluation.model_copy(update={"max_new_tokens": ns.max_new_tokens})
    inputs = inputs.model_copy(update={"model": model, "evaluation": evaluation})
    eval_uri = spec.gates.accuracy.eval_set
    paths = _paths(ns, mounted_model(spec.model.source), resolve_prompts(spec.calibration.source),
                   resolve_prompts(eval_uri) if eval_uri else None)
    return inputs, paths


def _budget(ns: argparse.Namespace) -> Budget | None:
    if ns.max_weight_bytes is not None:
        return Budget(max_weight_bytes=ns.max_weight_bytes)
    if ns.fraction_of_16bit is not None:
        return Budget(fraction_of_16bit=ns.fraction_of_16bit)
    if ns.effective_bits is not None:
        return Budget(effective_bits=ns.effective_bits)
    return None


def _from_flags(ns: argparse.Namespace) -> tuple[StageInputs, StagePaths]:
    calibration = None if not ns.prompts else CalibrationInputs(
        source=ns.prompts, format=ns.prompt_format, text_field=ns.text_field,
        messages_field=ns.messages_field, samples=ns.samples,
        max_sequence_length=ns.max_seq_len, seed=ns.seed,
        held_out_fraction=ns.held_out_fraction, allow_synthetic=ns.allow_synthetic)
    quantization = QuantizationInputs(
        budget=_budget(ns),
        formats=ns.formats or list(DEFAULT_FORMATS),
        method=ns.method,
        max_tokens=ns.max_tokens,
        group_size=ns.group_size,
        allow_non_native=ns.allow_non_native,
        overrides=[OverrideRule(match=rx, format=None if f == "keep" else Format(f))
                   for rx, f in ns.override],
        keep_lm_head_16bit=not ns.quantize_lm_head,
        export_format=ns.export_format,
        rounding=Rounding(method=ns.rounding),
    )
    replan = ReplanSpec(
        enabled=True,
        max_attempts=max(ns.attempt, ns.replan_max_attempts or 3),
        max_budget_increase_fraction=0.1 if ns.replan_headroom is None else ns.replan_headroom,
    )
    inputs = StageInputs(
        model=ModelInputs(source=ns.model or "", dtype=ns.dtype,
                          trust_remote_code=ns.trust_remote_code),
        calibration=calibration,
        profile=get_profile(ns.profile).name,
        quantization=quantization,
        replan=replan,
        evaluation=EvaluationInputs(eval_set=_text(ns.eval_set),
                                    max_new_tokens=ns.max_new_tokens),
    )
    return inputs, _paths(ns, None, None, None)
