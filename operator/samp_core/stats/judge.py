"""A Kayenta-style judge: one classification per latency metric, then a score.

Kayenta (Spinnaker's automated canary analysis) classifies each metric by a
Mann-Whitney U test of canary against baseline plus an effect size, and scores the run
as the percentage of classified metrics that passed. Here, per metric:

* **NoData** when either side has fewer than the minimum observations;
* **High** (the canary is worse) when the U test says the canary is slower at
  ``significance`` (one-sided p below it) **and** the effect is larger than allowed:
  the canary's mean latency (``*_sum / *_count``, exact, no bucket interpolation)
  over the stable's above ``allowed_increase``. Both are needed: with thousands of
  requests the test alone flags differences nobody would roll back for, and the ratio
  alone reacts to noise in small windows;
* **Pass** otherwise.

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
    p_value: float | None = None
    mean_ratio: float | None = None
    cles: float | None = None
    why: str = ""


def _mean_ratio(canary: Histogram, stable: Histogram) -> float | None:
    cm, sm = canary.mean, stable.mean
    if cm is None or sm is None or sm <= 0.0:
        return None
    return cm / sm


def classify(
    metric: str, canary: Histogram | None, stable: Histogram | None, s: JudgeSettings
) -> MetricCall:
    """Classify one metric from the two sides' histograms of the same window."""
    if canary is None or stable is None:
        return MetricCall(metric, "NoData", why="no histogram")
    if canary.n < s.min_samples or stable.n < s.min_samples:
        return MetricCall(
            metric, "NoData",
            why=f"{canary.n} canary / {stable.n} stable observations, fewer than {s.min_samples}",
        )
    test = mann_whitney_greater(canary, stable)
    if test is None:
        return MetricCall(metric, "NoData", why="the two sides have different buckets")
    ratio = _mean_ratio(canary, stable)
    slower = test.p_greater < s.significance
    large = ratio is not None and ratio > s.allowed_increase
    return MetricCall(
        metric,
        "High" if slower and large else "Pass",
        p_value=test.p_greater,
        mean_ratio=ratio,
        cles=test.cles,
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
    return score([classify(m, canary.get(m), stable.get(m), s) for m in metrics], s)
