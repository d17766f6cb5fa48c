"""The observed state of a QuantizedModel (``status``), written only by the operator.

Follows the Kubernetes API conventions: ``conditions`` is the source of truth
(type, status, reason, message, observedGeneration, lastTransitionTime) with a
summary ``Ready``; ``phase`` exists for printer columns and Argo CD's health
script only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field

from samp_core.schema_base import ApiModel

MAX_HISTORY = 10  # attempts kept in status.history; older ones are dropped first
MAX_GATE_RESULTS = 32


class Phase(StrEnum):
    PENDING = "Pending"
    CALIBRATING = "Calibrating"
    SCORING = "Scoring"
    PLANNING = "Planning"
    EXPORTING = "Exporting"
    EVALUATING = "Evaluating"
    EVALUATED = "Evaluated"
    CANARY = "CanaryProgressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionType(StrEnum):
    READY = "Ready"
    CALIBRATED = "Calibrated"
    QUANTIZED = "Quantized"
    EVALUATED = "Evaluated"
    CANARY_PROGRESSING = "CanaryProgressing"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


class StatusModel(ApiModel):
    """Status is written by the operator and read back from the server: lax parsing."""

    model_config = ConfigDict(strict=False, allow_inf_nan=True)


class Condition(StatusModel):
    """One aspect of the object's state, per the Kubernetes API conventions."""

    type: str = Field(max_length=316, description="Ready, Calibrated, Quantized, Evaluated, "
                      "CanaryProgressing, Promoted or RolledBack.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason, e.g. JobFailed, GateFailed.",
    )
    message: str = Field(default="", max_length=32768, description="What happened, for humans.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The spec generation this condition describes."
    )
    last_transition_time: str = Field(
        description="When status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )


class PlanSummary(StatusModel):
    """The chosen mixed-precision plan, in brief."""

    profile: str = Field(description="Hardware profile the plan targets (cpu, sm80, ...).")
    bytes16_bit: int = Field(
        ge=0, alias="bytes16Bit", description="Weight bytes of the 16-bit model."
    )
    bytes_quantized: int = Field(ge=0, description="Weight bytes after quantization.")
    effective_bits: float = Field(ge=0, description="Average bits per weight, scales included.")
    memory_saved_percent: float = Field(description="100 * (1 - quantized / 16-bit).")
    predicted_loss: float = Field(description="Summed sensitivity of the chosen formats.")
    groups_per_format: dict[str, int] = Field(
        default_factory=dict, description="Layer groups assigned to each format."
    )


class AccuracySummary(StatusModel):
    """Offline accuracy of the quantized model against the base model."""

    perplexity_base: float | None = Field(default=None, description="Base perplexity.")
    perplexity_quantized: float | None = Field(default=None, description="Quantized perplexity.")
    perplexity_increase_percent: float | None = Field(
        default=None, description="Perplexity increase in percent; the printer's accuracy delta."
    )
    mean_kl: float | None = Field(default=None, alias="meanKL", description="Mean KL (nats).")
    top1_agreement: float | None = Field(default=None, description="Top-1 agreement (0-1).")
    exact_match_recovery_percent: float | None = Field(
        default=None, description="Task exact match, percent of the base."
    )
    json_validity_recovery_percent: float | None = Field(
        default=None, description="JSON validity, percent of the base."
    )
    passed: bool | None = Field(default=None, description="Whether the accuracy gate passed.")
    failed_checks: list[str] = Field(
        default_factory=list, max_length=16, description="Accuracy checks that failed, and why."
    )


class GateResult(StatusModel):
    """One gate's figure at one analysis, with its threshold and verdict."""

    gate: str = Field(max_length=128, description="Gate name, e.g. p99, errorRate, accuracy.")
    verdict: Literal["Successful", "Failed", "Inconclusive", "Error"] = Field(
        description="Successful, Failed, Inconclusive (not enough data) or Error (no answer)."
    )
    value: float | None = Field(default=None, description="Measured canary value.")
    baseline: float | None = Field(default=None, description="Measured stable value, if any.")
    threshold: str = Field(default="", max_length=256, description="What the value must meet.")
    message: str = Field(default="", max_length=1024, description="Why, for humans.")


class StageProgress(StatusModel):
    """How far the running stage's Job is, from the last progress record in its log
    (samp_core.progress); refreshed at most every few tens of seconds, cleared when the
    stage ends."""

    stage: str = Field(max_length=32, description="The stage reporting progress.")
    job: str = Field(max_length=63, description="The stage Job whose log it came from.")
    done: int = Field(ge=0, description="Units done.")
    total: int = Field(ge=0, description="Units in all.")
    unit: str = Field(max_length=32, description="What is counted (layers, tokens, ...).")
    percent: float = Field(ge=0, le=100, description="done / total, in percent.")
    eta_seconds: int | None = Field(
        default=None, ge=0, description="Estimated seconds left, from the pace so far."
    )
    updated_at: str = Field(
        description="When the operator read the record.", json_schema_extra={"format": "date-time"}
    )


class CanaryStatus(StatusModel):
    """Where the canary is."""

    step: int = Field(ge=0, description="Index of the current step (0-based).")
    weight: int = Field(ge=0, le=100, description="Traffic percent now sent to the canary.")
    step_started_at: str | None = Field(
        default=None, description="When this step began.", json_schema_extra={"format": "date-time"}
    )
    p99_ratio: float | None = Field(
        default=None, description="Last canary P99 / stable P99; the printer's P99 ratio."
    )
    failures: int = Field(default=0, ge=0, description="Failed measurements so far.")
    inconclusives: int = Field(default=0, ge=0, description="Inconclusive measurements so far.")
    consecutive_errors: int = Field(default=0, ge=0, description="Consecutive errors now.")
    started_at: str | None = Field(
        default=None,
        description="When the canary began; the progress deadline counts from here "
        "(time spent paused excluded).",
        json_schema_extra={"format": "date-time"},
    )
    last_analysis_at: str | None = Field(
        default=None,
        description="End of the last analysis window.",
        json_schema_extra={"format": "date-time"},
    )
    last_verdict: Literal["Successful", "Failed", "Inconclusive", "Error"] | None = Field(
        default=None, description="Verdict of the last analysis (the worst of its gates)."
    )
    step_successes: int = Field(
        default=0, ge=0, description="Successful analyses at the current step."
    )
    analyses: int = Field(default=0, ge=0, description="Analyses taken in this canary.")
    paused_at: str | None = Field(
        default=None,
        description="When the canary was paused (samp.dev/pause annotation); unset when running.",
        json_schema_extra={"format": "date-time"},
    )


class HandledRequests(ApiModel):
    """The promote/abort/retry annotation values already handled: each acts at most once.

    A value is recorded when it is acted on, or set aside (it predates the canary, or
    arrived before the canary started: a promotion is asked of a running canary). The
    same value never acts again, so a ``"true"`` left behind cannot promote the next
    rollout; a new value (``samp rollout promote`` writes the time) acts once. Removing
    the annotation clears its record."""

    promote: str | None = Field(
        default=None, max_length=256, description="samp.dev/promote value last handled."
    )
    abort: str | None = Field(
        default=None, max_length=256, description="samp.dev/abort value last handled."
    )
    retry: str | None = Field(
        default=None, max_length=256, description="samp.dev/retry value last handled."
    )
    retried_at: str | None = Field(
        default=None,
        description="When a retry last acted: a stage Job that failed before it is run again.",
        json_schema_extra={"format": "date-time"},
    )


class StageStatus(StatusModel):
    """One quantization stage (one Job) of the current generation."""

    stage: str = Field(
        max_length=32,
        description="calibrate, sensitivity, plan, export or evaluate.",
        json_schema_extra={"enum": ["calibrate", "sensitivity", "plan", "export", "evaluate"]},
    )
    state: Literal["Pending", "Running", "Succeeded", "Failed", "Reused"] = Field(
        description="Pending, Running, Succeeded, Failed, or Reused (inputs unchanged since an "
        "earlier generation: its artifact is used without rerunning)."
    )
    inputs_hash: str = Field(
        default="", max_length=128, description="Hash of everything that determines its output."
    )
    job: str | None = Field(default=None, max_length=63, description="Name of its Job.")
    generation: int | None = Field(
        default=None, ge=0, description="Spec generation whose Job produced the result."
    )
    started_at: str | None = Field(
        default=None, description="When its Job started.", json_schema_extra={"format": "date-time"}
    )
    finished_at: str | None = Field(
        default=None, description="When it ended.", json_schema_extra={"format": "date-time"}
    )
    pod_failures: int = Field(default=0, ge=0, description="Failed pods (retries) so far.")
    output_uri: str | None = Field(
        default=None, max_length=2048, description="Where the stage wrote its result documents."
    )
    message: str = Field(default="", max_length=1024, description="Result or failure, in brief.")


class Attempt(StatusModel):
    """One quantize-evaluate-canary attempt (re-plans add attempts)."""

    attempt: int = Field(ge=1, description="1 for the first plan, then one per re-plan.")
    generation: int = Field(ge=0, description="Spec generation of the attempt.")
    inputs_hash: str = Field(default="", max_length=128, description="Hash of its inputs.")
    started_at: str = Field(description="Start.", json_schema_extra={"format": "date-time"})
    finished_at: str | None = Field(
        default=None, description="End.", json_schema_extra={"format": "date-time"}
    )
    outcome: str = Field(default="Running", max_length=64, description="How it ended.")
    reason: str = Field(default="", max_length=1024, description="Why it ended so.")
    plan: PlanSummary | None = Field(default=None, description="Its plan.")
    artifact_uri: str = Field(
        default="", max_length=1024, description="The checkpoint this attempt canaried."
    )
    accuracy: AccuracySummary | None = Field(default=None, description="Its accuracy.")
    gates: list[GateResult] = Field(
        default_factory=list, max_length=MAX_GATE_RESULTS, description="Its last gate figures."
    )


class QuantizedModelStatus(StatusModel):
    """What the operator observed and did."""

    phase: Phase = Field(default=Phase.PENDING, description="Summary for printer columns.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="Generation of the spec last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Conditions per Kubernetes conventions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    inputs_hash: str | None = Field(
        default=None, max_length=128, description="Hash of the current attempt's inputs."
    )
    artifact_uri: str | None = Field(
        default=None, max_length=2048, description="Where the checkpoint is."
    )
    plan: PlanSummary | None = Field(default=None, description="The current plan.")
    accuracy: AccuracySummary | None = Field(default=None, description="Offline accuracy.")
    gates: list[GateResult] = Field(
        default_factory=list, max_length=MAX_GATE_RESULTS, description="Last gate figures."
    )
    canary: CanaryStatus | None = Field(default=None, description="Canary progress.")
    progress: StageProgress | None = Field(
        default=None, description="Progress of the running stage's Job (units done, ETA)."
    )
    handled_requests: HandledRequests | None = Field(
        default=None,
        description="Promote/abort/retry annotation values already acted on or set aside; "
        "each value acts at most once.",
    )
    attempt: int = Field(default=1, ge=1, description="Current attempt number.")
    history: list[Attempt] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description="Bounded history of attempts, newest last.",
    )
    message: str = Field(default="", max_length=4096, description="Latest human summary.")
    stages: list[StageStatus] = Field(
        default_factory=list,
        max_length=8,
        description="The quantization stages of the current generation, in order.",
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["stage"]},
    )
