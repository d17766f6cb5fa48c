"""The rollout seam of the operator: ``step(engine, body, decision) -> Decision``.

samp_operator.engine calls it after the quantization machine (samp_core.reconcile)
when every stage is done (``decision.quantized``). It gathers the canary's
observation, calls the pure ``samp_core.canary.decide``, applies the traffic and
serving actions through the adapters, and merges status, Events and requeue into
the engine's decision, so the reconcile still ends in the engine's one status write.

Observation: canary Deployment readiness (``status.readyReplicas`` ≥ replicas), the
router's read-back of the weight, the annotations (pause/promote/abort) and, when an
analysis is due, one measurement from Prometheus (``spec.gates.prometheusUrl``, else
the operator's ``--prometheus-url``; with neither, the measurement is an Error, never
a pass). Actions: EnsureCanary creates the canary Deployment and Service
(samp_operator.serving) owned by the QuantizedModel; SetWeight goes through the
HTTPRoute or replica-ratio router (samp_operator.traffic), a ``NoRouter`` when there
is neither a route nor a stable target (the canary then is the only backend);
PromoteStable patches the stable Deployment (UpdateStable); RemoveCanary deletes the
canary's Deployment and Service. StartReplan needs nothing here: the decision's
status already opened the next attempt (phase Planning, attempt + 1), and the
quantization machine's next pass creates that attempt's plan Job, which runs
``samp plan --attempt n --previous-plan ...`` (samp_core.children.stage_command).

Idempotent: creating what exists and deleting what is gone are no-ops; a weight set
before a status write that then conflicts is set again on the next reconcile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from samp_core.api import API_VERSION, KIND
from samp_core.canary import (
    EnsureCanary,
    Observation,
    PromoteStable,
    RemoveCanary,
    SetWeight,
    analysis_due,
    decide,
    stable_model_name,
)
from samp_core.gates import Measurement
from samp_core.reconcile import Decision, Event
from samp_core.status import Phase
from samp_operator.prometheus import PrometheusProvider
from samp_operator.serving import canary_manifests, canary_names, promoted_stable_patch
from samp_operator.traffic import (
    MERGE_PATCH,
    HTTPRouteRouter,
    ReplicaRatioRouter,
    TrafficRouter,
)

log = logging.getLogger("samp.canary")
_ACTIVE = (Phase.EVALUATED, Phase.CANARY, Phase.PAUSED)


@dataclass
class NoRouter:
    """No route and no stable: the canary Service is the only backend; any weight holds."""

    def set_weight(self, weight: int) -> None:
        return None

    def verify_weight(self, weight: int) -> bool:
        return True


def _apis(engine: Any) -> tuple[Any, Any, Any]:
    import kubernetes

    client = engine.kube.client
    return (
        kubernetes.client.AppsV1Api(client),
        kubernetes.client.CoreV1Api(client),
        kubernetes.client.CustomObjectsApi(client),
    )


def _status_code(err: Exception) -> int | None:
    return getattr(err, "status", None)


def router_for(spec: Any, name: str, namespace: str, apps: Any, custom: Any) -> TrafficRouter:
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


def _ready(apps: Any, namespace: str, name: str) -> bool:
    try:
        dep = apps.read_namespaced_deployment_status(name, namespace)
    except Exception as err:
        if _status_code(err) == 404:
            return False
        raise
    want = int(dep.spec.replicas or 0)
    ready = int(getattr(dep.status, "ready_replicas", 0) or 0)
    return want > 0 and ready >= want


def step(engine: Any, body: dict[str, Any], decision: Decision) -> Decision:
    resource = decision.resource
    if resource is None or decision.status.phase not in _ACTIVE:
        return decision
    spec = resource.spec
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    apps, core, custom = _apis(engine)
    dep_name, svc_name = canary_names(name)
    router = router_for(spec, name, namespace, apps, custom)
    status = decision.status
    now = datetime.now(UTC)

    weight = status.canary.weight if status.canary else 0
    verified = router.verify_weight(weight) if weight and status.phase is Phase.CANARY else None
    req = analysis_due(spec, status, name, now)
    measurement: Measurement | None = None
    if req is not None:
        url = spec.gates.prometheus_url or getattr(engine.settings, "prometheus_url", None)
        if url is None:
            measurement = Measurement(
                window_seconds=req.window_seconds,
                taken_at=now,
                error="no Prometheus configured (spec.gates.prometheusUrl or --prometheus-url)",
            )
        else:
            measurement = PrometheusProvider(url).measure(req, spec.gates)
    d = decide(
        spec,
        status,
        Observation(
            name=name,
            annotations=dict(meta.get("annotations") or {}),
            canary_ready=_ready(apps, namespace, dep_name),
            weight_verified=verified,
            measurement=measurement,
            generation=meta.get("generation"),
        ),
        now,
    )
    owner = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": meta.get("uid", ""),
    }
    for action in d.actions:
        if isinstance(action, EnsureCanary):
            extra = None
            if spec.rollout.http_route is None and spec.serving.stable is not None:
                svc = core.read_namespaced_service(spec.serving.stable.service, namespace)
                extra = dict(svc.spec.selector or {})
            deployment, service = canary_manifests(
                name,
                namespace,
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
            for create, obj in (
                (apps.create_namespaced_deployment, deployment),
                (core.create_namespaced_service, service),
            ):
                try:
                    create(namespace, obj)
                except Exception as err:
                    if _status_code(err) != 409:
                        raise
        elif isinstance(action, SetWeight):
            router.set_weight(action.weight)
        elif isinstance(action, PromoteStable):
            if action.strategy == "UpdateStable":
                _promote_stable(spec, name, namespace, apps, dep_name)
        elif isinstance(action, RemoveCanary):
            for delete, obj_name in (
                (apps.delete_namespaced_deployment, dep_name),
                (core.delete_namespaced_service, svc_name),
            ):
                try:
                    delete(obj_name, namespace)
                except Exception as err:
                    if _status_code(err) != 404:
                        raise
    decision.status = d.status
    decision.events.extend(Event(e.type, e.reason, e.message) for e in d.events)
    if d.requeue_after is not None:
        decision.requeue_after = (
            d.requeue_after
            if decision.requeue_after is None
            else min(decision.requeue_after, d.requeue_after)
        )
    return decision


def _promote_stable(spec: Any, name: str, namespace: str, apps: Any, dep_name: str) -> None:
    stable = spec.serving.stable
    canary = apps.read_namespaced_deployment(dep_name, namespace)
    canary_doc = apps.api_client.sanitize_for_serialization(canary)
    if stable is None:
        # No stable yet: the canary's template becomes the stable "<name>" Deployment.
        template: dict[str, Any] = canary_doc["spec"]["template"]
        template["metadata"]["labels"]["samp.dev/role"] = "stable"
        doc: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": canary_doc["metadata"].get("labels", {}),
            },
            "spec": {
                "replicas": spec.serving.replicas,
                "selector": {
                    "matchLabels": {"samp.dev/quantizedmodel": name, "samp.dev/role": "stable"}
                },
                "template": template,
            },
        }
        try:
            apps.create_namespaced_deployment(namespace, doc)
        except Exception as err:
            if _status_code(err) != 409:
                raise
        return
    current = apps.read_namespaced_deployment(stable.deployment, namespace)
    current_doc = apps.api_client.sanitize_for_serialization(current)
    served = stable_model_name(spec, name) or name
    patch = promoted_stable_patch(current_doc, canary_doc, served)
    apps.patch_namespaced_deployment(stable.deployment, namespace, patch, _content_type=MERGE_PATCH)
    log.info(
        "%s/%s: stable Deployment %s now serves the artifact", namespace, name, stable.deployment
    )
