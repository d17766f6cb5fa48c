"""The desired state of a QuantizedModel (``spec``), as typed models.

These classes are the single source of truth for the API: the CRD's OpenAPI
schema and CEL rules are generated from them (samp_core.crd), ``samp validate``
and the operator parse manifests with them. Every field has a description
because it becomes the schema's documentation (``kubectl explain qm.spec``).
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import Field, field_validator

from samp_core.formats import (
    GPTQ_DEFAULT_FORMATS,
    GPTQ_FORMATS,
    ExportFormat,
    Format,
    HardwareTarget,
    RoundingMethod,
    SensitivityMethod,
)
from samp_core.schema_base import ApiModel, Rule
from samp_core.units import (
    DURATION_PATTERN,
    QUANTITY_PATTERN,
    RESOURCE_QUANTITY_PATTERN,
    parse_duration,
    parse_quantity,
)

# URI forms. The model may come from a hub, an object store or a PVC; calibration prompts
# additionally from a ConfigMap; "synthetic://" names generated data and is refused unless
# spec.calibration.allowSynthetic is true (DESIGN.md: calibrate on production traffic).
MODEL_URI_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?"
    r"|s3://[a-z0-9][a-z0-9.-]{1,62}(/[^\s]*)?"
    r"|gs://[a-z0-9][a-z0-9._-]{1,62}(/[^\s]*)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?)$"
)
CALIBRATION_URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,62}/[^\s]+"
    r"|gs://[a-z0-9][a-z0-9._-]{1,62}/[^\s]+"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^\s]+"
    r"|configmap://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[-._a-zA-Z0-9]+"
    r"|synthetic://[a-z0-9-]+)$"
)
ARTIFACT_URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,62}(/[^\s]*)?"
    r"|gs://[a-z0-9][a-z0-9._-]{1,62}(/[^\s]*)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?)$"
)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
PROMETHEUS_URL_PATTERN = r"^https?://[^\s/]+(/[^\s]*)?$"
# The largest weight budget accepted: more than any model served today (a 1T-parameter
# model is 2 TiB at 16 bits); a bigger figure is a typo such as "38Pi" for "38Gi".
MAX_WEIGHT_BYTES = 64 * 2**40

Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)]
ResourceQuantity = Annotated[str, Field(pattern=RESOURCE_QUANTITY_PATTERN, max_length=32)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]


class SecretRef(ApiModel):
    """A Secret in the QuantizedModel's namespace."""

    name: str = Field(
        description="Name of the Secret; its keys become environment variables of the Jobs "
        "(for example HF_TOKEN, AWS_ACCESS_KEY_ID). Never copied into status, events or logs.",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )


class ModelSpec(ApiModel):
    """The unquantized base model."""

    source: str = Field(
        description="Where the model is: hf://org/name@revision, s3://bucket/prefix, "
        "gs://bucket/prefix or pvc://claim/path. Pin a revision for reproducible artifacts.",
        pattern=MODEL_URI_PATTERN,
        max_length=1024,
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model repository's own Python code to run when loading. "
        "Off by default: only enable it for sources you trust.",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Dtype the unquantized model is loaded and compared in."
    )
    secret_ref: SecretRef | None = Field(
        default=None, description="Credentials for the source (hub token or object-store keys)."
    )


