"""Promotion under GitOps (issue 16), against the real kube-apiserver.

What Argo CD does is played by its own mechanism: the objects in Git are server-side
applied with the field manager ``argocd-controller`` and ``force`` (Argo CD's
ServerSideApply sync forces conflicts), and self-heal is the same apply again. The
operator's side is its real Kubernetes adapter (KubeServing, the HTTPRoute router and
the canary driver): the canary is created, the route moved, then the promotion's
actions run, exactly as after a Promoted status write.

* OperatorOwned (the default): Git holds the QuantizedModel, the Service and the
  HTTPRoute; the stable Deployment was created outside Git (``kubectl create``). After
  the promotion and a self-heal, the promoted artifact is still what the Service
  serves, the Deployment belongs to the QuantizedModel and to the ``samp-operator``
  field manager, and the only field of a Git object the operator ever changed is the
  route's ``backendRefs`` (charts/argocd/application.yaml's ignoreDifferences; a sync
  mid-canary that respects it, as RespectIgnoreDifferences does, leaves the canary its
  share). Before the fix the
  Deployment was merge-patched by the client's default manager with no owner, and
  the route written by that default manager too.
* PatchInPlace, the Deployment in Git: the self-heal reverts the promotion (the
  documented drift), which shows the self-heal above is real; the patched fields
  carry the ``samp-operator`` manager the README's managedFieldsManagers names.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from controlplane import ControlPlane

from samp_core.api import parse
from samp_core.canary import settle
from samp_core.decision import EnsureCanary, SetWeight
from samp_core.status import Phase, QuantizedModelStatus
from samp_operator.canary_driver import CanaryDriver, NoPrometheus
from samp_operator.canary_kube import KubeServing, router_for
from samp_operator.traffic import weights_of

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = "argocd-controller"
OPERATOR = "samp-operator"  # the field manager the README's ignoreDifferences names
NAME, STABLE, SERVICE, ROUTE = "tiny-llama", "tiny-llama-stable", "tiny-llama", "tiny-llama"
ARTIFACT = "pvc://examples/tiny/out-a1"
BASE_ARGS = ["--model", "/models/base", "--served-model-name", "tiny-llama"]
LABELS = {"app": "tiny-llama", "samp.dev/role": "stable"}


def _path(ns: str, kind: str, name: str = "") -> str:
    base = {
        "Deployment": f"/apis/apps/v1/namespaces/{ns}/deployments",
        "Service": f"/api/v1/namespaces/{ns}/services",
        "HTTPRoute": f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes",
        "QuantizedModel": f"/apis/samp.dev/v1alpha1/namespaces/{ns}/quantizedmodels",
    }[kind]
    return f"{base}/{name}" if name else base


def _git_apply(cluster: ControlPlane, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
    """What an Argo CD sync (ServerSideApply=true) does with one object from Git."""
    status, body = cluster.request(
        "PATCH",
        _path(ns, obj["kind"], obj["metadata"]["name"]) + f"?fieldManager={ARGOCD}&force=true",
        obj,
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    assert status in (200, 201), body
    return dict(body)


def _get(cluster: ControlPlane, ns: str, kind: str, name: str) -> dict[str, Any]:
    status, body = cluster.request("GET", _path(ns, kind, name))
    assert status == 200, body
    return dict(body)


def _deployment(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": STABLE, "namespace": ns, "labels": {"app": "tiny-llama"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": LABELS},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.32.0",
                                         "args": BASE_ARGS}]},
            },
        },
    }


def _git_objects(ns: str, management: str | None = None) -> list[dict[str, Any]]:
    """The user's repository: the QuantizedModel, its Service and HTTPRoute."""
    qm = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    qm["metadata"]["namespace"] = ns
    qm["spec"]["serving"]["stable"] = {"deployment": STABLE, "service": SERVICE}
    if management is not None:
        qm["spec"]["serving"]["stable"]["management"] = management
    qm["spec"]["rollout"]["httpRoute"] = {"name": ROUTE, "stableBackend": SERVICE}
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": SERVICE, "namespace": ns},
               "spec": {"selector": {"app": "tiny-llama"},
                        "ports": [{"name": "http", "port": 8000, "targetPort": 8000}]}}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": ROUTE, "namespace": ns},
             "spec": {"parentRefs": [{"name": "gw"}],
                      "rules": [{"backendRefs": [{"name": SERVICE, "port": 8000}]}]}}
    return [qm, service, route]


def _driver(cluster: ControlPlane, ns: str, qm: dict[str, Any], uid: str) -> CanaryDriver:
    spec = parse(qm).spec
    client = cluster.api_client
    apps = kubernetes.client.AppsV1Api(client)
    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    serving = KubeServing(apps, core, spec, NAME, ns, uid)
    return CanaryDriver(serving, router_for(spec, NAME, ns, apps, custom), NoPrometheus())


