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
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from samp_core.decision import Decision, DeleteChild
from samp_core.reconcile import ObservedJob, reconcile
from samp_operator.api_errors import api_message
from samp_operator.canary_kube import CanaryPlan, KubeCanary, settled_marker
from samp_operator.deletion import Deletion
from samp_operator.kube import ConflictError, Kube
from samp_operator.leader import NotLeaderError
from samp_operator.metrics import Metrics
from samp_operator.observe import observed_job
from samp_operator.progress_reader import ProgressReader
from samp_operator.settings import OperatorSettings

log = logging.getLogger("samp.engine")

Key = tuple[str, str]
_AGAIN = -1.0  # reconcile again at once (status write conflicted)
ERROR_BACKOFF_MIN = 2.0
ERROR_BACKOFF_MAX = 300.0
INDEXES = ("samp_jobs", "samp_pods", "samp_configmaps")  # Kopf index ids (handlers.py)
SETTLE_POLL_SECONDS = 5.0  # while a canary waits for the stable to serve again


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
        decision, plan, canary_error = self._decide(key, body, jobs, cms, pods)
        try:
            written = self.kube.write_status(body, decision.status.to_wire())
        except ConflictError:  # decided from a stale body: nothing is done
            self.metrics.reconciles.labels("conflict").inc()
            self._bodies.pop(key, None)  # decide again from a fresh GET
            return _AGAIN
        if written is not None:
            self._bodies[key] = written
        if plan is not None:  # the status is written: now act on it
            decision, canary_error = self._apply_canary(key, decision, plan)
        self._children(body, decision)
        self._report(key, body, decision)
        if canary_error is not None:
            raise canary_error
        self.metrics.reconciles.labels("ok").inc()
        self._backoff.pop(key, None)
        return decision.requeue_after

    def _decide(
        self, key: Key, body: Mapping[str, Any], jobs: list[ObservedJob], cms: list[str],
        pods: Mapping[str, str],
    ) -> tuple[Decision, CanaryPlan | None, Exception | None]:
        """The quantization machine's decision, then the canary turn's after it (a canary
        error is returned: the quantization decision is still written and acted on)."""
        log.debug("%s/%s: observed jobs %s, config maps %s", *key,
                  [(j.name, j.state, bool(j.result)) for j in jobs], cms)
        now = datetime.now(UTC)
        decision = reconcile(body, jobs, cms, now, self.job_settings)
        again = self.progress.refresh(key, decision.status, pods, now)
        if again is not None:  # a stage runs: come back to refresh its progress
            decision = replace(decision,
                               requeue_after=min(decision.requeue_after or again, again))
        if self.canary is None:
            return decision, None, None
        try:
            decision, plan = self.canary.decide(
                body, decision,
                settled=self._settled.get(key) == settled_marker(decision.status))
        except Exception as err:  # the quantization status is still written
            return decision, None, err
        return decision, plan, None

    def _apply_canary(
        self, key: Key, decision: Decision, plan: CanaryPlan
    ) -> tuple[Decision, Exception | None]:
        """The canary's actions (or settling) after the status write; an error is returned,
        to be raised once the children and Events are done."""
        try:
            if plan.apply(decision):
                self._settled[key] = settled_marker(decision.status)
                return decision, None
        except Exception as err:  # settled on the next reconcile
            self._settled.pop(key, None)
            return decision, err
        # The canary stays until the stable serves again: look again soon.
        self._settled.pop(key, None)
        return replace(decision, requeue_after=min(
            decision.requeue_after or SETTLE_POLL_SECONDS, SETTLE_POLL_SECONDS)), None

    def _report(self, key: Key, body: Mapping[str, Any], decision: Decision) -> None:
        """The decision's Events, then its figures into the metrics."""
        for event in decision.events:
            self.post_event(body, event.type, event.reason, event.message)
        for stage, seconds in decision.facts.stage_durations:
            self.metrics.stage_duration.labels(stage).observe(seconds)
        for stage, reason in decision.facts.job_failures:
            self.metrics.job_failures.labels(stage, reason).inc()
        self.metrics.set_phase(key, decision.status.phase.value)
        self.metrics.observe_rollout(key, decision.status)

    def _children(self, body: Mapping[str, Any], decision: Decision) -> None:
        """Create and delete the stage Jobs and ConfigMaps the decision names, in its order
        (idempotent)."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        for action in decision.child_actions():
            if isinstance(action, DeleteChild):
                if self.kube.delete(action.kind, namespace, action.name):
                    log.info("%s/%s: deleted %s %s", namespace, name, action.kind, action.name)
                continue
            obj = action.manifest
            try:
                created = self.kube.create(obj)
            except ApiException as err:
                if err.status in (400, 403, 422):  # refused, not flaky: say why, then back off
                    self.post_event(body, "Warning", "CreateFailed",
                                    f"{obj['kind']} {obj['metadata']['name']}: "
                                    f"{api_message(err)}")
                raise
            if created:
                log.info("%s/%s: created %s %s", namespace, name, obj["kind"],
                         obj["metadata"]["name"])

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str,
                   message: str) -> None:
        log.log(logging.WARNING if type_ == "Warning" else logging.INFO, "%s/%s %s: %s",
                body["metadata"]["namespace"], body["metadata"]["name"], reason, message)
        self.kube.post_event(body, type_, reason, message)
        self.metrics.events.labels(type_, reason).inc()

    # ------------------------------------------------------------------- deletion

    def finalize(self, body: Mapping[str, Any], elapsed: float, first_attempt: bool) -> None:
        """Clean up before the finalizer goes (samp_operator.deletion); raises
        kopf.TemporaryError to come back."""
        Deletion(self.kube, self.canary, self.metrics, self.settings.finalizer_timeout_seconds,
                 self.job_settings, self.post_event).finalize(body, elapsed, first_attempt)
        self.forget((body["metadata"]["namespace"], body["metadata"]["name"]))