class CalibrationSpec(ApiModel):
    """The production prompts used for calibration, sensitivity scoring and evaluation."""

    rules = (
        Rule(
            cel="!self.source.startsWith('synthetic://') || self.allowSynthetic",
            message="calibration.source is synthetic data, which misses the production "
            "distribution; point it at real prompts or set calibration.allowSynthetic: true",
            holds=lambda s: not s.source.startswith("synthetic://") or s.allow_synthetic,
            field_path=".source",
        ),
    )

    source: str = Field(
        description="JSONL of production prompts: pvc://claim/path.jsonl, s3://bucket/key, "
        "gs://bucket/key or configmap://name/key. One JSON object per line.",
        pattern=CALIBRATION_URI_PATTERN,
        max_length=1024,
    )
    format: Literal["text", "chat"] = Field(
        default="text",
        description="'text': each line has a plain-text field; 'chat': each line has a list of "
        "{role, content} messages rendered with the tokenizer's chat template.",
    )
    text_field: str = Field(
        default="text", min_length=1, max_length=128, description="Field holding the text."
    )
    messages_field: str = Field(
        default="messages",
        min_length=1,
        max_length=128,
        description="Field holding the chat messages (format: chat).",
    )
    samples: int = Field(
        default=512, ge=8, le=1_000_000, description="Prompts sampled for calibration."
    )
    max_sequence_length: int = Field(
        default=2048, ge=16, le=1_048_576, description="Tokens per packed calibration sequence."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the sampling.")
    held_out_fraction: float = Field(
        default=0.1,
        gt=0.0,
        le=0.5,
        description="Fraction of prompts kept out of calibration for the accuracy evaluation.",
    )
    allow_synthetic: bool = Field(
        default=False,
        description="Accept a synthetic:// source. Off by default because quantization "
        "calibrated on random text hurts real traffic.",
    )


class Budget(ApiModel):
    """Memory budget of the quantized weights. Set exactly one form."""

    rules = (
        Rule(
            cel="[has(self.maxWeightBytes), has(self.fractionOf16Bit), "
            "has(self.effectiveBits)].filter(x, x).size() == 1",
            message="set exactly one of budget.maxWeightBytes, budget.fractionOf16Bit, "
            "budget.effectiveBits",
            holds=lambda b: [
                b.max_weight_bytes is not None,
                b.fraction_of_16bit is not None,
                b.effective_bits is not None,
            ].count(True)
            == 1,
        ),
        Rule(
            cel="!has(self.maxWeightBytes) || !isQuantity(self.maxWeightBytes) || "
            "(quantity(self.maxWeightBytes).compareTo(quantity('1Mi')) >= 0 && "
            "quantity(self.maxWeightBytes).compareTo(quantity('64Ti')) <= 0)",
            message="budget.maxWeightBytes must lie between 1Mi and 64Ti; check the suffix "
            "(38Gi, not 38Pi)",
            holds=lambda b: b.max_weight_bytes is None
            or 2**20 <= parse_quantity(b.max_weight_bytes) <= MAX_WEIGHT_BYTES,
            field_path=".maxWeightBytes",
        ),
    )

    max_weight_bytes: Quantity | None = Field(
        default=None,
        description="Largest total size of the quantized weights, as a quantity (e.g. 38Gi).",
    )
    fraction_of_16bit: float | None = Field(
        default=None,
        alias="fractionOf16Bit",
        gt=0.0,
        le=1.0,
        description="Largest size as a fraction of the 16-bit weights (0.4 = 60% saved).",
    )
    effective_bits: float | None = Field(
        default=None,
        ge=2.0,
        le=16.0,
        description="Largest average bits per weight, scales included (e.g. 5.0).",
    )

    def max_bytes(self) -> int | None:
        return None if self.max_weight_bytes is None else parse_quantity(self.max_weight_bytes)


class SensitivitySpec(ApiModel):
    """How each layer group's sensitivity to each format is measured."""

    method: SensitivityMethod = Field(
        default=SensitivityMethod.FISHER,
        description="fisher: gradient-weighted output error (one forward+backward); "
        "activation: activation-weighted weight error (forward only, cheapest); "
        "kl: exact KL per group and format (slow reference, small models only).",
    )
    max_tokens: int = Field(
        default=262_144,
        ge=1024,
        le=16_777_216,
        description="Calibration tokens used for scoring.",
    )


class RoundingSpec(ApiModel):
    """How weights are rounded onto the planned formats' grids at export."""

    rules = (
        Rule(
            cel="self.gptqFormats.all(f, f in [{}])".format(
                ", ".join(f"'{f.value}'" for f in GPTQ_FORMATS)
            ),
            message="gptqFormats may list only {} (GPTQ rounds integer grids; fp8, nvfp4 and "
            "16-bit groups are rounded to nearest)".format(
                ", ".join(f.value for f in GPTQ_FORMATS)
            ),
            holds=lambda r: all(f in GPTQ_FORMATS for f in r.gptq_formats),
            field_path=".gptqFormats",
        ),
    )

    method: RoundingMethod = Field(
        default=RoundingMethod.GPTQ,
        description="gptq: groups in gptqFormats are rounded with GPTQ (Hessian from the "
        "calibration prompts, act-order, damping, the same group-wise scales and checkpoint "
        "layout as round-to-nearest), the rest to nearest; rtn: round everything to nearest "
        "(fastest export).",
    )
    gptq_formats: list[Format] = Field(
        default_factory=lambda: list(GPTQ_DEFAULT_FORMATS),
        min_length=1,
        max_length=3,
        description="Formats GPTQ rounds when method is gptq (int4-w4a16, int4-w4a8, "
        "int8-w8a8); default the 4-bit ones.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    dampening_fraction: float = Field(
        default=0.01,
        gt=0.0,
        le=1.0,
        description="GPTQ damping: this fraction of the mean Hessian diagonal is added to it.",
    )
    act_order: bool = Field(
        default=True,
        description="GPTQ rounds columns in order of decreasing activation energy (scales "
        "stay static, so the checkpoint needs no g_idx).",
    )
    max_tokens: int = Field(
        default=131_072,
        ge=1024,
        le=16_777_216,
        description="Calibration tokens GPTQ's Hessians are accumulated from.",
    )


class Override(ApiModel):
    """Pin a format for the modules matching a regex, or keep them unquantized."""

    rules = (
        Rule(
            cel="has(self.format) != (has(self.keepUnquantized) && self.keepUnquantized)",
            message="an override sets exactly one of format or keepUnquantized: true",
            holds=lambda o: (o.format is not None) != bool(o.keep_unquantized),
        ),
    )

    match: str = Field(
        min_length=1,
        max_length=512,
        description="Python/RE2 regular expression matched against module names "
        "(e.g. 'model\\.layers\\.(0|1)\\.mlp'). Fused groups take the override as a whole.",
    )
    format: Format | None = Field(default=None, description="Format pinned for the matches.")
    keep_unquantized: bool | None = Field(
        default=None, description="Keep the matches in 16-bit."
    )

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"{value!r} is not a valid regular expression: {err}") from err
        return value


