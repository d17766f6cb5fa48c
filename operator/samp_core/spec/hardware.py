"""``spec.hardware``: the serving GPU and how the quantization Jobs are placed."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, Strict

from samp_core.formats import HardwareTarget
from samp_core.schema_base import ApiModel, Rule
from samp_core.spec.common import (
    IMAGE_PATTERN,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    ResourceQuantity,
)


def _cel(pattern: str) -> str:
    """A regex as the body of a single-quoted CEL string (backslashes escaped)."""
    return pattern.replace("\\", "\\\\")


class Toleration(ApiModel):
    """A Kubernetes toleration for the Job pods (e.g. for tainted GPU nodes)."""

    # The rules the API server applies to a pod's tolerations, checked before any Job exists.
    rules = (
        Rule(
            cel="!has(self.operator) || self.operator != 'Exists' || !has(self.value) "
            "|| self.value == ''",
            message="a toleration with operator Exists matches any value; drop its value, "
            "or use operator: Equal",
            holds=lambda t: t.operator != "Exists" or not t.value,
            field_path=".value",
        ),
        Rule(
            cel="(has(self.key) && self.key != '') || "
            "(has(self.operator) && self.operator == 'Exists')",
            message="a toleration without a key must use operator: Exists (it then "
            "tolerates every taint); set key, or operator: Exists",
            holds=lambda t: bool(t.key) or t.operator == "Exists",
            field_path=".key",
        ),
        Rule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds applies only to effect: NoExecute; set that effect "
            "or drop tolerationSeconds",
            holds=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
            field_path=".tolerationSeconds",
        ),
    )

    key: str | None = Field(
        default=None,
        max_length=316,
        pattern=LABEL_KEY_PATTERN,
        description="Taint key: a label key such as nvidia.com/gpu.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal."
    )
    value: str | None = Field(
        default=None,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description="Taint value (a label value); empty with operator Exists.",
    )
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
        Rule(
            cel="!has(self.nodeSelector) || "
            f"self.nodeSelector.all(k, k.matches('{_cel(LABEL_KEY_PATTERN)}') && "
            f"size(k) <= 316 && self.nodeSelector[k].matches('{_cel(LABEL_VALUE_PATTERN)}'))",
            message="hardware.nodeSelector needs label keys ([prefix/]name: letters, digits, "
            "- _ . and a name of at most 63 characters) and label values (at most 63 "
            "characters, starting and ending alphanumeric)",
            holds=lambda h: all(
                re.match(LABEL_KEY_PATTERN, k) and re.match(LABEL_VALUE_PATTERN, v)
                for k, v in h.node_selector.items()
            ),
            field_path=".nodeSelector",
        ),
    )

    target: Annotated[HardwareTarget, Strict(False)] = Field(
        description="Serving hardware: a100, l40s, l4, h100, h200, b200, cpu, or the "
        "compute capability sm80, sm89, sm90, sm100. Decides which formats run natively."
    )
    gpus_per_job: int = Field(
        default=1, ge=0, le=16, description="nvidia.com/gpu requested by each Job."
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=64, description="Node selector for the Jobs."
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
        pattern=IMAGE_PATTERN,
        description="Image running the SAMP jobs ([registry[:port]/]path[:tag][@digest]); "
        "the operator's default when unset.",
    )
    stage_timeout_seconds: int = Field(
        default=7200, ge=60, le=172_800, description="activeDeadlineSeconds of each Job."
    )
    retries: int = Field(default=2, ge=0, le=10, description="backoffLimit of each Job.")
