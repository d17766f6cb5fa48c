"""The canary driver on Kubernetes: KubeServing, the router choice, and the engine's seam.

samp_operator.engine calls :meth:`KubeCanary.decide` after the quantization machine
(samp_core.reconcile). When every stage is done (``decision.facts.quantized``) and the
canary drives the phase, it observes and decides with the one canary driver
(samp_operator.canary_driver); the canary's decision follows the engine's
(``Decision.then``: its status, then its actions and Events, the sooner requeue); the
engine writes that status (with its resourceVersion) and only then applies
the returned :class:`CanaryPlan`, so a decision whose write conflicted is never acted
on. For a written status the machine no longer drives (Promoted, RolledBack, a
re-plan's Planning) the plan settles it: the ending's actions again while a canary
still exists, so actions cut short by an error or a restart are finished.

* :class:`KubeServing` — readiness is the canary Deployment's ``status.readyReplicas``
  ≥ replicas; EnsureCanary creates the canary Deployment and Service
  (samp_operator.serving) owned by the QuantizedModel, and replaces a canary Deployment
  that exists with another pod template (annotation ``samp.dev/template-digest``);
  PromoteStable (UpdateStable) server-side applies the serving Deployment the operator
  owns (``serving.stable.management: OperatorOwned``, the default: the stable's name, or
  ``<name>`` without a stable) from the canary's template, or merge-patches a user-owned
  stable (``PatchInPlace``); RemoveCanary deletes the canary's Deployment and Service.
  Every write carries the field manager ``samp-operator`` (README, "GitOps layouts").
* :func:`router_for` — the HTTPRoute router, else the replica-ratio router when a stable
  target exists, else :class:`~samp_operator.traffic.NoRouter` (the canary then is the
  only backend).
* the provider — samp_operator.prometheus_access: the spec's Prometheus with its own
  Secret and trust, else the operator's default; scoped to the resource's namespace
  and each side's pods; with neither, NoPrometheus (every analysis an Error).

Idempotent: creating what exists and deleting what is gone are no-ops; a weight set
before a status write that then conflicts is set again on the next reconcile.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes

from samp_core.api import API_VERSION, KIND
from samp_core.canary import (
    client_model_names,
    served_model_name,
    settle,
    stable_model_name,
)
from samp_core.decision import (
    CanaryAction,
    Decision,
    EnsureCanary,
    PromoteStable,
    RemoveCanary,
    SetWeight,
)
from samp_core.spec import QuantizedModelSpec
from samp_core.status import Phase, QuantizedModelStatus
from samp_operator.canary_driver import CanaryDriver
from samp_operator.prometheus_access import ProviderFactory
from samp_operator.serving import (
    OWNER_LABEL,
    ROLE_LABEL,
    canary_manifests,
    canary_names,
    owned_stable_manifest,
    promoted_stable_patch,
)
from samp_operator.settings import PrometheusDefaults
from samp_operator.traffic import (
    APPLY_PATCH,
    FIELD_MANAGER,
    MERGE_PATCH,
    HTTPRouteRouter,
    NoRouter,
    ReplicaRatioRouter,
    TrafficRouter,
)

log = logging.getLogger("samp.canary")
_ACTIVE = (Phase.EVALUATED, Phase.CANARY, Phase.PAUSED)

__all__ = ["CanaryPlan", "KubeCanary", "KubeServing", "router_for", "settled_marker"]


TEMPLATE_DIGEST = "samp.dev/template-digest"


def template_digest(deployment: Mapping[str, Any]) -> str:
    """What the canary Deployment serves, as a short digest of its pod template."""
    text = json.dumps(deployment["spec"]["template"], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _status_code(err: Exception) -> int | None:
    return getattr(err, "status", None)


def _tolerate(call: Any, code: int, *args: Any) -> None:
    """``call(*args)``, where an API error with status ``code`` (409 exists, 404 gone) is
    what we wanted anyway."""
    try:
        call(*args)
    except Exception as err:
        if _status_code(err) != code:
            raise


def router_for(
    spec: QuantizedModelSpec, name: str, namespace: str, apps: Any, custom: Any
) -> TrafficRouter:
    dep, svc = canary_names(name)
    route = spec.rollout.http_route
    if route is not None:
        return HTTPRouteRouter(
            custom,
            namespace,
            route.name,
            route.stable_backend,
            route.canary_backend or svc,
            port=spec.serving.port,
        )
    if spec.serving.stable is not None:
        return ReplicaRatioRouter(
            apps, namespace, spec.serving.stable.deployment, dep, spec.serving.replicas
        )
    return NoRouter()


@dataclass
class KubeServing:
    """The canary Deployment and Service of one QuantizedModel (and its stable)."""

    apps: Any  # kubernetes.client.AppsV1Api
    core: Any  # kubernetes.client.CoreV1Api
    spec: QuantizedModelSpec
    name: str
    namespace: str
    uid: str = ""

    @property
    def names(self) -> tuple[str, str]:
        return canary_names(self.name)

    def canary_exists(self) -> bool:
        try:
            self.apps.read_namespaced_deployment_status(self.names[0], self.namespace)
        except Exception as err:
            if _status_code(err) == 404:
                return False
            raise
        return True

    def canary_ready(self) -> bool:
        try:
            dep = self.apps.read_namespaced_deployment_status(self.names[0], self.namespace)
        except Exception as err:
            if _status_code(err) == 404:
                return False
            raise
        want = int(dep.spec.replicas or 0)
        ready = int(getattr(dep.status, "ready_replicas", 0) or 0)
        return want > 0 and ready >= want

    def ensure_canary(self, action: EnsureCanary) -> None:
        spec, ns = self.spec, self.namespace
        extra = None
        if spec.rollout.http_route is None and spec.serving.stable is not None:
            svc = self.core.read_namespaced_service(spec.serving.stable.service, ns)
            extra = dict(svc.spec.selector or {})
        owner = {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid}
        deployment, service = canary_manifests(
            self.name,
            ns,
            spec,
            action.artifact_uri or spec.artifacts.uri,
            served_model_name=action.served_model_name,
            aliases=action.aliases,
            export_format=spec.quantization.export_format,
            attempt=action.attempt,
            replicas=1,
            extra_pod_labels=extra,
            owner=owner,
        )
        digest = template_digest(deployment)
        deployment["metadata"]["annotations"] = {TEMPLATE_DIGEST: digest}
        try:
            self.apps.create_namespaced_deployment(ns, deployment)
        except Exception as err:
            if _status_code(err) != 409:
                raise
            self._replace_if_other(deployment, digest)
        _tolerate(self.core.create_namespaced_service, 409, ns, service)

    def _replace_if_other(self, deployment: dict[str, Any], digest: str) -> None:
        """A canary Deployment exists: keep it when it serves this template, else replace
        it (an earlier generation's or attempt's canary is never adopted)."""
        name = deployment["metadata"]["name"]
        current = self.apps.read_namespaced_deployment(name, self.namespace)
        if (current.metadata.annotations or {}).get(TEMPLATE_DIGEST) == digest:
            return
        log.info("%s/%s: canary Deployment %s serves another template; replacing it",
                 self.namespace, self.name, name)
        # A merge patch (the chart grants patch, not update): lists such as the
        # containers are replaced whole; the resourceVersion makes it fail on a race.
        patch = {
            "metadata": {"annotations": deployment["metadata"]["annotations"],
                         "resourceVersion": current.metadata.resource_version},
            "spec": {"template": deployment["spec"]["template"]},
        }
        self.apps.patch_namespaced_deployment(name, self.namespace, patch,
                                              _content_type=MERGE_PATCH)

    def remove_canary(self) -> None:
        dep, svc = self.names
        _tolerate(self.apps.delete_namespaced_deployment, 404, dep, self.namespace)
        _tolerate(self.core.delete_namespaced_service, 404, svc, self.namespace)

    def promote(self, action: PromoteStable) -> None:
        if action.strategy != "UpdateStable":
            return  # ShiftRoute: the route already sends everything to the canary
        canary = self.apps.read_namespaced_deployment(self.names[0], self.namespace)
        canary_doc = self.apps.api_client.sanitize_for_serialization(canary)
        stable = self.spec.serving.stable
        if stable is not None and stable.management == "PatchInPlace":
            self._patch_in_place(stable.deployment, canary_doc)
            return
        self._apply_owned(stable.deployment if stable else self.name, canary_doc)

    def _patch_in_place(self, deployment: str, canary_doc: dict[str, Any]) -> None:
        """PatchInPlace: merge-patch a user-owned stable Deployment, under the field
        manager a GitOps tool is told to ignore."""
        current = self.apps.read_namespaced_deployment(deployment, self.namespace)
        current_doc = self.apps.api_client.sanitize_for_serialization(current)
        served = stable_model_name(self.spec, self.name) or self.name
        patch = promoted_stable_patch(current_doc, canary_doc, served)
        self.apps.patch_namespaced_deployment(
            deployment, self.namespace, patch, field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )
        log.info("%s/%s: stable Deployment %s patched in place to serve the artifact",
                 self.namespace, self.name, deployment)

    def _apply_owned(self, deployment: str, canary_doc: dict[str, Any]) -> None:
        """OperatorOwned: server-side apply the whole serving Deployment, owned by this
        QuantizedModel; created when missing, taken over when it exists."""
        selector, container = self._existing_shape(deployment)
        stable = self.spec.serving.stable
        service_selector: dict[str, str] = {}
        if stable is not None:
            svc = self.core.read_namespaced_service(stable.service, self.namespace)
            service_selector = dict(svc.spec.selector or {})
        # the stable's name first (its model_name label in Prometheus), then the names
        # clients send
        first = stable_model_name(self.spec, self.name) or served_model_name(
            self.spec, self.name)
        served = list(dict.fromkeys([first, *client_model_names(self.spec, self.name)]))
        owner = {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid}
        body = owned_stable_manifest(
            deployment, self.namespace, canary_doc, served, selector, service_selector,
            self.spec.serving.replicas, owner if self.uid else None, container,
        )
        self.apps.patch_namespaced_deployment(
            deployment, self.namespace, body, field_manager=FIELD_MANAGER, force=True,
            _content_type=APPLY_PATCH,
        )
        log.info("%s/%s: Deployment %s (owned by the operator) now serves the artifact",
                 self.namespace, self.name, deployment)

    def _existing_shape(self, deployment: str) -> tuple[dict[str, str], str]:
        """(selector, vLLM container name) to apply with: an existing Deployment's (its
        selector is immutable; its ``vllm`` container, else its first, is the one
        replaced), else the operator's own."""
        try:
            current = self.apps.read_namespaced_deployment(deployment, self.namespace)
        except Exception as err:
            if _status_code(err) != 404:
                raise
            return {OWNER_LABEL: self.name, ROLE_LABEL: "stable"}, "vllm"
        doc = self.apps.api_client.sanitize_for_serialization(current)
        selector = dict(doc["spec"]["selector"].get("matchLabels") or {})
        names = [c["name"] for c in doc["spec"]["template"]["spec"]["containers"]]
        return selector, "vllm" if "vllm" in names or not names else names[0]


