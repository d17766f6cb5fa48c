"""``reconcile``: one QuantizedModel's observation in, its :class:`Decision` out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from samp_core import history
from samp_core.decision import Decision
from samp_core.progress import still_running
from samp_core.reconcile.draft import Draft, ObservedJob, clip, parse_status
from samp_core.reconcile.invalid import invalid_spec, unsupported_stores
from samp_core.reconcile.phase import Outcome, done_stages, set_conditions
from samp_core.reconcile.retry import apply_retry, retried_at
from samp_core.reconcile.stages import Stop, Walk, walk_stages, wanted_jobs
from samp_core.reconcile.summaries import clear_stale_outputs
from samp_core.results import Stage
from samp_core.stage_jobs import JobSettings, stage_hashes_for
from samp_core.status import QuantizedModelStatus
from samp_core.validation import validate_manifest


def reconcile(
    body: Mapping[str, Any],
    jobs: Sequence[ObservedJob],
    config_maps: Sequence[str],
    now: datetime,
    settings: JobSettings,
) -> Decision:
    """Decide what to do for one QuantizedModel. Pure; see the package docstring."""
    metadata = body.get("metadata") or {}
    old = parse_status(body.get("status"))
    manifest = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}
    resource, problems = validate_manifest(manifest)
    if resource is None:
        return invalid_spec(body, old, problems, jobs, config_maps, now)
    unsupported = unsupported_stores(resource)
    if unsupported:
        return invalid_spec(body, old, unsupported, jobs, config_maps, now)

    old, retry_event = apply_retry(old, metadata.get("annotations") or {}, now)
    hashes = stage_hashes_for(resource, old.attempt)
    status = old.model_copy(deep=True)
    status.observed_generation = resource.generation
    status.inputs_hash = hashes[Stage.EVALUATE]
    draft = Draft(status=status, resource=resource)
    if retry_event is not None:
        draft.events.append(retry_event)
    retried = retried_at(old)
    walk = Walk(
        resource=resource, uid=str(metadata.get("uid", "")), settings=settings,
        attempt=old.attempt, hashes=hashes, previous={r.stage: r for r in old.stages},
        jobs=jobs, keep=wanted_jobs(jobs, hashes, resource.generation, retried), draft=draft,
        now=now, retried_at=retried,
    )
    stop = walk_stages(walk)
    _after_walk(walk, stop, old, config_maps)
    return draft.decision()


def _after_walk(walk: Walk, stop: Stop, old: QuantizedModelStatus,
                config_maps: Sequence[str]) -> None:
    """The walk's records into status, every unwanted child deleted, then conditions,
    phase and history."""
    draft, status, now = walk.draft, walk.draft.status, walk.now
    status.stages = walk.records
    status.progress = still_running(status.progress, walk.records)
    clear_stale_outputs(status, done_stages(status))
    for name in sorted({j.name for j in walk.jobs if not j.deleting} - walk.keep):
        draft.delete("Job", name)
    for name in sorted(set(config_maps) - walk.keep):
        draft.delete("ConfigMap", name)
    outcome = Outcome(stop=stop, suspended=walk.resource.spec.suspend,
                      generation=walk.generation, now=now)
    set_conditions(status, old, draft, outcome)
    failed = stop.failed
    failure = clip(f"{failed.stage.value} failed: {failed.message}", 1024) if failed else None
    history.note_stages(status, failure, now)
