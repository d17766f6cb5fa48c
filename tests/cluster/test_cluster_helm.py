"""Every manifest the Helm chart(s) render passes the real API server's
server-side dry-run (schemas, admission, RBAC escalation checks), and the
chart installs for real (helm install --wait; KWOK makes the pods Ready)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
CHARTS = sorted(p.parent for p in (REPO / "charts").glob("*/Chart.yaml"))
NAMESPACE = "samp-helm-test"


def _enabled_toggles(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every boolean `enabled` key in values.yaml."""
    out: list[str] = []
    if isinstance(values, dict):
        for k, v in values.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if k == "enabled" and isinstance(v, bool):
                out.append(path)
            else:
                out += _enabled_toggles(v, path)
    return out


def _value_sets(chart: Path) -> list[tuple[str, list[str]]]:
    """Default values; every optional feature switched on (each boolean
    `enabled` in values.yaml); and every chart-testing values file (ci/*.yaml)."""
    sets: list[tuple[str, list[str]]] = [("default", [])]
    toggles = (
        _enabled_toggles(yaml.safe_load((chart / "values.yaml").read_text()) or {})
        if (chart / "values.yaml").is_file()
        else []
    )
    if toggles:
        sets.append(("all-enabled", ["--set", ",".join(f"{t}=true" for t in toggles)]))
    sets += [(f.stem, ["-f", str(f)]) for f in sorted((chart / "ci").glob("*.yaml"))]
    return sets


def _cases() -> list[Any]:
    if not CHARTS:
        return [
            pytest.param(
                None, "default", [], marks=pytest.mark.skip(reason="no chart yet"), id="no-chart"
            )
        ]
    return [
        pytest.param(c, name, args, id=f"{c.name}-{name}")
        for c in CHARTS
        for name, args in _value_sets(c)
    ]


