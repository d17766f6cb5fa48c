"""The stage contract: one typed :class:`StageInvocation` the operator writes and a Job reads.

A stage Job gets exactly one document, ``invocation.json`` in its ConfigMap
(samp_core.stage_jobs), and runs ``samp <stage> --invocation <that file>``. The local
CLI (``samp quantize --manifest ...`` or flags) builds the same document in
samp_jobs.invocation. It holds:

* :class:`StageInputs`: everything that determines the stages' outputs, already in job
  terms (quantities in bytes, the target as a profile name, overrides as regex rules).
  :func:`inputs_from_spec` is the one mapping from a QuantizedModel spec to them, and
  :func:`plan_request` the one mapping from them to the planner's request.
* the inputs hash of the stage: :func:`stage_hashes` is the one hash chain. The operator
  decides reuse by it, the document carries it (checked when read), and every result
  document a stage writes carries it back.
* :class:`StagePaths` (where the stage reads and writes, as paths inside the pod) and
  :class:`RuntimeOptions` (device, progress bars, termination log), which change no
  output and so are not hashed.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from samp_core.formats import ExportFormat, Format, SensitivityMethod
from samp_core.groups import LayerGroup
from samp_core.hardware import HardwareProfile
from samp_core.plan_request import Budget, PlanRequest, sixteen_bit_formats
from samp_core.results import Rounding, Stage, inputs_hash
from samp_core.spec import QuantizationSpec, QuantizedModelSpec, ReplanSpec

__all__ = [
    "INVOCATION_FILE",
    "CalibrationInputs",
    "EvaluationInputs",
    "ModelInputs",
    "OverrideRule",
    "QuantizationInputs",
    "RuntimeOptions",
    "StageInputs",
    "StageInvocation",
    "StagePaths",
    "inputs_from_spec",
    "plan_request",
    "quantization_inputs",
    "request_from_spec",
    "stage_hashes",
]

INVOCATION_FILE: Final = "invocation.json"


class _Contract(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, alias_generator=to_camel, extra="forbid", frozen=True
    )


class ModelInputs(_Contract):
    source: str = Field(description="the spec's model URI (a local directory in flag runs)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    trust_remote_code: bool = False


class CalibrationInputs(_Contract):
    """spec.calibration; ``source`` is the URI, StagePaths.prompts the file the Job reads."""

    source: str
    format: Literal["text", "chat"] = "text"
    text_field: str = "text"
    messages_field: str = "messages"
    samples: int = Field(default=512, ge=1)
    max_sequence_length: int = Field(default=2048, ge=1)
    seed: int = Field(default=0, ge=0)
    held_out_fraction: float = Field(default=0.1, gt=0.0, le=0.5)
    allow_synthetic: bool = False


class OverrideRule(_Contract):
    """A regex pinning a format; ``format`` None keeps the matches 16-bit."""

    match: str
    format: Format | None = None


class QuantizationInputs(_Contract):
    """spec.quantization in planner terms: what sensitivity scores and plan decides."""

    budget: Budget | None = None  # None only in flag runs of stages that do not plan
    formats: list[Format]
    method: SensitivityMethod = SensitivityMethod.FISHER
    max_tokens: int = Field(default=262_144, ge=1)  # calibration tokens for scoring
    group_size: int = Field(default=128, gt=0)
    allow_non_native: bool = False
    overrides: list[OverrideRule] = Field(default_factory=list)
    keep_lm_head_16bit: bool = True
    keep_embeddings_16bit: bool = True
    export_format: ExportFormat | None = None  # None: the planner picks the family
    rounding: Rounding = Field(default_factory=Rounding)


class EvaluationInputs(_Contract):
    eval_set: str | None = None  # the spec's URI (a local path in flag runs)
    max_new_tokens: int = Field(default=32, ge=1)


class StageInputs(_Contract):
    """Everything that determines what the stages produce; the input of the hash chain."""

    model: ModelInputs
    calibration: CalibrationInputs | None = None  # None only in flag runs after calibrate
    profile: str
    quantization: QuantizationInputs
    replan: ReplanSpec = Field(default_factory=ReplanSpec)
    evaluation: EvaluationInputs = Field(default_factory=EvaluationInputs)


class StagePaths(_Contract):
    """Where the stage reads and writes, as paths in its pod (or on the local machine)."""

    workdir: str
    artifact: str
    model: str | None = None  # local model directory; None: fetch model.source (hf://)
    prompts: str | None = None
    eval_set: str | None = None
    plan: str | None = None  # the plan export reads (default: <workdir>/plan.json)
    plan_copy: str | None = None  # where plan keeps a copy of its plan for re-plans
    previous_plan: str | None = None  # attempt n-1's plan copy (re-plan attempt n)
    # In an operator's Job: where the stage also stores its summary under its inputs hash,
    # for a reader Job when the pod is gone (samp_core.stored_result); None elsewhere.
    stored_result: str | None = None


class RuntimeOptions(_Contract):
    """How the stage runs; none of it changes the result, so none of it is hashed."""

    device: str | None = None  # cuda, cuda:1, cpu; None: cuda when available
    progress: bool = True
    termination_log: str | None = None
    micro_batch: int = Field(default=4, ge=1)


class StageInvocation(_Contract):
    """One stage run: what it computes from (inputs + hash), where, and how."""

    api_version: Literal["samp.dev/v1alpha1"] = "samp.dev/v1alpha1"
    kind: Literal["StageInvocation"] = "StageInvocation"
    stage: Stage
    attempt: int = Field(default=1, ge=1)
    inputs: StageInputs
    inputs_hash: str = ""  # filled from the chain when empty; checked when given
    output_uri: str = ""  # where the outputs land, as the resource names it (informational)
    paths: StagePaths
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions)

    @model_validator(mode="after")
    def _hash_matches_inputs(self) -> StageInvocation:
        expected = stage_hashes(self.inputs, self.attempt)[self.stage]
        if not self.inputs_hash:
            object.__setattr__(self, "inputs_hash", expected)
        elif self.inputs_hash != expected:
            raise ValueError(
                f"inputsHash {self.inputs_hash} does not match the {self.stage.value} "
                f"inputs ({expected}): the operator and the job image compute different "
                "hash chains; run a job image of the operator's version"
            )
        return self

    def for_stage(self, stage: Stage) -> StageInvocation:
        """The same run, for another stage of the chain (``samp quantize`` runs them all)."""
        data = self.model_dump(exclude={"inputs_hash"})
        data["stage"] = stage
        return StageInvocation.model_validate(data)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1) + "\n"


def stage_hashes(inputs: StageInputs, attempt: int = 1) -> dict[Stage, str]:
    """The inputs hash of each stage, chained: a stage's hash covers every earlier stage's.

    Only what changes a stage's output is hashed (never paths, placement or credentials),
    so changing those reruns nothing. Sensitivity covers what scoring reads (method,
    tokens, formats, group size, profile); plan covers the whole quantization policy. A
    re-plan attempt (> 1) is an input of the plan stage, so plan, export and evaluate rerun
    for it while calibration and sensitivity are reused.
    """
    q = inputs.quantization
    out: dict[Stage, str] = {}
    out[Stage.CALIBRATE] = inputs_hash(
        stage=Stage.CALIBRATE, model=inputs.model, calibration=inputs.calibration
    )
    out[Stage.SENSITIVITY] = inputs_hash(
        stage=Stage.SENSITIVITY,
        previous=out[Stage.CALIBRATE],
        method=q.method,
        max_tokens=q.max_tokens,
        formats=sorted(f.value for f in q.formats),
        allow_non_native=q.allow_non_native,
        group_size=q.group_size,
        profile=inputs.profile,
    )
    plan_inputs: dict[str, Any] = {"quantization": q, "profile": inputs.profile}
    if attempt > 1:
        plan_inputs["attempt"] = attempt
        plan_inputs["replan"] = inputs.replan
    out[Stage.PLAN] = inputs_hash(stage=Stage.PLAN, previous=out[Stage.SENSITIVITY],
                                  **plan_inputs)
    out[Stage.EXPORT] = inputs_hash(stage=Stage.EXPORT, previous=out[Stage.PLAN])
    out[Stage.EVALUATE] = inputs_hash(
        stage=Stage.EVALUATE, previous=out[Stage.EXPORT], evaluation=inputs.evaluation
    )
    return out


# ------------------------------------------------------------- spec -> inputs -> planner


def quantization_inputs(q: QuantizationSpec) -> QuantizationInputs:
    """spec.quantization in planner terms: a quantity budget becomes bytes."""
    b = q.budget
    return QuantizationInputs(
        budget=Budget(max_weight_bytes=b.max_bytes(), fraction_of_16bit=b.fraction_of_16bit,
                      effective_bits=b.effective_bits),
        formats=list(q.allowed_formats),
        method=q.sensitivity.method,
        max_tokens=q.sensitivity.max_tokens,
        group_size=int(q.group_size),
        allow_non_native=q.allow_non_native_formats,
        overrides=[OverrideRule(match=o.match, format=o.format) for o in q.overrides],
        keep_lm_head_16bit=q.keep_lm_head16_bit,
        keep_embeddings_16bit=q.keep_embeddings16_bit,
        export_format=q.export_format,
        rounding=Rounding(
            method=q.rounding.method,
            formats=list(q.rounding.gptq_formats),
            dampening_fraction=q.rounding.dampening_fraction,
            act_order=q.rounding.act_order,
            max_tokens=q.rounding.max_tokens,
        ),
    )


def inputs_from_spec(spec: QuantizedModelSpec) -> StageInputs:
    """The one mapping from a QuantizedModel spec to what the stages compute from."""
    c = spec.calibration
    return StageInputs(
        model=ModelInputs(source=spec.model.source, dtype=spec.model.dtype,
                          trust_remote_code=spec.model.trust_remote_code),
        calibration=CalibrationInputs.model_validate(
            c.model_dump(include=set(CalibrationInputs.model_fields))),
        profile=spec.hardware.target.profile,
        quantization=quantization_inputs(spec.quantization),
        replan=spec.rollout.replan,
        evaluation=EvaluationInputs(eval_set=spec.gates.accuracy.eval_set),
    )


def plan_request(
    q: QuantizationInputs,
    *,
    groups: Any,
    scores: Any,
    profile: HardwareProfile,
    max_relative_latency: float | None = None,
) -> PlanRequest:
    """The planner request: keep-16-bit overrides become the profile's 16-bit format."""
    if q.budget is None:
        raise ValueError(
            "plan needs a budget: --max-weight-bytes, --fraction-of-16bit or "
            "--effective-bits (or spec.quantization.budget)"
        )
    sixteen = sixteen_bit_formats(profile, q.formats)[0]
    return PlanRequest(
        groups=groups,
        scores=scores,
        profile=profile,
        budget=q.budget,
        allowed_formats=list(q.formats),
        overrides=[(o.match, o.format or sixteen) for o in q.overrides],
        keep_lm_head_16bit=q.keep_lm_head_16bit,
        keep_embeddings_16bit=q.keep_embeddings_16bit,
        allow_non_native=q.allow_non_native,
        export_format=q.export_format,
        group_size=q.group_size,
        max_relative_latency=max_relative_latency,
        rounding=q.rounding,
    )


def request_from_spec(
    quantization: QuantizationSpec,
    *,
    groups: list[LayerGroup],
    scores: dict[str, dict[Format, float]],
    profile: HardwareProfile,
    max_relative_latency: float | None = None,
) -> PlanRequest:
    """The planner request for a QuantizedModel's ``spec.quantization``.

    The spec goes through the same mapping the plan Job uses (quantization_inputs, then
    plan_request), so the operator and the plan job cannot drift.
    """
    return plan_request(quantization_inputs(quantization), groups=groups, scores=scores,
                        profile=profile, max_relative_latency=max_relative_latency)
