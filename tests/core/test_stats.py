"""The statistics under the latency gates (samp_core.stats), on exact cases and as
properties over many seeded simulated windows (hypothesis is not in the venv: each
property loops over windows drawn from a fixed seed, so a failure reproduces)."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import binom, mannwhitneyu

from latency_sim import E2E_BUCKETS, binned
from samp_core.stats.histogram import (
    Histogram,
    Interval,
    binomial_rank_bounds,
    count_below,
    min_samples,
    quantile,
    quantile_interval,
    ratio_interval,
    rescaled,
    value_at_rank,
)
from samp_core.stats.judge import JudgeSettings, MetricCall, classify, score
from samp_core.stats.ranktest import mann_whitney_greater

FINE = tuple(round(0.01 * i, 2) for i in range(1, 400))  # 10 ms buckets up to 4 s


def lognormal(rng: random.Random, n: int, median: float = 0.6, sigma: float = 0.45) -> list[float]:
    return [median * rng.lognormvariate(0.0, sigma) for _ in range(n)]


# ------------------------------------------------------------------ histograms


def test_from_cumulative_rounds_sorts_and_repairs_like_histogram_quantile() -> None:
    # increase() extrapolates (fractions), Prometheus returns series in any order, and a
    # scrape race can make a higher bucket read lower: monotone again, never negative.
    h = Histogram.from_cumulative(
        [(1.0, 9.6), (0.5, 4.2), (math.inf, 10.1), (2.0, 8.7), (0.25, -0.3)], total=7.5
    )
    assert h.bounds == (0.25, 0.5, 1.0, 2.0)
    assert h.counts == (0, 4, 6, 0, 0)
    assert h.n == 10 and h.mean == pytest.approx(0.75)
    # No +Inf series: nothing above the last bound.
    assert Histogram.from_cumulative([(1.0, 3.0)]).counts == (3, 0)


def test_histogram_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="one count per bound"):
        Histogram((1.0, 2.0), (1, 2))
    with pytest.raises(ValueError, match="increase"):
        Histogram((2.0, 1.0), (1, 2, 0))
    with pytest.raises(ValueError, match=">= 0"):
        Histogram((1.0,), (1, -1))


def test_quantile_interpolates_as_prometheus_does() -> None:
    # 100 observations: 50 in (0, 0.5], 40 in (0.5, 1], 10 in (1, 2]
    h = Histogram((0.5, 1.0, 2.0), (50, 40, 10, 0))
    assert quantile(h, 0.5) == pytest.approx(0.5)
    assert quantile(h, 0.7) == pytest.approx(0.75)  # rank 70: 20 of 40 into (0.5, 1]
    assert quantile(h, 0.99) == pytest.approx(1.9)
    assert quantile(Histogram((1.0,), (0, 0)), 0.99) is None
    # In the +Inf bucket a quantile is unbounded, not the last finite bound.
    assert quantile(Histogram((1.0,), (1, 99)), 0.99) == math.inf
    assert value_at_rank(h, 0) == 0.0 and value_at_rank(h, 101) == math.inf


def test_min_samples_is_k_over_one_minus_q() -> None:
    assert min_samples(0.99, 5) == 500
    assert min_samples(0.99, 1) == 100
    assert min_samples(0.5, 5) == 10
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        min_samples(1.0, 5)


# ---------------------------------------------------------- order statistics


def _coverage(n: int, q: float, lo: int, hi: int) -> float:
    """P(lo <= Y < hi) for Y ~ Binomial(n, q), from scipy's binomial distribution."""
    return float(binom.cdf(min(hi, n + 1) - 1, n, q) - binom.cdf(lo - 1, n, q))


