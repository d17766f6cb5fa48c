"""The Helm chart, rendered by the real Helm built in tests/cluster (no cluster needed here;
server-side dry-run of every rendered manifest is in tests/cluster)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from samp_core.crd import CRD_FILE_NAME, render_yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "samp-operator"
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

import controlplane  # noqa: E402

KUBE_VERSION = controlplane.read_versions()["K8S_VERSION"]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if controlplane.skip_requested() if hasattr(controlplane, "skip_requested") else False:
        pytest.skip("SAMP_SKIP_CLUSTER_TESTS set")
    binary = controlplane.ensure_binaries() / "helm"
    home = tmp_path_factory.mktemp("helm")
    env = {"HELM_CACHE_HOME": str(home / "c"), "HELM_CONFIG_HOME": str(home / "f"),
           "HELM_DATA_HOME": str(home / "d"), "PATH": "/usr/bin:/bin"}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    return run


def render(helm: Any, *sets: str) -> list[dict[str, Any]]:
    args = ["template", "samp", str(CHART), "--namespace", "samp-system", "--include-crds",
            "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_chart_crd_is_the_generated_one() -> None:
    assert (CHART / "crds" / CRD_FILE_NAME).read_text() == render_yaml()


def test_helm_lint_passes(helm: Any) -> None:
    result = helm("lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in result.stdout


def test_default_render_is_cluster_wide_and_restricted(helm: Any) -> None:
    docs = render(helm)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service",
            "CustomResourceDefinition", "Role"} <= kinds
    # The only Role: the leader-election Lease, in the release namespace.
    (lease_role,) = by_kind(docs, "Role")
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"],
                                    "resources": ["leases"],
                                    "verbs": ["get", "create", "update"]}]
    assert not by_kind(docs, "ServiceMonitor")
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    assert not any(a.startswith("--namespace") for a in container["args"])
    assert "--leader-election-namespace=$(SAMP_OPERATOR_NAMESPACE)" in container["args"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} \
        in container["env"]
    # Cluster-wide, Kopf never observes namespaces (audit log, test_chart_operator_cluster).
    assert not any("namespaces" in rule["resources"]
                   for role in by_kind(docs, "ClusterRole") for rule in role["rules"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]


def test_namespaced_render_uses_roles_per_namespace(helm: Any) -> None:
    docs = render(helm, "watchNamespaces={team-a,team-b}")
    roles = [r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-leader")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster_roles = by_kind(docs, "ClusterRole")
    assert len(cluster_roles) == 1  # only the cluster-scoped calls Kopf makes
    resources = {r for rule in cluster_roles[0]["rules"] for r in rule["resources"]}
    # Kopf observes namespaces only when it serves a list of them (audit-log proven in
    # test_chart_operator_cluster.py); no namespaced resource.
    assert resources == {"customresourcedefinitions", "namespaces"}
    (deploy,) = by_kind(docs, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_optional_objects_render_when_enabled(helm: Any) -> None:
    docs = render(helm, "metrics.serviceMonitor.enabled=true", "networkPolicy.enabled=true",
                  "metrics.prometheusRule.enabled=true")
    assert by_kind(docs, "ServiceMonitor") and by_kind(docs, "NetworkPolicy")
    assert by_kind(docs, "PrometheusRule")


@pytest.mark.parametrize(("setting", "complaint"), [
    ("replicas=0", "replicas"),
    ("watchNamespaces={Bad_NS}", "watchNamespaces"),
    ("logLevel=verbose", "logLevel"),
    ("metrics.port=80", "port"),
    ("unknownKey=1", "unknownKey"),
])
def test_bad_values_fail_at_install_with_a_clear_message(
    helm: Any, setting: str, complaint: str
) -> None:
    result = helm("template", "samp", str(CHART), "--kube-version", KUBE_VERSION,
                  "--set", setting, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr
