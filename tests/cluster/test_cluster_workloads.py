"""Real controllers at work: the Job controller completes and fails Jobs,
the scheduler places GPU pods, Deployments roll out, the garbage collector
follows ownerReferences, RBAC gates the operator identity."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import CPU_NODE, FAIL_LABEL, GPU_NODE, ControlPlane, pod_fails, wait_for
from kubernetes import client

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


def _job(
    name: str, *, gpus: int = 0, backoff_limit: int = 0, run_duration: str | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "work",
        "image": "registry.invalid/samp/jobs:test",
        "command": ["python", "-m", "samp_jobs.calibrate"],
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    tmpl: dict[str, Any] = {
        "metadata": {"labels": {"app": name}},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }
    if run_duration:
        tmpl["metadata"]["annotations"] = {"samp.dev/kwok-run-duration": run_duration}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, "template": tmpl},
    }


def _job_conditions(
    batch: client.BatchV1Api, ns: str, name: str
) -> dict[str, client.V1JobCondition]:
    job = batch.read_namespaced_job_status(name, ns)
    return {c.type: c for c in (job.status.conditions or []) if c.status == "True"}


def _wait_job(
    batch: client.BatchV1Api, ns: str, name: str, cond: str, timeout: float = 90
) -> client.V1JobCondition:
    return wait_for(
        lambda: _job_conditions(batch, ns, name).get(cond), timeout, f"Job {ns}/{name} {cond}"
    )


def _pods(core: client.CoreV1Api, ns: str, selector: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(ns, label_selector=selector).items


def test_job_completes_through_the_job_controller(
    cluster: ControlPlane, cluster_api: Any, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    batch, core = client.BatchV1Api(cluster_api), client.CoreV1Api(cluster_api)
    batch.create_namespaced_job(ns, _job("calibrate", gpus=4, run_duration="2s"))

    # the pod is scheduled onto the GPU node by the real scheduler and runs ~2s
    running = wait_for(
        lambda: [p for p in _pods(core, ns, "app=calibrate") if p.status.phase == "Running"],
        60,
        "calibrate pod Running",
    )
    assert running[0].spec.node_name == GPU_NODE
    assert not _job_conditions(batch, ns, "calibrate").get("Complete")

    done = _wait_job(batch, ns, "calibrate", "Complete")
    assert done.status == "True"
    job = batch.read_namespaced_job_status("calibrate", ns)
    assert job.status.succeeded == 1 and not job.status.failed
    pod = _pods(core, ns, "app=calibrate")[0]
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


def test_job_fails_when_its_pod_fails(
    cluster: ControlPlane, cluster_api: Any, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    batch, core = client.BatchV1Api(cluster_api), client.CoreV1Api(cluster_api)
    job = pod_fails(_job("export"), exit_code=137, reason="OOMKilled", message="out of GPU memory")
    assert job["spec"]["template"]["metadata"]["labels"][FAIL_LABEL] == "true"
    batch.create_namespaced_job(ns, job)

    failed = _wait_job(batch, ns, "export", "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert not _job_conditions(batch, ns, "export").get("Complete")
    pods = _pods(core, ns, "app=export")
    assert len(pods) == 1 and pods[0].status.phase == "Failed"
    term = pods[0].status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason, term.message) == (137, "OOMKilled", "out of GPU memory")


def test_job_retries_then_fails_after_backoff_limit(
    cluster: ControlPlane, cluster_api: Any, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    batch = client.BatchV1Api(cluster_api)
    job = pod_fails(_job("evaluate", backoff_limit=1))
    # one retry after the Job controller's pod backoff (10s); the podFailurePolicy
    # rule (Count on exit code 1) is validated and honoured by the real controller
    job["spec"]["podFailurePolicy"] = {
        "rules": [{"action": "Count", "onExitCodes": {"operator": "In", "values": [1]}}]
    }
    batch.create_namespaced_job(ns, job)
    _wait_job(batch, ns, "evaluate", "Failed", timeout=120)
    assert batch.read_namespaced_job_status("evaluate", ns).status.failed == 2


def test_gpu_capacity_is_enforced_by_the_scheduler(
    cluster: ControlPlane, cluster_api: Any, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    core = client.CoreV1Api(cluster_api)
    node = core.read_node(GPU_NODE)
    assert node.status.allocatable["nvidia.com/gpu"] == "8"
    assert "nvidia.com/gpu" not in (core.read_node(CPU_NODE).status.allocatable or {})

    def pod(name: str, gpus: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "registry.invalid/x",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                    }
                ]
            },
        }

    core.create_namespaced_pod(ns, pod("too-big", 9))
    ev = wait_for(
        lambda: [
            e
            for e in core.list_namespaced_event(
                ns, field_selector="involvedObject.name=too-big"
            ).items
            if e.reason == "FailedScheduling"
        ],
        60,
        "FailedScheduling event",
    )
    assert "Insufficient nvidia.com/gpu" in ev[0].message
    assert core.read_namespaced_pod("too-big", ns).status.phase == "Pending"


def test_deployment_rolls_out_and_failing_pods_crashloop(
    cluster: ControlPlane, cluster_api: Any, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    apps, core = client.AppsV1Api(cluster_api), client.CoreV1Api(cluster_api)

    def deployment(name: str, fail: bool = False) -> dict[str, Any]:
        tmpl: dict[str, Any] = {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "containers": [
                    {
                        "name": "vllm",
                        "image": "vllm/vllm-openai:v0.11.0",
                        "ports": [{"containerPort": 8000}],
                    }
                ]
            },
        }
        if fail:
            pod_fails(tmpl, reason="Error", message="CUDA error: no kernel image")
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": tmpl},
        }

    apps.create_namespaced_deployment(ns, deployment("stable"))
    apps.create_namespaced_deployment(ns, deployment("canary", fail=True))

    def available(name: str) -> bool:
        d = apps.read_namespaced_deployment_status(name, ns)
        return (d.status.available_replicas or 0) == 2

    wait_for(lambda: available("stable"), 90, "Deployment stable available")
    crashing = wait_for(
        lambda: [
            p
            for p in _pods(core, ns, "app=canary")
            if p.status.container_statuses
            and p.status.container_statuses[0].state.waiting
            and p.status.container_statuses[0].state.waiting.reason == "CrashLoopBackOff"
        ],
        60,
        "canary pods in CrashLoopBackOff",
    )
    assert (
        crashing[0].status.container_statuses[0].last_state.terminated.message
        == "CUDA error: no kernel image"
    )
    d = apps.read_namespaced_deployment_status("canary", ns)
    assert not d.status.available_replicas


def test_deleting_an_owner_garbage_collects_children(
    cluster: ControlPlane, cluster_api: Any, samp_crds: list[str], cluster_namespace: str
) -> None:
    """QuantizedModel -> Job -> Pod and QuantizedModel -> ConfigMap, as the operator wires them."""
    ns = cluster_namespace
    batch, core = client.BatchV1Api(cluster_api), client.CoreV1Api(cluster_api)
    custom = client.CustomObjectsApi(cluster_api)
    example = next(p for p in sorted((REPO / "examples").glob("*.yaml")) if "tiny" in p.name)
    qm = yaml.safe_load(example.read_text())
    qm["metadata"] = {"name": "owner", "namespace": ns}
    owner = custom.create_namespaced_custom_object(
        "samp.dev", "v1alpha1", ns, "quantizedmodels", qm
    )
    ref = {
        "apiVersion": "samp.dev/v1alpha1",
        "kind": "QuantizedModel",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }

    job = _job("owned-job", run_duration="600s")
    job["metadata"]["ownerReferences"] = [ref]
    batch.create_namespaced_job(ns, job)
    core.create_namespaced_config_map(
        ns,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "owned-plan", "ownerReferences": [ref]},
            "data": {"plan.json": "{}"},
        },
    )
    wait_for(lambda: _pods(core, ns, "app=owned-job"), 60, "owned Job's pod")

    custom.delete_namespaced_custom_object(
        "samp.dev",
        "v1alpha1",
        ns,
        "quantizedmodels",
        "owner",
        body=client.V1DeleteOptions(propagation_policy="Foreground"),
    )

    def gone() -> bool:
        names = [j.metadata.name for j in batch.list_namespaced_job(ns).items]
        cms = [c.metadata.name for c in core.list_namespaced_config_map(ns).items]
        pods = _pods(core, ns, "app=owned-job")
        qms = custom.list_namespaced_custom_object("samp.dev", "v1alpha1", ns, "quantizedmodels")[
            "items"
        ]
        return not names and "owned-plan" not in cms and not pods and not qms

    # the GC discovers new CRDs on its 30s resync, hence the generous timeout
    t0 = time.monotonic()
    wait_for(
        gone, 150, "garbage collection of the QuantizedModel's Job, Pod and ConfigMap", interval=1
    )
    print(f"garbage collected in {time.monotonic() - t0:.1f}s")


def test_deleting_a_deployment_cascades_to_replicasets_and_pods(
    cluster: ControlPlane, cluster_api: Any, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    apps, core = client.AppsV1Api(cluster_api), client.CoreV1Api(cluster_api)
    apps.create_namespaced_deployment(
        ns,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "x"}]},
                },
            },
        },
    )
    wait_for(
        lambda: apps.list_namespaced_replica_set(ns).items and _pods(core, ns, "app=web"),
        60,
        "rs and pod",
    )
    apps.delete_namespaced_deployment("web", ns)  # default: background propagation
    wait_for(
        lambda: not apps.list_namespaced_replica_set(ns).items and not _pods(core, ns, "app=web"),
        90,
        "ReplicaSet and Pod garbage collected",
        interval=0.5,
    )


def test_operator_identity_is_limited_by_rbac(
    cluster: ControlPlane, samp_crds: list[str], cluster_namespace: str, operator_rbac: Any
) -> None:
    ns = cluster_namespace
    op = cluster.new_api_client(cluster.operator_kubeconfig)
    custom, core = client.CustomObjectsApi(op), client.CoreV1Api(op)
    try:
        with pytest.raises(client.ApiException) as exc:
            custom.list_namespaced_custom_object("samp.dev", "v1alpha1", ns, "quantizedmodels")
        assert exc.value.status == 403
        assert cluster.operator_username in exc.value.body

        operator_rbac(
            [
                {
                    "apiGroups": ["samp.dev"],
                    "resources": ["quantizedmodels"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["samp.dev"],
                    "resources": ["quantizedmodels/status"],
                    "verbs": ["get", "patch"],
                },
            ]
        )
        assert (
            custom.list_namespaced_custom_object("samp.dev", "v1alpha1", ns, "quantizedmodels")[
                "items"
            ]
            == []
        )
        assert cluster.operator_can(
            "patch", "quantizedmodels", group="samp.dev", subresource="status"
        )
        assert not cluster.operator_can("patch", "quantizedmodels", group="samp.dev")
        with pytest.raises(client.ApiException) as exc:
            core.list_namespaced_secret(ns)
        assert exc.value.status == 403

        operator_rbac([])  # revoke
        wait_for(
            lambda: not cluster.operator_can("list", "quantizedmodels", group="samp.dev"),
            30,
            "revocation",
        )
    finally:
        op.close()


def test_canary_traffic_split_httproute_is_accepted(
    cluster: ControlPlane, gateway_api_crds: list[str], cluster_namespace: str
) -> None:
    """The Gateway API HTTPRoute a canary writes (weighted backendRefs), real CRD schema."""
    assert "httproutes.gateway.networking.k8s.io" in gateway_api_crds
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "llama3-70b", "namespace": cluster_namespace},
        "spec": {
            "parentRefs": [{"name": "llm-gateway"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "llama3-70b", "port": 8000, "weight": 95},
                        {"name": "llama3-70b-canary", "port": 8000, "weight": 5},
                    ]
                }
            ],
        },
    }
    got = cluster.apply(route).to_dict()
    assert [b["weight"] for b in got["spec"]["rules"][0]["backendRefs"]] == [95, 5]
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = -1  # the schema says minimum 0
    with pytest.raises(Exception) as exc:
        cluster.apply(route)
    assert "weight" in str(getattr(exc.value, "body", exc.value))


def test_held_job_pod_is_released_by_patching_it(
    cluster: ControlPlane, cluster_api: Any, cluster_namespace: str
) -> None:
    """Hold Job pods with run-duration 1h, release one to succeed with a termination
    message and one to fail (the operator harness drives stages this way)."""
    ns = cluster_namespace
    batch, core = client.BatchV1Api(cluster_api), client.CoreV1Api(cluster_api)
    for name in ("held-ok", "held-fail"):
        batch.create_namespaced_job(ns, _job(name, run_duration="1h"))
    pods = {}
    for name in ("held-ok", "held-fail"):
        pods[name] = wait_for(
            lambda name=name: [
                p for p in _pods(core, ns, f"app={name}") if p.status.phase == "Running"
            ],
            60,
            f"{name} pod Running",
        )[0].metadata.name
    time.sleep(2)
    assert not _job_conditions(batch, ns, "held-ok")  # still held

    summary = '{"stage": "calibrate", "samples": 64}'
    core.patch_namespaced_pod(
        pods["held-ok"],
        ns,
        {
            "metadata": {
                "annotations": {
                    "samp.dev/kwok-run-duration": "0s",
                    "samp.dev/kwok-message": summary,
                }
            }
        },
    )
    core.patch_namespaced_pod(
        pods["held-fail"],
        ns,
        {
            "metadata": {
                "labels": {FAIL_LABEL: "true"},
                "annotations": {
                    "samp.dev/kwok-run-duration": "0s",
                    "samp.dev/kwok-message": "no GPU",
                },
            }
        },
    )

    _wait_job(batch, ns, "held-ok", "Complete", timeout=30)
    _wait_job(batch, ns, "held-fail", "Failed", timeout=30)
    ok = core.read_namespaced_pod(pods["held-ok"], ns).status.container_statuses[0].state.terminated
    assert (ok.exit_code, ok.reason, ok.message) == (0, "Completed", summary)
    bad = (
        core.read_namespaced_pod(pods["held-fail"], ns)
        .status.container_statuses[0]
        .state.terminated
    )
    assert (bad.exit_code, bad.message) == (1, "no GPU")


def test_pod_logs_come_through_the_api_server(
    cluster: ControlPlane, cluster_api: Any, cluster_namespace: str
) -> None:
    """`pods/log` reaches KWOK as it reaches a kubelet (the node's address and port), and
    KWOK serves what the test wrote to cluster.pod_log_file, tailLines honoured."""
    ns = cluster_namespace
    batch, core = client.BatchV1Api(cluster_api), client.CoreV1Api(cluster_api)
    batch.create_namespaced_job(ns, _job("logged", run_duration="1h"))
    pod = wait_for(
        lambda: [p for p in _pods(core, ns, "app=logged") if p.status.phase == "Running"],
        60, "logged pod Running",
    )[0].metadata.name
    marker = f"marker-{ns}"
    cluster.write_pod_log("first line", f'{{"event": "{marker}", "n": 1}}',
                          f'{{"event": "{marker}", "n": 2}}')
    text = core.read_namespaced_pod_log(pod, ns, container="work", tail_lines=2)
    assert text.splitlines() == [f'{{"event": "{marker}", "n": 1}}',
                                 f'{{"event": "{marker}", "n": 2}}'], text
    out = cluster.kubectl("logs", "-n", ns, pod, "--tail", "1").stdout
    assert out.strip() == f'{{"event": "{marker}", "n": 2}}'
