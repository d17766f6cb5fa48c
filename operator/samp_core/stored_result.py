"""A stage's result read back from the artifact store when its pod is gone.

The operator learns a stage's result from its pod's termination message. A pod that
completed and was garbage-collected (node drained, pod GC) while the operator was down
takes that message with it, though the stage did its work. So every stage of an operator's
Job also stores its summary in its work directory, under the stage's inputs hash (the
StageInvocation's, which is checked against samp_core.stage_contract.stage_hashes when the
Job reads it), at ``StagePaths.stored_result`` = ``results/<stage>-<hash16>.json``:
``{"stage", "inputsHash", "summary"}``. When a Succeeded Job has no result, the operator
runs a small *reader* Job (:func:`reader_job_manifest`: no GPU, the artifact volume only)
that checks the stored copy was written for exactly these inputs
(:func:`summary_from_stored`) and leaves its summary in its own termination message; the
state machine then takes the reader's result as the stage's. Only where the store has no
copy for these inputs, or a copy for other inputs, does the stage fail.

Pure: the I/O is samp_jobs.runlog (writing) and samp_jobs.stored (the reader's command).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any, Final

from samp_core.api import QuantizedModel
from samp_core.results import Stage
from samp_core.stage_jobs import JobSettings, job_manifest
from samp_core.stage_layout import (
    CONFIG_MOUNT,
    RESULTS_DIR,
    TERMINATION_LOG,
    local_path,
    stored_result_path,
    workdir_uri,
)

__all__ = [
    "READER_SUFFIX",
    "RESULTS_DIR",
    "StoredResultError",
    "is_reader",
    "reader_for",
    "reader_job_manifest",
    "stored_result_document",
    "stored_result_path",
    "summary_from_stored",
]

READER_SUFFIX: Final = "-read"  # stage Job names end in a stage's short name, never this
READER_DEADLINE_SECONDS: Final = 600


class StoredResultError(ValueError):
    """The store holds no usable result for these inputs (the message says why)."""


def stored_result_document(stage: Stage, inputs_hash: str, summary_json: str) -> str:
    """What a stage stores beside its result document (``summary_json``: its summary)."""
    return json.dumps({"stage": stage.value, "inputsHash": inputs_hash,
                       "summary": json.loads(summary_json)}, sort_keys=True)


def summary_from_stored(stage: Stage, inputs_hash: str, text: str) -> str:
    """The stored summary (compact JSON) if ``text`` was stored for ``stage`` with exactly
    ``inputs_hash``; else StoredResultError naming the mismatch."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise StoredResultError(f"stored result is not JSON ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("summary"), dict):
        raise StoredResultError("stored result has no summary object")
    if doc.get("stage") != stage.value:
        raise StoredResultError(f"stored result is of stage {doc.get('stage')!r}, "
                                f"not {stage.value}")
    if doc.get("inputsHash") != inputs_hash:
        raise StoredResultError(f"stored result was made from inputs {doc.get('inputsHash')!r}, "
                                f"not {inputs_hash}")
    return json.dumps(doc["summary"], separators=(",", ":"), sort_keys=True)


def reader_job_name(stage_job: str) -> str:
    return f"{stage_job}{READER_SUFFIX}"


def is_reader(job_name: str) -> bool:
    return job_name.endswith(READER_SUFFIX)


def reader_job_manifest(stage_job_manifest: Mapping[str, Any], stage_job: str, *, stage: Stage,
                        inputs_hash: str, workdir: str, gpu_resource: str) -> dict[str, Any]:
    """The reader Job of ``stage_job``, built from the stage's own Job manifest (same
    labels, owner, image, volumes, placement) so the state machine adopts it as the
    stage's Job; it needs neither a GPU nor the stage's ConfigMap."""
    job = copy.deepcopy(dict(stage_job_manifest))
    job["metadata"]["name"] = reader_job_name(stage_job)
    spec = job["spec"]
    spec["backoffLimit"] = 1
    spec["activeDeadlineSeconds"] = READER_DEADLINE_SECONDS
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    container["command"] = [
        "samp", "read-result", "--stage", stage.value, "--inputs-hash", inputs_hash,
        "--file", stored_result_path(workdir, stage, inputs_hash),
        "--stage-job", stage_job, "--termination-log", TERMINATION_LOG]
    for key in ("requests", "limits"):
        container.get("resources", {}).get(key, {}).pop(gpu_resource, None)
    config = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == CONFIG_MOUNT}
    container["volumeMounts"] = [m for m in container["volumeMounts"]
                                 if m["name"] not in config]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] not in config]
    return job


def reader_for(resource: QuantizedModel, stage_job: str, *, uid: str, stage: Stage,
               hashes: Mapping[Stage, str], settings: JobSettings, attempt: int = 1
               ) -> dict[str, Any] | None:
    """The reader Job for ``stage_job``, a Succeeded stage Job without a result; None where
    there is nothing to read from (it is a reader already, or the work directory is not on
    a volume)."""
    workdir = local_path(workdir_uri(resource, hashes))
    if is_reader(stage_job) or workdir is None:
        return None
    return reader_job_manifest(job_manifest(resource, uid, stage, hashes, settings, attempt),
                               stage_job, stage=stage, inputs_hash=hashes[stage],
                               workdir=workdir, gpu_resource=settings.gpu_resource)
