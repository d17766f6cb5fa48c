"""The pure gate evaluator: measurements in, one verdict per gate out.

Latency windows carry histogram bucket counts (tests/latency_sim.py): the P99 gates judge
their confidence intervals under the minimum-evidence rule, the judge ranks the two
sides, and the fairness check compares their per-replica loads. Properties are checked
over many seeded simulated windows."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from latency_sim import Service, steady_side, window
from samp_core import gates as g
from samp_core.results import EvaluationResult
from samp_core.spec import AccuracyGate, CustomQuery, GatesSpec, JudgeSpec, LatencyGate
from samp_core.stats.histogram import Histogram, ratio_interval
from samp_core.status import AccuracySummary
from samp_core.verdicts import result

NOW = datetime(2026, 1, 1, tzinfo=UTC)
N = 2000  # requests a side in a healthy window: well above the 500 a P99 needs


def spec(**kw: object) -> GatesSpec:
    base: dict[str, object] = {
        "latency": LatencyGate(p99_max_seconds=2.0, p99_max_ratio_to_stable=1.5),
        "max_error_rate": 0.01,
        "min_requests": 50,
    }
    base.update(kw)
    return GatesSpec(**base)  # type: ignore[arg-type]


def m(
    c_req: int = N,
    c_err: float | None = 0,
    c_p99: float | None = 0.5,
    s_req: int = N,
    s_p99: float | None = 0.5,
    **kw: object,
) -> g.Measurement:
    canary = steady_side(c_req, c_p99)
    return g.Measurement(
        window_seconds=60,
        taken_at=NOW,
        canary=g.SideFigures(**{**canary.__dict__, "errors": c_err}),
        stable=steady_side(s_req, s_p99),
        **kw,  # type: ignore[arg-type]
    )


def by_gate(results: list) -> dict[str, object]:
    return {r.gate: r for r in results}


def test_healthy_window_passes_every_gate() -> None:
    res = g.evaluate(spec(), m(), has_stable=True)
    assert [r.gate for r in res] == [
        "requests", "errorRate", "p99", "p99RatioToStable", "judge", "loadBalance"
    ]
    assert g.overall(res) is g.Verdict.SUCCESSFUL
    ratio = by_gate(res)["p99RatioToStable"]
    assert ratio.value == pytest.approx(1.0)
    assert ratio.threshold.startswith("<= 1.5x stable, 95% interval, >= 500 requests per side")
    assert "wholly within 1.5" in ratio.message
    judge = by_gate(res)["judge"]
    assert judge.value == 100 and "e2e Pass" in judge.message and "itl Pass" in judge.message


def test_requests_message_counts_whole_requests_and_a_rate() -> None:
    """increase() extrapolates (e.g. 2424.24 requests): the message rounds and adds a rate."""
    window_ = m()
    fractional = g.SideFigures(**{**window_.canary.__dict__, "requests": 2424.24})
    res = by_gate(g.evaluate(spec(), g.Measurement(
        window_seconds=60, taken_at=NOW, canary=fractional, stable=window_.stable),
        has_stable=True))["requests"]
    assert res.message == "canary finished 2424 requests in 60s (40.40 requests/s)"
    assert res.value == pytest.approx(2424.24)


@pytest.mark.parametrize("c_req", [None, 0, 49, math.nan])
def test_too_few_requests_is_inconclusive_never_a_pass(c_req: float | None) -> None:
    meas = m(c_req=49)
    meas = g.Measurement(window_seconds=60, taken_at=NOW,
                         canary=g.SideFigures(**{**meas.canary.__dict__, "requests": c_req}),
                         stable=meas.stable)
    res = g.evaluate(spec(), meas, has_stable=True)
    assert g.overall(res) is g.Verdict.INCONCLUSIVE
    assert all(r.verdict == "Inconclusive" for r in res if r.gate != "loadBalance")
    if c_req is not None and not math.isnan(c_req):
        assert "fewer than minRequests 50" in by_gate(res)["errorRate"].message


@pytest.mark.parametrize("n", [60, 200, 499])
def test_a_p99_without_enough_evidence_is_inconclusive(n: int) -> None:
    """minRequests is met, but 5 / (1 - 0.99) = 500 requests are needed for a P99: the
    latency gates say so and the rule shows in the threshold (kubectl describe)."""
    for c_p99 in (0.5, 5.0):  # as fast, or 10x slower: neither passes nor fails on the P99
        res = by_gate(g.evaluate(spec(judge=JudgeSpec(enabled=False)), m(c_req=n, c_p99=c_p99),
                                 has_stable=True))
        for gate in ("p99", "p99RatioToStable"):
            assert res[gate].verdict == "Inconclusive"
            assert f"the canary has {n} observations" in res[gate].message
            assert "(minTailSamples 5 / (1 - 0.99))" in res[gate].threshold
    # With minTailSamples 1 (100 requests) the gate is judged, on its interval: 200
    # requests bound a P99 from below only (a 95% upper bound needs 368), so a canary as
    # fast as the stable cannot pass yet, and one 2.5x over the ceiling already fails.
    loose = LatencyGate(p99_max_seconds=2.0, p99_max_ratio_to_stable=1.5, min_tail_samples=1)
    res = by_gate(g.evaluate(spec(latency=loose), m(c_req=200), has_stable=True))
    assert res["p99"].verdict == "Inconclusive" and "-infs)" in res["p99"].message
    res = by_gate(g.evaluate(spec(latency=loose), m(c_req=200, c_p99=5.0), has_stable=True))
    assert res["p99"].verdict == "Failed" and "wholly above the ceiling 2s" in res["p99"].message


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
    assert res["p99RatioToStable"].value == pytest.approx(3.0, rel=0.05)
    assert "wholly above 1.5" in res["p99RatioToStable"].message
    # As fast as stable but above the absolute ceiling.
    res = by_gate(g.evaluate(spec(), m(c_p99=3.0, s_p99=3.0), has_stable=True))
    assert res["p99"].verdict == "Failed"
    assert res["p99RatioToStable"].verdict == "Successful"
    assert "wholly above the ceiling 2s" in res["p99"].message


def test_ratio_needs_stable_evidence_and_a_positive_baseline() -> None:
    res = by_gate(g.evaluate(spec(), m(s_req=10), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Inconclusive"
    assert "the stable has 10 observations" in res["p99RatioToStable"].message
    # Every stable request above the last finite bucket: its P99 is unbounded, no ratio.
    meas = m()
    assert meas.stable is not None
    e2e = meas.stable.histograms["e2e"]
    beyond = Histogram(e2e.bounds, (0,) * len(e2e.bounds) + (N,), e2e.total)
    stable = g.SideFigures(**{**meas.stable.__dict__,
                              "histograms": {**meas.stable.histograms, "e2e": beyond}})
    res = by_gate(g.evaluate(spec(), g.Measurement(60, NOW, meas.canary, stable),
                             has_stable=True))
    assert res["p99RatioToStable"].verdict == "Inconclusive"
    assert "no positive finite P99" in res["p99RatioToStable"].message


def test_at_full_weight_only_absolute_gates_are_judged() -> None:
    """Weight 100: the stable serves nothing in the window, so ratio gates are not judged;
    a remembered baseline from another window is never used instead."""
    res = by_gate(g.evaluate(spec(), m(s_req=0, c_p99=0.5), has_stable=True,
                             stable_serves=False))
    assert "p99RatioToStable" not in res
    assert "judge" not in res and "loadBalance" not in res  # no comparison at all
    assert res["p99"].verdict == "Successful"  # the absolute ceiling still applies
    res = by_gate(g.evaluate(spec(), m(s_req=0, c_p99=2.5), has_stable=True,
                             stable_serves=False))
    assert res["p99"].verdict == "Failed"


def test_without_stable_only_absolute_ceilings() -> None:
    res = g.evaluate(spec(), m(), has_stable=False)
    assert [r.gate for r in res] == ["requests", "errorRate", "p99"]
    assert g.overall(res) is g.Verdict.SUCCESSFUL


def test_error_rate_gate() -> None:
    res = by_gate(g.evaluate(spec(), m(c_err=40), has_stable=True))
    assert res["errorRate"].verdict == "Failed"
    assert res["errorRate"].value == pytest.approx(0.02)
    assert "40 of 2000 canary requests failed (2.00%)" in res["errorRate"].message
    res = by_gate(g.evaluate(spec(), m(c_err=20), has_stable=True))
    assert res["errorRate"].verdict == "Successful"
    res = by_gate(g.evaluate(spec(), m(c_err=None), has_stable=True))
    assert res["errorRate"].verdict == "Inconclusive"


def test_unreachable_backend_is_error_for_every_gate() -> None:
    res = g.evaluate(spec(), m(error="connection refused"), has_stable=True)
    assert {r.verdict for r in res} == {"Error"}
    assert g.overall(res) is g.Verdict.ERROR
    assert "unreachable" in res[0].message


def test_one_failed_query_is_error_for_its_gates_only() -> None:
    meas = m(query_errors={"stable.hist.e2e": "bad_data"})
    res = by_gate(g.evaluate(spec(), meas, has_stable=True))
    assert res["p99RatioToStable"].verdict == "Error"
    assert res["judge"].verdict == "Error"
    assert res["p99"].verdict == "Successful"
    assert g.overall(res.values()) is g.Verdict.ERROR


def test_failed_beats_error_beats_inconclusive() -> None:
    def r(v: str) -> object:
        return result("x", g.Verdict(v))

    assert g.overall([r("Successful"), r("Inconclusive"), r("Error")]) is g.Verdict.ERROR
    assert g.overall([r("Error"), r("Failed")]) is g.Verdict.FAILED
    assert g.overall([]) is g.Verdict.INCONCLUSIVE  # nothing shown to pass


def test_ttft_gates() -> None:
    # steady_side puts TTFT at a tenth of the end-to-end latency
    s = spec(
        latency=LatencyGate(
            p99_max_seconds=5, ttft_p99_max_seconds=0.2, ttft_p99_max_ratio_to_stable=2
        )
    )
    res = by_gate(g.evaluate(s, m(c_p99=3.0, s_p99=1.0), has_stable=True))
    assert res["ttftP99"].verdict == "Failed"  # about 0.3 s
    assert res["ttftP99RatioToStable"].verdict == "Failed"
    # 3x by construction; TTFT buckets are coarse here (0.1-0.25-0.5 s), and read about 4
    assert res["ttftP99RatioToStable"].value > 2


def test_point_figures_without_buckets_keep_the_evidence_rule() -> None:
    """A provider with point P99s only (no bucket counts): judged as points, but still
    only with 5 / (1 - 0.99) = 500 requests a side."""
    no_judge = spec(judge=JudgeSpec(enabled=False))

    def points(n: float, c_p99: float) -> g.Measurement:
        return g.Measurement(
            window_seconds=60, taken_at=NOW,
            canary=g.SideFigures(requests=n, errors=0, p99_seconds=c_p99),
            stable=g.SideFigures(requests=n, errors=0, p99_seconds=0.5),
        )

    res = by_gate(g.evaluate(no_judge, points(1000, 1.5), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Failed"
    assert res["p99RatioToStable"].value == pytest.approx(3.0)
    assert "point, no buckets" in res["p99RatioToStable"].message
    res = by_gate(g.evaluate(no_judge, points(100, 1.5), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Inconclusive"
    assert res["p99"].verdict == "Inconclusive"
    # and the judge, on, never passes without histograms
    res = by_gate(g.evaluate(spec(), points(1000, 0.5), has_stable=True))
    assert res["judge"].verdict == "Inconclusive" and "no histogram" in res["judge"].message


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
    assert line.startswith("p99RatioToStable=3")
    assert "(threshold <= 1.5x stable" in line
    assert line.endswith("Failed")


def test_without_stable_and_without_a_ceiling_latency_is_never_a_pass() -> None:
    """The default ratio gate needs a stable; without one, a canary with a 30 s P99 must not
    pass on the error rate alone."""
    only_ratio = spec(latency=LatencyGate(p99_max_ratio_to_stable=1.1))
    res = g.evaluate(only_ratio, m(c_p99=30.0), has_stable=False)
    p99 = by_gate(res)["p99"]
    assert p99.verdict == "Inconclusive" and "p99MaxSeconds" in p99.message  # type: ignore[attr-defined]
    assert g.overall(res) is g.Verdict.INCONCLUSIVE


# -------------------------------------------------------------------- fairness


def _split(c_p99: float, c_replicas: float, s_replicas: float) -> g.Measurement:
    """2000 requests a side; the per-replica loads differ by the replica counts."""
    return g.Measurement(window_seconds=60, taken_at=NOW,
                         canary=steady_side(N, c_p99, replicas=c_replicas),
                         stable=steady_side(N, 0.5, replicas=s_replicas))


def test_an_idler_canary_cannot_pass_a_comparison() -> None:
    # Canary on 4 replicas, stable on 1: the canary's pods saw a quarter of the load.
    res = by_gate(g.evaluate(spec(), _split(0.5, 4, 1), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Inconclusive"
    assert res["judge"].verdict == "Inconclusive"
    assert "the canary was the idler side" in res["p99RatioToStable"].message
    lb = res["loadBalance"]
    assert lb.verdict == "Inconclusive" and lb.value == pytest.approx(0.25)
    assert "p99RatioToStable, judge not trusted" in lb.message
    assert res["p99"].verdict == "Successful"  # an absolute ceiling compares nothing
    # ...but when it is slower even so, the failure stands.
    res = by_gate(g.evaluate(spec(), _split(1.5, 4, 1), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Failed"
    assert res["loadBalance"].verdict == "Successful"
    assert "unfair split" in res["loadBalance"].message


def test_a_busier_canary_cannot_fail_a_comparison() -> None:
    res = by_gate(g.evaluate(spec(), _split(1.5, 1, 4), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Inconclusive"
    assert "the canary was the busier side" in res["p99RatioToStable"].message
    assert res["loadBalance"].verdict == "Inconclusive"
    res = by_gate(g.evaluate(spec(), _split(0.5, 1, 4), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Successful"  # passed under more load
    # Within the tolerance: nothing changes.
    res = by_gate(g.evaluate(spec(), _split(0.5, 1, 1.4), has_stable=True))
    assert res["loadBalance"].verdict == "Successful" and "unfair" not in res["loadBalance"].message


# ----------------------------------------------------------------------- judge


def test_judge_flags_a_slower_canary_beside_a_loose_threshold() -> None:
    """A 1.3x slower canary is within p99MaxRatioToStable 2; the judge, with an
    allowed increase of 1.1, fails it (TTFT High; end to end sits in the lowest bucket,
    taken at its top, which can only understate the slowdown)."""
    loose = LatencyGate(p99_max_seconds=2.0, p99_max_ratio_to_stable=2.0)
    s = spec(latency=loose, judge=JudgeSpec(allowed_increase=1.1))
    res = by_gate(g.evaluate(s, m(c_p99=0.65), has_stable=True))
    assert res["p99RatioToStable"].verdict == "Successful"
    assert res["judge"].verdict == "Failed" and res["judge"].value < 75
    assert "ttft High" in res["judge"].message
    # Unset, the allowed increase follows p99MaxRatioToStable: 1.3x is within 2x.
    res = by_gate(g.evaluate(spec(latency=loose), m(c_p99=0.65), has_stable=True))
    assert res["judge"].verdict == "Successful" and "slower than 2x stable" in res["judge"].message
    off = spec(judge=JudgeSpec(enabled=False))
    assert "judge" not in by_gate(g.evaluate(off, m(), has_stable=True))


# ------------------------------------------------------------------ properties


def _verdicts(gates: GatesSpec, windows: int, seed: int, n: int, slowdown: float) -> list[str]:
    rng = random.Random(seed)
    return [g.overall(g.evaluate(gates, window(rng, n, n, slowdown), has_stable=True)).value
            for _ in range(windows)]


def test_identical_canary_passes_with_high_probability() -> None:
    v = _verdicts(spec(latency=LatencyGate(p99_max_ratio_to_stable=1.5)), 100, 21, 3000, 1.0)
    assert v.count("Failed") == 0
    assert v.count("Successful") >= 90


def test_slower_canary_fails_with_high_probability_once_evidence_exists() -> None:
    v = _verdicts(spec(latency=LatencyGate(p99_max_ratio_to_stable=1.1)), 100, 22, 3000, 1.3)
    assert v.count("Successful") == 0
    assert v.count("Failed") >= 90


def test_nothing_promotes_on_too_few_samples() -> None:
    rng = random.Random(23)
    gates = spec(latency=LatencyGate(p99_max_ratio_to_stable=1.5), min_requests=20)
    for _ in range(300):
        n = rng.randint(20, 499)
        meas = window(rng, n, rng.randint(20, 3000), rng.uniform(0.5, 2.0),
                      base=Service(e2e=rng.uniform(0.1, 5.0)))
        assert g.overall(g.evaluate(gates, meas, has_stable=True)) is not g.Verdict.SUCCESSFUL


def test_ratio_verdict_is_the_interval_against_the_limit() -> None:
    """Failed exactly when the whole interval is above the limit, Successful exactly when
    it is wholly below, over windows that land on every side of it."""
    rng = random.Random(24)
    gates = spec(latency=LatencyGate(p99_max_ratio_to_stable=1.2))
    seen = set()
    for _ in range(120):
        meas = window(rng, 1500, 1500, rng.choice([0.8, 1.0, 1.2, 1.5]))
        row = by_gate(g.evaluate(gates, meas, has_stable=True))["p99RatioToStable"]
        assert meas.stable is not None
        iv = ratio_interval(meas.canary.histograms["e2e"], meas.stable.histograms["e2e"],
                            0.99, 0.95)
        assert iv is not None
        expected = {"below": "Successful", "above": "Failed", "straddles": "Inconclusive"}
        assert row.verdict == expected[iv.against(1.2)]
        if row.verdict == "Inconclusive":  # waits for a longer window, as short evidence does
            assert "not enough evidence yet" in row.message
        seen.add(row.verdict)
    assert seen == {"Successful", "Failed", "Inconclusive"}


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
