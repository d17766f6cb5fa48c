"""The desired state of a QuantizedModel (``spec``), as typed models, one module per part.

These classes are the single source of truth for the API: the CRD's OpenAPI
schema and CEL rules are generated from them (samp_core.crd), ``samp validate``
and the operator parse manifests with them. Every field has a description
because it becomes the schema's documentation (``kubectl explain qm.spec``).

Modules: ``common`` (patterns, quantity/duration types, SecretRef), ``model``
(model, calibration), ``quantization`` (budget, sensitivity, rounding, overrides),
``hardware``, ``serving``, ``rollout`` (steps, route, re-plan), ``gates``,
``artifacts`` and ``quantized_model`` (the root). Import from ``samp_core.spec``.
"""

from samp_core.spec.artifacts import ArtifactsSpec
from samp_core.spec.common import (
    ARTIFACT_URI_PATTERN,
    CALIBRATION_URI_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    MAX_WEIGHT_BYTES,
    MODEL_URI_PATTERN,
    PROMETHEUS_URL_PATTERN,
    Duration,
    Quantity,
    ResourceQuantity,
    SecretRef,
)
from samp_core.spec.gates import AccuracyGate, CustomQuery, GatesSpec, LatencyGate
from samp_core.spec.hardware import HardwareSpec, Resources, Toleration
from samp_core.spec.model import CalibrationSpec, ModelSpec
from samp_core.spec.quantization import (
    DEFAULT_ALLOWED_FORMATS,
    BudgetSpec,
    Override,
    QuantizationSpec,
    RoundingSpec,
    SensitivitySpec,
)
from samp_core.spec.quantized_model import QuantizedModelSpec
from samp_core.spec.rollout import CanaryStep, HTTPRouteRef, ReplanSpec, RolloutSpec
from samp_core.spec.serving import ServingSpec, StableTarget, VllmSecurityContext

__all__ = [
    "ARTIFACT_URI_PATTERN",
    "CALIBRATION_URI_PATTERN",
    "DEFAULT_ALLOWED_FORMATS",
    "DNS_LABEL_PATTERN",
    "DNS_SUBDOMAIN_PATTERN",
    "MAX_WEIGHT_BYTES",
    "MODEL_URI_PATTERN",
    "PROMETHEUS_URL_PATTERN",
    "AccuracyGate",
    "ArtifactsSpec",
    "BudgetSpec",
    "CalibrationSpec",
    "CanaryStep",
    "CustomQuery",
    "Duration",
    "GatesSpec",
    "HTTPRouteRef",
    "HardwareSpec",
    "LatencyGate",
    "ModelSpec",
    "Override",
    "Quantity",
    "QuantizationSpec",
    "QuantizedModelSpec",
    "ReplanSpec",
    "ResourceQuantity",
    "Resources",
    "RolloutSpec",
    "RoundingSpec",
    "SecretRef",
    "SensitivitySpec",
    "ServingSpec",
    "StableTarget",
    "Toleration",
    "VllmSecurityContext",
]
