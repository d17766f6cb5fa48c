"""Latency histograms as Prometheus holds them, and what a window of them can prove.

A :class:`Histogram` is the per-bucket increase of a ``*_bucket`` series over one
analysis window (``sum by (le) (increase(...[W]))``), the +Inf bucket last, plus the
increase of ``*_sum``. Every estimate here interpolates linearly inside a bucket, as
PromQL's ``histogram_quantile`` does, so a figure computed here matches the one in
Grafana for the same window.

Minimum evidence (:func:`min_samples`): estimating the quantile ``q`` needs at least
``k / (1 - q)`` observations, so that on average ``k`` of them lie above the true
quantile. Below that the sample quantile is (close to) the sample maximum — the P99 of
24 requests is the slowest of them — and no distribution-free interval has a finite
upper end: the one-sided bound ``X_(n)`` covers the q-quantile only with probability
``1 - q**n`` (95% needs n >= 299 at q = 0.99). k = 5 (500 requests for a P99) leaves
the two-sided 95% interval's upper end inside the sample.

Confidence (:func:`quantile_interval`): the true q-quantile lies between the order
statistics ``X_(l)`` and ``X_(u)`` with probability ``P(l <= Y < u)``, ``Y ~
Binomial(n, q)`` the number of observations below it — exact and distribution-free
(Hahn & Meeker, *Statistical Intervals*, ch. 5). On bucket counts the order statistics
are interpolated in their bucket. The interval covers sampling error; the bucket
resolution is a shared systematic error that a ratio of two sides with the same buckets
largely cancels, so the ratio interval (:func:`ratio_interval`) is what the gates judge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

__all__ = [
    "Histogram",
    "Interval",
    "binomial_rank_bounds",
    "count_below",
    "min_samples",
    "quantile",
    "quantile_interval",
    "ratio_interval",
    "rescaled",
    "value_at_rank",
]


@dataclass(frozen=True)
class Histogram:
    """Observations per bucket in one window.

    ``bounds``: the finite upper bounds (``le``), ascending; ``counts``: one count per
    bucket, ``len(bounds) + 1`` of them, the last for ``(bounds[-1], +Inf]``;
    ``total``: the sum of the observations (``*_sum``), None when unknown.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float | None = None

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(
                f"a histogram needs one count per bound plus +Inf: {len(self.bounds)} "
                f"bounds, {len(self.counts)} counts"
            )
        if any(b >= a for b, a in pairwise(self.bounds)) or any(
            not math.isfinite(b) for b in self.bounds
        ):
            raise ValueError(f"histogram bounds must be finite and increase: {self.bounds}")
        if any(c < 0 for c in self.counts):
            raise ValueError(f"histogram counts must be >= 0: {self.counts}")

    @classmethod
    def from_cumulative(
        cls, buckets: Iterable[tuple[float, float]], total: float | None = None
    ) -> Histogram:
        """From ``(le, cumulative count)`` pairs as Prometheus returns them, in any order.

        ``increase()`` extrapolates to the window's edges, so counts arrive as floats:
        they are rounded, and made monotone as ``histogram_quantile`` does (a bucket
        never holds fewer observations than the one below it). A missing +Inf bucket
        counts as empty.
        """
        pairs = sorted((le, max(0.0, c)) for le, c in buckets if not math.isnan(c))
        bounds: list[float] = []
        cumulative: list[int] = []
        inf_count: int | None = None
        for le, c in pairs:
            n = max(round(c), cumulative[-1] if cumulative else 0)
            if math.isinf(le):
                inf_count = n
            elif not bounds or le > bounds[-1]:
                bounds.append(le)
                cumulative.append(n)
        top = cumulative[-1] if cumulative else 0
        cumulative.append(max(top, inf_count if inf_count is not None else top))
        counts = [cumulative[0], *(b - a for a, b in pairwise(cumulative))]
        ok_total = total if total is not None and math.isfinite(total) else None
        return cls(tuple(bounds), tuple(counts), ok_total)

    @property
    def n(self) -> int:
        return sum(self.counts)

    @property
    def mean(self) -> float | None:
        if self.total is None or self.n == 0:
            return None
        return self.total / self.n


