"""The parts of a stage Job's pod that depend on the spec alone: volumes and mounts, Secret
environment, scratch environment and security contexts (samp_core.stage_jobs puts them
together with the operator's JobSettings)."""

from __future__ import annotations

from typing import Any, Final

from samp_core.api import QuantizedModel
from samp_core.stage_layout import CONFIG_MOUNT, CONFIGMAP_ROOT, PVC_ROOT, SCRATCH_MOUNT

NON_ROOT_UID: Final = 65532


def _pvc_claim(uri: str | None) -> str | None:
    if uri and uri.startswith("pvc://"):
        return uri.removeprefix("pvc://").split("/", 1)[0]
    return None


def _configmap_source(uri: str | None) -> str | None:
    if uri and uri.startswith("configmap://"):
        return uri.removeprefix("configmap://").split("/", 1)[0]
    return None


def pod_volumes(resource: QuantizedModel, config_map: str, scratch: str) -> tuple[
    list[dict[str, Any]], list[dict[str, Any]]
]:
    """The stage's ConfigMap, a scratch emptyDir, every pvc:// claim the spec names (only
    the artifact claim writable) and every configmap:// source, with their mounts."""
    spec = resource.spec
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map}},
        {"name": "scratch", "emptyDir": {"sizeLimit": scratch}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_MOUNT},
    ]
    artifact_claim = _pvc_claim(spec.artifacts.uri)
    claims: list[str] = []
    for uri in (spec.artifacts.uri, spec.model.source, spec.calibration.source,
                spec.gates.accuracy.eval_set):
        claim = _pvc_claim(uri)
        if claim and claim not in claims:
            claims.append(claim)
    for i, claim in enumerate(claims):
        read_only = claim != artifact_claim
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {
            "claimName": claim, "readOnly": read_only}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{PVC_ROOT}/{claim}",
                       "readOnly": read_only})
    config_maps: list[str] = []
    for uri in (spec.calibration.source, spec.gates.accuracy.eval_set):
        cm = _configmap_source(uri)
        if cm and cm not in config_maps:
            config_maps.append(cm)
    for i, cm in enumerate(config_maps):
        volumes.append({"name": f"cm-{i}", "configMap": {"name": cm}})
        mounts.append({"name": f"cm-{i}", "mountPath": f"{CONFIGMAP_ROOT}/{cm}",
                       "readOnly": True})
    return volumes, mounts


def secret_env_refs(resource: QuantizedModel) -> list[dict[str, Any]]:
    """The model's and the artifact store's Secrets as environment (each once)."""
    names: list[str] = []
    for ref in (resource.spec.model.secret_ref, resource.spec.artifacts.secret_ref):
        if ref is not None and ref.name not in names:
            names.append(ref.name)
    return [{"secretRef": {"name": n}} for n in names]


def container_security_context() -> dict[str, Any]:
    """Restricted Pod Security: no privilege, read-only root, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_env() -> list[dict[str, str]]:
    """Home, temporary files and caches on the scratch volume."""
    return [
        {"name": "HOME", "value": SCRATCH_MOUNT},
        {"name": "TMPDIR", "value": SCRATCH_MOUNT},
        {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
        {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH_MOUNT}/.cache"},
    ]


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