DEFAULT_ALLOWED_FORMATS = [
    Format.INT4_W4A16,
    Format.INT4_W4A8,
    Format.FP8_W8A8,
    Format.INT8_W8A8,
    Format.NVFP4,
    Format.BF16,
]


class QuantizationSpec(ApiModel):
    """The SAMP policy: budget, candidate formats, scoring, pins and export."""

    rules = (
        Rule(
            cel="self.exportFormat != 'compressed-tensors' || !('nf4' in self.allowedFormats)",
            message="nf4 cannot be exported as compressed-tensors (vLLM has no nf4 scheme in "
            "it); use int4-w4a16, or set exportFormat: bitsandbytes-nf4",
            holds=lambda q: q.export_format != ExportFormat.COMPRESSED_TENSORS
            or Format.NF4 not in q.allowed_formats,
            field_path=".allowedFormats",
        ),
        Rule(
            cel="self.exportFormat != 'bitsandbytes-nf4' || "
            "self.allowedFormats.all(f, f in ['nf4', 'bf16', 'fp16'])",
            message="exportFormat bitsandbytes-nf4 can hold only nf4 and 16-bit layers; "
            "restrict allowedFormats to nf4, bf16, fp16",
            holds=lambda q: q.export_format != ExportFormat.BITSANDBYTES_NF4
            or all(f in (Format.NF4, Format.BF16, Format.FP16) for f in q.allowed_formats),
            field_path=".allowedFormats",
        ),
    )

    budget: Budget = Field(description="Memory budget; exactly one form.")
    allowed_formats: list[Format] = Field(
        default=DEFAULT_ALLOWED_FORMATS,
        min_length=1,
        max_length=8,
        description="Formats the planner may choose from; those the target GPU cannot run "
        "natively are dropped unless allowNonNativeFormats is true.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    sensitivity: SensitivitySpec = Field(
        default_factory=SensitivitySpec, description="Sensitivity scoring."
    )
    rounding: RoundingSpec = Field(
        default_factory=RoundingSpec,
        description="Weight rounding at export: GPTQ for the 4-bit groups by default.",
    )
    overrides: list[Override] = Field(
        default_factory=list,
        max_length=64,
        description="Per-module pins, applied in order; the first match wins.",
    )
    keep_lm_head16_bit: bool = Field(
        default=True,
        alias="keepLmHead16Bit",
        description="Keep the output head in 16-bit (the field report's recipe).",
    )
    keep_embeddings16_bit: bool = Field(
        default=True, alias="keepEmbeddings16Bit", description="Keep embeddings in 16-bit."
    )
    allow_non_native_formats: bool = Field(
        default=False,
        description="Let the planner pick formats the target runs only through emulation "
        "or fallback kernels (slower than 16-bit in some cases).",
    )
    export_format: ExportFormat = Field(
        default=ExportFormat.COMPRESSED_TENSORS,
        description="compressed-tensors (vLLM-native mixed precision) or bitsandbytes-nf4 "
        "(transformers users; 4-bit MLP, the rest 16-bit).",
    )
    group_size: Literal[32, 64, 128, 256] = Field(
        default=128, description="Group size of int4 scales; must divide the layers' inputs."
    )

    @field_validator("allowed_formats")
    @classmethod
    def _unique(cls, value: list[Format]) -> list[Format]:
        if len(set(value)) != len(value):
            raise ValueError("allowedFormats lists a format twice; list each once")
        return value


