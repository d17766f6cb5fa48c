"""The root of a QuantizedModel's ``spec``, assembled from the parts in this package."""

from __future__ import annotations

from pydantic import Field

from samp_core.schema_base import ApiModel, Rule
from samp_core.spec.artifacts import ArtifactsSpec
from samp_core.spec.gates import GatesSpec
from samp_core.spec.hardware import HardwareSpec
from samp_core.spec.model import CalibrationSpec, ModelSpec
from samp_core.spec.quantization import QuantizationSpec
from samp_core.spec.rollout import RolloutSpec
from samp_core.spec.serving import ServingSpec


class QuantizedModelSpec(ApiModel):
    """A base model to quantize with SAMP, evaluate, canary on vLLM and promote behind gates."""

    rules = (
        Rule(
            # Without a stable the ratio gates have nothing to compare with: no latency
            # gate at all would run, and a canary with a 30 s P99 promoted.
            cel="(has(self.serving) && has(self.serving.stable)) || (has(self.gates) && "
            "has(self.gates.latency) && has(self.gates.latency.p99MaxSeconds))",
            message="without spec.serving.stable there is no stable to compare latency "
            "with: set spec.gates.latency.p99MaxSeconds (an absolute P99 ceiling) or "
            "spec.serving.stable",
            holds=lambda s: s.serving.stable is not None
            or s.gates.latency.p99_max_seconds is not None,
        ),
        Rule(
            # ShiftRoute leaves the stable Deployment alone: a PatchInPlace asked for
            # there would silently never happen.
            cel="!(has(self.serving) && has(self.serving.stable) && "
            "has(self.serving.stable.management) && "
            "self.serving.stable.management == 'PatchInPlace' && has(self.rollout) && "
            "has(self.rollout.promotionStrategy) && "
            "self.rollout.promotionStrategy == 'ShiftRoute')",
            message="spec.serving.stable.management PatchInPlace patches the stable "
            "Deployment on promotion, which rollout.promotionStrategy ShiftRoute never "
            "does: drop management (or use promotionStrategy UpdateStable)",
            holds=lambda s: s.serving.stable is None
            or s.serving.stable.management != "PatchInPlace"
            or s.rollout.promotion_strategy != "ShiftRoute",
            field_path=".serving.stable.management",
        ),
    )

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
