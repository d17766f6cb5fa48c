"""Runs reconciles: gathers the observation, calls the pure core, applies the decision.

One reconcile of one QuantizedModel at a time (a trigger arriving meanwhile marks it
dirty and it runs once more afterwards, so bursts of Job and Pod events coalesce).
Reconciles run in a thread pool because the API calls block; the event loop only takes
index snapshots and schedules.

A reconcile is: take the QuantizedModel as last seen (the watch's body, or the body the
API server returned for our last status write; a GET only when neither is known or after
a conflict) → the core decides from it and the indexed Jobs/Pods/ConfigMaps, and the
canary stage decides too → **one status write** (merge patch, only when something
changed, with the body's resourceVersion as precondition: a decision made from a stale
body fails with Conflict, nothing else is done, and the reconcile re-runs at once from a
fresh GET) → the canary's actions (traffic, canary, stable) → create and delete children
(idempotent) → post Events → update metrics → schedule the next look when the decision
asks for one (``loop.call_later``, never a sleep). Errors back off exponentially per
resource (2 s doubling to 5 min) and are counted. A resource nothing happens to costs no
API request at all (tests/benchmarks/operator_results.md); one whose stage Job runs costs
one pods/log read per ``progress_seconds`` for status.progress (progress_reader.py).

Canary: when the quantization stages are all done (``decision.facts.quantized``), the
decision goes through the canary stage main.py wired in (samp_operator.canary_kube.KubeCanary:
the one canary driver with the Kubernetes serving, router and Prometheus provider), whose
decision follows it (``Decision.then``: the canary's status, its actions and Events after,
the sooner requeue). After the status write the canary's actions run first, then the
children's (CreateChild, DeleteChild), each in the order decided. Without a canary stage
(``--no-canary``) the resource rests at Evaluated.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from samp_core.decision import CreateChild, Decision, DeleteChild
from samp_core.reconcile import ObservedJob, reconcile
from samp_core.stage_jobs import cleanup_job_manifest, cleanup_supported
from samp_core.stage_layout import cleanup_job_name, selector
from samp_core.validation import validate_manifest
from samp_operator.canary_kube import CanaryPlan, KubeCanary, settled_marker
from samp_operator.kube import ConflictError, Kube
from samp_operator.leader import NotLeaderError
from samp_operator.metrics import Metrics
from samp_operator.observe import job_record, observed_job
from samp_operator.progress_reader import ProgressReader
from samp_operator.settings import OperatorSettings

log = logging.getLogger("samp.engine")

Key = tuple[str, str]
_AGAIN = -1.0  # reconcile again at once (status write conflicted)
ERROR_BACKOFF_MIN = 2.0
ERROR_BACKOFF_MAX = 300.0
CLEANUP_POLL_SECONDS = 3.0
INDEXES = ("samp_jobs", "samp_pods", "samp_configmaps")  # Kopf index ids (handlers.py)
FINALIZER_RETRY_SECONDS = 10.0
SETTLE_POLL_SECONDS = 5.0  # while a canary waits for the stable to serve again


def brief(err: Exception) -> str:
    """One line for an API error (status and reason), never the response headers."""
    status = getattr(err, "status", None)
    if status is not None:
        return f"HTTP {status} {getattr(err, 'reason', '')}".strip()
    return f"{type(err).__name__}: {err}"[:300]


def api_message(err: ApiException) -> str:
    """The API server's own message (e.g. which field is invalid), else status and reason."""
    try:
        message = json.loads(err.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message)[:900] if message else brief(err)