class Toleration(ApiModel):
    """A Kubernetes toleration for the Job pods (e.g. for tainted GPU nodes)."""

    key: str | None = Field(default=None, max_length=316, description="Taint key.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays bound."
    )


class Resources(ApiModel):
    """Compute resources, as in a container's resources."""

    requests: dict[str, ResourceQuantity] = Field(
        default_factory=dict, description="Requested resources, e.g. {cpu: '8', memory: 64Gi}."
    )
    limits: dict[str, ResourceQuantity] = Field(
        default_factory=dict, description="Resource limits, e.g. {memory: 96Gi}."
    )


class HardwareSpec(ApiModel):
    """The GPU the model will be served on, and how the quantization Jobs run."""

    rules = (
        Rule(
            cel="self.target == 'cpu' || self.gpusPerJob >= 1",
            message="a GPU target needs hardware.gpusPerJob of at least 1",
            holds=lambda h: h.target == HardwareTarget.CPU or h.gpus_per_job >= 1,
            field_path=".gpusPerJob",
        ),
    )

    target: HardwareTarget = Field(
        description="Serving hardware: a100, l40s, l4, h100, h200, b200, cpu, or the "
        "compute capability sm80, sm89, sm90, sm100. Decides which formats run natively."
    )
    gpus_per_job: int = Field(
        default=1, ge=0, le=16, description="nvidia.com/gpu requested by each Job."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector for the Jobs."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations for the Jobs."
    )
    resources: Resources = Field(
        default_factory=Resources, description="CPU and memory for the Jobs."
    )
    job_image: str | None = Field(
        default=None,
        max_length=512,
        description="Image running the SAMP jobs; the operator's default when unset.",
    )
    stage_timeout_seconds: int = Field(
        default=7200, ge=60, le=172_800, description="activeDeadlineSeconds of each Job."
    )
    retries: int = Field(default=2, ge=0, le=10, description="backoffLimit of each Job.")


class StableTarget(ApiModel):
    """The serving Deployment the canary is compared against and replaces on promotion."""

    deployment: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="Name of the stable Deployment."
    )
    service: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="Name of the stable Service."
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=253,
        description="model_name label of the stable vLLM series in Prometheus.",
    )


class ServingSpec(ApiModel):
    """How vLLM serves the quantized model."""

    image: str = Field(
        default="vllm/vllm-openai:v0.32.0", max_length=512,
        description="vLLM image (the version the tests serve).",
    )
    extra_args: list[str] = Field(
        default_factory=list, max_length=64, description="Extra vLLM server arguments."
    )
    replicas: int = Field(default=1, ge=1, le=1000, description="Replicas after promotion.")
    port: int = Field(default=8000, ge=1, le=65535, description="vLLM HTTP port.")
    served_model_name: str | None = Field(
        default=None,
        max_length=253,
        description="Name clients use; the canary is served as <name>-canary so its "
        "Prometheus series are separable. Defaults to the resource name.",
    )
    resources: Resources = Field(
        default_factory=Resources, description="Resources of each vLLM pod."
    )
    stable: StableTarget | None = Field(
        default=None,
        description="Existing stable serving target. Without it the canary is compared "
        "against absolute ceilings only and promotion creates the stable Deployment.",
    )


class CanaryStep(ApiModel):
    """One traffic step of the canary."""

    weight: int = Field(ge=1, le=100, description="Percent of traffic sent to the canary.")
    duration: Duration = Field(
        default="5m", description="Minimum time at this weight, e.g. 5m; gates run throughout."
    )