def _render(
    cluster: ControlPlane, chart: Path, args: list[str], release: str
) -> list[dict[str, Any]]:
    out = cluster.helm(
        "template",
        release,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--include-crds",
        "--kube-version",
        cluster.versions["K8S_VERSION"],
        *args,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs, f"helm template {chart.name} rendered nothing"
    return docs


@pytest.mark.parametrize(("chart", "values_name", "values_args"), _cases())
def test_helm_rendered_manifests_pass_server_side_dry_run(  # noqa: PLR0917 (fixtures)
    cluster: ControlPlane,
    prometheus_operator_crds: list[str],
    gateway_api_crds: list[str],
    chart: Path,
    values_name: str,
    values_args: list[str],
) -> None:
    """ServiceMonitor/PrometheusRule (prometheus-operator) and Gateway API CRDs are
    installed, so optional templates are checked against their real schemas too."""
    lint = cluster.helm("lint", str(chart), *values_args, check=False)
    assert lint.returncode == 0, (
        f"helm lint {chart.name} ({values_name}):\n{lint.stdout}\n{lint.stderr}"
    )
    docs = _render(cluster, chart, values_args, "samp")

    # CRDs first, for real: the custom resources the chart may render need them served.
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    for crd in crds:
        cluster.apply(crd, field_manager="helm-test")
        cluster.wait_crd_established(crd["metadata"]["name"])
    cluster.ensure_namespace(NAMESPACE)

    failures: list[str] = []
    for d in docs:
        if d.get("kind") == "CustomResourceDefinition":
            continue
        ref = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            cluster.apply(
                d,
                namespace=d.get("metadata", {}).get("namespace") or NAMESPACE,
                dry_run=True,
                field_manager="helm-test",
            )
        except Exception as exc:
            failures.append(f"{ref}: {getattr(exc, 'body', None) or exc}")
    assert not failures, (
        f"{chart.name} ({values_name}): server-side dry-run failed for:\n" + "\n".join(failures)
    )


def adopt_crd(cluster: ControlPlane, release: str, namespace: str) -> None:
    """The chart README's upgrade step: hand an existing QuantizedModel CRD (applied by
    another test, or installed from an old chart's crds/) to this Helm release."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(cluster.new_api_client(cluster.admin_kubeconfig))
    patch = {"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": release,
                        "meta.helm.sh/release-namespace": namespace}}}
    try:
        ext.patch_custom_resource_definition("quantizedmodels.samp.dev", patch)
    except client.ApiException as exc:
        assert exc.status == 404, exc


@pytest.mark.skipif(not CHARTS, reason="no chart yet")
@pytest.mark.parametrize("chart", CHARTS, ids=[c.name for c in CHARTS])
def test_helm_install_becomes_ready(cluster: ControlPlane, chart: Path) -> None:
    ns = f"{NAMESPACE}-install"
    release = "samp-install"
    adopt_crd(cluster, release, ns)
    r = cluster.helm(
        "install",
        release,
        str(chart),
        "--namespace",
        ns,
        "--create-namespace",
        "--wait",
        "--timeout",
        "3m",
        check=False,
        timeout=300,
    )
    try:
        assert r.returncode == 0, f"helm install {chart.name} failed:\n{r.stdout}\n{r.stderr}"
        status = cluster.helm("status", release, "--namespace", ns).stdout
        assert "STATUS: deployed" in status, status
    finally:
        cluster.helm("uninstall", release, "--namespace", ns, "--wait", check=False)


@pytest.mark.skipif(not (REPO / "charts/samp-operator/files/crds").is_dir(),
                    reason="no templated CRD")
def test_helm_upgrade_updates_the_crd_and_uninstall_keeps_it(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    """Helm never upgrades crds/; the chart's templated CRD is upgraded, and kept."""
    import shutil

    from kubernetes import client

    chart = tmp_path / "samp-operator"
    shutil.copytree(REPO / "charts" / "samp-operator", chart)
    ns, release, crd_name = f"{NAMESPACE}-upgrade", "samp-upgrade", "quantizedmodels.samp.dev"
    ext = client.ApiextensionsV1Api(cluster.new_api_client(cluster.admin_kubeconfig))
    adopt_crd(cluster, release, ns)
    common = ["--namespace", ns, "--set", "replicas=1,dashboard.enabled=false"]
    cluster.helm("install", release, str(chart), "--create-namespace", *common, timeout=300)
    try:
        crd_file = chart / "files" / "crds" / "samp.dev_quantizedmodels.yaml"
        doc = yaml.safe_load(crd_file.read_text())
        doc["spec"]["versions"][0]["additionalPrinterColumns"].append(
            {"name": "Upgraded", "type": "string", "jsonPath": ".status.phase"})
        crd_file.write_text(yaml.safe_dump(doc))
        cluster.helm("upgrade", release, str(chart), *common, timeout=300)
        served = ext.read_custom_resource_definition(crd_name)
        assert "Upgraded" in [c.name for c in served.spec.versions[0].additional_printer_columns]
    finally:
        cluster.helm("uninstall", release, "--namespace", ns, "--wait", check=False)
    kept = ext.read_custom_resource_definition(crd_name)
    try:
        assert kept.metadata.annotations["helm.sh/resource-policy"] == "keep"
    finally:
        # The cluster is shared by the session: put the repo's CRD back (a replace, since
        # an apply by another field manager would leave Helm's "Upgraded" column behind).
        cluster.kubectl("replace", "-f", str(REPO / "crds" / "samp.dev_quantizedmodels.yaml"))


@pytest.mark.skipif(not CHARTS, reason="no chart yet")
def test_operator_identity_under_the_charts_rbac(
    cluster: ControlPlane,
    samp_crds: list[str],
    gateway_api_crds: list[str],
    cluster_namespace: str,
    operator_rbac: Any,
) -> None:
    """The operator's own kubeconfig, bound to exactly the chart's rules, can do the
    rollout's writes (real requests, real authorizer) and nothing beyond them."""
    from kubernetes import client

    chart = next((c for c in CHARTS if c.name == "samp-operator"), CHARTS[0])
    operator_rbac(cluster.chart_rbac_rules(chart))
    ns = cluster_namespace
    op = cluster.new_api_client(cluster.operator_kubeconfig)
    try:
        batch, core = client.BatchV1Api(op), client.CoreV1Api(op)
        custom = client.CustomObjectsApi(op)
        assert custom.list_cluster_custom_object("samp.dev", "v1alpha1", "quantizedmodels")
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "rbac-probe"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "registry.invalid/x"}],
                    }
                },
            },
        }
        batch.create_namespaced_job(ns, job)
        batch.delete_namespaced_job("rbac-probe", ns, propagation_policy="Background")
        for verb, resource, group, sub in [
            ("patch", "quantizedmodels", "samp.dev", "status"),
            ("create", "deployments", "apps", ""),
            ("update", "httproutes", "gateway.networking.k8s.io", ""),
            ("create", "events", "", ""),
        ]:
            assert cluster.operator_can(
                verb, resource, group=group, namespace=ns, subresource=sub
            ), (
                verb,
                resource,
            )
        with pytest.raises(client.ApiException) as exc:
            core.list_namespaced_secret(ns)
        assert exc.value.status == 403
    finally:
        op.close()
