"""The walk over the stages, one small transition per case.

For each stage in order: reuse a record whose inputs hash still matches, stop at a failure
recorded for this generation, else follow the Job of the current hash (running, failed,
succeeded with or without a readable result), else create its ConfigMap and Job. The walk
stops at the first stage that is not done and says why (:class:`Stop`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from samp_core.api import QuantizedModel
from samp_core.canary.model import parse_time
from samp_core.conditions import rfc3339
from samp_core.events import Event
from samp_core.reconcile.draft import Draft, ObservedJob, clip
from samp_core.reconcile.summaries import apply_result
from samp_core.results import Stage
from samp_core.results.summaries import ResultError, parse_summary
from samp_core.stage_jobs import JobSettings, config_map_manifest, job_manifest
from samp_core.stage_layout import STAGES, child_name, stage_output_uri
from samp_core.status import StageStatus
from samp_core.stored_result import is_reader, reader_for

# A Job that completed but whose pod's termination message is not visible yet (the pod
# watch can lag the Job watch) is looked at again after RESULT_RETRY_SECONDS, for at most
# RESULT_GRACE_SECONDS; then the stage fails with ResultMissing.
RESULT_RETRY_SECONDS = 5.0
RESULT_GRACE_SECONDS = 60.0


class Failure(NamedTuple):
    """The stage that failed, the condition reason and the message."""

    stage: Stage
    reason: str
    message: str


@dataclass(frozen=True)
class Stop:
    """Why the walk stopped: a stage still being worked on, or one that failed."""

    active: Stage | None = None
    failed: Failure | None = None


@dataclass
class Walk:
    """One reconcile's walk: the inputs, and the records and draft decision it builds."""

    resource: QuantizedModel
    uid: str
    settings: JobSettings
    attempt: int  # status.attempt: the re-plan attempt the Jobs belong to
    hashes: dict[Stage, str]
    previous: dict[str, StageStatus]  # status.stages as stored, by stage name
    jobs: Sequence[ObservedJob]
    keep: set[str]  # Job (and ConfigMap) names still wanted
    draft: Draft
    now: datetime
    retried_at: datetime | None = None  # a stage that failed before this runs again
    records: list[StageStatus] = field(default_factory=list)

    @property
    def generation(self) -> int:
        return self.resource.generation


def wanted_jobs(jobs: Sequence[ObservedJob], hashes: dict[Stage, str], generation: int,
                retried: datetime | None = None) -> set[str]:
    """Names of the Jobs of the current hash for their stage, except a failed one from an
    earlier generation (the new generation retries that stage) or one that failed before a
    retry (samp_core.reconcile.retry)."""
    stage_names = {s.value for s in STAGES}
    return {
        seen.name for seen in jobs
        if seen.stage in stage_names and hashes[Stage(seen.stage)] == seen.inputs_hash
        and not seen.deleting and not (seen.state == "Failed" and (
            seen.generation != generation or failed_before(seen.finished_at, retried)))
    }


def failed_before(finished: datetime | str | None, retried: datetime | None) -> bool:
    """A failure that a later retry supersedes. A retried Job needs seconds to be created,
    scheduled and fail again, far more than the clock skew between nodes."""
    if retried is None or finished is None:
        return False
    when = parse_time(finished) if isinstance(finished, str) else finished
    return when is not None and when < retried


def walk_stages(w: Walk) -> Stop:
    """Visit the stages in order; the first that is not done stops the walk."""
    for stage in STAGES:
        stop = _visit(w, stage)
        if stop is not None:
            return stop
    return Stop()


