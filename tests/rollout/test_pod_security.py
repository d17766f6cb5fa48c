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
