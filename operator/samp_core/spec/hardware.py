"""``spec.hardware``: the serving GPU and how the quantization Jobs are placed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from samp_core.formats import HardwareTarget
from samp_core.schema_base import ApiModel, Rule
from samp_core.spec.common import ResourceQuantity


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
