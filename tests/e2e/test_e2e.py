"""The product whole, on a real node (tests/e2e/node.py): real kubelet, containerd, pods,
images built here, cluster DNS, Services through kube-proxy, Prometheus scraping pods,
the operator installed by its chart, and a client pod sending the public model name to the
public Service. See tests/e2e/README.md for what runs and how long it takes.

Needs root (network namespaces, bridge, mounts), Debian's containerd/runc/CNI plugins and
podman (installed by .ci/system-packages), and the binaries of tests/cluster/build.sh.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from node import preflight

from e2e import NAMESPACE, OPERATOR_NS, E2ECluster, MemorySampler, ensure_images, example, log

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

LOADGEN = "clients"
STAGES = ("cal", "sens", "plan", "export", "eval")


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    if os.environ.get("SAMP_SKIP_E2E"):
        pytest.skip("SAMP_SKIP_E2E is set (CI never sets it)")
    problems = preflight()
    if problems:
        pytest.fail("the real node cannot start here:\n" + "\n".join(problems))
    ensure_images()
    cl = E2ECluster(tmp_path_factory.mktemp("e2e"))
    with MemorySampler() as mem:
        try:
            cl.up()
            cl.install_operator(replicas=1)
            cl.deploy_stable()
            # Clients for the whole module, bounded in time. 4/s keeps the two CPU vLLMs out
            # of saturation on 2 cores (6/s put the stable's P99 at 4.9 s) and still gives
            # the canary's share minRequests=20 in a 20 s window.
            cl.start_loadgen(LOADGEN, rate=4.0, duration=2000)
            yield cl
        finally:
            log(f"node timings: {json.dumps({**cl.node.timings, **cl.timings})}")
            log(
                f"peak memory used on the machine: {mem.peak_kib / 2**20:.2f} GiB "
                f"(before: {mem.base_kib / 2**20:.2f} GiB)"
            )
            cl.kubectl("delete", "job", LOADGEN, "-n", NAMESPACE, check=False)
            cl.down()


def prom_query(cl: E2ECluster, promql: str) -> list[dict[str, Any]]:
    """A PromQL query through the API server's service proxy (Prometheus lives in a pod)."""
    q = urllib.parse.quote(promql)
    out = cl.kubectl(
        "get",
        "--raw",
        f"/api/v1/namespaces/monitoring/services/prometheus:9090/proxy/api/v1/query?query={q}",
    ).stdout
    return list(json.loads(out)["data"]["result"])


