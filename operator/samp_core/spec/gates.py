"""``spec.gates``: offline accuracy, canary latency, error-rate and custom PromQL gates."""

from __future__ import annotations

from pydantic import Field

from samp_core.schema_base import ApiModel, Rule
from samp_core.spec.common import (
    CALIBRATION_URI_PATTERN,
    DNS_LABEL_PATTERN,
    PROMETHEUS_URL_PATTERN,
    SecretRef,
    no_path_escape,
)


class AccuracyGate(ApiModel):
    """Offline accuracy of the quantized model against the unquantized one on held-out prompts."""

    rules = (no_path_escape("evalSet", "eval_set", "spec.gates.accuracy.evalSet"),)

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


def _userinfo(url: str | None) -> bool:
    return url is not None and "@" in url.split("://", 1)[-1].split("/", 1)[0]


class GatesSpec(ApiModel):
    """Promotion gates. A gate without enough data is inconclusive, never a pass."""

    rules = (
        Rule(
            cel="!has(self.prometheusUrl) || !self.prometheusUrl.matches('^https?://[^/]*@')",
            message="gates.prometheusUrl must not carry credentials (they would show in "
            "logs); put them in a Secret named by gates.prometheusSecretRef",
            holds=lambda g: not _userinfo(g.prometheus_url),
            field_path=".prometheusUrl",
        ),
        Rule(
            cel="has(self.prometheusUrl) || (!has(self.prometheusSecretRef) && "
            "!(has(self.prometheusInsecureSkipVerify) && self.prometheusInsecureSkipVerify))",
            message="gates.prometheusSecretRef and gates.prometheusInsecureSkipVerify apply "
            "to gates.prometheusUrl only; set it, or leave the operator's default Prometheus "
            "to the operator's own settings",
            holds=lambda g: g.prometheus_url is not None
            or (g.prometheus_secret_ref is None and not g.prometheus_insecure_skip_verify),
        ),
    )

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
        description="Prometheus holding vLLM's metrics; the operator's default when unset. "
        "No credentials in the URL: see prometheusSecretRef.",
    )
    prometheus_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret in this namespace for prometheusUrl: key 'token' (bearer "
        "token), or 'username' and 'password' (basic auth), and optionally 'ca.crt' (a CA "
        "bundle that verifies its TLS certificate).",
    )
    prometheus_insecure_skip_verify: bool = Field(
        default=False,
        description="Do not verify prometheusUrl's TLS certificate (opt-in; verified by "
        "default, against 'ca.crt' of prometheusSecretRef or the system CAs).",
    )
    custom_queries: list[CustomQuery] = Field(
        default_factory=list, max_length=16, description="Extra PromQL gates."
    )
