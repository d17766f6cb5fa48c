"""High availability on the real control plane: the chart's default of two replicas, as two
`samp operator run` processes with distinct identities electing a leader over a
coordination.k8s.io Lease (samp_operator.leader), with the client-go timings the chart
uses (lease 15 s, renew deadline 10 s, retry 2 s).

Prints the failover figures: from the leader's SIGKILL (or SIGTERM, or losing the Lease)
to the next stage Job created by the other replica. Run with
``pytest tests/operator/test_leader_cluster.py -s``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OPERATOR_RULES, Api, JobRuntime, Operator, qm_manifest, wait_for

from samp_operator.main import EXIT_LEASE_LOST

LEASE_RULE = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
              "verbs": ["get", "create", "update"]}
LEASE = "samp-operator"


def leased(cluster: Any, ns: str, tmp_path: Path, identity: str) -> Operator:
    return Operator(cluster, [ns], tmp_path / f"{identity}.log", extra_args=[
        "--leader-election-namespace", ns, "--leader-election-lease", LEASE,
        "--leader-election-identity", identity])


@pytest.fixture
def replicas(cluster: Any, samp_crds: Any, cluster_namespace: str, operator_rbac: Any,
             tmp_path: Path) -> Iterator[tuple[Operator, Operator, Api]]:
    operator_rbac([*OPERATOR_RULES, LEASE_RULE])
    ns = cluster_namespace
    a, b = leased(cluster, ns, tmp_path, "op-a"), leased(cluster, ns, tmp_path, "op-b")
    runtime = JobRuntime(cluster, ns)
    runtime.policy = lambda pod: None  # every stage keeps running: Jobs are the signal
    runtime.start()
    api = Api(cluster, ns)
    try:
        api.make_claims("artifacts", "prompts")
        a.start()
        wait_for(lambda: holder(api) == "op-a", 10, "op-a to hold the Lease")
        b.start()  # ready as a follower once it has read the Lease
        yield a, b, api
    finally:
        api.cleanup()
        runtime.stop()
        for op in (a, b):
            op.stop()
            log = op.logs()
            if "Traceback" in log:
                print(log[-4000:])


def holder(api: Api) -> str | None:
    status, body = api.cluster.request(
        "GET", f"/apis/coordination.k8s.io/v1/namespaces/{api.ns}/leases/{LEASE}")
    return body["spec"].get("holderIdentity") if status == 200 else None


def first_job_after(api: Api, name: str, start: float, timeout: float = 60) -> float:
    wait_for(lambda: api.jobs(name), timeout, f"a Job of {name}", interval=0.1)
    return time.monotonic() - start


def created_jobs(op: Operator) -> int:
    """Jobs this replica created (engine log lines "<ns>/<name>: created Job <job>")."""
    return len(re.findall(r"/[^ ]+: created Job ", op.logs()))


def test_two_replicas_one_leader_and_failover_on_kill(
        replicas: tuple[Operator, Operator, Api]) -> None:
    a, b, api = replicas
    # Both replicas run; only the leader acts, and nobody pauses anybody.
    api.create_qm(qm_manifest("first", api.ns))
    served = first_job_after(api, "first", time.monotonic(), timeout=30)
    assert created_jobs(a) == 1 and created_jobs(b) == 0, (a.logs()[-2000:], b.logs()[-2000:])
    assert "Pausing" not in a.logs() + b.logs()
    assert "samp_leader 1.0" in a.metrics() and "samp_leader 0.0" in b.metrics()

    a.kill()
    killed = time.monotonic()
    api.create_qm(qm_manifest("second", api.ns))
    failover = first_job_after(api, "second", killed)
    assert holder(api) == "op-b"
    assert created_jobs(b) == 1  # the held first Job was adopted, not created again
    assert [j["metadata"]["name"] for j in api.jobs("first")] == ["first-g1-cal"]
    print(f"\nfailover figures: leader SIGKILLed -> next Job by the other replica "
          f"{failover:.1f} s (lease 15 s, renew deadline 10 s, retry 2 s); "
          f"apply -> Job with both replicas up {served:.2f} s")
    # Bounded by the lease duration plus one retry period, plus Kopf's start and a reconcile.
    assert failover < 15 + 2 + 10


def test_sigterm_hands_the_lease_over_at_once(
        replicas: tuple[Operator, Operator, Api]) -> None:
    a, b, api = replicas
    a.stop()  # SIGTERM: Kopf stops, the Lease is released
    stopped = time.monotonic()
    assert a.proc is not None and a.proc.returncode == 0, a.logs()[-2000:]
    api.create_qm(qm_manifest("third", api.ns))
    handover = first_job_after(api, "third", stopped)
    assert holder(api) == "op-b" and "released lease" in a.logs()
    assert created_jobs(b) == 1
    print(f"\nfailover figures: leader SIGTERMed (releases the Lease) -> next Job by the "
          f"other replica {handover:.1f} s")
    assert handover < 2 + 10


def test_a_leader_that_loses_the_lease_stops_at_once(
        replicas: tuple[Operator, Operator, Api]) -> None:
    a, b, api = replicas
    b.stop()  # only the leader is left, so nobody takes over behind the intruder
    status, lease = api.cluster.request(
        "GET", f"/apis/coordination.k8s.io/v1/namespaces/{api.ns}/leases/{LEASE}")
    assert status == 200, lease
    lease["spec"]["holderIdentity"] = "intruder"  # e.g. a replica across a partition
    lease["spec"]["leaseDurationSeconds"] = 3600
    status, body = api.cluster.request(
        "PUT", f"/apis/coordination.k8s.io/v1/namespaces/{api.ns}/leases/{LEASE}", lease)
    assert status == 200, body
    taken = time.monotonic()
    assert a.proc is not None
    a.proc.wait(15)
    stood_down = time.monotonic() - taken
    assert a.proc.returncode == EXIT_LEASE_LOST, a.logs()[-2000:]
    assert "lost the leader lease (the lease is held by intruder)" in a.logs()
    api.create_qm(qm_manifest("orphan", api.ns))
    time.sleep(3)
    assert not api.jobs("orphan") and holder(api) == "intruder"
    print(f"\nfailover figures: Lease taken from the leader -> leader stood down and exited "
          f"{stood_down:.1f} s")
    assert stood_down < 2 + 5  # one retry period (+ one renewal request)
