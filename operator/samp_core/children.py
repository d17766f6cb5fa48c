"""The objects the operator owns for a QuantizedModel, as plain dicts: names, labels, inputs
hashes, and the ConfigMap + Job of each SAMP stage.

Why one Job per stage (calibrate, sensitivity, plan, export, evaluate) rather than one Job:

* **Reuse by content hash.** Each stage's inputs hash chains the previous stage's hash with
  the part of the spec that stage reads (:func:`stage_hashes`). A spec change reruns only
  the stages whose inputs changed: a new budget replans and re-exports but keeps the
  calibration set and the sensitivity table, which are the expensive GPU hours.
* **Right-sized pods.** calibrate (tokenising prompts) and plan (a MILP) need no GPU, so
  they request none; only sensitivity, export and evaluate hold ``nvidia.com/gpu``.
* **Failure isolation and status.** Each stage has its own deadline, retry budget, pod
  termination message (its result summary), duration metric and Events; a failed export
  does not repeat a finished sensitivity pass.

The price is loading the model in each GPU stage (three loads instead of one); for the
models this targets that is minutes against the hours of scoring, and the stages can run
on different nodes. ``samp quantize`` (one process, all stages) remains for local runs.

Names are deterministic, ``<name>-g<generation>-<stage>``: a restarted operator finds
(adopts) what it created instead of duplicating it, and a create that races an existing
object gets AlreadyExists, which the adapter treats as success. Resource names are at most
40 characters (CRD rule), which keeps Job names within 63 with room for the generation.

This module is pure: it builds manifests, the adapters send them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from samp_core.api import API_VERSION, KIND, QuantizedModel
from samp_core.formats import HardwareTarget
from samp_core.results import Stage, inputs_hash
from samp_core.status import Phase

STAGES: Final[tuple[Stage, ...]] = (
    Stage.CALIBRATE,
    Stage.SENSITIVITY,
    Stage.PLAN,
    Stage.EXPORT,
    Stage.EVALUATE,
)
STAGE_PHASE: Final[dict[Stage, Phase]] = {
    Stage.CALIBRATE: Phase.CALIBRATING,
    Stage.SENSITIVITY: Phase.SCORING,
    Stage.PLAN: Phase.PLANNING,
    Stage.EXPORT: Phase.EXPORTING,
    Stage.EVALUATE: Phase.EVALUATING,
}
STAGE_SHORT: Final[dict[Stage, str]] = {
    Stage.CALIBRATE: "cal",
    Stage.SENSITIVITY: "sens",
    Stage.PLAN: "plan",
    Stage.EXPORT: "export",
    Stage.EVALUATE: "eval",
}
# Stages that run the model on an accelerator; the others request no GPU.
GPU_STAGES: Final[frozenset[Stage]] = frozenset({Stage.SENSITIVITY, Stage.EXPORT, Stage.EVALUATE})

MANAGER: Final = "samp-operator"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_QM: Final = "samp.dev/quantizedmodel"
LABEL_STAGE: Final = "samp.dev/stage"
LABEL_GENERATION: Final = "samp.dev/generation"
LABEL_INPUTS: Final = "samp.dev/inputs"  # first 16 hex digits of the inputs hash
ANNOTATION_INPUTS_HASH: Final = "samp.dev/inputs-hash"
CONTAINER: Final = "samp"
CLEANUP_SUFFIX: Final = "cleanup"

CONFIG_MOUNT: Final = "/etc/samp"
SCRATCH_MOUNT: Final = "/scratch"
PVC_ROOT: Final = "/mnt/pvc"
CONFIGMAP_ROOT: Final = "/mnt/configmap"
TERMINATION_LOG: Final = "/dev/termination-log"
NON_ROOT_UID: Final = 65532
# Exit code by which a stage says "my input is wrong, retrying cannot help" (samp_jobs.cli:
# 2 = bad input): the Job fails at once (podFailurePolicy) instead of spending its retries.
EXIT_PERMANENT: Final = 2


@dataclass(frozen=True)
class JobSettings:
    """Operator-wide settings that shape every Job (see samp_operator.settings)."""

    default_image: str = "ghcr.io/samp-dev/samp-jobs:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    ttl_seconds_after_finished: int = 86_400
    service_account: str | None = None
    scratch_size: str = "100Gi"
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    gpu_resource: str = "nvidia.com/gpu"
    # Used only when spec.hardware.tolerations is empty and the stage needs a GPU: GPU node
    # pools are commonly tainted nvidia.com/gpu:NoSchedule (GKE, AKS, the GPU operator).
    default_gpu_tolerations: tuple[Mapping[str, str], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )


def child_name(name: str, generation: int, stage: Stage | str, attempt: int = 1) -> str:
    """``<name>-g<generation>-<stage>``; a re-plan attempt n > 1 adds ``-a<n>``."""
    short = STAGE_SHORT[Stage(stage)] if stage != CLEANUP_SUFFIX else CLEANUP_SUFFIX
    return f"{name}-g{generation}-{short}" if attempt <= 1 else \
        f"{name}-g{generation}-a{attempt}-{short}"


def cleanup_job_name(name: str) -> str:
    return f"{name}-{CLEANUP_SUFFIX}"


def short_hash(full: str) -> str:
    return full.removeprefix("sha256:")[:16]


def stage_hashes(resource: QuantizedModel, attempt: int = 1) -> dict[Stage, str]:
    """Inputs hash of each stage, chained: a stage's hash covers every earlier stage's.

    Only what changes a stage's *output* is hashed: placement (image, resources, node
    selector, retries) and credentials are not, so changing them reruns nothing. A re-plan
    attempt (status.attempt > 1, opened by the canary after a failed gate) is an input of
    the plan stage, so plan, export and evaluate rerun for it while calibration and
    sensitivity are reused.
    """
    spec = resource.spec
    model = spec.model
    q = spec.quantization
    out: dict[Stage, str] = {}
    out[Stage.CALIBRATE] = inputs_hash(
        stage=Stage.CALIBRATE,
        model={"source": model.source, "dtype": model.dtype,
               "trustRemoteCode": model.trust_remote_code},
        calibration=spec.calibration,
    )
    out[Stage.SENSITIVITY] = inputs_hash(
        stage=Stage.SENSITIVITY,
        previous=out[Stage.CALIBRATE],
        sensitivity=q.sensitivity,
        allowed_formats=sorted(f.value for f in q.allowed_formats),
        allow_non_native=q.allow_non_native_formats,
        profile=spec.hardware.target.profile,
    )
    plan_inputs: dict[str, Any] = {"quantization": q, "profile": spec.hardware.target.profile}
    if attempt > 1:
        plan_inputs["attempt"] = attempt
        plan_inputs["replan"] = spec.rollout.replan
    out[Stage.PLAN] = inputs_hash(stage=Stage.PLAN, previous=out[Stage.SENSITIVITY],
                                  **plan_inputs)
    out[Stage.EXPORT] = inputs_hash(stage=Stage.EXPORT, previous=out[Stage.PLAN])
    out[Stage.EVALUATE] = inputs_hash(
        stage=Stage.EVALUATE, previous=out[Stage.EXPORT], eval_set=spec.gates.accuracy.eval_set
    )
    return out


def artifact_prefix(resource: QuantizedModel) -> str:
    return f"{resource.spec.artifacts.uri.rstrip('/')}/{resource.namespace}/{resource.name}"


def workdir_uri(resource: QuantizedModel, hashes: Mapping[Stage, str]) -> str:
    """The jobs' shared work directory (samp_jobs.pipeline layout), one per sensitivity hash.

    Calibration and sensitivity documents live there and are reused by every plan made
    from them; a new budget overwrites plan.json there (the old plan is obsolete), while
    each exported checkpoint gets its own directory (:func:`artifact_uri`), so a serving
    checkpoint is never overwritten by a later spec.
    """
    return f"{artifact_prefix(resource)}/w-{short_hash(hashes[Stage.SENSITIVITY])}"


def artifact_uri(resource: QuantizedModel, hashes: Mapping[Stage, str]) -> str:
    return f"{artifact_prefix(resource)}/artifact-{short_hash(hashes[Stage.EXPORT])}"


def stage_output_uri(resource: QuantizedModel, stage: Stage, hashes: Mapping[Stage, str]) -> str:
    """Where a stage writes: the checkpoint directory for export, else the work directory."""
    return artifact_uri(resource, hashes) if stage == Stage.EXPORT else \
        workdir_uri(resource, hashes)


def local_path(uri: str | None) -> str | None:
    """Where a pvc:// or configmap:// URI is mounted inside a Job; None for object stores."""
    if uri and uri.startswith("pvc://"):
        return f"{PVC_ROOT}/{uri.removeprefix('pvc://')}"
    if uri and uri.startswith("configmap://"):
        return f"{CONFIGMAP_ROOT}/{uri.removeprefix('configmap://')}"
    return None