def settled_marker(status: QuantizedModelStatus) -> tuple[str, int, int | None]:
    """What a settled status is known by: its phase, attempt and generation."""
    return (status.phase.value, status.attempt, status.observed_generation)


@dataclass
class CanaryPlan:
    """What to do once the decision's status is written: run the canary turn's actions
    (``turn``), or settle a status the canary machine no longer drives. The actions and
    status are read from the written decision, so the plan holds no copy of them."""

    driver: CanaryDriver
    spec: QuantizedModelSpec
    turn: bool

    def apply(self, decision: Decision) -> bool:
        """False while the canary has to stay (the stable is not serving again yet)."""
        if self.turn:
            return self.driver.apply(decision.canary_actions())
        return self.driver.settle(self.spec, decision.status)


class KubeCanary:
    """The engine's canary stage: the one driver with the Kubernetes implementations."""

    def __init__(self, api_client: kubernetes.client.ApiClient | None,
                 prometheus: PrometheusDefaults | str | None) -> None:
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.providers = ProviderFactory(
            self.core,
            prometheus if isinstance(prometheus, PrometheusDefaults)
            else PrometheusDefaults(url=prometheus),
        )

    def driver(self, spec: QuantizedModelSpec, meta: Mapping[str, Any]) -> CanaryDriver:
        namespace, name = meta["namespace"], meta["name"]
        serving = KubeServing(self.apps, self.core, spec, name, namespace, meta.get("uid", ""))
        return CanaryDriver(
            serving, router_for(spec, name, namespace, self.apps, self.custom),
            self.providers.provider(spec, namespace, name),
        )

    def release(self, spec: QuantizedModelSpec, meta: Mapping[str, Any]) -> bool:
        """Before deletion: traffic back to the stable, then the canary removed; False
        while the canary has to stay (the stable does not serve on its own yet)."""
        driver = self.driver(spec, meta)
        if not driver.serving.canary_exists():
            return True
        actions: tuple[CanaryAction, ...] = (RemoveCanary(),)
        if not driver.router.verify_weight(0):
            actions = (SetWeight(0), *actions)
        return driver.apply(actions)

    def decide(
        self, body: Mapping[str, Any], decision: Decision, *, settled: bool = False
    ) -> tuple[Decision, CanaryPlan | None]:
        """One canary turn after ``decision`` (the quantization machine's): the two
        decisions as one (``decision.then(canary's)``), and what to do *after* the status is
        written. ``settled``: the engine already settled this status (no need to look at the
        canary again)."""
        resource = decision.facts.resource
        if resource is None:
            return decision, None
        meta = body["metadata"]
        if not (decision.facts.quantized and decision.status.phase in _ACTIVE):
            if settled or not settle(resource.spec, decision.status):
                return decision, None
            return decision, CanaryPlan(self.driver(resource.spec, meta), resource.spec,
                                        turn=False)
        driver = self.driver(resource.spec, meta)
        turn = driver.observe(
            resource.spec,
            decision.status,
            meta["name"],
            meta.get("annotations") or {},
            meta.get("generation"),
            datetime.now(UTC),
        )
        d = turn.decision
        return decision.then(d), CanaryPlan(driver, resource.spec, turn=True)