@pytest.mark.parametrize("n", [20, 100, 366, 367, 500, 1000, 3000])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_rank_bounds_cover_the_quantile_at_the_level(n: int, q: float) -> None:
    lo, hi = binomial_rank_bounds(n, q, 0.95)
    assert _coverage(n, q, lo, hi) >= 0.95 - 1e-9
    # each tail holds at most 2.5%, and one rank tighter it would hold more
    below = lambda k: float(binom.cdf(k - 1, n, q))  # noqa: E731  P(Y < k)
    assert below(lo) <= 0.025 + 1e-12 and below(lo + 1) > 0.025
    if hi <= n:
        assert 1 - below(hi) <= 0.025 + 1e-12 and 1 - below(hi - 1) > 0.025


def test_p99_of_too_few_requests_has_no_upper_bound() -> None:
    """The issue's case: the P99 of 24 requests is their maximum, and nothing bounds the
    true P99 from above. 95% two-sided needs 0.99**n <= 0.025: n >= 368."""
    assert binomial_rank_bounds(24, 0.99, 0.95)[1] == 25
    assert binomial_rank_bounds(367, 0.99, 0.95)[1] == 368
    assert binomial_rank_bounds(368, 0.99, 0.95)[1] == 368
    rng = random.Random(3)
    iv = quantile_interval(binned(lognormal(rng, 24), E2E_BUCKETS), 0.99, 0.95)
    assert iv is not None and iv.hi == math.inf


def test_quantile_interval_covers_the_true_p99() -> None:
    """Over 300 seeded windows of 1000 requests, the 95% interval holds the log-normal's
    true P99 in at least 93% of them (fine buckets, so binning does not blur it)."""
    rng = random.Random(11)
    true_p99 = 0.6 * math.exp(0.45 * 2.3263478740408408)
    hits = 0
    for _ in range(300):
        iv = quantile_interval(binned(lognormal(rng, 1000), FINE), 0.99, 0.95)
        assert iv is not None and iv.lo <= iv.point <= iv.hi
        hits += iv.lo <= true_p99 <= iv.hi
    assert hits / 300 >= 0.93


def test_ratio_interval_holds_the_true_ratio() -> None:
    rng = random.Random(12)
    for factor, windows in ((1.0, 150), (1.3, 150)):
        hits = 0
        for _ in range(windows):
            c = binned(lognormal(rng, 1500, 0.6 * factor), FINE)
            s = binned(lognormal(rng, 1500), FINE)
            iv = ratio_interval(c, s, 0.99, 0.95)
            assert iv is not None
            hits += iv.lo <= factor <= iv.hi
        assert hits / windows >= 0.93, factor


def test_interval_against_a_limit() -> None:
    assert Interval(1.0, 0.8, 1.2).against(1.5) == "below"
    assert Interval(2.0, 1.6, 2.4).against(1.5) == "above"
    assert Interval(1.4, 1.2, 1.7).against(1.5) == "straddles"
    assert Interval(1.0, 0.5, math.inf).against(1.5) == "straddles"


# ------------------------------------------------------------------- rank test


def test_u_test_matches_scipy_on_the_expanded_samples() -> None:
    """The bucketed U statistic and p-value equal scipy's asymptotic test (tie and
    continuity corrections) on the observations the buckets stand for."""
    rng = random.Random(5)
    for factor in (1.0, 1.1, 1.4):
        c = binned(lognormal(rng, 300, 0.6 * factor), E2E_BUCKETS)
        s = binned(lognormal(rng, 500), E2E_BUCKETS)
        expand = lambda h: [i for i, k in enumerate(h.counts) for _ in range(k)]  # noqa: E731
        ref = mannwhitneyu(expand(c), expand(s), alternative="greater", method="asymptotic")
        got = mann_whitney_greater(c, s)
        assert got is not None
        assert got.u == pytest.approx(ref.statistic)
        assert got.p_greater == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_u_test_false_positive_rate_is_at_most_the_significance() -> None:
    rng = random.Random(6)
    positives = 0
    for _ in range(300):
        c = binned(lognormal(rng, 200), E2E_BUCKETS)
        s = binned(lognormal(rng, 400), E2E_BUCKETS)
        t = mann_whitney_greater(c, s)
        assert t is not None and 0.0 <= t.p_greater <= 1.0
        positives += t.p_greater < 0.05
    assert positives / 300 <= 0.08


