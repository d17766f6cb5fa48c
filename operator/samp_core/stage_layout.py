"""Where a QuantizedModel's stages live: Job names, labels, artifact URIs, mount paths.

Names are deterministic, ``<name>-g<generation>-<stage>``: a restarted operator finds
(adopts) what it created instead of duplicating it, and a create that races an existing
object gets AlreadyExists, which the adapter treats as success. Resource names are at most
40 characters (CRD rule), which keeps Job names within 63 with room for the generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from samp_core.api import API_VERSION, KIND, QuantizedModel
from samp_core.results import Stage
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

MANAGER: Final = "samp-operator"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_QM: Final = "samp.dev/quantizedmodel"
LABEL_STAGE: Final = "samp.dev/stage"
LABEL_GENERATION: Final = "samp.dev/generation"
LABEL_INPUTS: Final = "samp.dev/inputs"  # first 16 hex digits of the inputs hash
ANNOTATION_INPUTS_HASH: Final = "samp.dev/inputs-hash"
CLEANUP_SUFFIX: Final = "cleanup"

# Mount points inside a stage pod.
CONFIG_MOUNT: Final = "/etc/samp"
SCRATCH_MOUNT: Final = "/scratch"
PVC_ROOT: Final = "/mnt/pvc"
CONFIGMAP_ROOT: Final = "/mnt/configmap"
TERMINATION_LOG: Final = "/dev/termination-log"
RESULTS_DIR: Final = "results"  # stored summaries of the stages (samp_core.stored_result)


def child_name(name: str, generation: int, stage: Stage | str, attempt: int = 1) -> str:
    """``<name>-g<generation>-<stage>``; a re-plan attempt n > 1 adds ``-a<n>``."""
    short = STAGE_SHORT[Stage(stage)] if stage != CLEANUP_SUFFIX else CLEANUP_SUFFIX
    return f"{name}-g{generation}-{short}" if attempt <= 1 else \
        f"{name}-g{generation}-a{attempt}-{short}"


def cleanup_job_name(name: str) -> str:
    return f"{name}-{CLEANUP_SUFFIX}"


def short_hash(full: str) -> str:
    return full.removeprefix("sha256:")[:16]


def stored_result_path(workdir: str, stage: Stage, inputs_hash: str) -> str:
    """Where a stage also stores its summary for a reader Job (samp_core.stored_result)."""
    return f"{workdir.rstrip('/')}/{RESULTS_DIR}/{stage.value}-{short_hash(inputs_hash)}.json"


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


def plan_copy_path(workdir: str, plan_hash: str) -> str:
    """Where a plan stage keeps a copy of its plan, keyed by the plan stage's inputs hash.

    ``plan.json`` in the work directory is always the latest plan; the copy under
    ``plans/`` survives the next attempt, so attempt n+1 derives its plan from the plan
    attempt n actually exported and canaried, and export reads exactly the plan its own
    hash chains from.
    """
    return f"{workdir}/plans/{short_hash(plan_hash)}.json"


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