def operator_pod(cl: E2ECluster) -> str:
    pods = cl.get("pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=samp-operator")
    running = [
        p["metadata"]["name"]
        for p in pods["items"]
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    assert running, f"no running operator pod: {pods['items']}"
    return running[0]


def test_pods_resolve_services_and_reach_prometheus(e2e: E2ECluster) -> None:
    """Cluster DNS, kube-proxy and pod networking as the operator pod sees them."""
    pod = operator_pod(e2e)
    code = (
        "import socket, urllib.request;"
        "print(socket.gethostbyname('prometheus.monitoring.svc'));"
        "print(urllib.request.urlopen('http://prometheus.monitoring.svc:9090/-/ready',"
        " timeout=10).status)"
    )
    out = e2e.kubectl("exec", "-n", OPERATOR_NS, pod, "--", "python", "-c", code).stdout.split()
    assert out[0].startswith("10.0.0."), out  # a ClusterIP from the service range
    assert out[1] == "200", out
    # Prometheus found the stable vLLM pod through the API and scrapes it. Discovery and the
    # first scrape follow the pod's readiness asynchronously, so the check waits for them.
    deadline = time.monotonic() + 90
    while True:
        up = prom_query(e2e, 'up{served_model="tiny-llama"}')
        if (up and all(r["value"][1] == "1" for r in up)) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert up and all(r["value"][1] == "1" for r in up), up


def _wait_jobs_running(cl: E2ECluster, name: str, stage: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in cl.jobs_of(name):
            if job["metadata"]["name"].endswith(f"-{stage}") and job.get("status", {}).get(
                "active"
            ):
                return job
        time.sleep(1)
    raise TimeoutError(f"no running {stage} Job of {name} after {timeout}s:\n{cl.describe(name)}")


def test_quantize_canary_promote(e2e: E2ECluster) -> None:
    """examples/tiny-cpu.yaml with latency gates this node meets: every stage runs as a
    real pod, the canary serves the clients' traffic under the public model name, and the
    operator promotes it.

    On this 2-core node vLLM's CPU W4A8/W8A8 kernels answer the tiny model slower than
    bf16: P99 x1.75 (95% interval 1.33-2.22 over 590/567 requests), and the whole
    distribution up to x6.4 in the mean while other work ran, which the judge rightly
    rolled back at a 4x allowance. So the gates here are a P99 ratio of 4 and a 30 s
    ceiling, without the judge; the strict test below shows the gates rolling back. Each
    P99 still needs its evidence (500 requests a side), so the steps wait for it."""
    doc = example(p99MaxRatioToStable=4.0, p99MaxSeconds=30.0)
    doc["spec"]["gates"]["judge"] = {"enabled": False}
    name = doc["metadata"]["name"]
    t0 = time.monotonic()
    e2e.apply_manifest(doc)
    obj = e2e.wait_phase(
        name,
        lambda o: o.get("status", {}).get("phase") in ("Promoted", "RolledBack", "Failed"),
        1500,
    )
    st = obj["status"]
    log(
        f"{name}: {st['phase']} after {time.monotonic() - t0:.0f} s; stages "
        f"{e2e.stage_seconds(name)}"
    )
    print(e2e.describe(name))
    assert st["phase"] == "Promoted", e2e.describe(name)
    # every stage ran as a real pod and reported through its termination message
    jobs = {j["metadata"]["name"]: j for j in e2e.jobs_of(name)}
    for stage in STAGES:
        job = next(j for n, j in jobs.items() if n.endswith(f"-{stage}"))
        assert job["status"].get("succeeded") == 1, job["status"]
    assert st["accuracy"]["perplexityIncreasePercent"] is not None
    # the canary answered real clients that sent the public name, and nothing failed
    served = prom_query(e2e, 'sum(vllm:request_success_total{model_name="tiny-llama-canary"})')
    assert served and float(served[0]["value"][1]) > 0, "the canary never served a client"
    http4xx = prom_query(e2e, 'sum(http_requests_total{status=~"4.."}) or vector(0)')
    assert float(http4xx[0]["value"][1]) == 0, "clients got 4xx answers"
    # the stable now serves the checkpoint the operator exported
    stable = e2e.get("deployment", "tiny-llama-stable", "-n", NAMESPACE)
    args = stable["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any("/artifacts/tiny/out" in a for a in args), args
    report = e2e.loadgen_report(LOADGEN)
    log(f"clients so far: {report}")
    assert report and report["ok"] > 0


def test_failing_canary_rolls_back_and_operator_restart_resumes(e2e: E2ECluster) -> None:
    """A gate the canary cannot meet ends RolledBack with the reason in status and Events;
    the operator pod, deleted while a stage runs, comes back and adopts the running Job."""
    doc = example("tiny-llama-strict", p99MaxRatioToStable=0.2)
    name = doc["metadata"]["name"]
    e2e.apply_manifest(doc)
    job = _wait_jobs_running(e2e, name, "sens", 600)
    uids_before = {j["metadata"]["name"]: j["metadata"]["uid"] for j in e2e.jobs_of(name)}
    victim = operator_pod(e2e)
    e2e.kubectl("delete", "pod", victim, "-n", OPERATOR_NS, "--wait=true", timeout=120)
    log(f"deleted operator pod {victim} while {job['metadata']['name']} ran")
    obj = e2e.wait_phase(
        name,
        lambda o: o.get("status", {}).get("phase") in ("Promoted", "RolledBack", "Failed"),
        1500,
    )
    st = obj["status"]
    print(e2e.describe(name))
    assert operator_pod(e2e) != victim
    assert st["phase"] == "RolledBack", e2e.describe(name)
    ready = next(c for c in st["conditions"] if c["type"] == "RolledBack")
    # a P99 gate once it has 500 requests a side, the judge's rank test before (issue 17)
    assert "p99" in ready["message"].lower() or "gate judge" in ready["message"], ready
    events = e2e.events_of(name)
    assert any("p99" in e.lower() or "judge" in e for e in events), events
    # no stage ran twice: the Jobs that existed before the restart are the same objects
    jobs = e2e.jobs_of(name)
    names = [j["metadata"]["name"] for j in jobs]
    assert len(names) == len(set(names))
    for j in jobs:
        if j["metadata"]["name"] in uids_before:
            assert j["metadata"]["uid"] == uids_before[j["metadata"]["name"]]
    # the canary is gone, the stable still serves
    canary = e2e.kubectl("get", "deployment", f"{name}-canary", "-n", NAMESPACE, check=False)
    assert canary.returncode != 0
    stable = e2e.get("deployment", "tiny-llama-stable", "-n", NAMESPACE)
    assert stable["status"].get("readyReplicas", 0) >= 1


def test_clients_saw_no_errors(e2e: E2ECluster) -> None:
    """Over both rollouts, every client request was answered 2xx."""
    report = e2e.loadgen_report(LOADGEN)
    log(f"clients over the module: {report}")
    assert report is not None and report["total"] > 0
    assert report["errors"] == 0, report