class Engine:
    def __init__(self, settings: OperatorSettings, kube: Kube, metrics: Metrics,
                 canary: KubeCanary | None = None) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.canary = canary
        self.job_settings = settings.job_settings()
        self.progress = ProgressReader(kube, settings.progress_seconds)
        self.executor = ThreadPoolExecutor(max_workers=settings.workers,
                                           thread_name_prefix="samp-reconcile")
        self.indexes: dict[str, Any] = {}
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._last: dict[Key, float] = {}
        self._backoff: dict[Key, float] = {}
        self._bodies: dict[Key, dict[str, Any]] = {}  # latest known QuantizedModel bodies
        self._settled: dict[Key, tuple[str, int, int | None]] = {}  # canary acted on these
        self.loop: asyncio.AbstractEventLoop | None = None
        # Leader election (main.py): false once this replica lost the Lease; no reconcile
        # starts and no timer of ours fires after that.
        self.may_act: Callable[[], bool] = lambda: True

    # --------------------------------------------------------------- event loop side

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        """Remember Kopf's index objects (passed to every handler by name)."""
        if len(self.indexes) < len(INDEXES):
            for name in INDEXES:
                if name in kwargs:
                    self.indexes[name] = kwargs[name]
        if self.loop is None:
            self.loop = asyncio.get_running_loop()

    def snapshot(self, key: Key) -> tuple[list[ObservedJob], list[str]]:
        jobs_index = self.indexes.get("samp_jobs", {})
        pods_index = self.indexes.get("samp_pods", {})
        cms_index = self.indexes.get("samp_configmaps", {})
        ns, _name = key
        jobs = list(jobs_index.get(key, ()))
        observed = [observed_job(j, list(pods_index.get((ns, j["name"]), ()))) for j in jobs]
        return observed, sorted(set(cms_index.get(key, ())))

    def running_pods(self, key: Key, jobs: list[ObservedJob]) -> dict[str, str]:
        """Job name -> its Running pod's name (where status.progress is read from)."""
        pods_index = self.indexes.get("samp_pods", {})
        found: dict[str, str] = {}
        for job in jobs:
            if job.state == "Running":
                for pod in pods_index.get((key[0], job.name), ()):
                    if pod.get("phase") == "Running":
                        found[job.name] = pod["name"]
        return found

    def remember(self, body: Mapping[str, Any]) -> None:
        """Keep the body Kopf just delivered (a copy: Kopf reuses its views)."""
        meta = body.get("metadata") or {}
        self._bodies[(meta.get("namespace", ""), meta.get("name", ""))] = copy.deepcopy(
            dict(body))

    def due_for_resync(self, key: Key) -> bool:
        return time.monotonic() - self._last.get(key, 0.0) >= self.settings.resync_seconds

    async def trigger(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if not self.may_act():
            return
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        loop = asyncio.get_running_loop()
        delay: float | None = None
        try:
            while True:
                self._dirty.discard(key)
                jobs, cms = self.snapshot(key)
                pods = self.running_pods(key, jobs)
                delay = await loop.run_in_executor(self.executor, self.reconcile_once,
                                                   key, jobs, cms, pods)
                if delay == _AGAIN:
                    self._dirty.add(key)
                    delay = None
                if key not in self._dirty:
                    break
        finally:
            self._running.discard(key)
        self._schedule(key, delay)

    def _schedule(self, key: Key, delay: float | None) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        if delay is None or self.loop is None:
            return
        loop = self.loop

        def fire() -> None:
            self._timers.pop(key, None)
            loop.create_task(self.trigger(*key))

        self._timers[key] = loop.call_later(delay, fire)

    def stand_down(self) -> None:
        """Leadership is gone: cancel every scheduled reconcile (event loop side)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def forget(self, key: Key) -> None:
        """The resource is gone: drop its timer, backoff and phase (any thread)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._schedule, key, None)
        self._last.pop(key, None)
        self._backoff.pop(key, None)
        self._bodies.pop(key, None)
        self._settled.pop(key, None)
        self.progress.forget(key)
        self.metrics.set_phase(key, None)
        self.metrics.observe_rollout(key, None)

    # ------------------------------------------------------------------ thread side

    def reconcile_once(self, key: Key, jobs: list[ObservedJob], cms: list[str],
                       pods: Mapping[str, str] | None = None) -> float | None:
        started = time.monotonic()
        try:
            return self._reconcile(key, jobs, cms, pods or {})
        except NotLeaderError:  # lost the Lease mid-reconcile: the new leader redoes it
            self._bodies.pop(key, None)
            return None
        except Exception as err:
            self._bodies.pop(key, None)
            self.metrics.reconciles.labels("error").inc()
            self.metrics.reconcile_errors.labels(type(err).__name__).inc()
            delay = min(ERROR_BACKOFF_MAX, self._backoff.get(key, ERROR_BACKOFF_MIN / 2) * 2)
            self._backoff[key] = delay
            if isinstance(err, ApiException):  # one line, never the response headers
                log.error("reconcile of %s/%s failed (%s); retrying in %.0f s", *key,
                          api_message(err), delay)
            else:
                log.exception("reconcile of %s/%s failed; retrying in %.0f s", *key, delay)
            return delay
        finally:
            self.metrics.reconcile_duration.observe(time.monotonic() - started)
            self._last[key] = time.monotonic()

    def _reconcile(self, key: Key, jobs: list[ObservedJob], cms: list[str],
                   pods: Mapping[str, str]) -> float | None:
        namespace, name = key
        body = self._bodies.get(key) or self.kube.get_qm(namespace, name)
        if body is None:
            self.forget(key)
            return None
        if body["metadata"].get("deletionTimestamp"):
            return None  # the finalizer handler owns deletion
        log.debug("%s/%s: observed jobs %s, config maps %s", namespace, name,
                  [(j.name, j.state, bool(j.result)) for j in jobs], cms)
        now = datetime.now(UTC)
        decision = reconcile(body, jobs, cms, now, self.job_settings)
        again = self.progress.refresh(key, decision.status, pods, now)
        if again is not None:  # a stage runs: come back to refresh its progress
            decision = replace(decision,
                               requeue_after=min(decision.requeue_after or again, again))
        canary_error: Exception | None = None
        plan: CanaryPlan | None = None
        if self.canary is not None:
            try:
                decision, plan = self.canary.decide(
                    body, decision,
                    settled=self._settled.get(key) == settled_marker(decision.status))
            except Exception as err:  # the quantization status is still written
                canary_error = err
        try:
            written = self.kube.write_status(body, decision.status.to_wire())
        except ConflictError:  # decided from a stale body: nothing is done
            self.metrics.reconciles.labels("conflict").inc()
            self._bodies.pop(key, None)  # decide again from a fresh GET
            return _AGAIN
        if written is not None:
            self._bodies[key] = written
        if plan is not None:  # the status is written: now act on it
            try:
                if plan.apply():
                    self._settled[key] = settled_marker(decision.status)
                else:  # the canary stays until the stable serves again: look again soon
                    self._settled.pop(key, None)
                    decision = replace(decision, requeue_after=min(
                        decision.requeue_after or SETTLE_POLL_SECONDS, SETTLE_POLL_SECONDS))
            except Exception as err:  # settled on the next reconcile
                self._settled.pop(key, None)
                canary_error = err
        self._children(body, decision)
        for event in decision.events:
            self.post_event(body, event.type, event.reason, event.message)
        for stage, seconds in decision.facts.stage_durations:
            self.metrics.stage_duration.labels(stage).observe(seconds)
        for stage, reason in decision.facts.job_failures:
            self.metrics.job_failures.labels(stage, reason).inc()
        self.metrics.set_phase(key, decision.status.phase.value)
        self.metrics.observe_rollout(key, decision.status)
        if canary_error is not None:
            raise canary_error
        self.metrics.reconciles.labels("ok").inc()
        self._backoff.pop(key, None)
        return decision.requeue_after

    def _children(self, body: Mapping[str, Any], decision: Decision) -> None:
        """Create and delete the stage Jobs and ConfigMaps the decision names, in its order
        (idempotent)."""
        for action in decision.child_actions():
            if isinstance(action, CreateChild):
                self._create_child(body, action)
            else:
                self._delete_child(body, action)

    def _create_child(self, body: Mapping[str, Any], action: CreateChild) -> None:
        obj = action.manifest
        try:
            created = self.kube.create(obj)
        except ApiException as err:
            if err.status in (400, 403, 422):  # refused, not flaky: say why, then back off
                self.post_event(body, "Warning", "CreateFailed",
                                f"{obj['kind']} {obj['metadata']['name']}: {api_message(err)}")
            raise
        if created:
            log.info("%s/%s: created %s %s", body["metadata"]["namespace"],
                     body["metadata"]["name"], obj["kind"], obj["metadata"]["name"])

    def _delete_child(self, body: Mapping[str, Any], action: DeleteChild) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if self.kube.delete(action.kind, namespace, action.name):
            log.info("%s/%s: deleted %s %s", namespace, name, action.kind, action.name)

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str,
                   message: str) -> None:
        log.log(logging.WARNING if type_ == "Warning" else logging.INFO, "%s/%s %s: %s",
                body["metadata"]["namespace"], body["metadata"]["name"], reason, message)
        self.kube.post_event(body, type_, reason, message)
        self.metrics.events.labels(type_, reason).inc()

    # ------------------------------------------------------------------- deletion

    def finalize(self, body: Mapping[str, Any], elapsed: float, first_attempt: bool) -> None:
        """Clean up before the finalizer goes; raises kopf.TemporaryError to come back.

        First the canary's traffic goes back to the stable and the canary is removed once
        the stable serves on its own (replica-ratio mode scales the stable up first).
        Then it deletes the stage Jobs and ConfigMaps and, when spec.artifacts.cleanupOnDelete,
        runs the artifact cleanup Job and waits for it. After
        ``finalizer_timeout_seconds`` it stops waiting: a Warning Event says what may be
        left, and the finalizer is released (never blocks deletion forever).
        """
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        give_up = elapsed >= self.settings.finalizer_timeout_seconds
        manifest = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}
        resource, _problems = validate_manifest(manifest)
        try:
            if self.canary is not None and resource is not None and not give_up \
                    and not self.canary.release(resource.spec, meta):
                # The canary goes with the QuantizedModel (owner references): first the
                # stable serves the traffic on its own again.
                raise kopf.TemporaryError("waiting for the stable to serve again before the "
                                          "canary goes", delay=CLEANUP_POLL_SECONDS)
            for job in self.kube.list_names("Job", namespace, selector(name)):
                if job != cleanup_job_name(name):
                    self.kube.delete("Job", namespace, job)
            for cm in self.kube.list_names("ConfigMap", namespace, selector(name)):
                self.kube.delete("ConfigMap", namespace, cm)
            if resource is not None and resource.spec.artifacts.cleanup_on_delete:
                prefix = f"{resource.spec.artifacts.uri.rstrip('/')}/{namespace}/{name}"
                if not cleanup_supported(resource):
                    if first_attempt:
                        self.post_event(body, "Warning", "ArtifactCleanupUnsupported",
                                        f"artifacts under {prefix} are in an object store; "
                                        "delete them with a bucket lifecycle rule")
                else:
                    self._cleanup_artifacts(body, resource, prefix, give_up)
        except kopf.TemporaryError:
            raise
        except Exception as err:
            if give_up:
                self.post_event(body, "Warning", "CleanupIncomplete",
                                f"gave up cleaning up after {elapsed:.0f} s ({brief(err)}); "
                                "owner references still let the garbage collector remove "
                                "the Jobs")
                self.forget((namespace, name))
                return
            self.metrics.reconcile_errors.labels(type(err).__name__).inc()
            raise kopf.TemporaryError(f"cleanup failed: {brief(err)}",
                                      delay=FINALIZER_RETRY_SECONDS) from err
        self.forget((namespace, name))

    def _cleanup_artifacts(self, body: Mapping[str, Any], resource: Any, prefix: str,
                           give_up: bool) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        job = self.kube.get("Job", namespace, cleanup_job_name(name))
        if job is None:
            self.kube.create(cleanup_job_manifest(resource, str(meta.get("uid", "")),
                                                  self.job_settings))
            self.post_event(body, "Normal", "ArtifactCleanupStarted",
                            f"deleting artifacts under {prefix}")
            raise kopf.TemporaryError("waiting for the artifact cleanup Job",
                                      delay=CLEANUP_POLL_SECONDS)
        rec = job_record(job)
        if rec["state"] == "Running":
            if give_up:
                self.post_event(body, "Warning", "ArtifactCleanupTimedOut",
                                f"cleanup Job {rec['name']} did not finish; artifacts under "
                                f"{prefix} may remain")
                return
            raise kopf.TemporaryError("waiting for the artifact cleanup Job",
                                      delay=CLEANUP_POLL_SECONDS)
        if rec["state"] == "Failed":
            self.post_event(body, "Warning", "ArtifactCleanupFailed",
                            f"cleanup Job {rec['name']} failed ({rec['reason']}); artifacts "
                            f"under {prefix} may remain")
        else:
            self.post_event(body, "Normal", "ArtifactsDeleted", f"deleted {prefix}")