def _respecting_live_backends(git_route: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """The route Argo CD applies under charts/argocd/application.yaml: Git's, with the
    ignored ``.spec.rules[].backendRefs`` taken from the live object
    (RespectIgnoreDifferences=true)."""
    out = copy.deepcopy(git_route)
    for rule, live_rule in zip(out["spec"]["rules"], live["spec"]["rules"], strict=True):
        rule["backendRefs"] = live_rule["backendRefs"]
    return out


def _canary_then_promote(driver: CanaryDriver, cluster: ControlPlane, ns: str,
                         git_route: dict[str, Any]) -> None:
    """The canary at 50% through the route, a self-heal sync, then the promotion."""
    spec = driver.serving.spec  # type: ignore[attr-defined]
    start = (EnsureCanary("tiny-llama-canary", ARTIFACT, 1, ("tiny-llama",)), SetWeight(50))
    assert driver.apply(start)
    route = _get(cluster, ns, "HTTPRoute", ROUTE)
    assert weights_of(route, SERVICE, "tiny-llama-canary") == [(50, 50)]
    # a sync mid-canary under the documented ignoreDifferences leaves the canary its share
    _git_apply(cluster, ns, _respecting_live_backends(git_route, route))
    assert driver.router.verify_weight(50)
    promoted = QuantizedModelStatus(phase=Phase.PROMOTED, attempt=1, artifact_uri=ARTIFACT)
    actions = settle(spec, promoted)
    assert actions, "a Promoted status has promotion actions"
    assert driver.apply(actions)


def _served_model(deployment: dict[str, Any]) -> str:
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "vllm")
    args = container["args"]
    return str(args[args.index("--model") + 1])


def _managers(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["manager"]: m.get("fieldsV1", {}) for m in obj["metadata"]["managedFields"]}


def _without_backend_refs(route: dict[str, Any]) -> list[dict[str, Any]]:
    rules = copy.deepcopy(route["spec"]["rules"])
    for rule in rules:
        rule.pop("backendRefs", None)
    return list(rules)


def test_default_promotion_survives_argo_cd_self_heal(
    cluster: ControlPlane, samp_crds: Any, gateway_api_crds: Any, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    status, body = cluster.request(
        "POST", _path(ns, "Deployment") + "?fieldManager=kubectl-create", _deployment(ns))
    assert status == 201, body  # the baseline, created once outside Git
    git = _git_objects(ns)  # management unset: the default
    qm, service, route = (_git_apply(cluster, ns, o) for o in git)
    driver = _driver(cluster, ns, git[0], qm["metadata"]["uid"])
    _canary_then_promote(driver, cluster, ns, git[2])

    stable = _get(cluster, ns, "Deployment", STABLE)
    assert _served_model(stable) == "/artifacts/tiny/out-a1"
    # the Deployment belongs to the QuantizedModel and its template to samp-operator
    owner = stable["metadata"].get("ownerReferences") or []
    assert [(o["kind"], o["name"], o["uid"], o.get("controller")) for o in owner] == [
        ("QuantizedModel", NAME, qm["metadata"]["uid"], True)]
    template = _managers(stable)[OPERATOR]["f:spec"]["f:template"]["f:spec"]
    assert 'k:{"name":"vllm"}' in template["f:containers"]
    # the only field of a Git object the operator changed is the route's backendRefs
    live_route = _get(cluster, ns, "HTTPRoute", ROUTE)
    assert _without_backend_refs(live_route) == _without_backend_refs(route)
    assert weights_of(live_route, SERVICE, "tiny-llama-canary") == [(100, 0)]
    assert set(_managers(live_route)) <= {ARGOCD, OPERATOR}
    live_service = _get(cluster, ns, "Service", SERVICE)
    assert live_service["spec"]["selector"] == service["spec"]["selector"]
    assert set(_managers(live_service)) == {ARGOCD}
    assert set(_managers(_get(cluster, ns, "QuantizedModel", NAME))) == {ARGOCD}

    for obj in git:  # Argo CD's self-heal: Git applied again
        _git_apply(cluster, ns, obj)
    stable = _get(cluster, ns, "Deployment", STABLE)
    assert _served_model(stable) == "/artifacts/tiny/out-a1"  # still the promoted model
    pod_labels = stable["spec"]["template"]["metadata"]["labels"]
    selector = _get(cluster, ns, "Service", SERVICE)["spec"]["selector"]
    assert selector.items() <= pod_labels.items()  # the Service clients use sends here
    healed = _get(cluster, ns, "HTTPRoute", ROUTE)
    assert [r["name"] for r in healed["spec"]["rules"][0]["backendRefs"]] == [SERVICE]
    status, _ = cluster.request("GET", _path(ns, "Deployment", "tiny-llama-canary"))
    assert status == 404  # the canary is gone


def test_patch_in_place_drifts_under_self_heal(
    cluster: ControlPlane, samp_crds: Any, gateway_api_crds: Any, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    git = [_deployment(ns), *_git_objects(ns, "PatchInPlace")]
    applied = [_git_apply(cluster, ns, o) for o in git]
    driver = _driver(cluster, ns, git[1], applied[1]["metadata"]["uid"])
    _canary_then_promote(driver, cluster, ns, git[3])

    stable = _get(cluster, ns, "Deployment", STABLE)
    assert _served_model(stable) == "/artifacts/tiny/out-a1"
    assert not stable["metadata"].get("ownerReferences")  # still the user's
    # what managedFieldsManagers: [samp-operator] would keep over Git
    patched = _managers(stable)[OPERATOR]["f:spec"]["f:template"]["f:spec"]
    assert 'k:{"name":"vllm"}' in patched["f:containers"]

    for obj in git:  # self-heal without the ignoreDifferences: the promotion is undone
        _git_apply(cluster, ns, obj)
    stable = _get(cluster, ns, "Deployment", STABLE)
    assert _served_model(stable) == "/models/base"
