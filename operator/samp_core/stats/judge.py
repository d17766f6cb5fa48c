"""A Kayenta-style judge: one classification per latency metric, then a score.

Kayenta (Spinnaker's automated canary analysis) classifies each metric by a
Mann-Whitney U test of canary against baseline plus an effect size, and scores the run
as the percentage of classified metrics that passed. Here, per metric:

* **NoData** when either side has fewer than the minimum observations;
* **High** (the canary is worse) when the U test finds the canary slower than the
  stable's latencies times ``allowed_increase`` (the effect size: 1.1 = 10% slower is
  tolerated) at the significance level — the tolerance is part of the null hypothesis
  (samp_core.stats.ranktest), so a 5% slowdown is not flagged at any traffic and a
  noisy small window is not flagged on its point estimate;
* **Pass** otherwise.

``significance`` holds for the judge as a whole: each metric is tested at
``significance / metrics`` (Bonferroni), so a canary identical to the stable fails the
judge in at most that share of windows, however many metrics it reads. Reported with
each metric: the mean-latency ratio (``*_sum / *_count``, exact, no bucket
interpolation) and the probability that a canary request is slower than a stable one.

The score is 100 × Pass / (Pass + High), NoData left out (no score without a
classified metric); the verdict is "pass" at or above ``pass_score``, "fail" below
``marginal_score`` and "marginal" between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from samp_core.stats.histogram import Histogram
from samp_core.stats.ranktest import mann_whitney_greater

__all__ = ["JudgeSettings", "MetricCall", "Score", "classify", "judge_all", "score"]


@dataclass(frozen=True)
class JudgeSettings:
    significance: float = 0.05
    allowed_increase: float = 1.1
    pass_score: float = 95.0
    marginal_score: float = 75.0
    min_samples: int = 20


@dataclass(frozen=True)
class MetricCall:
    """One metric's classification: Pass, High or NoData, with its figures."""

    metric: str
    classification: str
    p_value: float | None = None  # of "slower than allowed_increase x stable"
    mean_ratio: float | None = None
    cles: float | None = None
    why: str = ""


def _mean_ratio(canary: Histogram, stable: Histogram) -> float | None:
    cm, sm = canary.mean, stable.mean
    if cm is None or sm is None or sm <= 0.0:
        return None
    return cm / sm


def classify(
    metric: str, canary: Histogram | None, stable: Histogram | None, s: JudgeSettings,
    tests: int = 1,
) -> MetricCall:
    """Classify one metric from the two sides' histograms of the same window, as one of
    ``tests`` metrics sharing the significance level."""
    if canary is None or stable is None:
        return MetricCall(metric, "NoData", why="no histogram")
    if canary.n < s.min_samples or stable.n < s.min_samples:
        return MetricCall(
            metric, "NoData",
            why=f"{canary.n} canary / {stable.n} stable observations, fewer than {s.min_samples}",
        )
    shifted = mann_whitney_greater(canary, stable, s.allowed_increase)
    plain = mann_whitney_greater(canary, stable)
    if shifted is None or plain is None:
        return MetricCall(metric, "NoData", why="the two sides have different buckets")
    return MetricCall(
        metric,
        "High" if shifted.p_greater < s.significance / max(1, tests) else "Pass",
        p_value=shifted.p_greater,
        mean_ratio=_mean_ratio(canary, stable),
        cles=plain.cles,
    )


@dataclass(frozen=True)
class Score:
    """The run's score (None without a classified metric) and its verdict:
    "pass", "marginal", "fail" or "nodata"."""

    value: float | None
    verdict: str
    calls: tuple[MetricCall, ...]


def score(calls: Sequence[MetricCall], s: JudgeSettings) -> Score:
    judged = [c for c in calls if c.classification != "NoData"]
    if not judged:
        return Score(None, "nodata", tuple(calls))
    value = 100.0 * sum(c.classification == "Pass" for c in judged) / len(judged)
    if value >= s.pass_score:
        verdict = "pass"
    elif value < s.marginal_score:
        verdict = "fail"
    else:
        verdict = "marginal"
    return Score(value, verdict, tuple(calls))


def judge_all(
    canary: Mapping[str, Histogram], stable: Mapping[str, Histogram], metrics: Sequence[str],
    s: JudgeSettings,
) -> Score:
    """Classify each metric and score them."""
    return score(
        [classify(m, canary.get(m), stable.get(m), s, len(metrics)) for m in metrics], s
    )