def min_samples(q: float, tail_samples: float) -> int:
    """The smallest window (observations) that estimates quantile ``q``: k / (1 - q)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"a quantile must lie in (0, 1), not {q}")
    return max(1, math.ceil(round(tail_samples / (1.0 - q), 6)))


def value_at_rank(h: Histogram, rank: float) -> float:
    """The ``rank``-th smallest observation (1-based, may be fractional), interpolated in
    its bucket as ``histogram_quantile`` does: inf beyond the sample or in the +Inf
    bucket, 0 at rank 0 (latencies are not negative)."""
    if rank <= 0:
        return 0.0
    if rank > h.n:
        return math.inf
    below = 0
    for i, c in enumerate(h.counts):
        if below + c >= rank and c > 0:
            if i == len(h.bounds):
                return math.inf
            lo = h.bounds[i - 1] if i > 0 else min(0.0, h.bounds[0])
            return lo + (h.bounds[i] - lo) * (rank - below) / c
        below += c
    return math.inf  # pragma: no cover - rank <= n always lands in a bucket


def count_below(h: Histogram, x: float) -> float:
    """Observations at or below ``x``, interpolated in its bucket (the inverse of
    :func:`value_at_rank`); those in the +Inf bucket are above every finite ``x``."""
    below = 0.0
    lo = min(0.0, h.bounds[0]) if h.bounds else 0.0
    if x <= lo:
        return 0.0
    for bound, c in zip(h.bounds, h.counts, strict=False):
        if x <= bound:
            return below + c * (x - lo) / (bound - lo) if bound > lo else below + c
        below += c
        lo = bound
    return below


def rescaled(h: Histogram, factor: float, bounds: tuple[float, ...]) -> tuple[float, ...]:
    """The counts ``h``'s observations multiplied by ``factor`` would put in ``bounds``'
    buckets (fractional: within a bucket they are taken as spread evenly), except the
    lowest bucket's, taken at its top. That bucket has no lower edge but 0, and spread
    from 0 its observations read as up to half their size once scaled. Seen on the real
    node: a canary 2.5x slower in the mean failed a 4x allowance on inter-token latency
    (p = 1.7e-07), the metric whose fast side falls in vLLM's lowest buckets. At the top, a
    shifted comparison can only understate how much slower the canary is."""
    lowest_top = h.bounds[0] if h.bounds else 0.0
    cumulative = [count_below(h, b / factor) if b / factor >= lowest_top else 0.0
                  for b in bounds]
    cumulative.append(float(h.n))
    return (cumulative[0], *(b - a for a, b in pairwise(cumulative)))


def quantile(h: Histogram, q: float) -> float | None:
    """The point estimate of quantile ``q`` (rank q·n), None for an empty histogram.

    Unlike ``histogram_quantile``, a quantile in the +Inf bucket is inf, not the largest
    finite bound: a gate must not read "at most 7680 s" as a measurement."""
    if h.n == 0:
        return None
    return value_at_rank(h, q * h.n)


def _binomial_cdf(n: int, p: float) -> tuple[int, list[float]]:
    """(start, cdf) with cdf[i] = P(Y <= start + i) for Y ~ Binomial(n, p), over the
    range that holds all but a negligible mass; computed in log space from lgamma."""
    sd = math.sqrt(n * p * (1.0 - p))
    start = max(0, math.floor(n * p - 12.0 * sd - 12))
    stop = min(n, math.ceil(n * p + 12.0 * sd + 12))
    lp, lq = math.log(p), math.log1p(-p)
    log_n = math.lgamma(n + 1)
    pmf = [
        math.exp(log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)
        for k in range(start, stop + 1)
    ]
    cdf: list[float] = []
    acc = 0.0
    for x in pmf:
        acc += x
        cdf.append(acc)
    return start, cdf


def binomial_rank_bounds(n: int, q: float, level: float) -> tuple[int, int]:
    """Ranks (l, u) with P(l <= Y < u) >= level, Y ~ Binomial(n, q), each tail <= (1-level)/2.

    l = 0 means no lower order statistic qualifies (the bound is 0); u = n + 1 means no
    upper one does (the bound is infinite: too few observations above the quantile)."""
    if n <= 0:
        return 0, 1
    alpha = (1.0 - level) / 2.0
    start, cdf = _binomial_cdf(n, q)
    # l - 1 = the largest k with P(Y <= k) <= alpha; u - 1 = the smallest with >= 1 - alpha.
    lower = 0
    for i, c in enumerate(cdf):
        if c <= alpha:
            lower = start + i + 1
        else:
            break
    upper = n + 1
    for i, c in enumerate(cdf):
        if c >= 1.0 - alpha:
            upper = start + i + 1
            break
    return lower, min(upper, n + 1)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval (hi may be inf, lo may be 0)."""

    point: float
    lo: float
    hi: float

    def against(self, limit: float) -> str:
        """"below" when the whole interval is at or under ``limit``, "above" when it is
        wholly over it, else "straddles"."""
        if self.hi <= limit:
            return "below"
        if self.lo > limit:
            return "above"
        return "straddles"


def quantile_interval(h: Histogram, q: float, level: float) -> Interval | None:
    """The quantile's point estimate and distribution-free interval at ``level``."""
    point = quantile(h, q)
    if point is None:
        return None
    lo_rank, hi_rank = binomial_rank_bounds(h.n, q, level)
    return Interval(point, value_at_rank(h, lo_rank), value_at_rank(h, hi_rank))


def ratio_interval(
    canary: Histogram, stable: Histogram, q: float, confidence: float
) -> Interval | None:
    """canary quantile / stable quantile, with an interval at ``confidence``.

    Each side gets an interval at ``sqrt(confidence)``; the two are independent (disjoint
    requests), so both hold together with probability >= ``confidence``, and then the
    ratio lies in [c.lo / s.hi, c.hi / s.lo]. None when a side is empty or its estimate
    is not a positive finite number."""
    side = math.sqrt(confidence)
    c = quantile_interval(canary, q, side)
    s = quantile_interval(stable, q, side)
    if c is None or s is None or not (0.0 < s.point < math.inf) or math.isinf(c.point):
        return None
    lo = c.lo / s.hi if s.hi > 0 else 0.0
    hi = c.hi / s.lo if s.lo > 0 else math.inf
    return Interval(c.point / s.point, lo, hi)
