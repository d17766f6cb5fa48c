"""The latency gates: P99 ceilings and ratios to stable judged on intervals, not points.

Per gate, from the bucket counts of the window (samp_core.stats.histogram):

1. **Evidence**: a side with fewer than ``minTailSamples / (1 - 0.99)`` observations
   (500 by default) cannot estimate a P99: Inconclusive, never a pass or a fail; the
   next analysis widens its window (samp_core.canary.analysis), and the analysis does
   not count toward ``inconclusiveLimit`` until the window has reached its limit.
2. **Interval**: the P99 (ceiling) or the canary/stable P99 ratio (ratio gate) with its
   ``confidence`` interval. Failed only when the whole interval is above the threshold,
   Successful only when it is wholly at or below it, Inconclusive when it straddles it —
   short of evidence as well, and waiting for a longer window in the same way.
3. **Fairness**: the ratio gates and the judge compare two sides; when their per-replica
   request rates differ by more than ``maxLoadImbalance``, the verdict the imbalance
   could have produced is not trusted — a pass when the canary was the idler side, a
   failure when it was the busier one — and becomes Inconclusive (latency grows with
   load; the opposite verdict stands, as the imbalance worked against it).

Without bucket counts (a provider that only has point figures) the point P99 is judged
as before, under the same evidence rule on the request count.
The judge (samp_core.stats.judge) adds a ``judge`` row beside the thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from samp_core.gate_window import Window, error_for
from samp_core.measurement import SideFigures
from samp_core.spec import GatesSpec
from samp_core.stats.histogram import (
    Histogram,
    Interval,
    min_samples,
    quantile,
    quantile_interval,
)
from samp_core.stats.histogram import ratio_interval as p_ratio_interval
from samp_core.stats.judge import JudgeSettings, judge_all
from samp_core.status import GateResult
from samp_core.verdicts import Verdict, ceiling, finite, num, result

__all__ = [
    "EVIDENCE_SHORT",
    "GATE_JUDGE",
    "GATE_LOAD_BALANCE",
    "Fairness",
    "LatencyStats",
    "fair_rows",
    "fairness",
    "judge_row",
    "latency_gate",
    "stats_of",
]

GATE_JUDGE = "judge"
GATE_LOAD_BALANCE = "loadBalance"
Q = 0.99
JUDGE_METRICS = ("e2e", "ttft", "itl")


@dataclass(frozen=True)
class LatencyStats:
    """The statistical settings of the latency gates and the judge, from the spec."""

    tail_samples: float
    confidence: float
    max_load_imbalance: float
    judge: JudgeSettings | None  # None: the judge is off

    @property
    def min_samples(self) -> int:
        return min_samples(Q, self.tail_samples)

    @property
    def rule(self) -> str:
        return (f">= {self.min_samples} requests per side (minTailSamples "
                f"{num(self.tail_samples)} / (1 - {Q}))")


def stats_of(gates: GatesSpec) -> LatencyStats:
    lat, j = gates.latency, gates.judge
    judge = None
    if j.enabled:
        allowed = j.allowed_increase or lat.p99_max_ratio_to_stable or 1.1
        judge = JudgeSettings(
            significance=j.significance,
            allowed_increase=max(1.0, allowed),
            pass_score=j.pass_score,
            marginal_score=j.marginal_score,
            min_samples=gates.min_requests,
        )
    return LatencyStats(lat.min_tail_samples, lat.confidence, gates.max_load_imbalance, judge)


# ------------------------------------------------------------------------ fairness


@dataclass(frozen=True)
class Fairness:
    """canary per-replica request rate / stable's (None: unknown) and the tolerance."""

    load_ratio: float | None
    tolerance: float
    why_unknown: str = ""

    @property
    def canary_busier(self) -> bool:
        return self.load_ratio is not None and self.load_ratio > self.tolerance

    @property
    def canary_idler(self) -> bool:
        return self.load_ratio is not None and self.load_ratio < 1.0 / self.tolerance

    def describe(self) -> str:
        if self.load_ratio is None:
            return f"per-replica load not compared: {self.why_unknown}"
        return (f"canary per-replica request rate {self.load_ratio:.2f}x the stable's "
                f"(tolerance {num(self.tolerance)}x either way)")


def _per_replica(side: SideFigures, window_seconds: float) -> float | None:
    """Requests per second per serving replica (one replica when unknown)."""
    if not finite(side.requests) or window_seconds <= 0:
        return None
    replicas = side.replicas if finite(side.replicas) and (side.replicas or 0) > 0 else 1.0
    assert side.requests is not None and replicas is not None
    return side.requests / window_seconds / replicas


def fairness(w: Window, tolerance: float) -> Fairness:
    """The sides' per-replica request rates over the same window, compared."""
    if w.m.stable is None:
        return Fairness(None, tolerance, "no stable figures")
    c = _per_replica(w.m.canary, w.m.window_seconds)
    s = _per_replica(w.m.stable, w.m.window_seconds)
    if c is None or s is None or s <= 0:
        return Fairness(None, tolerance, "a side has no request count")
    return Fairness(c / s, tolerance)