def common_labels(name: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGER, LABEL_QM: name}


def selector(name: str) -> str:
    """Label selector of every child of a QuantizedModel."""
    return f"{LABEL_MANAGED_BY}={MANAGER},{LABEL_QM}={name}"


def owner_reference(resource: QuantizedModel, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": resource.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _manifest_document(resource: QuantizedModel) -> dict[str, Any]:
    """The QuantizedModel as the Job reads it: metadata that matters, spec; no status.

    Secret *names* are part of the spec; secret values never are.
    """
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": resource.name,
            "namespace": resource.namespace,
            "generation": resource.generation,
        },
        "spec": resource.spec.to_wire(),
    }


def _pvc_claim(uri: str | None) -> str | None:
    if uri and uri.startswith("pvc://"):
        return uri.removeprefix("pvc://").split("/", 1)[0]
    return None


def _configmap_source(uri: str | None) -> str | None:
    if uri and uri.startswith("configmap://"):
        return uri.removeprefix("configmap://").split("/", 1)[0]
    return None


def _volumes(resource: QuantizedModel, config_map: str, scratch: str) -> tuple[
    list[dict[str, Any]], list[dict[str, Any]]
]:
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


def _secret_refs(resource: QuantizedModel) -> list[dict[str, Any]]:
    names: list[str] = []
    for ref in (resource.spec.model.secret_ref, resource.spec.artifacts.secret_ref):
        if ref is not None and ref.name not in names:
            names.append(ref.name)
    return [{"secretRef": {"name": n}} for n in names]


