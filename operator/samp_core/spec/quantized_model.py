"""The root of a QuantizedModel's ``spec``, assembled from the parts in this package."""

from __future__ import annotations

from pydantic import Field

from samp_core.schema_base import ApiModel
from samp_core.spec.artifacts import ArtifactsSpec
from samp_core.spec.gates import GatesSpec
from samp_core.spec.hardware import HardwareSpec
from samp_core.spec.model import CalibrationSpec, ModelSpec
from samp_core.spec.quantization import QuantizationSpec
from samp_core.spec.rollout import RolloutSpec
from samp_core.spec.serving import ServingSpec


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