def _fair(r: GateResult, f: Fairness) -> GateResult:
    """Inconclusive when the load imbalance could have produced this verdict."""
    untrusted = (r.verdict == Verdict.FAILED.value and f.canary_busier) or (
        r.verdict == Verdict.SUCCESSFUL.value and f.canary_idler
    )
    if not untrusted:
        return r
    side = "busier" if f.canary_busier else "idler"
    note = (f"; not trusted: the canary was the {side} side ({f.describe()}), so the "
            f"{r.verdict.lower()} may be the load's")
    return r.model_copy(update={"verdict": Verdict.INCONCLUSIVE.value,
                                "message": (r.message + note)[:1024]})


def fair_rows(
    w: Window, tolerance: float, rows: list[GateResult], comparative: frozenset[str]
) -> tuple[list[GateResult], GateResult]:
    """The comparative rows through the fairness check, and the check's own row:
    Inconclusive when it made a comparative gate so, Successful otherwise (saying when
    the split was unfair but every verdict went against the imbalance)."""
    f = fairness(w, tolerance)
    out = [_fair(r, f) if r.gate in comparative else r for r in rows]
    changed = [a.gate for a, b in zip(out, rows, strict=True) if a.verdict != b.verdict]
    threshold = f"per-replica request rates within {num(f.tolerance)}x either way"
    err = error_for(w.m, "canary.requests", "stable.requests")
    if err is not None:
        row = result(GATE_LOAD_BALANCE, Verdict.ERROR, threshold=threshold, message=err)
    elif f.load_ratio is None:
        row = result(GATE_LOAD_BALANCE, Verdict.SUCCESSFUL, threshold=threshold,
                     message=f.describe())
    elif changed:
        row = result(GATE_LOAD_BALANCE, Verdict.INCONCLUSIVE, value=f.load_ratio,
                     threshold=threshold,
                     message=f"{f.describe()}: unfair split; {', '.join(changed)} not trusted")
    else:
        unfair = f.canary_busier or f.canary_idler
        note = (": unfair split, but no comparative verdict could be the imbalance's"
                if unfair else "")
        row = result(GATE_LOAD_BALANCE, Verdict.SUCCESSFUL, value=f.load_ratio,
                     threshold=threshold, message=f.describe() + note)
    return out, row


# ------------------------------------------------------------------ latency gates


EVIDENCE_SHORT = "not enough evidence"  # marks a row that waits for a longer window


def _short(n: int, need: int, who: str, rule: str) -> str:
    return (f"{who} has {n} observations in the window; a P99 needs {rule}: "
            f"{EVIDENCE_SHORT} (never a pass; the next window is longer)")


def _point_estimate(canary: Histogram, stable: Histogram | None) -> float | None:
    """The P99 (or, with ``stable``, the P99 ratio) as PromQL would read it; None if none."""
    c = quantile(canary, Q)
    if stable is None:
        return c
    s = quantile(stable, Q)
    if c is None or s is None or not 0.0 < s < math.inf:
        return None
    return c / s


def _interval_text(iv: Interval, conf: float, unit: str) -> str:
    hi = "inf" if math.isinf(iv.hi) else num(iv.hi)
    return f"{num(iv.point)}{unit} ({100 * conf:g}% interval {num(iv.lo)}-{hi}{unit})"


def _verdict_of(iv: Interval, limit: float) -> tuple[Verdict, str]:
    side = iv.against(limit)
    if side == "below":
        return Verdict.SUCCESSFUL, "wholly within"
    if side == "above":
        return Verdict.FAILED, "wholly above"
    return Verdict.INCONCLUSIVE, "straddles"


def _wait_note(verdict: Verdict) -> str:
    """A straddling interval is short of evidence too: more requests narrow it."""
    if verdict is Verdict.INCONCLUSIVE:
        return f" ({EVIDENCE_SHORT} yet; the next window is longer)"
    return ""


def latency_gate(  # noqa: PLR0917
    w: Window, name: str, metric: str, limit: float, is_ratio: bool, what: str,
    st: LatencyStats,
) -> GateResult:
    """One P99 gate (ceiling or ratio) over the window; the guards already passed."""
    stable = w.m.stable or SideFigures()
    ch, sh = w.m.canary.histograms.get(metric), stable.histograms.get(metric)
    if ch is None or (is_ratio and sh is None):
        return _point_gate(w, name, metric, limit, is_ratio, what, st)
    assert ch is not None
    threshold = (f"<= {num(limit)}" + ("x stable" if is_ratio else "s")
                 + f", {100 * st.confidence:g}% interval, {st.rule}")
    need = st.min_samples
    # the stable's P99 beside an absolute ceiling, for the record
    base = quantile(sh, Q) if sh is not None and not is_ratio and w.has_stable else None
    if ch.n < need or (is_ratio and sh is not None and sh.n < need):
        # the point estimate is shown (kubectl describe), but it decides nothing
        point = _point_estimate(ch, sh if is_ratio else None)
        who, n = ("the canary", ch.n) if ch.n < need else ("the stable", sh.n if sh else 0)
        return result(name, Verdict.INCONCLUSIVE, value=point, baseline=base,
                      threshold=threshold, message=_short(n, need, who, st.rule))
    if not is_ratio:
        iv = quantile_interval(ch, Q, st.confidence)
        assert iv is not None
        verdict, how = _verdict_of(iv, limit)
        return result(name, verdict, value=iv.point, baseline=base, threshold=threshold,
                      message=f"canary {what} {_interval_text(iv, st.confidence, 's')} over "
                      f"{ch.n} requests: {how} the ceiling {num(limit)}s{_wait_note(verdict)}")
    assert sh is not None
    return _ratio_gate(w, name, (ch, sh), limit, what, st, threshold)


