"""``spec.serving``: how vLLM serves the quantized model, and the stable target it replaces."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from samp_core.schema_base import ApiModel, Rule
from samp_core.spec.common import DNS_LABEL_PATTERN
from samp_core.spec.hardware import Resources


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


class VllmSecurityContext(ApiModel):
    """The vLLM container's securityContext. The defaults pass Pod Security "restricted";
    turn a field off only where the image needs it (the vllm/vllm-openai image runs as
    root: give it a runAsUser, or set runAsNonRoot: false)."""

    rules = (
        Rule(
            cel="!self.runAsNonRoot || !has(self.runAsUser) || self.runAsUser != 0",
            message="serving.securityContext.runAsUser 0 is root, which runAsNonRoot "
            "refuses; set runAsNonRoot: false to run as root",
            holds=lambda c: not c.run_as_non_root or c.run_as_user != 0,
            field_path=".runAsUser",
        ),
    )

    run_as_non_root: bool = Field(default=True, description="The container may not run as root.")
    run_as_user: int | None = Field(
        default=None, ge=0, le=2_147_483_647, description="UID to run as; the image's when unset."
    )
    run_as_group: int | None = Field(
        default=None, ge=0, le=2_147_483_647, description="GID to run as; the image's when unset."
    )
    allow_privilege_escalation: bool = Field(
        default=False, description="Let a process gain more privileges than its parent."
    )
    drop_all_capabilities: bool = Field(
        default=True, description="Drop every Linux capability (capabilities.drop: [ALL])."
    )
    seccomp_profile: Literal["RuntimeDefault", "Unconfined"] = Field(
        default="RuntimeDefault", description="seccompProfile.type of the container."
    )


class ServingSpec(ApiModel):
    """How vLLM serves the quantized model."""

    image: str = Field(
        default="vllm/vllm-openai:v0.11.0", max_length=512, description="vLLM image."
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
        "against absolute ceilings only (gates.latency.p99MaxSeconds is then required) and "
        "promotion creates the stable Deployment.",
    )
    security_context: VllmSecurityContext = Field(
        default_factory=VllmSecurityContext,
        description="securityContext of the vLLM container; Pod Security 'restricted' by "
        "default.",
    )
    automount_service_account_token: bool = Field(
        default=False,
        description="Mount the service-account token into the vLLM pods (vLLM never "
        "calls the Kubernetes API).",
    )
