"""The vLLM pods the operator creates pass Pod Security "restricted" (issue 15), judged by
the real kube-apiserver's PodSecurity admission on a namespace that enforces it.

Before: the canary pod had no securityContext and mounted the service-account token, so
the API server refused it in a restricted namespace (allowPrivilegeEscalation,
capabilities, runAsNonRoot, seccompProfile), while the operator and the Jobs passed.
The pod is created with dryRun=All: admission runs, nothing is scheduled.
"""

from __future__ import annotations

from typing import Any

import pytest
from controlplane import ControlPlane

from samp_operator.serving import canary_manifests
from spec_fixtures import make_spec

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def _restricted(cluster: ControlPlane, ns: str) -> None:
    status, body = cluster.request(
        "PATCH", f"/api/v1/namespaces/{ns}",
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                 "pod-security.kubernetes.io/enforce-version": "latest"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200, body


def _pod_from(deployment: dict[str, Any], ns: str) -> dict[str, Any]:
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "canary-pod", "namespace": ns,
                     "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def _create_pod(cluster: ControlPlane, pod: dict[str, Any], ns: str) -> tuple[int, Any]:
    return cluster.request("POST", f"/api/v1/namespaces/{ns}/pods?dryRun=All", pod)


def test_canary_pod_passes_restricted(cluster: ControlPlane, cluster_namespace: str) -> None:
    ns = cluster_namespace
    _restricted(cluster, ns)
    spec = make_spec()
    dep, _svc = canary_manifests("tiny-llama", ns, spec, "pvc://models/tiny/a1",
                                 served_model_name="tiny-llama-canary")
    pod = _pod_from(dep, ns)
    status, body = _create_pod(cluster, pod, ns)
    assert status == 201, body
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_without_the_security_context_the_pod_is_refused(
    cluster: ControlPlane, cluster_namespace: str
) -> None:
    """The check is real: the same pod as before the fix is refused, naming the fields."""
    ns = cluster_namespace
    _restricted(cluster, ns)
    dep, _svc = canary_manifests("tiny-llama", ns, make_spec(), "pvc://models/tiny/a1",
                                 served_model_name="tiny-llama-canary")
    pod = _pod_from(dep, ns)
    for c in pod["spec"]["containers"]:
        c.pop("securityContext")
    status, body = _create_pod(cluster, pod, ns)
    assert status == 403, body
    message = body.get("message", "") if isinstance(body, dict) else str(body)
    for field in ("allowPrivilegeEscalation", "capabilities", "runAsNonRoot", "seccompProfile"):
        assert field in message, message


def test_each_field_can_be_turned_off_in_the_spec() -> None:
    """Where an image needs it: the opted-out field is relaxed, the others stay."""
    spec = make_spec()
    serving = spec.serving.model_copy(update={
        "security_context": spec.serving.security_context.model_copy(
            update={"run_as_non_root": False, "run_as_user": 0}),
        "automount_service_account_token": True,
    })
    dep, _svc = canary_manifests("m", "ns", spec.model_copy(update={"serving": serving}),
                                 "pvc://models/tiny/a1", served_model_name="m-canary")
    pod = dep["spec"]["template"]["spec"]
    sc = pod["containers"][0]["securityContext"]
    assert sc["runAsNonRoot"] is False and sc["runAsUser"] == 0
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is True