def _ratio_gate(  # noqa: PLR0917
    w: Window, name: str, sides: tuple[Histogram, Histogram], limit: float, what: str,
    st: LatencyStats, threshold: str,
) -> GateResult:
    ch, sh = sides
    iv = p_ratio_interval(ch, sh, Q, st.confidence)
    if iv is None:
        return result(name, Verdict.INCONCLUSIVE, threshold=threshold,
                      message=f"{what}: no positive finite P99 on both sides; no ratio")
    verdict, how = _verdict_of(iv, limit)
    c99, s99 = quantile_interval(ch, Q, 0.5), quantile_interval(sh, Q, 0.5)
    assert c99 is not None and s99 is not None
    msg = (f"{what} canary {num(c99.point)}s / stable {num(s99.point)}s = "
           f"{_interval_text(iv, st.confidence, '')} over {ch.n} / {sh.n} requests: "
           f"{how} {num(limit)}{_wait_note(verdict)}")
    return result(name, verdict, value=iv.point, threshold=threshold, message=msg)


def _point_gate(  # noqa: PLR0917
    w: Window, name: str, metric: str, limit: float, is_ratio: bool, what: str,
    st: LatencyStats,
) -> GateResult:
    """No bucket counts: the point P99 from PromQL, under the same evidence rule."""
    stable = w.m.stable or SideFigures()
    c_val, s_val = (
        (w.m.canary.p99_seconds, stable.p99_seconds) if metric == "e2e"
        else (w.m.canary.ttft_p99_seconds, stable.ttft_p99_seconds)
    )
    threshold = f"<= {num(limit)}" + ("x stable" if is_ratio else "s") + f", {st.rule}"
    for who, side in (("the canary", w.m.canary), *((("the stable", stable),) if is_ratio else ())):
        n = side.requests or 0.0
        if n < st.min_samples:
            return result(name, Verdict.INCONCLUSIVE, value=c_val, baseline=s_val,
                          threshold=threshold,
                          message=_short(int(n), st.min_samples, who, st.rule))
    if not is_ratio:
        return ceiling(name, c_val, limit, "s", f"canary {what} (point, no buckets)",
                       baseline=s_val if w.has_stable else None)
    if not finite(c_val) or not finite(s_val) or (s_val or 0.0) <= 0.0:
        return result(name, Verdict.INCONCLUSIVE, value=c_val, baseline=s_val,
                      threshold=threshold,
                      message=f"{what}: canary {num(c_val)}s, stable {num(s_val)}s; "
                      "cannot form a ratio")
    assert c_val is not None and s_val is not None
    ratio = c_val / s_val
    ok = ratio <= limit
    msg = (f"{what} canary {num(c_val)}s / stable {num(s_val)}s = {ratio:.3f} (point, no "
           f"buckets), {'within' if ok else 'above'} {num(limit)}")
    return result(name, Verdict.SUCCESSFUL if ok else Verdict.FAILED, value=ratio,
                  threshold=threshold, message=msg)


# ------------------------------------------------------------------------ judge


def judge_row(w: Window, st: LatencyStats) -> GateResult | None:
    """The Kayenta-style judge over the three latency histograms; None when it is off."""
    if st.judge is None or not w.compares:
        return None
    s = st.judge
    threshold = f"score >= {num(s.pass_score)} (fails below {num(s.marginal_score)})"
    stable = w.m.stable or SideFigures()
    sc = judge_all(w.m.canary.histograms, stable.histograms, JUDGE_METRICS, s)
    calls = []
    for c in sc.calls:
        if c.classification == "NoData":
            calls.append(f"{c.metric} NoData ({c.why})")
        else:
            calls.append(f"{c.metric} {c.classification} (p={c.p_value:.2g}, mean "
                         f"x{num(c.mean_ratio)}, P(canary slower)={num(c.cles)})")
    detail = "; ".join(calls)
    rule = (f"Mann-Whitney U per metric: High when slower than {num(s.allowed_increase)}x "
            f"stable at significance {num(s.significance)}, shared by the metrics")
    if sc.value is None:
        return result(GATE_JUDGE, Verdict.INCONCLUSIVE, threshold=threshold,
                      message=f"no metric could be judged: {detail}")
    verdict = {"pass": Verdict.SUCCESSFUL, "fail": Verdict.FAILED}.get(
        sc.verdict, Verdict.INCONCLUSIVE)
    return result(GATE_JUDGE, verdict, value=sc.value, threshold=threshold,
                  message=f"score {sc.value:.0f} ({sc.verdict}): {detail}; {rule}")