def _visit(w: Walk, stage: Stage) -> Stop | None:
    rec = w.previous.get(stage.value)
    if rec is not None and rec.inputs_hash == w.hashes[stage]:
        if rec.state in ("Succeeded", "Reused"):
            _reuse(w, stage, rec)
            return None
        if rec.state == "Failed" and rec.generation == w.generation \
                and not failed_before(rec.finished_at, w.retried_at):
            w.records.append(rec)
            return Stop(failed=Failure(stage, "JobFailed", rec.message))
    candidates = [j for j in w.jobs if j.name in w.keep and j.stage == stage.value]
    job = max(candidates, key=lambda j: (j.generation, j.name), default=None)
    if job is None:
        if w.resource.spec.suspend:
            return Stop(active=stage)
        return _create(w, stage, rec)
    return _follow(w, stage, rec, job)


def _reuse(w: Walk, stage: Stage, rec: StageStatus) -> None:
    """A stage done with the same inputs (in any generation) is not run again."""
    if rec.state == "Succeeded" and rec.generation is not None and rec.generation < w.generation:
        rec = rec.model_copy(update={"state": "Reused"})
        w.draft.events.append(Event(
            "Normal", "StageReused",
            f"{stage.value}: inputs unchanged since generation {rec.generation}; "
            f"reusing {rec.output_uri}"))
    w.records.append(rec)


def _create(w: Walk, stage: Stage, rec: StageStatus | None) -> Stop:
    """No Job for this stage's inputs: create its ConfigMap and Job."""
    resource, attempt = w.resource, w.attempt
    name = child_name(resource.name, w.generation, stage, attempt)
    if any(j.name == name for j in w.jobs):  # unwanted (failed before a retry): goes first
        w.records.append(StageStatus(
            stage=stage.value, state="Running", inputs_hash=w.hashes[stage], job=name,
            generation=w.generation, started_at=rfc3339(w.now),
            message=f"waiting for the previous Job {name} to be deleted"))
        w.draft.requeue_after = RESULT_RETRY_SECONDS
        return Stop(active=stage)
    w.draft.create(config_map_manifest(resource, w.uid, stage, w.hashes, name, attempt))
    w.draft.create(job_manifest(resource, w.uid, stage, w.hashes, w.settings, attempt))
    w.keep.add(name)
    w.records.append(StageStatus(
        stage=stage.value, state="Running", inputs_hash=w.hashes[stage], job=name,
        generation=w.generation, started_at=rfc3339(w.now),
        output_uri=stage_output_uri(resource, stage, w.hashes), message="Job created"))
    if not (rec and rec.job == name and rec.state == "Running"):
        w.draft.events.append(Event("Normal", "StageStarted",
                                       f"{stage.value}: created Job {name}"))
    return Stop(active=stage)


def _follow(w: Walk, stage: Stage, rec: StageStatus | None, job: ObservedJob) -> Stop | None:
    """The stage's Job exists: record what it is doing."""
    mine = rec if rec is not None and rec.job == job.name else None  # the record of this Job
    base = StageStatus(
        stage=stage.value, state="Running", inputs_hash=w.hashes[stage], job=job.name,
        generation=job.generation,
        started_at=rfc3339(job.started_at) if job.started_at else
        (mine.started_at if mine else rfc3339(w.now)),
        pod_failures=job.failed_pods,
        output_uri=stage_output_uri(w.resource, stage, w.hashes),
    )
    _count_pod_failures(w, stage, mine, job)
    if job.state == "Running":
        return _running(w, stage, mine, job, base)
    if job.state == "Failed":
        reason = job.reason or "Failed"
        message = clip(f"Job {job.name} failed ({reason}): {job.message or 'no message'}")
        return _failed(w, mine, base, job, Failure(stage, "JobFailed", message),
                       Event("Warning", "StageFailed", f"{stage.value}: {message}"), reason)
    return _completed(w, stage, mine, job, base)


def _count_pod_failures(
    w: Walk, stage: Stage, mine: StageStatus | None, job: ObservedJob
) -> None:
    """Pods that failed since the last look: a metric each, and a Warning while retrying."""
    new_failures = job.failed_pods - (mine.pod_failures if mine else 0)
    if new_failures <= 0:
        return
    w.draft.job_failures.extend([(stage.value, "PodFailed")] * new_failures)
    if job.state != "Failed":
        w.draft.events.append(Event(
            "Warning", "JobRetrying",
            clip(f"{stage.value}: pod {job.failed_pods} of Job {job.name} failed; "
                 f"retrying ({job.message or 'no message'})")))