class HTTPRouteRef(ApiModel):
    """A Gateway API HTTPRoute whose backend weights the operator manages."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="HTTPRoute name.")
    stable_backend: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="Service of the stable backend."
    )
    canary_backend: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Service of the canary backend; defaults to <name>-canary.",
    )


class ReplanSpec(ApiModel):
    """Closed-loop re-planning after a failed canary."""

    enabled: bool = Field(
        default=False,
        description="On a failed gate, raise the most sensitive groups toward 16-bit and "
        "try again.",
    )
    max_attempts: int = Field(default=3, ge=1, le=10, description="Attempts in total.")
    max_budget_increase_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="How far a re-plan may exceed the budget, as a fraction of it.",
    )


class RolloutSpec(ApiModel):
    """Canary steps and the limits of the analysis."""

    rules = (
        Rule(
            cel="self.steps.map(s, s.weight).isSorted() && "
            "self.steps.all(s, self.steps.exists_one(t, t.weight == s.weight))",
            message="rollout.steps weights must strictly increase (e.g. 10, 50, 100)",
            holds=lambda r: all(a.weight < b.weight for a, b in pairwise(r.steps)),
            field_path=".steps",
        ),
        Rule(
            cel="self.steps.all(s, duration(s.duration) >= duration(self.analysisInterval))",
            message="every rollout step must last at least one analysisInterval, or no "
            "measurement can finish inside it",
            holds=lambda r: all(
                parse_duration(s.duration) >= parse_duration(r.analysis_interval)
                for s in r.steps
            ),
            field_path=".steps",
        ),
        Rule(
            cel="duration(self.progressDeadline) >= duration('1m')",
            message="rollout.progressDeadline must be at least 1m",
            holds=lambda r: parse_duration(r.progress_deadline) >= 60,
            field_path=".progressDeadline",
        ),
    )

    steps: list[CanaryStep] = Field(
        default=[
            CanaryStep(weight=10, duration="5m"),
            CanaryStep(weight=50, duration="10m"),
            CanaryStep(weight=100, duration="5m"),
        ],
        min_length=1,
        max_length=20,
        description="Traffic steps; weights strictly increase and end at or below 100.",
    )
    http_route: HTTPRouteRef | None = Field(
        default=None,
        description="Gateway API route to shift. Without one, traffic follows the replica "
        "ratio of canary and stable pods behind the stable Service.",
    )
    analysis_interval: Duration = Field(
        default="1m", description="How often gates are measured."
    )
    failure_limit: int = Field(
        default=0, ge=0, le=100, description="Failed measurements tolerated before rollback."
    )
    inconclusive_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Inconclusive measurements (too few requests, no data) tolerated before "
        "rollback. Inconclusive never counts as a pass.",
    )
    consecutive_error_limit: int = Field(
        default=4,
        ge=0,
        le=100,
        description="Consecutive measurement errors (Prometheus unreachable) tolerated "
        "before rollback; counted apart from failures.",
    )
    progress_deadline: Duration = Field(
        default="2h", description="Roll back when the canary has not finished by then."
    )
    promotion: Literal["automatic", "manual"] = Field(
        default="automatic",
        description="automatic: promote when the last step passes; manual: wait for the "
        "samp.dev/promote annotation.",
    )
    promotion_strategy: Literal["UpdateStable", "ShiftRoute"] = Field(
        default="UpdateStable",
        description="UpdateStable: the stable Deployment switches to the artifact; "
        "ShiftRoute: the route sends all traffic to the canary backend.",
    )
    replan: ReplanSpec = Field(default_factory=ReplanSpec, description="Closed-loop re-plan.")


class AccuracyGate(ApiModel):
    """Offline accuracy of the quantized model against the unquantized one on held-out prompts."""

    eval_set: str | None = Field(
        default=None,
        pattern=CALIBRATION_URI_PATTERN,
        max_length=1024,
        description="JSONL of prompts with expected answers ('expected' field; "
        "'json: true' for structured-output prompts). Defaults to the held-out calibration "
        "prompts, which measure perplexity and KL only.",
    )
    max_perplexity_increase_percent: float = Field(
        default=2.0,
        gt=0.0,
        le=1000.0,
        description="Largest allowed perplexity increase, in percent of the base model's.",
    )
    max_mean_kl: float | None = Field(
        default=None,
        gt=0.0,
        le=100.0,
        alias="maxMeanKL",
        description="Largest mean KL divergence of next-token distributions (nats).",
    )
    min_top1_agreement: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0 + 1e-12,
        description="Smallest fraction of tokens whose top-1 prediction is unchanged.",
    )
    min_exact_match_recovery_percent: float | None = Field(
        default=None,
        gt=0.0,
        le=100.0,
        description="Smallest task exact-match of the quantized model, in percent of the base.",
    )
    min_json_validity_recovery_percent: float | None = Field(
        default=None,
        gt=0.0,
        le=100.0,
        description="Smallest JSON-validity rate on structured prompts, in percent of the base.",
    )


class LatencyGate(ApiModel):
    """P99 latency of the canary from vLLM's histograms."""

    rules = (
        Rule(
            cel="has(self.p99MaxSeconds) || has(self.p99MaxRatioToStable)",
            message="the latency gate needs p99MaxSeconds, p99MaxRatioToStable or both",
            holds=lambda g: g.p99_max_seconds is not None
            or g.p99_max_ratio_to_stable is not None,
        ),
    )

    p99_max_seconds: float | None = Field(
        default=None,
        gt=0.0,
        le=3600.0,
        alias="p99MaxSeconds",
        description="Ceiling on canary P99 end-to-end request latency, seconds.",
    )
    p99_max_ratio_to_stable: float | None = Field(
        default=1.1,
        gt=0.0,
        le=100.0,
        alias="p99MaxRatioToStable",
        description="Ceiling on canary P99 divided by stable P99 (1.1 = at most 10% slower).",
    )
    ttft_p99_max_seconds: float | None = Field(
        default=None,
        gt=0.0,
        le=3600.0,
        alias="ttftP99MaxSeconds",
        description="Ceiling on canary P99 time to first token, seconds.",
    )
    ttft_p99_max_ratio_to_stable: float | None = Field(
        default=None,
        gt=0.0,
        le=100.0,
        alias="ttftP99MaxRatioToStable",
        description="Ceiling on canary TTFT P99 divided by stable TTFT P99.",
    )


