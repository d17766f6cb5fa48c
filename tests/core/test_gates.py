"""The pure gate evaluator: measurements in, one verdict per gate out."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from samp_core import gates as g
from samp_core.results import EvaluationResult
from samp_core.spec import AccuracyGate, CustomQuery, GatesSpec, LatencyGate
from samp_core.status import AccuracySummary
from samp_core.verdicts import result

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def spec(**kw: object) -> GatesSpec:
    base: dict[str, object] = {
        "latency": LatencyGate(p99_max_seconds=2.0, p99_max_ratio_to_stable=1.5),
        "max_error_rate": 0.01,
        "min_requests": 50,
    }
    base.update(kw)
    return GatesSpec(**base)  # type: ignore[arg-type]


def m(
    c_req: float | None = 100,
    c_err: float | None = 0,
    c_p99: float | None = 0.5,
    s_req: float | None = 100,
    s_p99: float | None = 0.5,
    **kw: object,
) -> g.Measurement:
    return g.Measurement(
        window_seconds=60,
        taken_at=NOW,
        canary=g.SideFigures(requests=c_req, errors=c_err, p99_seconds=c_p99),
        stable=g.SideFigures(requests=s_req, errors=0, p99_seconds=s_p99),
        **kw,  # type: ignore[arg-type]
    )


def by_gate(results: list) -> dict[str, object]:
    return {r.gate: r for r in results}


def test_healthy_window_passes_every_gate() -> None:
    res = g.evaluate(spec(), m(), has_stable=True)
    assert [r.gate for r in res] == ["requests", "errorRate", "p99", "p99RatioToStable"]
    assert g.overall(res) is g.Verdict.SUCCESSFUL
    ratio = by_gate(res)["p99RatioToStable"]
    assert ratio.value == pytest.approx(1.0)
    assert ratio.threshold == "<= 1.5x stable"


@pytest.mark.parametrize("c_req", [None, 0, 49, math.nan])
def test_too_few_requests_is_inconclusive_never_a_pass(c_req: float | None) -> None:
    res = g.evaluate(spec(), m(c_req=c_req), has_stable=True)
    assert g.overall(res) is g.Verdict.INCONCLUSIVE
    assert all(r.verdict == "Inconclusive" for r in res)
    if c_req is not None and not math.isnan(c_req):
        assert "fewer than minRequests 50" in by_gate(res)["errorRate"].message


@pytest.mark.parametrize("p99", [None, math.nan, math.inf])
def test_empty_or_nan_latency_is_inconclusive(p99: float | None) -> None:
    res = by_gate(g.evaluate(spec(), m(c_p99=p99), has_stable=True))
    assert res["p99"].verdict == "Inconclusive"
    assert res["p99"].value is None  # NaN never reaches the API server
    assert res["p99RatioToStable"].verdict == "Inconclusive"
    assert g.overall(res.values()) is g.Verdict.INCONCLUSIVE


def test_absolute_ceiling_and_ratio_are_separate_gates() -> None:
    # Within the 2s ceiling but 3x slower than stable: ratio fails, absolute passes.
    res = by_gate(g.evaluate(spec(), m(c_p99=1.5, s_p99=0.5), has_stable=True))
    assert res["p99"].verdict == "Successful"
    assert res["p99RatioToStable"].verdict == "Failed"
    assert res["p99RatioToStable"].value == pytest.approx(3.0)
    # As fast as stable but above the absolute ceiling.
    res = by_gate(g.evaluate(spec(), m(c_p99=2.5, s_p99=2.5), has_stable=True))
    assert res["p99"].verdict == "Failed"
    assert res["p99RatioToStable"].verdict == "Successful"
    assert "2.5s above the ceiling 2s" in res["p99"].message


def test_ratio_needs_stable_traffic_and_a_positive_baseline() -> None:
    res = by_gate(g.evaluate(spec(), m(s_req=10), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Inconclusive"
    assert "stable baseline" in res["p99RatioToStable"].message
    res = by_gate(g.evaluate(spec(), m(s_p99=0.0), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Inconclusive"


def test_at_full_weight_only_absolute_gates_are_judged() -> None:
    """Weight 100: the stable serves nothing in the window, so ratio gates are not judged;
    a remembered baseline from another window is never used instead."""
    res = by_gate(g.evaluate(spec(), m(s_req=0, c_p99=0.5), has_stable=True,
                             stable_serves=False))
    assert "p99RatioToStable" not in res
    assert res["p99"].verdict == "Successful"  # the absolute ceiling still applies
    res = by_gate(g.evaluate(spec(), m(s_req=0, c_p99=2.5), has_stable=True,
                             stable_serves=False))
    assert res["p99"].verdict == "Failed"


def test_without_stable_only_absolute_ceilings() -> None:
    res = g.evaluate(spec(), m(), has_stable=False)
    assert "p99RatioToStable" not in by_gate(res)
    assert g.overall(res) is g.Verdict.SUCCESSFUL


def test_error_rate_gate() -> None:
    res = by_gate(g.evaluate(spec(), m(c_err=2), has_stable=True))
    assert res["errorRate"].verdict == "Failed"
    assert res["errorRate"].value == pytest.approx(0.02)
    assert "2 of 100 canary requests failed (2.00%)" in res["errorRate"].message
    res = by_gate(g.evaluate(spec(), m(c_err=1), has_stable=True))
    assert res["errorRate"].verdict == "Successful"
    res = by_gate(g.evaluate(spec(), m(c_err=None), has_stable=True))
    assert res["errorRate"].verdict == "Inconclusive"


def test_unreachable_backend_is_error_for_every_gate() -> None:
    res = g.evaluate(spec(), m(error="connection refused"), has_stable=True)
    assert {r.verdict for r in res} == {"Error"}
    assert g.overall(res) is g.Verdict.ERROR
    assert "unreachable" in res[0].message


def test_one_failed_query_is_error_for_its_gates_only() -> None:
    res = by_gate(g.evaluate(spec(), m(query_errors={"stable.p99": "bad_data"}), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Error"
    assert res["p99"].verdict == "Successful"
    assert g.overall(res.values()) is g.Verdict.ERROR


def test_failed_beats_error_beats_inconclusive() -> None:
    def r(v: str) -> object:
        return result("x", g.Verdict(v))

    assert g.overall([r("Successful"), r("Inconclusive"), r("Error")]) is g.Verdict.ERROR
    assert g.overall([r("Error"), r("Failed")]) is g.Verdict.FAILED
    assert g.overall([]) is g.Verdict.INCONCLUSIVE  # nothing shown to pass


def test_ttft_gates() -> None:
    s = spec(
        latency=LatencyGate(
            p99_max_seconds=5, ttft_p99_max_seconds=0.2, ttft_p99_max_ratio_to_stable=2
        )
    )
    meas = g.Measurement(
        window_seconds=60,
        taken_at=NOW,
        canary=g.SideFigures(requests=100, errors=0, p99_seconds=1, ttft_p99_seconds=0.3),
        stable=g.SideFigures(requests=100, errors=0, p99_seconds=1, ttft_p99_seconds=0.1),
    )
    res = by_gate(g.evaluate(s, meas, has_stable=True))
    assert res["ttftP99"].verdict == "Failed"
    assert res["ttftP99RatioToStable"].verdict == "Failed"
    assert res["ttftP99RatioToStable"].value == pytest.approx(3.0)


def test_custom_queries() -> None:
    s = spec(
        custom_queries=[
            CustomQuery(name="tokens-per-second", query="x", min=10),
            CustomQuery(name="queue", query="y", max=5),
            CustomQuery(name="empty", query="z", max=1),
        ]
    )
    res = by_gate(
        g.evaluate(
            s,
            m(custom={"tokens-per-second": 12.0, "queue": 9.0, "empty": None}),
            has_stable=True,
        )
    )
    assert res["query:tokens-per-second"].verdict == "Successful"
    assert res["query:queue"].verdict == "Failed"
    assert res["query:queue"].threshold == "<= 5"
    assert res["query:empty"].verdict == "Inconclusive"


def test_format_result_names_value_and_threshold() -> None:
    res = by_gate(g.evaluate(spec(), m(c_p99=1.5, s_p99=0.5), has_stable=True))
    line = g.format_result(res["p99RatioToStable"])
    assert line.startswith("p99RatioToStable=3 (threshold <= 1.5x stable")
    assert line.endswith("Failed")


# ------------------------------------------------------------------- accuracy


def ev(**kw: object) -> EvaluationResult:
    base: dict[str, object] = {
        "num_prompts": 40,
        "perplexity_base": 10.0,
        "perplexity_quant": 10.1,
        "mean_kl": 0.01,
        "top1_agreement": 0.97,
        "task_exact_match_base": 0.8,
        "task_exact_match_quant": 0.78,
    }
    base.update(kw)
    return EvaluationResult(**base)  # type: ignore[arg-type]


def test_accuracy_passes_within_thresholds() -> None:
    v = g.evaluate_accuracy(
        AccuracyGate(
            max_perplexity_increase_percent=2,
            max_mean_kl=0.05,
            min_top1_agreement=0.95,
            min_exact_match_recovery_percent=95,
        ),
        ev(),
    )
    assert v.passed
    assert v.summary.passed is True
    assert v.summary.perplexity_increase_percent == pytest.approx(1.0)
    assert v.summary.exact_match_recovery_percent == pytest.approx(97.5)


def test_accuracy_fails_and_names_the_check() -> None:
    v = g.evaluate_accuracy(AccuracyGate(max_perplexity_increase_percent=0.5), ev())
    assert not v.passed
    assert v.verdict is g.Verdict.FAILED
    assert v.summary.failed_checks[0].startswith("accuracy:perplexityIncreasePercent")


def test_accuracy_check_without_data_is_inconclusive_not_pass() -> None:
    v = g.evaluate_accuracy(
        AccuracyGate(min_json_validity_recovery_percent=90),
        ev(),  # no JSON prompts in the eval set
    )
    assert v.verdict is g.Verdict.INCONCLUSIVE
    assert not v.passed
    v = g.evaluate_accuracy(AccuracyGate(), ev(num_prompts=0))
    assert not v.passed


def test_accuracy_over_status_summary() -> None:
    s = AccuracySummary(perplexity_base=5.0, perplexity_quantized=5.5)
    v = g.evaluate_accuracy_summary(AccuracyGate(max_perplexity_increase_percent=5), s)
    assert not v.passed
    assert v.summary.perplexity_increase_percent == pytest.approx(10.0)
    assert g.evaluate_accuracy_summary(AccuracyGate(), AccuracySummary()).passed is False


@pytest.mark.parametrize(
    ("base", "quant", "stored"),
    [
        (10.0, -5.0, -150.0),  # what the operator computes from a broken summary
        (10.0, 0.0, -100.0),
        (math.inf, 10.0, -100.0),
        (10.0, math.nan, None),
        (-3.0, 10.0, None),
    ],
)
def test_impossible_perplexity_is_error_never_a_pass(
    base: float, quant: float, stored: float | None
) -> None:
    summary = AccuracySummary(
        perplexity_base=base, perplexity_quantized=quant, perplexity_increase_percent=stored
    )
    v = g.evaluate_accuracy_summary(AccuracyGate(), summary)
    assert v.verdict is g.Verdict.ERROR and not v.passed
    assert v.summary.passed is False and v.summary.perplexity_increase_percent is None
    row = v.results[0]
    assert row.verdict == "Error" and "impossible perplexity" in row.message


def test_infinite_base_perplexity_from_the_evaluation_is_error() -> None:
    v = g.evaluate_accuracy(AccuracyGate(), ev(perplexity_base=math.inf))
    assert v.verdict is g.Verdict.ERROR and not v.passed


def test_without_stable_and_without_a_ceiling_latency_is_never_a_pass() -> None:
    """The default ratio gate needs a stable; without one, a canary with a 30 s P99 must not
    pass on the error rate alone."""
    only_ratio = spec(latency=LatencyGate(p99_max_ratio_to_stable=1.1))
    res = g.evaluate(only_ratio, m(c_p99=30.0), has_stable=False)
    p99 = by_gate(res)["p99"]
    assert p99.verdict == "Inconclusive" and "p99MaxSeconds" in p99.message  # type: ignore[attr-defined]
    assert g.overall(res) is g.Verdict.INCONCLUSIVE