def test_u_test_edge_cases() -> None:
    one = Histogram((1.0,), (10, 0))
    t = mann_whitney_greater(one, one)
    assert t is not None and t.p_greater == 1.0 and t.cles == pytest.approx(0.5)
    assert mann_whitney_greater(one, Histogram((1.0,), (0, 0))) is None
    assert mann_whitney_greater(one, Histogram((2.0,), (5, 0))) is None  # other buckets


# ----------------------------------------------------------------------- judge


def test_judge_needs_significance_and_effect_size() -> None:
    rng = random.Random(8)
    s = JudgeSettings(significance=0.05, allowed_increase=1.1, min_samples=50)
    stable = binned(lognormal(rng, 3000), E2E_BUCKETS)
    slower = binned(lognormal(rng, 3000, 0.6 * 1.3), E2E_BUCKETS)
    slightly = binned(lognormal(rng, 3000, 0.6 * 1.04), E2E_BUCKETS)
    high = classify("e2e", slower, stable, s)
    assert high.classification == "High" and high.mean_ratio == pytest.approx(1.3, rel=0.05)
    # Significant with 3000 requests a side, but 4% is within the allowed effect size.
    small = classify("e2e", slightly, stable, s)
    assert small.classification == "Pass"
    assert classify("e2e", slower, None, s).classification == "NoData"
    few = binned(lognormal(rng, 10), E2E_BUCKETS)
    assert classify("e2e", few, stable, s).classification == "NoData"


def test_score_is_the_share_of_passing_metrics() -> None:
    s = JudgeSettings(pass_score=95, marginal_score=60)
    p, h, nd = MetricCall("a", "Pass"), MetricCall("b", "High"), MetricCall("c", "NoData")
    assert score([p, p, nd], s).value == 100 and score([p, p, nd], s).verdict == "pass"
    assert score([p, p, h], s).verdict == "marginal"  # 66.7
    assert score([p, h, h], s).verdict == "fail"
    assert score([nd, nd], s).verdict == "nodata" and score([nd], s).value is None


def test_rescaled_counts_keep_the_total_and_move_mass_up() -> None:
    h = Histogram((0.5, 1.0, 2.0), (50, 40, 10, 3))
    same = rescaled(h, 1.0, h.bounds)
    assert same == pytest.approx(h.counts)
    slower = rescaled(h, 2.0, h.bounds)
    assert sum(slower) == pytest.approx(h.n)
    # The lowest bucket's 50 are taken at its top (0.5), so doubled they all leave it.
    assert slower[:3] == pytest.approx((0.0, 50.0, 40.0))
    assert slower[-1] == pytest.approx(3.0 + 10.0)  # (1, 2] doubled is above 2
    assert count_below(h, 0.75) == pytest.approx(70.0) and count_below(h, 99) == 100


def test_shifted_u_test_tolerates_the_allowed_increase() -> None:
    """With allowed = 1.1 the test asks "slower than 1.1 x stable": a 5% slowdown is not
    flagged even with 10,000 requests a side; a 30% one is; and a canary exactly 1.1x
    slower (the null's edge) is flagged in about `significance` of the windows."""
    rng = random.Random(9)
    stable = binned(lognormal(rng, 10000), E2E_BUCKETS)
    a = mann_whitney_greater(binned(lognormal(rng, 10000, 0.63), E2E_BUCKETS), stable, 1.1)
    b = mann_whitney_greater(binned(lognormal(rng, 10000, 0.78), E2E_BUCKETS), stable, 1.1)
    assert a is not None and a.p_greater > 0.5
    assert b is not None and b.p_greater < 1e-6
    flagged = 0
    for _ in range(200):
        c = binned(lognormal(rng, 500, 0.66), E2E_BUCKETS)
        s = binned(lognormal(rng, 500), E2E_BUCKETS)
        t = mann_whitney_greater(c, s, 1.1)
        assert t is not None
        flagged += t.p_greater < 0.05
    assert flagged / 200 <= 0.10
