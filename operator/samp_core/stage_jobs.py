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

Each Job reads one document, its :class:`~samp_core.stage_contract.StageInvocation`, from
its ConfigMap (:func:`stage_invocation`), and runs ``samp <stage> --invocation
/etc/samp/invocation.json``. Names, labels and URIs: samp_core.stage_layout.

This module is pure: it builds manifests, the adapters send them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from samp_core.api import QuantizedModel
from samp_core.formats import HardwareTarget
from samp_core.results import Stage
from samp_core.stage_contract import (
    INVOCATION_FILE,
    RuntimeOptions,
    StageInvocation,
    StagePaths,
    inputs_from_spec,
    stage_hashes,
)
from samp_core.stage_layout import (
    ANNOTATION_INPUTS_HASH,
    CLEANUP_SUFFIX,
    CONFIG_MOUNT,
    LABEL_GENERATION,
    LABEL_INPUTS,
    LABEL_STAGE,
    SCRATCH_MOUNT,
    TERMINATION_LOG,
    artifact_prefix,
    artifact_uri,
    child_name,
    cleanup_job_name,
    common_labels,
    local_path,
    owner_reference,
    plan_copy_path,
    short_hash,
    stage_output_uri,
    stored_result_path,
    workdir_uri,
)
from samp_core.stage_pod import (
    container_security_context,
    pod_security_context,
    pod_volumes,
    scratch_env,
    secret_env_refs,
)

# Stages that run the model on an accelerator; the others request no GPU.
GPU_STAGES: Final[frozenset[Stage]] = frozenset({Stage.SENSITIVITY, Stage.EXPORT, Stage.EVALUATE})
CONTAINER: Final = "samp"
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


def stage_hashes_for(resource: QuantizedModel, attempt: int = 1) -> dict[Stage, str]:
    """The inputs hash of each stage of this resource (samp_core.stage_contract's chain)."""
    return stage_hashes(inputs_from_spec(resource.spec), attempt)


def _tolerations(resource: QuantizedModel, gpu: bool, settings: JobSettings) -> list[
    dict[str, Any]
]:
    given = [t.to_wire() for t in resource.spec.hardware.tolerations]
    if given or not gpu:
        return given
    return [dict(t) for t in settings.default_gpu_tolerations]


def stage_invocation(
    resource: QuantizedModel, stage: Stage, hashes: Mapping[Stage, str], attempt: int = 1
) -> StageInvocation:
    """What one stage Job reads: the spec's inputs, the stage's hash, paths in the pod.

    Object-store artifact URIs have no mount: the work directory is then the scratch
    volume. The plan stage keeps a copy of its plan (samp_core.stage_layout.plan_copy_path)
    and export reads exactly that copy, the plan its own hash chains from. A re-plan
    attempt n > 1 gets attempt n-1's copy as ``previousPlan``; when that copy is missing
    (object-store work directories, or a spec change made during a re-plan) the job
    rebuilds the chain from attempt 1 deterministically.
    """
    spec = resource.spec
    on_volume = local_path(workdir_uri(resource, hashes))
    workdir = on_volume or f"{SCRATCH_MOUNT}/work"
    plan_copy = plan_copy_path(workdir, hashes[Stage.PLAN])
    previous = None
    if stage == Stage.PLAN and attempt > 1:
        previous = plan_copy_path(workdir, stage_hashes_for(resource, attempt - 1)[Stage.PLAN])
    paths = StagePaths(
        workdir=workdir,
        artifact=local_path(artifact_uri(resource, hashes)) or f"{SCRATCH_MOUNT}/artifact",
        model=local_path(spec.model.source),
        prompts=local_path(spec.calibration.source),
        eval_set=local_path(spec.gates.accuracy.eval_set),
        plan=plan_copy if stage == Stage.EXPORT else None,
        plan_copy=plan_copy if stage == Stage.PLAN else None,
        previous_plan=previous,
        stored_result=None if on_volume is None
        else stored_result_path(on_volume, stage, hashes[stage]),
    )
    return StageInvocation(
        stage=stage, attempt=attempt, inputs=inputs_from_spec(spec), inputs_hash=hashes[stage],
        output_uri=stage_output_uri(resource, stage, hashes), paths=paths,
        runtime=RuntimeOptions(progress=False, termination_log=TERMINATION_LOG),
    )


def stage_command(stage: Stage) -> list[str]:
    """The jobs CLI invocation of one stage (samp_jobs.cli); the rest is in the document."""
    return ["samp", stage.value, "--invocation", f"{CONFIG_MOUNT}/{INVOCATION_FILE}"]


def config_map_manifest(  # noqa: PLR0917
    resource: QuantizedModel,
    uid: str,
    stage: Stage,
    hashes: Mapping[Stage, str],
    job_name: str,
    attempt: int = 1,
) -> dict[str, Any]:
    """The stage Job's one input document; immutable, named like its Job."""
    invocation = stage_invocation(resource, stage, hashes, attempt)
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
        "data": {INVOCATION_FILE: invocation.to_json()},
    }


def _pod_spec(
    resource: QuantizedModel,
    settings: JobSettings,
    *,
    command: list[str],
    config_map: str,
    gpu: bool,
) -> dict[str, Any]:
    hw = resource.spec.hardware
    volumes, mounts = pod_volumes(resource, config_map, settings.scratch_size)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": hw.job_image or settings.default_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": scratch_env(),
        "envFrom": secret_env_refs(resource),
        "resources": _container_resources(resource, settings, gpu),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    return pod | _placement(resource, settings, gpu)


def _container_resources(
    resource: QuantizedModel, settings: JobSettings, gpu: bool
) -> dict[str, Any]:
    """spec.hardware.resources, plus the GPUs of a GPU stage on a GPU target."""
    hw = resource.spec.hardware
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
    return resources


def _placement(resource: QuantizedModel, settings: JobSettings, gpu: bool) -> dict[str, Any]:
    """Node selector, tolerations and service account, each only when set."""
    hw = resource.spec.hardware
    placement: dict[str, Any] = {}
    if hw.node_selector:
        placement["nodeSelector"] = dict(hw.node_selector)
    tolerations = _tolerations(resource, gpu, settings)
    if tolerations:
        placement["tolerations"] = tolerations
    if settings.service_account:
        placement["serviceAccountName"] = settings.service_account
    return placement


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
                "spec": _pod_spec(resource, settings, command=stage_command(stage),
                                  config_map=name, gpu=stage in GPU_STAGES),
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
                    config_map=name, gpu=False)
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