def _tolerations(resource: QuantizedModel, gpu: bool, settings: JobSettings) -> list[
    dict[str, Any]
]:
    given = [t.to_wire() for t in resource.spec.hardware.tolerations]
    if given or not gpu:
        return given
    return [dict(t) for t in settings.default_gpu_tolerations]


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def stage_plan(
    resource: QuantizedModel, hashes: Mapping[Stage, str], attempt: int = 1
) -> dict[str, Any]:
    """stages.json: every stage's inputs hash and output URI, so a stage finds its inputs.

    ``attempt`` > 1 is recorded for the plan stage, whose command
    (:func:`stage_command`) then derives the conservative re-plan
    (samp_core.replan.conservative_plan) from the previous attempt's plan.
    """
    return {
        "attempt": attempt,
        "workdir": workdir_uri(resource, hashes),
        "artifact": artifact_uri(resource, hashes),
        "stages": {
            s.value: {"inputsHash": hashes[s],
                      "outputUri": stage_output_uri(resource, s, hashes)}
            for s in STAGES
        },
    }


def plan_copy_path(workdir: str, plan_hash: str) -> str:
    """Where a plan stage keeps a copy of its plan, keyed by the plan stage's inputs hash.

    ``plan.json`` in the work directory is always the latest plan (export reads it); the
    copy under ``plans/`` survives the next attempt, so attempt n+1 derives its plan from
    the plan attempt n actually exported and canaried.
    """
    return f"{workdir}/plans/{short_hash(plan_hash)}.json"


