"""The control plane itself: the pinned releases, real components, a clean stop."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import controlplane
import pytest
from cluster_fixtures import _alive
from controlplane import BINARIES, CPU_NODE, GPU_NODE, ControlPlane, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def test_binaries_report_the_pinned_releases(cluster: ControlPlane) -> None:
    v = cluster.versions
    expect = {
        "kube-apiserver": (["--version"], f"Kubernetes {v['K8S_VERSION']}"),
        "kube-controller-manager": (["--version"], f"Kubernetes {v['K8S_VERSION']}"),
        "kube-scheduler": (["--version"], f"Kubernetes {v['K8S_VERSION']}"),
        "kubectl": (["version", "--client"], f"Client Version: {v['K8S_VERSION']}"),
        "etcd": (["--version"], f"etcd Version: {v['ETCD_VERSION'].lstrip('v')}"),
        "kwok": (["--version"], v["KWOK_VERSION"]),
        "helm": (["version", "--short"], v["HELM_VERSION"]),
    }
    assert set(expect) == set(BINARIES)
    for name, (args, want) in expect.items():
        out = subprocess.run(
            [str(cluster.binary(name)), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert want in out.stdout + out.stderr, f"{name}: {out.stdout}{out.stderr}"


def test_server_version_and_health(cluster: ControlPlane) -> None:
    status, ver = cluster.request("GET", "/version")
    assert status == 200 and ver["gitVersion"] == cluster.versions["K8S_VERSION"]
    for path in ("/readyz", "/livez", "/readyz/etcd", "/readyz/poststarthook/rbac/bootstrap-roles"):
        assert cluster.request("GET", path)[0] == 200, path
    assert set(cluster.pids()) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }


def test_fake_nodes_are_ready(cluster: ControlPlane) -> None:
    status, nodes = cluster.request("GET", "/api/v1/nodes")
    assert status == 200, nodes
    by_name = {n["metadata"]["name"]: n for n in nodes["items"]}
    assert {GPU_NODE, CPU_NODE} <= set(by_name)
    gpu = by_name[GPU_NODE]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    for n in by_name.values():
        conds = {c["type"]: c["status"] for c in n["status"]["conditions"]}
        assert conds["Ready"] == "True", n["metadata"]["name"]
        assert not n["spec"].get("taints"), n["spec"]


def test_nodes_heartbeat_through_leases(cluster: ControlPlane) -> None:
    """KWOK renews node Leases, so the node lifecycle controller keeps the fake
    nodes Ready (and untainted) for as long as a session runs."""

    def renewed() -> bool:
        status, lease = cluster.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{GPU_NODE}"
        )
        if status != 200:
            return False
        renew = datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
        return (datetime.now(UTC) - renew).total_seconds() < 40

    wait_for(renewed, 60, f"a fresh Lease for {GPU_NODE}")


def test_kubeconfigs_work(cluster: ControlPlane) -> None:
    assert "samp-gpu-h100-0" in cluster.kubectl("get", "nodes", "-o", "name").stdout
    who = cluster.kubectl(
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
        kubeconfig=cluster.operator_kubeconfig,
    ).stdout
    assert who == cluster.operator_username


def test_report_resources(cluster: ControlPlane) -> None:
    """Not an assertion of limits: prints what the control plane costs (pytest -s)."""
    rss = cluster.rss()
    assert all(v for v in rss.values()), rss
    total = sum(v or 0 for v in rss.values())
    print(
        "\ncontrol-plane RSS (MiB): "
        + ", ".join(f"{k}={v / 1024:.0f}" for k, v in rss.items())
        + f", total={total / 1024:.0f}"
    )
    print("start timings (s): " + ", ".join(f"{k}={v:.2f}" for k, v in cluster.timings.items()))


@pytest.mark.timeout(240)
def test_a_second_control_plane_starts_and_stops_cleanly(tmp_path: Path) -> None:
    """Independent of the session cluster: start, use, stop; no process survives."""
    if os.environ.get("SAMP_SKIP_CLUSTER_TESTS") == "1":
        pytest.skip("SAMP_SKIP_CLUSTER_TESTS=1")
    controlplane.ensure_binaries()
    cp = ControlPlane(tmp_path / "cp2")
    cp.start()
    try:
        pids = cp.pids()
        assert len(pids) == 5
        assert cp.request("GET", "/readyz")[0] == 200
        print(f"\nsecond control plane started in {cp.timings['total']:.1f}s")
    finally:
        codes = cp.stop()
    assert not [n for n, p in pids.items() if _alive(p)], codes
    # terminated gracefully (SIGTERM), not killed
    assert all(c is not None for c in codes.values()), codes
