"""Helpers of the shipping tests that run on the real control plane (tests/cluster):
the chart's rendered RBAC, its leader-election arguments, and the operator identity's
audited calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "samp-operator"

Call = tuple[str, str, str]  # (verb, apiGroup, resource[/subresource])


def rendered(cluster: Any, *helm_args: str) -> list[dict[str, Any]]:
    out = cluster.helm("template", "samp", str(CHART), "--namespace",
                       cluster.operator_namespace, "--kube-version",
                       cluster.versions["K8S_VERSION"], *helm_args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def fresh_leader_election(cluster: Any, *helm_args: str) -> list[str]:
    """The rendered Deployment's leader-election arguments, for `samp operator run` here
    (its Lease in the release namespace, the only one the chart's Role grants, under the
    chart's name), with no Lease left by an earlier test: as after a fresh install."""
    (deploy,) = [d for d in rendered(cluster, *helm_args) if d["kind"] == "Deployment"]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    out = [a.replace("$(SAMP_OPERATOR_NAMESPACE)", cluster.operator_namespace)
           for a in args if a.startswith("--leader-election-")]
    lease = next(a.split("=", 1)[1] for a in out if a.startswith("--leader-election-lease="))
    cluster.request("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/"
                    f"{cluster.operator_namespace}/leases/{lease}")
    return out


def audit_offset(cluster: Any) -> int:
    log = Path(cluster.audit_log)
    return log.stat().st_size if log.exists() else 0


def audited_calls(cluster: Any, offset: int = 0) -> dict[Call, int]:
    """Resource requests of the operator identity since ``offset`` -> the status codes
    (the last one seen), from the kube-apiserver audit log (tests/cluster/controlplane.py)."""
    calls: dict[Call, int] = {}
    with Path(cluster.audit_log).open("rb") as f:
        f.seek(offset)
        for line in f:
            ev = json.loads(line)
            ref = ev.get("objectRef")
            if ev.get("user", {}).get("username") != cluster.operator_username or not ref:
                continue
            res = ref.get("resource", "")
            if ref.get("subresource"):
                res += "/" + ref["subresource"]
            code = int(ev.get("responseStatus", {}).get("code", 0))
            key = (ev["verb"], ref.get("apiGroup", ""), res)
            if calls.get(key, 0) in (0, 200, 201) or code >= 400:
                calls[key] = code
    return calls


def allows(rule: dict[str, Any], call: Call, verb: str | None = None) -> bool:
    v, group, res = call
    return ((verb or v) == v and v in rule["verbs"] and group in rule["apiGroups"]
            and res in rule["resources"])


def without(rules: list[dict[str, Any]], index: int, verb: str | None = None
            ) -> list[dict[str, Any]]:
    """The rules with rule ``index`` removed, or only its ``verb``."""
    out = [dict(r) for i, r in enumerate(rules) if i != index or verb]
    if verb:
        out[index]["verbs"] = [v for v in rules[index]["verbs"] if v != verb]
        if not out[index]["verbs"]:
            del out[index]
    return out


def label(rule: dict[str, Any]) -> str:
    return f"{','.join(rule['apiGroups']) or 'core'}:{','.join(rule['resources'])}"
