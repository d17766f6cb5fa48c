"""The quantization state machine: observation in, decision out. No I/O.

``reconcile(body, jobs, config_maps, now, settings)`` takes the QuantizedModel as the API
server returned it, the stage Jobs (and their ConfigMaps) that exist for it, and returns a
:class:`Decision`: the complete new ``status``, the children to create and to delete, the
Events to post, and when to look again. The Kopf handlers (samp_operator.handlers) only
gather the observation and hand the decision to the adapters; every transition is tested
here without a cluster (tests/core/test_reconcile.py).

Phases: Pending → Calibrating → Scoring → Planning → Exporting → Evaluating → Evaluated,
or Failed (a stage Job failed after its retries, or the spec is invalid), or Suspended.

The machine is level-triggered and idempotent: it derives everything from the spec, the
observed Jobs and ``status.stages`` (the memory of finished stages, whose Jobs may be gone
after their TTL). Calling it twice with the same observation yields the same decision, and
Events are emitted only for transitions (a stage record that changed), so a reconcile
repeated after a conflict or a restart does not duplicate Jobs or Events.

Per stage, in order:

1. Its inputs hash (samp_core.stage_contract.stage_hashes) chains the previous stage's
   hash with the spec fields the stage reads. A ``status.stages`` record with the same
   hash that Succeeded (in any generation) is reused: the stage is skipped ("Reused"),
   its artifact kept.
2. Otherwise a Job labelled with that stage and hash is adopted if it exists (also one
   created for an earlier generation, when only unrelated fields changed): Running waits
   for the next Job event; Succeeded reads the result summary the pod left in its
   termination message into status; Failed fails the QuantizedModel with the reason.
3. Otherwise its ConfigMap and Job are created, named ``<name>-g<generation>-<stage>``.

Every other Job or ConfigMap of the QuantizedModel (another hash: an obsolete spec) is
deleted. A spec change mid-stage therefore deletes the obsolete running Job and restarts
from the first stage whose inputs changed.

Hand-over to the canary: once every stage is done the decision has ``quantized=True``
and phase Evaluated with condition Evaluated=True. The engine (samp_operator.engine) then
runs the canary driver (samp_operator.canary_driver → ``samp_core.canary.decide``), whose
decision may replace the phase, conditions and Events with the canary's. While the canary
owns the phase (CanaryProgressing, Paused, Promoted, RolledBack) this machine leaves
phase, Ready and the canary conditions untouched unless a spec change makes a stage
rerun. ``status.history`` is written through samp_core.history by both machines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from samp_core import history
from samp_core.api import QuantizedModel
from samp_core.conditions import rfc3339, with_condition
from samp_core.events import Event
from samp_core.results import (
    EvaluationResultSummary,
    ExportResultSummary,
    PlanResultSummary,
    Stage,
    SummaryBase,
)
from samp_core.results.summaries import (
    ResultError,
    accuracy_figures,
    parse_summary,
    plan_figures,
)
from samp_core.stage_jobs import (
    JobSettings,
    config_map_manifest,
    job_manifest,
    stage_hashes_for,
)
from samp_core.stage_layout import STAGE_PHASE, STAGES, child_name, stage_output_uri
from samp_core.status import (
    Condition,
    ConditionType,
    Phase,
    QuantizedModelStatus,
    StageStatus,
)
from samp_core.validation import Problem, validate_manifest

# A Job that completed but whose pod's termination message is not visible yet (the pod
# watch can lag the Job watch) is looked at again after RESULT_RETRY_SECONDS, for at most
# RESULT_GRACE_SECONDS; then the stage fails with ResultMissing.
RESULT_RETRY_SECONDS = 5.0
RESULT_GRACE_SECONDS = 60.0
MESSAGE_MAX = 900

CANARY_PHASES = frozenset({Phase.CANARY, Phase.PAUSED, Phase.PROMOTED, Phase.ROLLED_BACK})
_CONDITION_OF: dict[Stage, ConditionType] = {
    Stage.CALIBRATE: ConditionType.CALIBRATED,
    Stage.SENSITIVITY: ConditionType.QUANTIZED,
    Stage.PLAN: ConditionType.QUANTIZED,
    Stage.EXPORT: ConditionType.QUANTIZED,
    Stage.EVALUATE: ConditionType.EVALUATED,
}

JobState = Literal["Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class ObservedJob:
    """A stage Job as the adapter saw it, with what its pods left behind."""

    name: str
    stage: str
    inputs_hash: str
    generation: int
    state: JobState
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failed_pods: int = 0
    reason: str = ""  # Job failure reason (BackoffLimitExceeded, DeadlineExceeded, ...)
    message: str = ""  # Job failure message, or the last failed pod's termination message
    result: str | None = None  # termination message of the succeeded pod (result summary)
    deleting: bool = False


@dataclass(frozen=True)
class ChildRef:
    kind: Literal["Job", "ConfigMap"]
    name: str


@dataclass
class Decision:
    status: QuantizedModelStatus
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    quantized: bool = False  # every stage done: the canary may take over
    stage_durations: list[tuple[str, float]] = field(default_factory=list)
    job_failures: list[tuple[str, str]] = field(default_factory=list)  # (stage, reason)
    resource: QuantizedModel | None = None  # the parsed object, None when the spec is invalid


def _clip(text: str, limit: int = MESSAGE_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_status(raw: Any) -> QuantizedModelStatus:
    """The stored status, or a fresh one when absent or unreadable (never raises)."""
    if not isinstance(raw, Mapping):
        return QuantizedModelStatus()
    try:
        return QuantizedModelStatus.model_validate(dict(raw))
    except ValidationError:
        known = {k: v for k, v in raw.items() if k in ("conditions", "stages", "history")}
        try:
            return QuantizedModelStatus.model_validate(known)
        except ValidationError:
            return QuantizedModelStatus()


def _put_condition(  # noqa: PLR0917 (mirrors samp_core.conditions.with_condition)
    conditions: list[Condition],
    ctype: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> None:
    """In place, for the status being built: with_condition with the message clipped."""
    conditions[:] = with_condition(conditions, ctype, status, reason, _clip(message), now,
                                   generation)


def condition(status: QuantizedModelStatus, ctype: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == ctype), None)


# --------------------------------------------------------------------------- reconcile


_OBJECT_STORES = ("s3://", "gs://")


def unsupported_stores(resource: QuantizedModel) -> list[Problem]:
    """Object-store URIs the API accepts but this release's Jobs cannot use yet.

    Stages run in separate pods and hand their work directory on through the artifact
    volume, and the jobs read model and prompts from mounted paths or the Hugging Face
    hub; nothing in the job image talks to S3 or GCS. Refusing up front with the field
    named beats a Job that fails (or silently loses its output) hours later.
    """
    spec = resource.spec
    fields = {
        "spec.model.source": spec.model.source,
        "spec.calibration.source": spec.calibration.source,
        "spec.gates.accuracy.evalSet": spec.gates.accuracy.eval_set,
        "spec.artifacts.uri": spec.artifacts.uri,
    }
    return [
        Problem(path, f"{uri.split('://')[0]}:// is not supported by this release's Jobs yet",
                "copy the data to a PersistentVolumeClaim and use pvc://claim/path")
        for path, uri in fields.items()
        if uri and uri.startswith(_OBJECT_STORES)
    ]


def _invalid(  # noqa: PLR0917
    body: Mapping[str, Any], old: QuantizedModelStatus, problems: Sequence[Any],
    jobs: Sequence[ObservedJob], config_maps: Sequence[str], now: datetime,
) -> Decision:
    generation = int((body.get("metadata") or {}).get("generation") or 1)
    message = "; ".join(str(p) for p in problems) or "the spec could not be read"
    status = old.model_copy(deep=True)
    prior = condition(old, ConditionType.READY)
    status.phase = Phase.FAILED
    status.observed_generation = generation
    status.message = _clip(f"invalid spec: {message}", 4000)
    _put_condition(status.conditions, ConditionType.READY, "False", "InvalidSpec", message,
                  now, generation)
    decision = Decision(status=status)
    if not (prior and prior.reason == "InvalidSpec" and prior.observed_generation == generation
            and prior.message == _clip(message)):
        decision.events.append(Event("Warning", "InvalidSpec", _clip(message)))
    # Nothing of an earlier spec is wanted any more.
    decision.delete = [ChildRef("Job", j.name) for j in jobs if not j.deleting]
    decision.delete += [ChildRef("ConfigMap", n) for n in config_maps]
    return decision


def reconcile(
    body: Mapping[str, Any],
    jobs: Sequence[ObservedJob],
    config_maps: Sequence[str],
    now: datetime,
    settings: JobSettings,
) -> Decision:
    """Decide what to do for one QuantizedModel. Pure; see the module docstring."""
    metadata = body.get("metadata") or {}
    uid = str(metadata.get("uid", ""))
    old = parse_status(body.get("status"))
    manifest = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}
    resource, problems = validate_manifest(manifest)
    if resource is None:
        return _invalid(body, old, problems, jobs, config_maps, now)
    unsupported = unsupported_stores(resource)
    if unsupported:
        return _invalid(body, old, unsupported, jobs, config_maps, now)

    gen = resource.generation
    attempt = old.attempt
    hashes = stage_hashes_for(resource, attempt)
    records = {r.stage: r for r in old.stages}
    status = old.model_copy(deep=True)
    status.observed_generation = gen
    status.inputs_hash = hashes[Stage.EVALUATE]
    decision = Decision(status=status, resource=resource)

    keep: set[str] = set()  # Job (and ConfigMap) names still wanted
    for seen in jobs:
        # A Job of the current hash for its stage is wanted, except a failed one from an
        # earlier generation: the new generation retries that stage.
        if (seen.stage in {s.value for s in STAGES}
                and hashes[Stage(seen.stage)] == seen.inputs_hash and not seen.deleting
                and not (seen.state == "Failed" and seen.generation != gen)):
            keep.add(seen.name)

    new_records: list[StageStatus] = []
    active: Stage | None = None  # the stage being worked on, if not all are done
    failed: tuple[Stage, str, str] | None = None  # (stage, reason, message)
    suspended = resource.spec.suspend

    for stage in STAGES:
        h = hashes[stage]
        rec = records.get(stage.value)
        out_uri = stage_output_uri(resource, stage, hashes)
        if rec is not None and rec.inputs_hash == h and rec.state in ("Succeeded", "Reused"):
            if rec.state == "Succeeded" and rec.generation is not None and rec.generation < gen:
                rec = rec.model_copy(update={"state": "Reused"})
                decision.events.append(Event(
                    "Normal", "StageReused",
                    f"{stage.value}: inputs unchanged since generation {rec.generation}; "
                    f"reusing {rec.output_uri}"))
            new_records.append(rec)
            continue
        if rec is not None and rec.inputs_hash == h and rec.state == "Failed" \
                and rec.generation == gen:
            new_records.append(rec)
            failed = (stage, "JobFailed", rec.message)
            break
        candidates = [j for j in jobs if j.name in keep and j.stage == stage.value]
        job = max(candidates, key=lambda j: (j.generation, j.name), default=None)
        if job is None:
            if suspended:
                active = stage
                break
            name = child_name(resource.name, gen, stage, attempt)
            decision.create.append(
                config_map_manifest(resource, uid, stage, hashes, name, attempt))
            decision.create.append(job_manifest(resource, uid, stage, hashes, settings, attempt))
            keep.add(name)
            started = StageStatus(stage=stage.value, state="Running", inputs_hash=h, job=name,
                                  generation=gen, started_at=rfc3339(now), output_uri=out_uri,
                                  message="Job created")
            new_records.append(started)
            if not (rec and rec.job == name and rec.state == "Running"):
                decision.events.append(Event("Normal", "StageStarted",
                                             f"{stage.value}: created Job {name}"))
            active = stage
            break
        base = StageStatus(
            stage=stage.value, state="Running", inputs_hash=h, job=job.name,
            generation=job.generation,
            started_at=rfc3339(job.started_at) if job.started_at else
            (rec.started_at if rec and rec.job == job.name else rfc3339(now)),
            pod_failures=job.failed_pods, output_uri=out_uri,
        )
        prev_failures = rec.pod_failures if rec and rec.job == job.name else 0
        if job.failed_pods > prev_failures:
            decision.job_failures.extend([(stage.value, "PodFailed")] *
                                         (job.failed_pods - prev_failures))
            if job.state != "Failed":
                decision.events.append(Event(
                    "Warning", "JobRetrying",
                    _clip(f"{stage.value}: pod {job.failed_pods} of Job {job.name} failed; "
                          f"retrying ({job.message or 'no message'})")))
        if job.state == "Running":
            base.message = (f"running, {job.failed_pods} failed pod(s)" if job.failed_pods
                            else "running")
            if not (rec and rec.job == job.name and rec.state == "Running"):
                decision.events.append(Event("Normal", "StageAdopted",
                                             f"{stage.value}: adopted running Job {job.name}"))
            new_records.append(base)
            active = stage
            break
        if job.state == "Failed":
            reason = job.reason or "Failed"
            message = _clip(f"Job {job.name} failed ({reason}): {job.message or 'no message'}")
            base.state = "Failed"
            base.finished_at = rfc3339(job.finished_at or now)
            base.message = message
            new_records.append(base)
            if not (rec and rec.job == job.name and rec.state == "Failed"):
                decision.job_failures.append((stage.value, reason))
                decision.events.append(Event("Warning", "StageFailed",
                                             f"{stage.value}: {message}"))
            failed = (stage, "JobFailed", message)
            break
        # Succeeded: read the result summary from the pod's termination message.
        finished = job.finished_at or now
        if not job.result:
            waited = (now - finished).total_seconds()
            if waited < RESULT_GRACE_SECONDS:
                base.message = "completed; waiting for its result"
                new_records.append(base)
                decision.requeue_after = RESULT_RETRY_SECONDS
                active = stage
                break
            base.state = "Failed"
            base.finished_at = rfc3339(finished)
            base.message = (f"Job {job.name} completed without a result summary in its "
                            "termination message")
            new_records.append(base)
            if not (rec and rec.state == "Failed" and rec.job == job.name):
                decision.events.append(Event("Warning", "ResultMissing", base.message))
                decision.job_failures.append((stage.value, "ResultMissing"))
            failed = (stage, "ResultMissing", base.message)
            break
        try:
            summary = parse_summary(stage, job.result)
        except ResultError as err:
            base.state = "Failed"
            base.finished_at = rfc3339(finished)
            base.message = _clip(f"Job {job.name}: {err}")
            new_records.append(base)
            if not (rec and rec.state == "Failed" and rec.job == job.name):
                decision.events.append(Event("Warning", "ResultInvalid", base.message))
                decision.job_failures.append((stage.value, "ResultInvalid"))
            failed = (stage, "ResultInvalid", base.message)
            break
        base.state = "Succeeded"
        base.finished_at = rfc3339(finished)
        base.message = _clip(summary.describe(), 500)
        new_records.append(base)
        _apply_result(status, summary, out_uri)
        if not (rec and rec.job == job.name and rec.state == "Succeeded"):
            decision.events.append(Event("Normal", "StageSucceeded",
                                         f"{stage.value}: {base.message}"))
            if job.started_at:
                decision.stage_durations.append(
                    (stage.value, max(0.0, (finished - job.started_at).total_seconds())))

    status.stages = new_records
    done = {r.stage for r in new_records if r.state in ("Succeeded", "Reused")}
    _clear_stale_outputs(status, done)
    for name in sorted({j.name for j in jobs if not j.deleting} - keep):
        decision.delete.append(ChildRef("Job", name))
    for name in sorted(set(config_maps) - keep):
        decision.delete.append(ChildRef("ConfigMap", name))

    _conditions(status, old, decision, resource, active, failed, suspended, now)
    failure = _clip(f"{failed[0].value} failed: {failed[2]}", 1024) if failed else None
    history.note_stages(status, failure, now)
    return decision


def _apply_result(status: QuantizedModelStatus, summary: SummaryBase, out_uri: str) -> None:
    if isinstance(summary, PlanResultSummary):
        status.plan = plan_figures(summary)
    elif isinstance(summary, ExportResultSummary):
        # The job reports where it wrote; a pod-local path (/mnt/pvc/...) means nothing
        # outside the pod, so status names the artifact by its URI (pvc://, s3://, gs://).
        uri = summary.artifact_uri
        status.artifact_uri = uri if "://" in uri else out_uri
    elif isinstance(summary, EvaluationResultSummary):
        status.accuracy = accuracy_figures(summary)


def _clear_stale_outputs(status: QuantizedModelStatus, done: set[str]) -> None:
    """Figures of a stage that must rerun describe an obsolete spec: drop them."""
    if Stage.PLAN.value not in done:
        status.plan = None
    if Stage.EXPORT.value not in done:
        status.artifact_uri = None
    if Stage.EVALUATE.value not in done:
        status.accuracy = None


def _conditions(  # noqa: PLR0917
    status: QuantizedModelStatus,
    old: QuantizedModelStatus,
    decision: Decision,
    resource: QuantizedModel,
    active: Stage | None,
    failed: tuple[Stage, str, str] | None,
    suspended: bool,
    now: datetime,
) -> None:
    gen = resource.generation
    conds = status.conditions
    done = {r.stage for r in status.stages if r.state in ("Succeeded", "Reused")}
    quantize_stages = (Stage.SENSITIVITY, Stage.PLAN, Stage.EXPORT)

    def stage_condition(ctype: ConditionType, stages: Sequence[Stage], true_reason: str,
                        true_message: str) -> None:
        if all(s.value in done for s in stages):
            _put_condition(conds, ctype, "True", true_reason, true_message, now, gen)
        elif failed is not None and failed[0] in stages:
            _put_condition(conds, ctype, "False", failed[1], failed[2], now, gen)
        elif active is not None and active in stages:
            _put_condition(conds, ctype, "Unknown", "InProgress",
                          f"{active.value} is running", now, gen)
        else:
            _put_condition(conds, ctype, "Unknown", "Pending", "waiting for earlier stages",
                          now, gen)

    stage_condition(ConditionType.CALIBRATED, (Stage.CALIBRATE,), "Calibrated",
                    next((r.message for r in status.stages if r.stage == "calibrate"), ""))
    stage_condition(ConditionType.QUANTIZED, quantize_stages, "Exported",
                    f"checkpoint at {status.artifact_uri}")
    acc = status.accuracy
    stage_condition(ConditionType.EVALUATED, (Stage.EVALUATE,), "Evaluated",
                    f"perplexity +{acc.perplexity_increase_percent}%" if acc else "evaluated")

    all_done = all(s.value in done for s in STAGES)
    canary_owns = old.phase in CANARY_PHASES and all_done
    if failed is not None:
        status.phase = Phase.FAILED
        status.message = f"{failed[0].value} failed: {failed[2]}"
        _put_condition(conds, ConditionType.READY, "False", failed[1], status.message, now, gen)
    elif suspended and not all_done:
        status.phase = Phase.SUSPENDED
        status.message = "suspended (spec.suspend): no new Jobs are created"
        _put_condition(conds, ConditionType.READY, "False", "Suspended", status.message, now, gen)
        if old.phase != Phase.SUSPENDED:
            decision.events.append(Event("Normal", "Suspended", status.message))
    elif active is not None:
        status.phase = STAGE_PHASE[active]
        status.message = f"{active.value}: " + next(
            (r.message for r in status.stages if r.stage == active.value), "")
        _put_condition(conds, ConditionType.READY, "False", status.phase.value,
                      f"{active.value} stage in progress", now, gen)
    elif canary_owns:
        pass  # the canary machine owns phase and Ready from here
    else:
        decision.quantized = True
        status.phase = Phase.EVALUATED
        acc_text = (f"perplexity +{acc.perplexity_increase_percent}%"
                    if acc and acc.perplexity_increase_percent is not None else "evaluated")
        status.message = f"quantized and evaluated: {acc_text}; checkpoint at " \
                         f"{status.artifact_uri}"
        _put_condition(conds, ConditionType.READY, "True", "Evaluated", status.message, now, gen)
        if old.phase != Phase.EVALUATED or old.observed_generation != gen:
            decision.events.append(Event("Normal", "Evaluated", _clip(status.message)))
    if canary_owns:
        decision.quantized = True
    if (not all_done and old.phase in CANARY_PHASES):
        # A spec change reran a stage under a canary: its conditions describe old figures.
        status.conditions = [c for c in conds if c.type not in (
            ConditionType.CANARY_PROGRESSING, ConditionType.PROMOTED,
            ConditionType.ROLLED_BACK)]
