"""The operator under exactly the chart's identity and rules, on the real control plane:
quantize to Evaluated, GitOps no-drift (server-side apply as Argo CD does), the real
`kubectl get qm` table, and which API calls the operator really makes (audit log)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from operator_harness import Api, JobRuntime, Operator, qm_manifest, wait_for
from shipping_cluster import (
    allows,
    audit_offset,
    audited_calls,
    fresh_leader_election,
    label,
)

pytestmark = pytest.mark.cluster

ARGO = "argocd-controller"  # Argo CD's field manager with ServerSideApply=true
# Rules only the canary half uses: `--no-canary` never calls them (tests/rollout's
# test_rollout_cluster.py covers them under vLLM).
NOT_IN_QUANTIZE_PATH = {"apps:deployments", "apps:deployments/scale", "apps:deployments/status",
                        "core:services", "gateway.networking.k8s.io:httproutes"}


def managers(obj: dict[str, Any]) -> dict[tuple[str, str, str], Any]:
    return {(m["manager"], m["operation"], m.get("subresource", "")): m["fieldsV1"]
            for m in obj["metadata"]["managedFields"]}


@pytest.mark.parametrize("cluster_wide", [True, False], ids=["cluster-wide", "watchNamespaces"])
def test_operator_under_chart_rbac(cluster_wide: bool, cluster: Any, samp_crds: Any,  # noqa: PLR0917
                                   cluster_namespace: str, operator_rbac: Any,
                                   tmp_path: Path) -> None:
    ns = cluster_namespace
    # The chart's default install (cluster-wide, no --namespace) or watchNamespaces={ns};
    # leader election on, as the chart's Deployment runs it.
    helm_args = [] if cluster_wide else ["--set", f"watchNamespaces={{{ns}}}"]
    rules = cluster.chart_rbac_rules("charts/samp-operator", *helm_args)
    operator_rbac(rules)
    election = fresh_leader_election(cluster, *helm_args)
    api = Api(cluster, ns)
    runtime = JobRuntime(cluster, ns, run_seconds=3).start()
    op = Operator(cluster, [] if cluster_wide else [ns], tmp_path / "operator.log",
                  extra_args=election)
    offset = audit_offset(cluster)
    manifest = qm_manifest("llama", ns, artifacts__cleanupOnDelete=True)
    try:
        api.make_claims("artifacts", "prompts")
        op.start()

        # -- GitOps: apply, apply again: nothing changes. --
        first = cluster.apply(manifest, field_manager=ARGO).to_dict()
        again = cluster.apply(manifest, field_manager=ARGO).to_dict()
        assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"] or (
            again["spec"] == first["spec"] and again["metadata"]["generation"] == 1)

        qm = api.wait_phase("llama", "Evaluated", timeout=120)
        assert qm["metadata"]["generation"] == 1
        assert "samp.dev/cleanup" in str(qm["metadata"].get("finalizers")), qm["metadata"]
        assert qm["status"]["observedGeneration"] == 1
        # -- after the operator worked on it (status, finalizer): applying changes nothing.
        rv = qm["metadata"]["resourceVersion"]
        after = cluster.apply(manifest, field_manager=ARGO).to_dict()
        assert after["metadata"]["resourceVersion"] == rv
        assert after["metadata"]["generation"] == 1 and after["spec"] == first["spec"]
        # Nobody but Argo CD owns a spec field; the operator owns status and its finalizer.
        for (manager, _op, sub), fields in managers(after).items():
            if manager != ARGO:
                assert "f:spec" not in fields, (manager, fields)
            if sub == "status":
                assert set(fields) <= {"f:status"}, (manager, fields)
        assert any(m != ARGO and "f:finalizers" in f.get("f:metadata", {})
                   for (m, _o, _s), f in managers(after).items())
        assert all(m == ARGO for (m, o, _s), f in managers(after).items() if o == "Apply")

        # -- kubectl get qm: the table the operator's status makes. --
        table = cluster.kubectl("get", "qm", "-n", ns).stdout
        wide = cluster.kubectl("get", "qm", "-n", ns, "-o", "wide").stdout
        print(f"$ kubectl get qm\n{table}\n$ kubectl get qm -o wide\n{wide}")
        head, row = table.splitlines()
        assert head.split() == ["NAME", "PHASE", "TARGET", "BITS", "SAVED%", "PPL+%",
                                "P99-RATIO", "AGE"]
        assert re.fullmatch(r"llama\s+Evaluated\s+h100\s+6\.4\s+60\s+0\.5\s+\d+s", row), row
        whead, wrow = wide.splitlines()
        assert whead.split() == ["NAME", "PHASE", "TARGET", "BITS", "SAVED%", "PPL+%",
                                 "P99-RATIO", "AGE", "WEIGHT", "ATTEMPT", "REASON", "ARTIFACT"]
        reason = next(c["reason"] for c in qm["status"]["conditions"] if c["type"] == "Ready")
        assert re.fullmatch(
            r"llama\s+Evaluated\s+h100\s+6\.4\s+60\s+0\.5\s+\d+s\s+"
            rf"{qm['status'].get('attempt', 1)}\s+{reason}\s+"
            r"pvc://artifacts/samp/llama/artifact", wrow), wrow

        # -- a spec change and a deletion, so the run uses the delete paths too. --
        cluster.apply(qm_manifest("llama", ns, calibration__samples=64,
                                  artifacts__cleanupOnDelete=True), field_manager=ARGO)
        wait_for(lambda: (api.qm("llama") or {}).get("status", {}).get("observedGeneration")
                 == 2 and api.phase("llama") == "Evaluated", 120, "generation 2 Evaluated")
        api.delete_qm("llama")
        wait_for(lambda: api.qm("llama") is None, 60, "llama deleted (finalizer released)")
    finally:
        runtime.stop()
        op.stop()
        api.cleanup()
    log = op.logs()
    assert "Traceback" not in log and "Forbidden" not in log, log[-4000:]

    # -- the canary columns: the operator's Evaluated status plus a canary step at 50%, as
    # the canary half writes it (the operator is stopped, so nothing rewrites it). --
    cluster.apply(qm_manifest("canary", ns))
    status = {**qm["status"], "phase": "CanaryProgressing", "attempt": 2,
              "canary": {"step": 1, "weight": 50, "p99Ratio": 1.12,
                         "lastVerdict": "Successful"},
              "conditions": [{**c, "status": "False", "reason": "CanaryProgressing"}
                             if c["type"] == "Ready" else c
                             for c in qm["status"]["conditions"]]}
    code, body = cluster.request(
        "PATCH", f"/apis/samp.dev/v1alpha1/namespaces/{ns}/quantizedmodels/canary/status",
        {"status": status}, headers={"Content-Type": "application/merge-patch+json"})
    assert code == 200, body
    table = cluster.kubectl("get", "qm", "canary", "-n", ns).stdout
    wide = cluster.kubectl("get", "qm", "canary", "-n", ns, "-o", "wide").stdout
    print(f"$ kubectl get qm canary\n{table}\n$ kubectl get qm canary -o wide\n{wide}")
    assert re.fullmatch(r"canary\s+CanaryProgressing\s+h100\s+6\.4\s+60\s+0\.5\s+1\.12\s+\d+s",
                        table.splitlines()[1]), table
    assert re.fullmatch(r"canary\s+CanaryProgressing\s+h100\s+6\.4\s+60\s+0\.5\s+1\.12\s+\d+s\s+"
                        r"50\s+2\s+CanaryProgressing\s+pvc://artifacts/samp/llama/artifact",
                        wide.splitlines()[1]), wide
    assert not runtime.errors, runtime.errors[:5]

    # -- which calls the operator made, and that every rule-verb of the chart was one. --
    calls = audited_calls(cluster, offset)
    print("operator API calls:", *sorted(f"{c} -> {code}" for c, code in calls.items()),
          sep="\n  ")
    denied = {c: code for c, code in calls.items() if code == 403}
    assert not denied, denied
    for c in calls:
        assert any(allows(r, c) for r in rules), f"{c} allowed by no chart rule"
    unused = [f"{label(r)} {v}" for r in rules for v in r["verbs"]
              if not any(allows(r, c, v) for c in calls)]
    unexpected = [u for u in unused if u.split()[0] not in NOT_IN_QUANTIZE_PATH]
    print("rule-verbs not used on the quantize path:", unused)
    assert not unexpected, unexpected