def _running(
    w: Walk, stage: Stage, mine: StageStatus | None, job: ObservedJob, base: StageStatus
) -> Stop:
    base.message = f"running, {job.failed_pods} failed pod(s)" if job.failed_pods else "running"
    if not (mine and mine.state == "Running"):
        w.draft.events.append(Event("Normal", "StageAdopted",
                                       f"{stage.value}: adopted running Job {job.name}"))
    w.records.append(base)
    return Stop(active=stage)


def _failed(  # noqa: PLR0917
    w: Walk, mine: StageStatus | None, base: StageStatus, job: ObservedJob,
    failure: Failure, event: Event, metric_reason: str,
) -> Stop:
    """The stage failed; the Event and the failure metric only on the transition."""
    base.state = "Failed"
    base.finished_at = rfc3339(job.finished_at or w.now)
    base.message = failure.message
    w.records.append(base)
    if not (mine and mine.state == "Failed"):
        w.draft.job_failures.append((failure.stage.value, metric_reason))
        w.draft.events.append(event)
    return Stop(failed=failure)


def _read_from_store(w: Walk, stage: Stage, job: ObservedJob, base: StageStatus) -> bool:
    """The pod is gone with its termination message: start a Job that reads the result the
    stage stored in the artifact store (checked against its inputs hash). False when there is
    nothing to read from (the reader itself found none)."""
    reader = reader_for(w.resource, job.name, uid=w.uid, stage=stage, hashes=w.hashes,
                        settings=w.settings, attempt=w.attempt)
    if reader is None:
        return False
    w.draft.create(reader)
    w.keep.add(reader["metadata"]["name"])
    base.job = reader["metadata"]["name"]
    base.message = (f"Job {job.name} completed but its pod is gone; reading its "
                    "result from the artifact store")
    w.records.append(base)
    w.draft.events.append(Event("Normal", "ResultFromStore", base.message))
    return True


def _completed(
    w: Walk, stage: Stage, mine: StageStatus | None, job: ObservedJob, base: StageStatus
) -> Stop | None:
    """The Job succeeded: read the result summary from the pod's termination message."""
    finished = job.finished_at or w.now
    if not job.result:
        if (w.now - finished).total_seconds() < RESULT_GRACE_SECONDS:
            base.message = "completed; waiting for its result"
            w.records.append(base)
            w.draft.requeue_after = RESULT_RETRY_SECONDS
            return Stop(active=stage)
        if _read_from_store(w, stage, job, base):
            return Stop(active=stage)
        message = (f"Job {job.name} completed without a result summary in its "
                   "termination message")
        return _failed(w, mine, base, job, Failure(stage, "ResultMissing", message),
                       Event("Warning", "ResultMissing", message), "ResultMissing")
    try:
        summary = parse_summary(stage, job.result)
    except ResultError as err:
        message = clip(f"Job {job.name}: {err}")
        return _failed(w, mine, base, job, Failure(stage, "ResultInvalid", message),
                       Event("Warning", "ResultInvalid", message), "ResultInvalid")
    base.state = "Succeeded"
    base.finished_at = rfc3339(finished)
    base.message = clip(summary.describe(), 500)
    w.records.append(base)
    apply_result(w.draft.status, summary, stage_output_uri(w.resource, stage, w.hashes))
    if not (mine and mine.state == "Succeeded"):
        w.draft.events.append(Event("Normal", "StageSucceeded",
                                       f"{stage.value}: {base.message}"))
        if job.started_at and not is_reader(job.name):
            w.draft.stage_durations.append(
                (stage.value, max(0.0, (finished - job.started_at).total_seconds())))
    return None
