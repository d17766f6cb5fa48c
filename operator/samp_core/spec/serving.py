"""``spec.serving``: how vLLM serves the quantized model, and the stable target it replaces."""

from __future__ import annotations

from pydantic import Field

from samp_core.schema_base import ApiModel
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
        "against absolute ceilings only and promotion creates the stable Deployment.",
    )
