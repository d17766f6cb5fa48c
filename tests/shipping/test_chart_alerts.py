"""The chart's PrometheusRule alerts, rendered by the real Helm and run by promtool's rule
unit tests (Debian's prometheus package, which the rollout tests need anyway) on series
shaped as the operator exports them: its counters appear only at their first increment."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart import CHART, by_kind, helm, render  # noqa: F401 (helm is a fixture)

BASE = "https://github.com/samp-dev/samp-operator/blob/main/charts/samp-operator/README.md"


def rules_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = by_kind(docs, "PrometheusRule")
    return list(rule["spec"]["groups"][0]["rules"])


def promtool_test(tmp_path: Path, rules: list[dict[str, Any]], series: dict[str, str],
                  checks: list[tuple[str, str, list[dict[str, str]]]]) -> str:
    """Run promtool's rule tests: each check is (eval_time, alertname, expected labels)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: apt-get install prometheus (.ci/system-packages)",
                    pytrace=False)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(
        {"groups": [{"name": "samp-operator", "rules": rules}]}))
    by_name = {r["alert"]: r for r in rules if "alert" in r}
    tests = [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{
            "eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": {**labels, **by_name[name]["labels"]},
                            "exp_annotations": annotations(by_name[name], labels)}
                           for labels in expected]}
            for at, name, expected in checks],
    }]
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", "test.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def annotations(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    out = dict(rule["annotations"])
    for key, value in labels.items():
        out["summary"] = out["summary"].replace("{{ $labels." + key + " }}", value)
    return out


@pytest.fixture
def alert_rules(helm: Any) -> list[dict[str, Any]]:  # noqa: F811
    return rules_of(render(helm, "metrics.prometheusRule.enabled=true",
                           "metrics.serviceMonitor.enabled=true"))


def test_first_rollback_of_a_new_gate_fires_then_clears(
    alert_rules: list[dict[str, Any]], tmp_path: Path
) -> None:
    # The gate's series is born at 1 at minute 6 (first rollback), stays 1, rises at 40.
    series = {'samp_rollbacks_total{gate="p99Latency", job="op"}': "_x6 1x33 2x10"}
    fired = [{"gate": "p99Latency", "job": "op"}]
    promtool_test(tmp_path, alert_rules, series, [
        ("5m", "SampRollbackHappened", []),
        ("8m", "SampRollbackHappened", fired),       # the first rollback
        ("30m", "SampRollbackHappened", []),          # quiet once the window passed
        ("42m", "SampRollbackHappened", fired),       # the next one
        ("58m", "SampRollbackHappened", []),
    ])


def test_first_job_failure_of_a_new_reason_fires_then_clears(
    alert_rules: list[dict[str, Any]], tmp_path: Path
) -> None:
    series = {'samp_job_failures_total{stage="export", reason="OOMKilled", job="op"}':
              "_x3 1x60"}
    fired = [{"stage": "export", "reason": "OOMKilled", "job": "op"}]
    promtool_test(tmp_path, alert_rules, series, [
        ("5m", "SampJobFailures", fired),
        ("20m", "SampJobFailures", fired),
        ("40m", "SampJobFailures", []),
    ])


def test_operator_down_watches_the_servicemonitor_job(
    alert_rules: list[dict[str, Any]], tmp_path: Path
) -> None:
    job = "samp-samp-operator-metrics"
    series = {f'up{{job="{job}", instance="a"}}': "1x20 0x30"}
    promtool_test(tmp_path, alert_rules, series, [
        ("15m", "SampOperatorDown", []),
        ("35m", "SampOperatorDown", [{}]),
    ])


def test_no_operator_down_alert_when_nothing_known_scrapes_the_operator(helm: Any) -> None:  # noqa: F811
    """Rules on, ServiceMonitor off: `up` of the operator's job never exists, and an
    absent() alert on it would fire forever."""
    names = {r["alert"] for r in rules_of(render(helm, "metrics.prometheusRule.enabled=true"))}
    assert "SampOperatorDown" not in names and "SampRolloutStuck" in names
    named = rules_of(render(helm, "metrics.prometheusRule.enabled=true",
                            "metrics.prometheusRule.operatorJob=kubernetes-pods"))
    (down,) = [r for r in named if r["alert"] == "SampOperatorDown"]
    assert down["expr"] == 'absent(up{job="kubernetes-pods"} == 1)'


def test_every_alert_has_a_runbook_url_with_its_anchor(
    alert_rules: list[dict[str, Any]]
) -> None:
    readme = (CHART / "README.md").read_text().lower()
    for rule in alert_rules:
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook_url"] == f"{BASE}#{anchor}"
        assert f"### {anchor}" in readme, f"README has no runbook section for {rule['alert']}"
