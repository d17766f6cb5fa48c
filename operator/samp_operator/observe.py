"""Turn watched Jobs and Pods into the core's observation (samp_core.reconcile.ObservedJob).

Kopf keeps in-memory indexes of the operator's Jobs, Pods and ConfigMaps (handlers.py);
each index entry is the small record built here, not the whole object, so memory stays
flat with many resources and a reconcile reads no list from the API server.

The result transport is the pod's termination message: the stage writes its result
summary (samp_core.results.ResultBase.summary_json, < 3 KB) to /dev/termination-log, the
kubelet copies it into ``status.containerStatuses[].state.terminated.message``, and the
operator reads it from there. With terminationMessagePolicy FallbackToLogsOnError a
crashed stage's last log lines arrive the same way, which becomes the failure message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from samp_core.reconcile import ObservedJob
from samp_core.stage_jobs import CONTAINER
from samp_core.stage_layout import ANNOTATION_INPUTS_HASH, LABEL_GENERATION, LABEL_QM, LABEL_STAGE


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def job_record(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a Job."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = body.get("status") or {}
    state, reason, message, finished = "Running", "", "", status.get("completionTime")
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            state = "Succeeded"
        elif cond.get("type") == "Failed":
            state, reason, message = "Failed", cond.get("reason", ""), cond.get("message", "")
            finished = cond.get("lastTransitionTime")
    return {
        "name": meta.get("name", ""),
        "qm": labels.get(LABEL_QM, ""),
        "stage": labels.get(LABEL_STAGE, ""),
        "generation": int(labels.get(LABEL_GENERATION) or 0),
        "inputs_hash": (meta.get("annotations") or {}).get(ANNOTATION_INPUTS_HASH, ""),
        "state": state,
        "reason": reason,
        "message": message,
        "started_at": status.get("startTime"),
        "finished_at": finished,
        "failed": int(status.get("failed") or 0),
        "deleting": bool(meta.get("deletionTimestamp")),
    }


def pod_record(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a Job's pod: phase and the container's termination."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    terminated: Mapping[str, Any] = {}
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            terminated = ((cs.get("state") or {}).get("terminated")
                          or (cs.get("lastState") or {}).get("terminated") or {})
    return {
        "name": meta.get("name", ""),
        "phase": status.get("phase", ""),
        "exit_code": terminated.get("exitCode"),
        "reason": terminated.get("reason", ""),
        "message": terminated.get("message", ""),
        "finished_at": terminated.get("finishedAt"),
    }


def observed_job(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> ObservedJob:
    pods = list(pods)
    succeeded = [p for p in pods if p["phase"] == "Succeeded" and p["message"]]
    failed = sorted((p for p in pods if p["phase"] == "Failed"),
                    key=lambda p: str(p.get("finished_at") or ""))
    message = job["message"]
    if failed:
        last = failed[-1]
        detail = last["message"] or f"exit code {last['exit_code']} ({last['reason']})"
        message = f"{message}; {detail}" if message and job["state"] == "Failed" else detail
    return ObservedJob(
        name=job["name"],
        stage=job["stage"],
        inputs_hash=job["inputs_hash"],
        generation=job["generation"],
        state=job["state"],
        started_at=_time(job["started_at"]),
        finished_at=_time(job["finished_at"]),
        # Count failed pods from the pod index, so the retry Event can carry the pod's
        # message (the Job's own counter moves before the pod's status is indexed).
        failed_pods=len(failed) if failed or job["state"] == "Running" else job["failed"],
        reason=job["reason"],
        message=message,
        result=succeeded[-1]["message"] if succeeded else None,
        deleting=job["deleting"],
    )
