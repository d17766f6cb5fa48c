"""Per-resource rollout metrics, and that the chart's dashboard and alerts only query
series the operator (or vLLM) actually exports."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import generate_latest

from samp_core.status import (
    AccuracySummary,
    CanaryStatus,
    Condition,
    GateResult,
    Phase,
    PlanSummary,
    QuantizedModelStatus,
)
from samp_operator.metrics import Metrics

CHART = Path(__file__).resolve().parents[2] / "charts" / "samp-operator"
KEY = ("team-a", "llama")


def sample(metrics: Metrics, metric: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


def status(phase: Phase, weight: int = 0, gates: list[GateResult] | None = None
           ) -> QuantizedModelStatus:
    return QuantizedModelStatus(
        phase=phase, gates=gates or [],
        canary=CanaryStatus(step=0, weight=weight) if weight else None,
        conditions=[Condition(type="Ready", status="False", reason="Progressing",
                              last_transition_time="2026-11-28T10:00:00+00:00")])


def test_phase_entry_weight_and_gate_series_follow_the_status() -> None:
    m = Metrics()
    m.observe_rollout(KEY, status(Phase.EXPORTING))
    first = sample(m, "samp_phase_entered_timestamp_seconds",
                   namespace="team-a", name="llama", phase="Exporting")
    # first sight (e.g. after an operator restart): the condition's transition time
    assert first == datetime(2026, 11, 28, 10, tzinfo=UTC).timestamp()
    p99 = GateResult(gate="p99", verdict="Successful", value=0.8, baseline=0.7, threshold="")
    m.observe_rollout(KEY, status(Phase.CANARY, weight=25, gates=[p99]))
    assert sample(m, "samp_phase_entered_timestamp_seconds",
                  namespace="team-a", name="llama", phase="Exporting") is None
    assert sample(m, "samp_canary_weight", namespace="team-a", name="llama") == 25
    assert sample(m, "samp_gate_value", namespace="team-a", name="llama", gate="p99",
                  role="stable") == 0.7


def test_rollback_counts_the_failing_gate_once_and_deletion_drops_series() -> None:
    m = Metrics()
    failed = GateResult(gate="errorRate", verdict="Failed", value=0.2, threshold="<= 0.01")
    m.observe_rollout(KEY, status(Phase.CANARY, weight=10))
    m.observe_rollout(KEY, status(Phase.ROLLED_BACK, gates=[failed]))
    m.observe_rollout(KEY, status(Phase.ROLLED_BACK, gates=[failed]))
    assert sample(m, "samp_rollbacks_total", gate="errorRate") == 1
    m.observe_rollout(KEY, None)
    text = generate_latest(m.registry).decode()
    assert 'name="llama"' not in text


def test_model_panels_follow_the_plan_and_accuracy() -> None:
    m = Metrics()
    st = status(Phase.EVALUATED)
    st.plan = PlanSummary(profile="cpu", bytes16_bit=1000, bytes_quantized=447, effective_bits=7.16,
                          memory_saved_percent=55.3, predicted_loss=0.1)
    st.accuracy = AccuracySummary(perplexity_increase_percent=0.03, top1_agreement=0.97)
    m.observe_rollout(KEY, st)
    assert sample(m, "samp_model_effective_bits", namespace="team-a", name="llama") == 7.16
    labels = {"namespace": "team-a", "name": "llama"}
    get = m.registry.get_sample_value
    assert get("samp_model_accuracy", {**labels, "metric": "top1Agreement"}) == 0.97
    assert get("samp_model_accuracy", {**labels, "metric": "meanKL"}) is None
    m.observe_rollout(KEY, None)
    assert "samp_model_" not in "".join(
        line for line in generate_latest(m.registry).decode().splitlines()
        if not line.startswith("#"))


def _queried_metrics(text: str) -> set[str]:
    names = set(re.findall(r"\b(samp_[a-z0-9_]+|vllm:[a-z0-9_:]+)", text))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_dashboard_and_alerts_query_only_exported_series() -> None:
    exported = {
        metric.name if metric.type != "counter" else metric.name + "_total"
        for metric in Metrics().registry.collect()
    } | {"samp_stage_duration_seconds", "vllm:e2e_request_latency_seconds"}
    dashboard = json.loads((CHART / "dashboards" / "samp-rollouts.json").read_text())
    queries = json.dumps(dashboard) + (CHART / "templates" / "prometheusrule.yaml").read_text()
    used = _queried_metrics(queries)
    assert used, "no metric found in the dashboard"
    assert used - exported == set()
