"""Generate the QuantizedModel CustomResourceDefinition from the typed models.

The models in samp_core.spec / samp_core.status are the one source of truth;
this module turns pydantic's JSON Schema into a Kubernetes *structural* OpenAPI
v3 schema: references inlined, optional fields unwrapped from anyOf-null,
exclusive bounds in OpenAPI 3.0 form, titles dropped, CEL rules kept as
x-kubernetes-validations. ``make crds`` writes the YAML; a test fails when the
checked-in file differs from this output.
"""

from __future__ import annotations

from typing import Any

import yaml

from samp_core import api
from samp_core.spec import QuantizedModelSpec
from samp_core.status import QuantizedModelStatus

CRD_FILE_NAME = f"{api.GROUP}_{api.PLURAL}.yaml"

_DROP_KEYS = {"title"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**target, **node}  # a field's own description/default win over the type's
        if "description" in node and "description" in target:
            merged["description"] = node["description"]
        return _structural(merged, defs)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in node:
            options = [opt for opt in node.pop(combinator) if opt != {"type": "null"}]
            if len(options) != 1:
                raise ValueError(f"cannot express {combinator} of {options} structurally")
            merged = {**options[0], **node}
            return _structural(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or key == "$defs":
            continue
        if key == "default" and value is None:
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
            continue
        if key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
            continue
        if key in ("default", "enum", "x-kubernetes-validations", "x-kubernetes-list-map-keys"):
            out[key] = value
            continue
        out[key] = _structural(value, defs)
    if "properties" in out:
        out.pop("additionalProperties", None)  # structural schemas forbid both together
        out.setdefault("type", "object")
    return out


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of one model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return schema


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "Where the rollout is."},
    {"name": "Target", "type": "string", "jsonPath": ".spec.hardware.target",
     "description": "Serving hardware."},
    {"name": "Bits", "type": "number", "jsonPath": ".status.plan.effectiveBits",
     "description": "Effective bits per weight of the plan."},
    {"name": "Saved%", "type": "number", "jsonPath": ".status.plan.memorySavedPercent",
     "description": "Weight memory saved against 16-bit, percent."},
    {"name": "PPL+%", "type": "number", "jsonPath": ".status.accuracy.perplexityIncreasePercent",
     "description": "Perplexity increase against the base model, percent."},
    {"name": "P99-Ratio", "type": "number", "jsonPath": ".status.canary.p99Ratio",
     "description": "Canary P99 over stable P99 at the last analysis."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.canary.weight", "priority": 1,
     "description": "Traffic percent on the canary."},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1,
     "description": "Attempt number (re-plans add attempts)."},
    {"name": "Reason", "type": "string", "priority": 1,
     "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
     "description": "Reason of the Ready condition."},
    {"name": "Artifact", "type": "string", "jsonPath": ".status.artifactUri", "priority": 1,
     "description": "Where the quantized checkpoint is."},
]


def custom_resource_definition() -> dict[str, Any]:
    """The whole CRD object, ready to be written as YAML or applied."""
    spec_schema = openapi_schema(QuantizedModelSpec)
    status_schema = openapi_schema(QuantizedModelStatus)
    root = {
        "type": "object",
        "description": "A base LLM quantized with Sensitivity-Aware Mixed-Precision, evaluated, "
        "canaried on vLLM and promoted only when its accuracy and latency gates pass.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "samp.dev/v1alpha1"},
            "kind": {"type": "string", "description": "QuantizedModel"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"size(self.metadata.name) <= {api.MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {api.MAX_NAME_LENGTH} characters so "
                "the Jobs and Services named after it fit Kubernetes' 63-character limit",
            }
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "samp-operator"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_yaml() -> str:
    header = (
        "# Generated by `make crds` (samp_core.crd) from the typed models in operator/samp_core.\n"
        "# Do not edit by hand: tests fail when this file differs from the generator's output.\n"
    )
    return header + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=100)
