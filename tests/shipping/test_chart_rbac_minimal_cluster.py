"""The chart's role holds nothing unneeded: with each rule of the rendered role removed in
turn, the real operator (cluster-wide, leader election on, the chart's default install) runs one
short quantize-and-delete scenario, and the API server refuses it a call only that rule
granted (a 403 in the kube-apiserver audit log); the test prints what then broke (never
ready, stuck before Evaluated, deletion stuck) and, but for the best-effort calls
(BEST_EFFORT), asserts the scenario did break.

Every verb of every rule is shown used by test_chart_operator_cluster.py (audit log of a
full run); the canary-only rules (Deployments, Services, HTTPRoutes) are used by the
canary path (tests/rollout/test_rollout_cluster.py, vLLM) and are not removed here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from chart_rules_plugin import operator_unbound
from operator_harness import Api, JobRuntime, Operator, qm_manifest
from shipping_cluster import (
    CHART,
    audit_offset,
    audited_calls,
    fresh_leader_election,
    label,
    without,
)

pytestmark = pytest.mark.cluster

CANARY_ONLY = {"apps:deployments", "apps:deployments/scale", "apps:deployments/status",
               "core:services", "gateway.networking.k8s.io:httproutes"}


def _chart_rules(*helm_args: str) -> list[dict[str, Any]]:
    # Rendered once at collection, so each rule is a test id; the test renders again with
    # the real helm against the cluster and looks its rule up by the same label.
    import subprocess

    import yaml

    helm = sorted((Path.home() / ".cache/samp-operator/cluster-bin").glob("*/helm"))
    if not helm:
        return []
    out = subprocess.run([str(helm[-1]), "template", "samp", str(CHART), "--kube-version",
                          "v1.35.0", *helm_args], capture_output=True, text=True,
                         check=False).stdout
    rules: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(out):
        if doc and doc.get("kind") in ("ClusterRole", "Role") and not operator_unbound(doc):
            rules += doc.get("rules") or []
    return rules


NAMESPACED = ("--set", "watchNamespaces={x}")
_DEFAULT = {label(r) for r in _chart_rules()}
# Every rule of the default (cluster-wide) render, and the rules only a watchNamespaces
# render has (the namespaces Kopf observes).
CASES = [("cluster-wide", n) for n in sorted(_DEFAULT - CANARY_ONLY)] + [
    ("watchNamespaces", n) for n in sorted({label(r) for r in _chart_rules(*NAMESPACED)}
                                          - _DEFAULT - CANARY_ONLY)]
# Best-effort calls: without them the scenario still ends, but the call is refused.
# Events: the operator logs and goes on. CRDs: Kopf retries the listing for about a
# minute (ERROR logs), then serves what API discovery shows and never notices a CRD
# change until restarted. (Namespaces, watchNamespaces only, are not best-effort: Kopf
# serves nothing while it retries them, about a minute.) Pod logs: status.progress only
# (a refused read logs one warning per resource and the stage goes on).
BEST_EFFORT = {"core:events", "apiextensions.k8s.io:customresourcedefinitions",
               "core:pods/log"}


def _denied(cluster: Any, offset: int, rule: dict[str, Any]) -> list[Any]:
    return [c for c, code in audited_calls(cluster, offset).items()
            if code == 403 and c[1] in rule["apiGroups"] and c[2] in rule["resources"]]


@pytest.mark.parametrize(("mode", "name"), CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_removing_a_rule_breaks_the_operator(  # noqa: PLR0917 (fixtures)
        mode: str, name: str, cluster: Any, samp_crds: Any, cluster_namespace: str,
        operator_rbac: Any, tmp_path: Path) -> None:
    ns = cluster_namespace
    helm_args = [] if mode == "cluster-wide" else ["--set", f"watchNamespaces={{{ns}}}"]
    rules = cluster.chart_rbac_rules("charts/samp-operator", *helm_args)
    index = next(i for i, r in enumerate(rules) if label(r) == name)
    rule = rules[index]
    operator_rbac(without(rules, index))
    election = fresh_leader_election(cluster, *helm_args)
    api = Api(cluster, ns)
    runtime = JobRuntime(cluster, ns, run_seconds=3 if name == "core:pods/log" else 0).start()
    op = Operator(cluster, [] if mode == "cluster-wide" else [ns], tmp_path / "operator.log",
                  extra_args=election)
    offset = audit_offset(cluster)
    outcome = "reached Evaluated and was deleted"
    try:
        api.make_claims("artifacts", "prompts")
        try:
            op.start(timeout=20)
        except AssertionError:
            outcome = "operator never became ready"
        else:
            api.create_qm(qm_manifest("m", ns, artifacts__cleanupOnDelete=True))
            # Until Evaluated, or 8 s after the first refusal (enough to see the operator
            # not recover), at most 25 s.
            start = time.monotonic()
            deadline = start + 25
            while api.phase("m") != "Evaluated" and time.monotonic() < deadline:
                if _denied(cluster, offset, rule):
                    deadline = min(deadline, time.monotonic() + 8)
                time.sleep(0.5)
            if api.phase("m") != "Evaluated":
                outcome = f"stuck at {api.phase('m')}"
            else:
                api.delete_qm("m")
                deadline = time.monotonic() + 15
                while api.qm("m") is not None and time.monotonic() < deadline:
                    time.sleep(0.5)
                if api.qm("m") is not None:
                    outcome = "deletion stuck"
            time.sleep(1)  # the audit backend writes after the response
    finally:
        runtime.stop()
        op.stop()
        api.cleanup()
        if api.qm("m") is not None:  # release our finalizer so the namespace can go
            cluster.request("PATCH", f"/apis/samp.dev/v1alpha1/namespaces/{ns}/"
                            "quantizedmodels/m", {"metadata": {"finalizers": None}},
                            headers={"Content-Type": "application/merge-patch+json"})
    denied = _denied(cluster, offset, rule)
    print(f"without {name} {rule['verbs']}: {outcome}; denied: {denied}")
    assert denied, f"nothing needed {name}: {outcome}"
    if name not in BEST_EFFORT:
        assert outcome != "reached Evaluated and was deleted", name
