"""pytest fixtures and hooks for tests against the real control plane.

Imported by tests/conftest.py, so every test under tests/ can use them:

* ``cluster`` (session): a started :class:`controlplane.ControlPlane`.
* ``cluster_api`` (session): its admin ``kubernetes.client.ApiClient``.
* ``cluster_namespace`` (function): a fresh namespace (default ServiceAccount
  ready), deleted afterwards.
* ``samp_crds`` (session): the project's CRDs (crds/*.yaml) installed and
  Established; returns their names.
* ``gateway_api_crds`` / ``prometheus_operator_crds`` (session): third-party
  CRDs (Gateway API standard channel; ServiceMonitor, PodMonitor,
  PrometheusRule) installed; return their names.
* ``pod_fails`` (session): ``controlplane.pod_fails``, marks a Job, pod
  template or Pod dict so KWOK fails its pod(s).
* ``operator_rbac`` (function): ``operator_rbac(rules)`` sets the operator
  identity's ClusterRole; reset to no rules after the test.

Tests using ``cluster`` get the ``cluster`` marker automatically. Binaries are
built (tests/cluster/build.sh) once, after collection and before any test
timeout starts, when a selected test needs them. ``SAMP_SKIP_CLUSTER_TESTS=1``
skips those tests instead; nothing else skips them: a failed build fails them.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import controlplane
import pytest
from controlplane import ControlPlane, ControlPlaneError

SKIP_ENV = "SAMP_SKIP_CLUSTER_TESTS"
REPO = Path(__file__).resolve().parents[2]
_build_error: dict[str, str] = {}  # "message" when the build failed


def _skip_requested() -> bool:
    return os.environ.get(SKIP_ENV) == "1"


def register_marker(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: needs the real Kubernetes control plane of tests/cluster (etcd, "
        "kube-apiserver, kube-controller-manager, kube-scheduler, KWOK); skipped only with "
        "SAMP_SKIP_CLUSTER_TESTS=1",
    )


def mark_cluster_items(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def build_if_needed(session: pytest.Session) -> None:
    """Build the binaries before the first test (outside per-test timeouts)."""
    if _skip_requested() or session.config.option.collectonly:
        return
    if not any("cluster" in getattr(i, "fixturenames", ()) for i in session.items):
        return
    log = Path(session.config.rootpath) / ".pytest_cache" / "samp-cluster-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        controlplane.ensure_binaries(log)
    except ControlPlaneError as exc:
        _build_error["message"] = str(exc)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if _skip_requested():
        pytest.skip(f"{SKIP_ENV}=1: tests against the real control plane are skipped")
    if _build_error:
        pytest.fail(f"building the control plane failed:\n{_build_error['message']}", pytrace=False)
    controlplane.ensure_binaries()  # no-op when built by the collection hook
    cp = ControlPlane(tmp_path_factory.mktemp("samp-cluster"))
    try:
        cp.start()
    except ControlPlaneError as exc:
        pytest.fail(f"starting the control plane failed: {exc}", pytrace=False)
    pids = dict(cp.pids())
    yield cp
    cp.stop()
    left = [f"{name} (pid {pid})" for name, pid in pids.items() if _alive(pid)]
    assert not left, f"control-plane processes still running after stop: {left}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="session")
def cluster_api(cluster: ControlPlane) -> Any:
    return cluster.api_client


@pytest.fixture
def cluster_namespace(cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    cluster.ensure_namespace(name)
    cluster.wait_default_service_account(name)
    yield name
    cluster.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def operator_rbac(cluster: ControlPlane) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    yield cluster.set_operator_rules
    cluster.set_operator_rules([])


@pytest.fixture(scope="session")
def samp_crds(cluster: ControlPlane) -> list[str]:
    files = sorted((REPO / "crds").glob("*.yaml"))
    if not files:
        pytest.fail(f"no CRD files in {REPO / 'crds'}", pytrace=False)
    return cluster.install_crds(files)


@pytest.fixture(scope="session")
def gateway_api_crds(cluster: ControlPlane) -> list[str]:
    return cluster.install_gateway_api()


@pytest.fixture(scope="session")
def prometheus_operator_crds(cluster: ControlPlane) -> list[str]:
    return cluster.install_prometheus_operator_crds()


@pytest.fixture(scope="session")
def pod_fails() -> Callable[..., dict[str, Any]]:
    """``pod_fails(job_or_template, exit_code=1, reason="Error", message="", run_duration=…)``."""
    return controlplane.pod_fails
