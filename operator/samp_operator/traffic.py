"""Traffic routers: set the canary's share of traffic, then verify it. A small interface,
as Argo Rollouts' traffic routers.

* :class:`HTTPRouteRouter` — Gateway API ``HTTPRoute`` (gateway.networking.k8s.io/v1):
  in every rule that references the stable backend Service, the stable and canary
  ``backendRefs`` get weights ``100 - w`` and ``w`` (the canary ref is added next to the
  stable one when missing, removed at weight 0). Verify reads the route back and
  checks the weights, and that no parent reports ``Accepted=False``. The writes carry
  the field manager ``samp-operator``, so the ``backendRefs`` it sets are the fields a
  GitOps tool is told to ignore.
* :class:`ReplicaRatioRouter` — no route: canary pods carry the stable Service's
  selector labels, so traffic follows the ratio of ready pods. With ``N`` replicas in
  total the canary gets ``max(1, round(N * w / 100))`` (all ``N`` at 100) and the stable
  the rest, make before break (a side shrinks only once the other is ready); the
  achievable weight is reported by ``verify`` (``N = 1`` can only do 0/50/100 with one
  extra pod; the status shows the real ratio).
* :class:`NoRouter` — neither a route nor a stable target: the canary Service is the
  only backend, so any weight holds.

The local demo's in-process router (the load generator follows it) is
samp_local.load.LocalWeights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
HTTPROUTES = "httproutes"
# The generated client defaults PATCH to JSON Patch; our bodies are merge patches.
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (a JSON body is YAML)
# Every write the operator makes to a user's or its own serving objects carries this
# manager, so a GitOps tool can tell its fields apart (Argo CD: ignoreDifferences
# managedFieldsManagers; see the README, "GitOps layouts").
FIELD_MANAGER = "samp-operator"


class TrafficRouter(Protocol):
    def set_weight(self, weight: int) -> None:
        """Send ``weight`` percent of traffic to the canary."""

    def verify_weight(self, weight: int) -> bool:
        """True when ``weight`` (as closely as the router can) is in effect now."""

    def stable_serving(self) -> bool:
        """The stable serves the traffic on its own, so the canary may go."""


@dataclass
class NoRouter:
    """No route and no stable: the canary Service is the only backend; any weight holds."""

    def set_weight(self, weight: int) -> None:
        return None

    def verify_weight(self, weight: int) -> bool:
        return True

    def stable_serving(self) -> bool:
        return True


def route_with_weights(
    route: dict[str, Any], stable: str, canary: str, weight: int, port: int | None
) -> dict[str, Any]:
    """A copy of an HTTPRoute object whose rules split ``weight``% to the canary Service."""
    out = {**route, "spec": {**route.get("spec", {})}}
    rules: list[dict[str, Any]] = []
    touched = False
    for rule in route.get("spec", {}).get("rules", []) or []:
        refs = list(rule.get("backendRefs", []) or [])
        names = [r.get("name") for r in refs]
        if stable not in names:
            rules.append(rule)
            continue
        touched = True
        new_refs: list[dict[str, Any]] = []
        for ref in refs:
            if ref.get("name") == canary:
                continue
            if ref.get("name") == stable:
                new_refs.append({**ref, "weight": 100 - weight})
                if weight > 0:
                    canary_ref = {k: v for k, v in ref.items() if k not in ("name", "weight")}
                    canary_ref.update({"name": canary, "weight": weight})
                    if port is not None:
                        canary_ref["port"] = port
                    new_refs.append(canary_ref)
            else:
                new_refs.append(ref)
        rules.append({**rule, "backendRefs": new_refs})
    if not touched:
        raise ValueError(
            f"HTTPRoute {route.get('metadata', {}).get('name')} has no rule "
            f"with backendRef {stable}"
        )
    out["spec"]["rules"] = rules
    return out


def weights_of(route: dict[str, Any], stable: str, canary: str) -> list[tuple[int, int]]:
    """(stable weight, canary weight) per rule that references the stable backend."""
    found: list[tuple[int, int]] = []
    for rule in route.get("spec", {}).get("rules", []) or []:
        refs = rule.get("backendRefs", []) or []
        names = {r.get("name"): r for r in refs}
        if stable not in names:
            continue
        s = int(names[stable].get("weight", 1))
        c = int(names[canary].get("weight", 1)) if canary in names else 0
        found.append((s, c))
    return found


@dataclass
class HTTPRouteRouter:
    """Gateway API HTTPRoute weights through the Kubernetes API (CustomObjectsApi)."""

    api: Any  # kubernetes.client.CustomObjectsApi
    namespace: str
    route: str
    stable_backend: str
    canary_backend: str
    port: int | None = None

    def _get(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.api.get_namespaced_custom_object(
            GATEWAY_GROUP, GATEWAY_VERSION, self.namespace, HTTPROUTES, self.route
        )
        return obj

    def set_weight(self, weight: int) -> None:
        current = self._get()
        desired = route_with_weights(
            current, self.stable_backend, self.canary_backend, weight, self.port
        )
        # Replace with resourceVersion: a concurrent writer makes this fail (409) and
        # the operator retries, rather than silently losing one of the two writes.
        self.api.replace_namespaced_custom_object(
            GATEWAY_GROUP, GATEWAY_VERSION, self.namespace, HTTPROUTES, self.route, desired,
            field_manager=FIELD_MANAGER,
        )

    def verify_weight(self, weight: int) -> bool:
        route = self._get()
        pairs = weights_of(route, self.stable_backend, self.canary_backend)
        if not pairs or any(c != weight or s != 100 - weight for s, c in pairs):
            return False
        for parent in route.get("status", {}).get("parents", []) or []:
            for cond in parent.get("conditions", []) or []:
                if cond.get("type") == "Accepted" and cond.get("status") == "False":
                    return False
        return True

    def stable_serving(self) -> bool:
        return True  # the stable's pods are never scaled here


def replica_split(total: int, weight: int) -> tuple[int, int]:
    """(canary, stable) replicas for ``weight``% of ``total`` pods behind one Service."""
    if weight <= 0:
        return 0, total
    if weight >= 100:
        return total, 0
    canary = max(1, round(total * weight / 100))
    stable = max(1, total - canary)
    return canary, stable


def effective_weight(canary: int, stable: int) -> int:
    return 0 if canary + stable == 0 else round(100 * canary / (canary + stable))


@dataclass
class ReplicaRatioRouter:
    """Canary share by ready-pod ratio behind the stable Service (apps/v1 scale)."""

    apps: Any  # kubernetes.client.AppsV1Api
    namespace: str
    stable_deployment: str
    canary_deployment: str
    total_replicas: int

    def set_weight(self, weight: int) -> None:
        """Scale toward ``weight``, make before break: a side that gains replicas is scaled
        up at once; a side that loses replicas only once the other side has all its
        target replicas ready, so the pods serving the traffic never drop below what
        their replacement already serves (at 0% the stable comes back before the canary
        goes). ``verify_weight`` stays False until both sides are there, and the canary
        machine sets the weight again until it holds."""
        canary, stable = replica_split(self.total_replicas, weight)
        ready_c = self.ready(self.canary_deployment)
        ready_s = self.ready(self.stable_deployment)
        for name, target, have, other_ready in (
            (self.canary_deployment, canary, ready_c, ready_s >= stable),
            (self.stable_deployment, stable, ready_s, ready_c >= canary),
        ):
            if target >= have or other_ready:
                self.apps.patch_namespaced_deployment_scale(
                    name, self.namespace, {"spec": {"replicas": target}},
                    field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH,
                )

    def ready(self, name: str) -> int:
        dep = self.apps.read_namespaced_deployment_status(name, self.namespace)
        return int(getattr(dep.status, "ready_replicas", 0) or 0)

    def verify_weight(self, weight: int) -> bool:
        canary, stable = replica_split(self.total_replicas, weight)
        return (
            self.ready(self.canary_deployment) == canary
            and self.ready(self.stable_deployment) == stable
        )

    def stable_serving(self) -> bool:
        return self.ready(self.stable_deployment) >= self.total_replicas
