"""pytest plugin: run the operator tests of other folders under exactly the chart's rules.

    .venv/bin/pytest -p chart_rules_plugin tests/rollout/test_rollout_cluster.py

(with tests/shipping on PYTHONPATH) replaces the rules those test modules give the
operator identity (OPERATOR_RULES, ROLLOUT_RULES) by the rules `helm template` renders for
charts/samp-operator (SAMP_CHART_HELM_ARGS: extra helm arguments, space-separated)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "samp-operator"


def chart_rules() -> list[dict[str, Any]]:
    helm = sorted((Path.home() / ".cache/samp-operator/cluster-bin").glob("*/helm"))[-1]
    out = subprocess.run([str(helm), "template", "samp", str(CHART), "--kube-version",
                          "v1.35.0", *os.environ.get("SAMP_CHART_HELM_ARGS", "").split()],
                         capture_output=True, text=True, check=True).stdout
    return [r for d in yaml.safe_load_all(out) if d and d["kind"] in ("ClusterRole", "Role")
            and not operator_unbound(d) for r in d.get("rules") or []]


def operator_unbound(role: dict[str, Any]) -> bool:
    """The chart's ClusterRoles aggregated into view/edit serve users, not the operator."""
    labels = role["metadata"].get("labels") or {}
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels)


def pytest_collection_modifyitems(items: list[Any]) -> None:
    rules = chart_rules()
    for item in items:
        mod = item.module
        if hasattr(mod, "OPERATOR_RULES"):
            mod.OPERATOR_RULES = rules
        if hasattr(mod, "ROLLOUT_RULES"):
            mod.ROLLOUT_RULES = []