def stage_command(
    resource: QuantizedModel, stage: Stage, hashes: Mapping[Stage, str], attempt: int = 1
) -> list[str]:
    """The jobs CLI invocation of one stage (samp_jobs.cli).

    Object-store artifact URIs have no mount: the work directory is then the scratch
    volume and the Job itself must upload (SAMP_OUTPUT_URI tells it where).

    The plan stage keeps a copy of its plan (:func:`plan_copy_path`). In a re-plan
    attempt n > 1 it gets ``--attempt n`` and the previous attempt's copy as
    ``--previous-plan``: the job applies samp_core.replan.conservative_plan to it. When
    that copy is missing (object-store work directories, or a spec change made during
    a re-plan, so attempt n-1 never ran under this spec) the job rebuilds the chain
    from attempt 1 deterministically.
    """
    spec = resource.spec
    workdir = local_path(workdir_uri(resource, hashes)) or f"{SCRATCH_MOUNT}/work"
    cmd = [
        "samp", stage.value,
        "--workdir", workdir,
        "--manifest", f"{CONFIG_MOUNT}/manifest.json",
        "--termination-log", TERMINATION_LOG,
        "--no-progress",
    ]
    if stage in (Stage.EXPORT, Stage.EVALUATE):
        cmd += ["--artifact",
                local_path(artifact_uri(resource, hashes)) or f"{SCRATCH_MOUNT}/artifact"]
    eval_set = local_path(spec.gates.accuracy.eval_set)
    if stage == Stage.EVALUATE and eval_set:
        cmd += ["--eval-set", eval_set]
    prompts = local_path(spec.calibration.source)
    if stage == Stage.CALIBRATE and prompts:
        cmd += ["--prompts", prompts]
    if stage == Stage.EXPORT:
        # Exactly the plan this export's hash chains from, not whatever plan.json holds now.
        cmd += ["--plan", plan_copy_path(workdir, hashes[Stage.PLAN])]
    if stage == Stage.PLAN:
        cmd += ["--plan-copy", plan_copy_path(workdir, hashes[Stage.PLAN])]
        if attempt > 1:
            previous = stage_hashes(resource, attempt - 1)[Stage.PLAN]
            cmd += ["--attempt", str(attempt),
                    "--previous-plan", plan_copy_path(workdir, previous)]
    return cmd