class CustomQuery(ApiModel):
    """A PromQL gate of your own. $canary and $stable expand to the served model names."""

    rules = (
        Rule(
            cel="has(self.max) || has(self.min)",
            message="a custom query needs max, min or both, or it can never fail",
            holds=lambda q: q.max is not None or q.min is not None,
        ),
        Rule(
            cel="!has(self.max) || !has(self.min) || self.min <= self.max",
            message="a custom query's min is above its max, so it can never pass",
            holds=lambda q: q.max is None or q.min is None or q.min <= q.max,
        ),
    )

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="Gate name.")
    query: str = Field(min_length=1, max_length=4096, description="PromQL returning a scalar.")
    max: float | None = Field(default=None, description="Fail when the value is above this.")
    min: float | None = Field(default=None, description="Fail when the value is below this.")


class GatesSpec(ApiModel):
    """Promotion gates. A gate without enough data is inconclusive, never a pass."""

    accuracy: AccuracyGate = Field(default_factory=AccuracyGate, description="Offline accuracy.")
    latency: LatencyGate = Field(default_factory=LatencyGate, description="P99 latency.")
    max_error_rate: float = Field(
        default=0.01,
        ge=0.0,
        lt=1.0,
        description="Ceiling on the canary's failed-request ratio (HTTP 5xx and aborted).",
    )
    min_requests: int = Field(
        default=50,
        ge=1,
        le=100_000_000,
        description="Requests a window needs before its figures count; fewer is inconclusive.",
    )
    prometheus_url: str | None = Field(
        default=None,
        pattern=PROMETHEUS_URL_PATTERN,
        max_length=1024,
        description="Prometheus holding vLLM's metrics; the operator's default when unset.",
    )
    custom_queries: list[CustomQuery] = Field(
        default_factory=list, max_length=16, description="Extra PromQL gates."
    )


class ArtifactsSpec(ApiModel):
    """Where checkpoints and reports are written."""

    uri: str = Field(
        pattern=ARTIFACT_URI_PATTERN,
        max_length=1024,
        description="pvc://claim/path, s3://bucket/prefix or gs://bucket/prefix; each "
        "attempt writes under <uri>/<namespace>/<name>/<inputs-hash>/.",
    )
    cleanup_on_delete: bool = Field(
        default=False, description="Delete the artifacts when the QuantizedModel is deleted."
    )
    secret_ref: SecretRef | None = Field(
        default=None, description="Object-store credentials, if different from the model's."
    )


class QuantizedModelSpec(ApiModel):
    """A base model to quantize with SAMP, evaluate, canary on vLLM and promote behind gates."""

    model: ModelSpec = Field(description="The unquantized base model.")
    calibration: CalibrationSpec = Field(description="Production prompts for calibration.")
    quantization: QuantizationSpec = Field(description="The mixed-precision policy.")
    hardware: HardwareSpec = Field(description="Target GPU and Job placement.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="vLLM serving.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Canary rollout.")
    gates: GatesSpec = Field(default_factory=GatesSpec, description="Promotion gates.")
    artifacts: ArtifactsSpec = Field(description="Where checkpoints and reports go.")
    suspend: bool = Field(
        default=False,
        description="Stop creating Jobs and moving traffic until set back to false.",
    )
