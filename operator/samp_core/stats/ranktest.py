"""The Mann-Whitney U test on two bucketed samples (canary against stable).

Why written here rather than ``scipy.stats.mannwhitneyu``: the samples are histogram
buckets, not observations. Every observation in a bucket ties with the others in it, so
the rank sums follow from the bucket counts in one pass (O(buckets), whatever the
traffic), where scipy would need the samples expanded to one value per request.
Why the normal approximation: with ties (here, the rule) no exact null distribution is
tabulated — scipy falls back to the same asymptotic method — and the gates only judge
windows with tens of requests or more per side, where it is accurate.
The tie correction is the usual one: var(U) = n1·n2/12 · ((N + 1) - Σ(t³ - t) / (N(N - 1)))
with t the number of observations (both sides) in each bucket, plus a continuity
correction of 1/2.

``allowed`` shifts the null hypothesis: the test asks whether the canary is slower than
the stable's latencies multiplied by ``allowed`` (1.1: more than 10% slower), the
stable's histogram re-binned onto the same buckets after scaling (counts become
fractional, spread evenly within a bucket as everywhere here). Rejecting it says with
confidence that the slowdown is beyond what is allowed, rather than that there is some
slowdown and, separately, a point estimate above the allowance — which with thousands of
requests flags slowdowns of a few percent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from samp_core.stats.histogram import Histogram, rescaled

__all__ = ["RankTest", "mann_whitney_greater", "u_test_counts"]


@dataclass(frozen=True)
class RankTest:
    """``u``: the canary's U (pairs where the canary is slower, ties counted 1/2);
    ``cles``: U / (n1·n2), the probability that a canary request is slower than a stable
    one (the common-language effect size, 0.5 when alike); ``p_greater``: one-sided p-value
    of "the canary is stochastically slower"."""

    n_canary: float
    n_stable: float
    u: float
    z: float
    p_greater: float

    @property
    def cles(self) -> float:
        return self.u / (self.n_canary * self.n_stable)


def mann_whitney_greater(
    canary: Histogram, stable: Histogram, allowed: float = 1.0
) -> RankTest | None:
    """U test of canary > ``allowed`` × stable over the canary's buckets; None when a side
    is empty or, unshifted, the two histograms do not share their bucket bounds."""
    if canary.n == 0 or stable.n == 0:
        return None
    if allowed == 1.0:
        if canary.bounds != stable.bounds:
            return None
        return u_test_counts(canary.counts, stable.counts)
    return u_test_counts(canary.counts, rescaled(stable, allowed, canary.bounds))


def u_test_counts(canary: Sequence[float], stable: Sequence[float]) -> RankTest | None:
    """The one-sided U test (canary greater) on per-bucket counts of the same buckets."""
    n1, n2 = float(sum(canary)), float(sum(stable))
    if n1 <= 0 or n2 <= 0:
        return None
    u = 0.0
    stable_below = 0.0
    ties = 0.0
    for c, s in zip(canary, stable, strict=True):
        u += c * (stable_below + 0.5 * s)
        stable_below += s
        t = c + s
        ties += t**3 - t
    n = n1 + n2
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    mean = n1 * n2 / 2.0
    if var <= 1e-12:  # every observation in one bucket: no evidence either way
        return RankTest(n1, n2, u, 0.0, 1.0)
    z = (u - mean - 0.5) / math.sqrt(var)
    return RankTest(n1, n2, u, z, 0.5 * math.erfc(z / math.sqrt(2.0)))