def config_map_manifest(  # noqa: PLR0917
    resource: QuantizedModel,
    uid: str,
    stage: Stage,
    hashes: Mapping[Stage, str],
    job_name: str,
    attempt: int = 1,
) -> dict[str, Any]:
    """The read-only inputs of one stage Job; immutable, named like its Job."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": job_name,
            "namespace": resource.namespace,
            "labels": {**common_labels(resource.name), LABEL_STAGE: stage.value,
                       LABEL_GENERATION: str(resource.generation),
                       LABEL_INPUTS: short_hash(hashes[stage])},
            "annotations": {ANNOTATION_INPUTS_HASH: hashes[stage]},
            "ownerReferences": [owner_reference(resource, uid)],
        },
        "immutable": True,
        "data": {
            "manifest.json": json.dumps(_manifest_document(resource), sort_keys=True, indent=1),
            "stages.json": json.dumps(stage_plan(resource, hashes, attempt), sort_keys=True,
                                      indent=1),
        },
    }


def _pod_spec(
    resource: QuantizedModel,
    settings: JobSettings,
    *,
    command: list[str],
    config_map: str,
    gpu: bool,
    env: list[dict[str, Any]],
) -> dict[str, Any]:
    hw = resource.spec.hardware
    volumes, mounts = _volumes(resource, config_map, settings.scratch_size)
    requests: dict[str, str] = dict(hw.resources.requests)
    limits: dict[str, str] = dict(hw.resources.limits)
    if gpu and hw.gpus_per_job > 0 and hw.target != HardwareTarget.CPU:
        limits[settings.gpu_resource] = str(hw.gpus_per_job)
        requests[settings.gpu_resource] = str(hw.gpus_per_job)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": hw.job_image or settings.default_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [
            {"name": "HOME", "value": SCRATCH_MOUNT},
            {"name": "TMPDIR", "value": SCRATCH_MOUNT},
            {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
            {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH_MOUNT}/.cache"},
            # samp_jobs.cli resolves pvc://claim/path under these roots.
            {"name": "SAMP_MODEL_ROOT", "value": PVC_ROOT},
            {"name": "SAMP_DATA_ROOT", "value": PVC_ROOT},
            *env,
        ],
        "envFrom": _secret_refs(resource),
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": _security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if hw.node_selector:
        pod["nodeSelector"] = dict(hw.node_selector)
    tolerations = _tolerations(resource, gpu, settings)
    if tolerations:
        pod["tolerations"] = tolerations
    if settings.service_account:
        pod["serviceAccountName"] = settings.service_account
    return pod


def job_manifest(  # noqa: PLR0917
    resource: QuantizedModel,
    uid: str,
    stage: Stage,
    hashes: Mapping[Stage, str],
    settings: JobSettings,
    attempt: int = 1,
) -> dict[str, Any]:
    """The batch/v1 Job of one stage; its ConfigMap has the same name."""
    name = child_name(resource.name, resource.generation, stage, attempt)
    labels = {**common_labels(resource.name), LABEL_STAGE: stage.value,
              LABEL_GENERATION: str(resource.generation),
              LABEL_INPUTS: short_hash(hashes[stage])}
    out_uri = stage_output_uri(resource, stage, hashes)
    env = [
        {"name": "SAMP_STAGE", "value": stage.value},
        {"name": "SAMP_INPUTS_HASH", "value": hashes[stage]},
        {"name": "SAMP_OUTPUT_URI", "value": out_uri},
    ]
    hw = resource.spec.hardware
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": resource.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_INPUTS_HASH: hashes[stage]},
            "ownerReferences": [owner_reference(resource, uid)],
        },
        "spec": {
            "backoffLimit": hw.retries,
            "activeDeadlineSeconds": hw.stage_timeout_seconds,
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {
                    "containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {
                "metadata": {
                    "labels": {**settings.pod_labels, **labels},
                    "annotations": {**settings.pod_annotations,
                                    ANNOTATION_INPUTS_HASH: hashes[stage]},
                },
                "spec": _pod_spec(resource, settings,
                                  command=stage_command(resource, stage, hashes, attempt),
                                  config_map=name, gpu=stage in GPU_STAGES, env=env),
            },
        },
    }


def cleanup_supported(resource: QuantizedModel) -> bool:
    """Artifacts on a PVC can be removed by a Job; object stores need their own lifecycle."""
    return local_path(artifact_prefix(resource)) is not None


def cleanup_job_manifest(resource: QuantizedModel, uid: str, settings: JobSettings) -> dict[
    str, Any
]:
    """A Job that deletes ``<artifacts.uri>/<namespace>/<name>`` (spec.artifacts.cleanupOnDelete).

    It mounts the artifact PVC like the stage Jobs and removes the directory with the job
    image's Python (no shell needed). Only for pvc:// artifacts (:func:`cleanup_supported`).
    """
    name = cleanup_job_name(resource.name)
    labels = {**common_labels(resource.name), LABEL_STAGE: CLEANUP_SUFFIX}
    target = local_path(artifact_prefix(resource)) or ""
    pod = _pod_spec(resource, settings,
                    command=["python", "-c",
                             "import shutil, sys; shutil.rmtree(sys.argv[1], ignore_errors=True)",
                             target],
                    config_map=name, gpu=False,
                    env=[{"name": "SAMP_STAGE", "value": CLEANUP_SUFFIX}])
    pod["volumes"][0] = {"name": "config", "emptyDir": {"sizeLimit": "1Mi"}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": resource.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(resource, uid)],
        },
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 900,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": {**settings.pod_labels, **labels},
                             "annotations": dict(settings.pod_annotations)},
                "spec": pod,
            },
        },
    }
