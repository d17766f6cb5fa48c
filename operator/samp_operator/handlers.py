"""The Kopf handlers: thin. They route events to the engine and return nothing.

* Indexes of the operator's Jobs, Pods and ConfigMaps (label
  ``app.kubernetes.io/managed-by=samp-operator``) keep small records in memory, so a
  reconcile reads no lists from the API server and a restarted operator sees (adopts)
  every child it created before; Kopf fills them before any handler runs.
* Any event of a QuantizedModel, of one of its Jobs, or of a Job pod reaching a terminal
  phase triggers a reconcile of that QuantizedModel (engine.Engine.trigger).
* A timer per QuantizedModel re-reconciles one that nothing happened to for
  ``resync_seconds`` (a safety net for lost events; normally nothing is due and it does
  no I/O).
* The deletion handler (Kopf's finalizer ``samp.dev/cleanup``) cleans up children and,
  when asked, artifacts, retrying with ``kopf.TemporaryError(delay=...)`` and giving up
  with a Warning after ``finalizer_timeout_seconds``.

No handler sleeps or polls: waiting is Kopf's (delays, timers) or the engine's
``loop.call_later``.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from samp_core.api import GROUP, PLURAL, VERSION
from samp_core.stage_layout import LABEL_MANAGED_BY, LABEL_QM, MANAGER
from samp_operator.engine import Engine
from samp_operator.observe import job_record, pod_record

MANAGED = {LABEL_MANAGED_BY: MANAGER}
FINALIZER = "samp.dev/cleanup"
FINALIZER_BACKOFF = 5.0
log = logging.getLogger("samp.handlers")


# Kopf persists a change handler's progress under its id, by default the function's
# qualified name; the deletion handler keeps the id it had when register() defined it
# inline, so a deletion in flight across an upgrade resumes instead of starting over.
DELETE_HANDLER_ID = "register.<locals>.delete"


def register(engine: Engine, registry: kopf.OperatorRegistry) -> None:
    """Register every handler of the operator on ``registry``, bound to ``engine``."""
    _register_settings(registry)
    _register_indexes(registry)
    _register_triggers(engine, registry)
    _register_deletion(engine, registry)


# Handlers take **kw only: Kopf passes every kwarg by name (and the indexes by their
# function names), and its callback protocols type them keyword-only.


def _register_settings(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.startup(registry=registry)
    def configure(**kw: Any) -> None:
        settings: kopf.OperatorSettings = kw["settings"]
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="samp.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="samp.dev", key="last-handled-configuration")
        settings.posting.level = logging.WARNING  # our own Events say what happened
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60

    @kopf.on.login(registry=registry)
    def login(**kw: Any) -> kopf.ConnectionInfo | None:
        # A fresh registry has none of Kopf's default login handlers: in a pod use the
        # ServiceAccount, elsewhere KUBECONFIG (or ~/.kube/config).
        return kopf.login_with_service_account(**kw) or kopf.login_with_kubeconfig(**kw)


def _register_indexes(registry: kopf.OperatorRegistry) -> None:
    @kopf.index("batch", "v1", "jobs", labels=MANAGED, registry=registry, id="samp_jobs")
    def samp_jobs(**kw: Any) -> dict[Any, Any]:
        labels = kw["labels"]
        if LABEL_QM not in labels or labels.get("samp.dev/stage") == "cleanup":
            return {}
        return {(kw["namespace"], labels[LABEL_QM]): job_record(kw["body"])}

    @kopf.index("", "v1", "pods", labels=MANAGED, registry=registry, id="samp_pods")
    def samp_pods(**kw: Any) -> dict[Any, Any]:
        labels = kw["labels"]
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        return {(kw["namespace"], job): pod_record(kw["body"])} if job else {}

    @kopf.index("", "v1", "configmaps", labels=MANAGED, registry=registry,
                id="samp_configmaps")
    def samp_configmaps(**kw: Any) -> dict[Any, Any]:
        labels = kw["labels"]
        return {(kw["namespace"], labels[LABEL_QM]): kw["name"]} if LABEL_QM in labels else {}


def _register_triggers(engine: Engine, registry: kopf.OperatorRegistry) -> None:
    """Events of a QuantizedModel, its Jobs and their terminal pods, and the resync timer."""
    resync_seconds = engine.settings.resync_seconds

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def quantizedmodel_event(**kw: Any) -> None:
        engine.bind(kw)
        key = (kw["namespace"], kw["name"])
        if kw["type"] == "DELETED":
            engine.forget(key)
            return
        engine.remember(kw["body"])  # also a deletionTimestamp: reconciles then stand down
        if kw["body"].get("metadata", {}).get("deletionTimestamp"):
            return
        await engine.trigger(*key)

    @kopf.on.event("batch", "v1", "jobs", labels=MANAGED, registry=registry)
    async def job_event(**kw: Any) -> None:
        engine.bind(kw)
        owner = kw["labels"].get(LABEL_QM)
        if owner and kw["labels"].get("samp.dev/stage") != "cleanup":
            await engine.trigger(kw["namespace"], owner)

    @kopf.on.event("", "v1", "pods", labels=MANAGED, registry=registry)
    async def pod_event(**kw: Any) -> None:
        # Only terminal pods matter: their termination message is the stage's result
        # (or failure), and it may become visible after the Job's own status change.
        engine.bind(kw)
        owner = kw["labels"].get(LABEL_QM)
        if owner and kw["body"].get("status", {}).get("phase") in ("Succeeded", "Failed"):
            await engine.trigger(kw["namespace"], owner)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=max(5.0, resync_seconds / 4),
                initial_delay=resync_seconds, registry=registry)
    async def resync(**kw: Any) -> None:
        engine.bind(kw)
        key = (kw["namespace"], kw["name"])
        if engine.due_for_resync(key):
            await engine.trigger(*key)


def _register_deletion(engine: Engine, registry: kopf.OperatorRegistry) -> None:
    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, backoff=FINALIZER_BACKOFF,
                    id=DELETE_HANDLER_ID)
    async def delete(**kw: Any) -> None:
        engine.bind(kw)
        loop = engine.loop
        assert loop is not None
        await loop.run_in_executor(engine.executor, engine.finalize, dict(kw["body"]),
                                   kw["runtime"].total_seconds(), kw["retry"] == 0)
