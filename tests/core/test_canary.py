"""The pure canary step machine, driven with a fake clock and scripted measurements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from latency_sim import steady_side
from samp_core import canary as cn
from samp_core import gates as g
from samp_core.conditions import rfc3339
from samp_core.decision import (
    Decision,
    EnsureCanary,
    PromoteStable,
    RemoveCanary,
    SetWeight,
    StartReplan,
)
from samp_core.spec import QuantizedModelSpec
from samp_core.status import AccuracySummary, Phase, QuantizedModelStatus
from spec_fixtures import make_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAME = "tiny-llama"



def evaluated(passed: bool | None = True) -> QuantizedModelStatus:
    return QuantizedModelStatus(
        phase=Phase.EVALUATED,
        accuracy=AccuracySummary(
            perplexity_base=10.0, perplexity_quantized=10.2 if passed else 12.0, passed=passed
        ),
        artifact_uri="pvc://models/tiny/attempt-1",
    )


def healthy(now: datetime, c_p99: float = 0.3, s_req: int = 2000) -> g.Measurement:
    """A window with enough requests on both sides to judge a P99 (the default rule needs
    500), the canary's P99 at ``c_p99`` and the stable's at 0.3 s."""
    return g.Measurement(
        window_seconds=10,
        taken_at=now,
        canary=steady_side(2000, c_p99),
        stable=steady_side(s_req, 0.3),
    )


class Sim:
    """Calls decide the way the operator does: analysis_due, measure, decide."""

    def __init__(self, spec: QuantizedModelSpec, status: QuantizedModelStatus) -> None:
        self.spec, self.status, self.now = spec, status, T0
        self.actions: list[object] = []
        self.events: list[cn.Event] = []
        self.annotations: dict[str, str] = {}
        self.measured = 0
        self.windows: list[float] = []  # window_seconds of each analysis requested

    def tick(self, seconds: float, measure=healthy, ready: bool = True) -> Decision:  # type: ignore[no-untyped-def]
        self.now += timedelta(seconds=seconds)
        req = cn.analysis_due(self.spec, self.status, NAME, self.now)
        if req is not None:
            self.windows.append(req.window_seconds)
        m = measure(self.now) if req is not None else None
        self.measured += m is not None
        d = cn.decide(
            self.spec,
            self.status,
            cn.Observation(
                name=NAME,
                annotations=self.annotations,
                canary_ready=ready,
                weight_verified=True,
                measurement=m,
            ),
            self.now,
        )
        self.status = d.status
        self.actions.extend(d.actions)
        self.events.extend(d.events)
        return d

    def start(self) -> None:
        d = self.tick(0, ready=False)
        assert d.actions == (
            EnsureCanary(
                "tiny-llama-canary", "pvc://models/tiny/attempt-1", 1, aliases=("tiny-llama",)
            ),
        )
        assert self.status.phase is Phase.CANARY
        d = self.tick(5, ready=False)  # pods not ready: no traffic yet
        assert self.status.canary is not None and self.status.canary.weight == 0
        d = self.tick(5)
        assert SetWeight(25) in d.actions

    def run(self, seconds: float, measure=healthy, step: float = 5) -> None:  # type: ignore[no-untyped-def]
        t = 0.0
        while t < seconds and self.status.phase in (Phase.CANARY, Phase.PAUSED):
            self.tick(step, measure)
            t += step


def cond(status: QuantizedModelStatus, kind: str):  # type: ignore[no-untyped-def]
    return next(c for c in status.conditions if c.type == kind)


def test_healthy_canary_steps_and_promotes() -> None:
    sim = Sim(make_spec(), evaluated())
    sim.start()
    sim.run(200)
    st = sim.status
    assert st.phase is Phase.PROMOTED
    weights = [a.weight for a in sim.actions if isinstance(a, SetWeight)]
    assert weights == [25, 100, 0]
    assert isinstance(sim.actions[-3], PromoteStable)
    assert isinstance(sim.actions[-1], RemoveCanary)
    assert cond(st, "Promoted").status == "True"
    assert cond(st, "Ready").reason == "Promoted"
    assert st.history[-1].outcome == "Promoted"
    assert st.canary is not None and st.canary.analyses >= 6
    # the ratio was judged at 25% in the stable's own windows; at 100% the stable serves
    # nothing, so the last analysis holds absolute gates only
    assert any("p99RatioToStable=1" in e.message for e in sim.events)
    assert "p99RatioToStable" not in {r.gate for r in st.gates}
    assert st.canary.p99_ratio == pytest.approx(1.0)


def test_every_step_lasts_its_duration_and_needs_a_success() -> None:
    sim = Sim(make_spec(), evaluated())
    sim.start()
    sim.run(25)
    assert sim.status.canary.weight == 25  # type: ignore[union-attr]
    sim.run(10)
    assert sim.status.canary.weight == 100  # type: ignore[union-attr]


def test_full_weight_judges_without_a_stable_window() -> None:
    """At weight 100 the stable gets no traffic: no ratio can be formed in the window,
    so ratio gates are not judged there (they were at the steps below 100)."""
    sim = Sim(make_spec(), evaluated())
    sim.start()
    sim.run(35)  # step 1 done
    sim.run(40, measure=lambda now: healthy(now, s_req=0))
    assert sim.status.phase is Phase.PROMOTED


def test_a_stale_stable_baseline_never_judges_the_canary() -> None:
    """Issue 15: the stable's figures from an earlier window were remembered and used
    whenever the stable had too little traffic. Here the stable's P99 was 1.2 s an hour
    ago (under another load); now the stable is idle and the canary's P99 is 1 s, so
    the hour-old figure passed it (ratio 0.83) and it promoted. The stable's figures
    must come from the canary's own window: without them, Inconclusive, never a pass."""

    def busy_stable(now: datetime) -> g.Measurement:
        return g.Measurement(
            window_seconds=10, taken_at=now,
            canary=g.SideFigures(requests=40, errors=0, p99_seconds=0.3),
            stable=g.SideFigures(requests=40, errors=0, p99_seconds=1.2),
        )

    sim = Sim(make_spec(inconclusiveLimit=2, progressDeadline="3h"), evaluated())
    sim.start()
    sim.run(10, measure=busy_stable)  # one window at 25%, the stable busy
    assert sim.status.canary is not None and sim.status.canary.analyses == 1
    sim.now += timedelta(hours=1)  # an hour later the stable has gone quiet
    sim.run(60, measure=lambda now: healthy(now, c_p99=1.0, s_req=0))
    st = sim.status
    assert st.phase is Phase.ROLLED_BACK, st.message
    assert cond(st, "RolledBack").reason == "InconclusiveLimitExceeded"
    ratio = next(r for r in st.gates if r.gate == "p99RatioToStable")
    assert ratio.verdict == "Inconclusive" and "the stable has 0 observations" in ratio.message


def test_latency_regression_rolls_back_with_figures() -> None:
    sim = Sim(make_spec(), evaluated())
    sim.start()
    sim.run(60, measure=lambda now: healthy(now, c_p99=0.9))
    st = sim.status
    assert st.phase is Phase.ROLLED_BACK
    rb = cond(st, "RolledBack")
    assert rb.status == "True" and rb.reason == "GateFailed"
    assert "p99RatioToStable" in rb.message and "value 3" in rb.message
    assert "threshold <= 1.5x stable" in rb.message
    assert sim.actions[-2:] == [SetWeight(0), RemoveCanary()]
    failing = next(r for r in st.gates if r.gate == "p99RatioToStable")
    # 3x by construction; the bucket interpolation reads 3.1
    assert failing.value == pytest.approx(3.0, rel=0.05) and failing.verdict == "Failed"
    assert st.history[-1].outcome == "RolledBack"
    assert any(e.type == "Warning" and e.reason == "RolledBack" for e in sim.events)


def test_failure_limit_tolerates_failures() -> None:
    sim = Sim(make_spec(failureLimit=1), evaluated())
    sim.start()
    calls = iter([0.9, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3])
    sim.run(200, measure=lambda now: healthy(now, c_p99=next(calls)))
    assert sim.status.phase is Phase.PROMOTED
    assert sim.status.canary.failures == 1  # type: ignore[union-attr]


def test_no_traffic_never_promotes() -> None:
    def idle(now: datetime) -> g.Measurement:
        return g.Measurement(
            window_seconds=10,
            taken_at=now,
            canary=g.SideFigures(requests=0, errors=0, p99_seconds=float("nan")),
            stable=g.SideFigures(requests=0, errors=0, p99_seconds=float("nan")),
        )

    sim = Sim(make_spec(inconclusiveLimit=3), evaluated())
    sim.start()
    sim.run(300, measure=idle)
    st = sim.status
    assert st.phase is Phase.ROLLED_BACK
    assert cond(st, "RolledBack").reason == "InconclusiveLimitExceeded"
    assert st.canary.inconclusives == 4  # type: ignore[union-attr]
    assert not any(isinstance(a, PromoteStable) for a in sim.actions)
    assert [a.weight for a in sim.actions if isinstance(a, SetWeight)] == [25, 0]


def test_prometheus_down_is_error_then_continues() -> None:
    down = {"on": True}

    def flaky(now: datetime) -> g.Measurement:
        if down["on"]:
            return g.Measurement(window_seconds=10, taken_at=now, error="connection refused")
        return healthy(now)

    sim = Sim(make_spec(consecutiveErrorLimit=4), evaluated())
    sim.start()
    sim.run(40, measure=flaky)
    st = sim.status
    assert st.phase is Phase.CANARY and st.canary is not None
    assert st.canary.weight == 25  # no step advanced on errors
    assert st.canary.consecutive_errors == 4 and st.canary.last_verdict == "Error"
    assert {r.verdict for r in st.gates} == {"Error"}
    down["on"] = False
    sim.run(200, measure=flaky)
    assert sim.status.phase is Phase.PROMOTED
    assert sim.status.canary.consecutive_errors == 0  # type: ignore[union-attr]


def test_prometheus_down_too_long_rolls_back_without_replan() -> None:
    sim = Sim(make_spec(consecutiveErrorLimit=2, replan={"enabled": True}), evaluated())
    sim.start()
    sim.run(
        100,
        measure=lambda now: g.Measurement(window_seconds=10, taken_at=now, error="refused"),
    )
    assert sim.status.phase is Phase.ROLLED_BACK
    assert cond(sim.status, "RolledBack").reason == "MeasurementErrorLimitExceeded"
    assert not any(isinstance(a, StartReplan) for a in sim.actions)


def test_pause_and_resume_by_annotation() -> None:
    sim = Sim(make_spec(), evaluated())
    sim.start()
    sim.run(10)
    before = sim.measured
    sim.annotations[cn.ANNOTATION_PAUSE] = "true"
    sim.tick(1)
    assert sim.status.phase is Phase.PAUSED
    sim.run(600)  # far beyond the 10m progress deadline: paused time does not count
    assert sim.status.phase is Phase.PAUSED
    assert sim.measured == before
    del sim.annotations[cn.ANNOTATION_PAUSE]
    sim.tick(1)
    assert sim.status.phase is Phase.CANARY
    sim.run(200)
    assert sim.status.phase is Phase.PROMOTED


def test_abort_annotation_and_stale_requests() -> None:
    sim = Sim(make_spec(), evaluated())
    sim.start()
    sim.annotations[cn.ANNOTATION_ABORT] = "2025-01-01T00:00:00Z"  # before this canary
    sim.run(10)
    assert sim.status.phase is Phase.CANARY
    sim.annotations[cn.ANNOTATION_ABORT] = rfc3339(sim.now)
    sim.tick(1)
    assert sim.status.phase is Phase.ROLLED_BACK
    assert cond(sim.status, "RolledBack").reason == "Aborted"


def test_manual_promotion_waits_for_annotation() -> None:
    sim = Sim(make_spec(promotion="manual"), evaluated())
    sim.start()
    sim.run(300)
    assert sim.status.phase is Phase.CANARY
    assert cond(sim.status, "Promoted").reason == "AwaitingPromotion"
    sim.annotations[cn.ANNOTATION_PROMOTE] = rfc3339(sim.now)
    sim.tick(1)
    assert sim.status.phase is Phase.PROMOTED
    assert cond(sim.status, "Promoted").reason == "ManualPromotion"


def test_promote_annotation_skips_remaining_steps() -> None:
    sim = Sim(make_spec(), evaluated())
    sim.start()
    sim.annotations[cn.ANNOTATION_PROMOTE] = "true"
    sim.tick(1)
    assert sim.status.phase is Phase.PROMOTED
    assert "remaining steps and gates skipped" in sim.status.message


def _next_rollout(sim: Sim) -> None:
    """A new generation reached Evaluated again: the status carries over, as reconcile's."""
    sim.status = sim.status.model_copy(update={
        "phase": Phase.EVALUATED, "canary": None, "gates": [],
        "artifact_uri": "pvc://models/tiny/attempt-1",
        "accuracy": evaluated().accuracy,
    })


def test_promote_true_promotes_once_never_the_next_rollout() -> None:
    """Issue 15: ``samp.dev/promote: "true"`` (the chart README's form) was never
    consumed, so every later rollout was promoted at its first turn with 0 analyses."""
    sim = Sim(make_spec(promotion="manual"), evaluated())
    sim.start()
    sim.run(300)
    sim.annotations[cn.ANNOTATION_PROMOTE] = "true"
    sim.tick(1)
    assert sim.status.phase is Phase.PROMOTED
    assert sim.status.handled_requests is not None
    assert sim.status.handled_requests.promote == "true"  # recorded with the decision
    _next_rollout(sim)  # the annotation stays (kubectl, or in Git)
    sim.tick(1, ready=False)
    sim.run(30)
    st = sim.status
    assert st.phase is Phase.CANARY, st.message  # analysed, not promoted
    assert st.canary is not None and st.canary.analyses >= 1
    sim.annotations[cn.ANNOTATION_PROMOTE] = rfc3339(sim.now)  # a new request acts once
    sim.tick(1)
    assert sim.status.phase is Phase.PROMOTED
    assert cond(sim.status, "Promoted").reason == "ManualPromotion"


def test_abort_true_aborts_once_and_withdrawing_rearms_it() -> None:
    sim = Sim(make_spec(), evaluated())
    sim.annotations[cn.ANNOTATION_ABORT] = "true"
    sim.tick(1)
    assert cond(sim.status, "RolledBack").reason == "Aborted"
    _next_rollout(sim)
    sim.start()  # the same "true" does not abort the next rollout
    assert sim.status.phase is Phase.CANARY
    del sim.annotations[cn.ANNOTATION_ABORT]
    sim.tick(1)
    assert sim.status.handled_requests is not None
    assert sim.status.handled_requests.abort is None  # withdrawn: forgotten
    sim.annotations[cn.ANNOTATION_ABORT] = "true"  # set again: acts again
    sim.tick(1)
    assert sim.status.phase is Phase.ROLLED_BACK


def test_a_promote_set_before_the_canary_starts_is_set_aside() -> None:
    sim = Sim(make_spec(), evaluated())
    sim.annotations[cn.ANNOTATION_PROMOTE] = "true"
    sim.start()
    sim.tick(1)
    assert sim.status.phase is Phase.CANARY
    assert sim.status.handled_requests is not None
    assert sim.status.handled_requests.promote == "true"


def test_shift_route_promotion() -> None:
    sim = Sim(make_spec(promotionStrategy="ShiftRoute"), evaluated())
    sim.start()
    sim.run(200)
    assert sim.status.phase is Phase.PROMOTED
    assert sim.actions[-2:] == [
        SetWeight(100),
        PromoteStable("ShiftRoute", sim.status.artifact_uri),
    ]


def test_progress_deadline() -> None:
    sim = Sim(make_spec(progressDeadline="1m"), evaluated())
    sim.start()
    sim.run(200, measure=lambda now: healthy(now, s_req=10))  # ratio never conclusive
    assert sim.status.phase is Phase.ROLLED_BACK
    assert cond(sim.status, "RolledBack").reason in (
        "ProgressDeadlineExceeded",
        "InconclusiveLimitExceeded",
    )


def test_unverified_weight_is_set_again() -> None:
    sim = Sim(make_spec(), evaluated())
    sim.start()
    d = cn.decide(
        sim.spec,
        sim.status,
        cn.Observation(name=NAME, canary_ready=True, weight_verified=False),
        sim.now + timedelta(seconds=1),
    )
    assert d.actions == (SetWeight(25),)


def test_accuracy_failure_rolls_back_before_traffic() -> None:
    sim = Sim(make_spec(), evaluated(passed=False))
    d = sim.tick(0)
    assert sim.status.phase is Phase.ROLLED_BACK
    assert d.actions == ()  # no traffic had moved
    assert cond(sim.status, "RolledBack").reason == "AccuracyGateFailed"


def test_accuracy_judged_from_figures_when_not_yet_judged() -> None:
    st = evaluated()
    st = st.model_copy(
        update={"accuracy": AccuracySummary(perplexity_base=10.0, perplexity_quantized=12.0)}
    )
    sim = Sim(make_spec(), st)
    sim.tick(0)
    assert sim.status.phase is Phase.ROLLED_BACK  # +20% > 10% in tiny-cpu.yaml
    assert sim.status.accuracy is not None and sim.status.accuracy.passed is False


def test_failed_gate_starts_replan_until_attempts_run_out() -> None:
    spec = make_spec(replan={"enabled": True, "maxAttempts": 2})
    sim = Sim(spec, evaluated())
    sim.start()
    sim.run(60, measure=lambda now: healthy(now, c_p99=0.9))
    st = sim.status
    assert st.phase is Phase.PLANNING and st.attempt == 2
    replan = [a for a in sim.actions if isinstance(a, StartReplan)]
    assert len(replan) == 1 and replan[0].attempt == 2
    assert replan[0].failed_gates[0].gate == "p99RatioToStable"
    assert [a.attempt for a in st.history] == [1, 2]
    assert st.history[0].outcome == "RolledBack"
    assert "re-planning more conservatively as attempt 2 of 2" in cond(st, "RolledBack").message
    # attempt 2 evaluated again by the pipeline, fails again: no attempts left
    st2 = st.model_copy(
        update={
            "phase": Phase.EVALUATED,
            "accuracy": evaluated().accuracy,
            "artifact_uri": "pvc://models/tiny/attempt-2",
        }
    )
    sim2 = Sim(spec, st2)
    sim2.now = sim.now
    sim2.tick(0)
    sim2.tick(5)
    sim2.run(60, measure=lambda now: healthy(now, c_p99=0.9))
    assert sim2.status.phase is Phase.ROLLED_BACK
    assert not any(isinstance(a, StartReplan) for a in sim2.actions)
    assert "no re-plan left" in sim2.status.message
    assert [a.outcome for a in sim2.status.history] == ["RolledBack", "RolledBack"]
    # each attempt names the checkpoint it canaried, so SREs can find either one
    assert [a.artifact_uri for a in sim2.status.history] == [
        "pvc://models/tiny/attempt-1",
        "pvc://models/tiny/attempt-2",
    ]


def test_terminal_phases_are_left_alone() -> None:
    st = QuantizedModelStatus(phase=Phase.PROMOTED)
    d = cn.decide(make_spec(), st, cn.Observation(name=NAME), T0)
    assert d.status is st and d.actions == () and d.requeue_after is None


def test_without_stable_a_slow_canary_never_promotes_on_ratio_defaults() -> None:
    """Issue 15: no serving.stable, latency gates left at their default (a ratio): a 30 s
    P99 canary used to promote, judged by the error rate alone."""
    spec = make_spec(inconclusiveLimit=2)
    spec = spec.model_copy(update={
        "serving": spec.serving.model_copy(update={"stable": None}),
        "gates": spec.gates.model_copy(update={"latency": spec.gates.latency.model_copy(
            update={"p99_max_seconds": None, "p99_max_ratio_to_stable": 1.5})}),
    })
    sim = Sim(spec, evaluated())
    sim.start()
    sim.run(300, measure=lambda now: healthy(now, c_p99=30.0))
    assert sim.status.phase is Phase.ROLLED_BACK
    rb = cond(sim.status, "RolledBack")
    assert rb.reason == "InconclusiveLimitExceeded" and "p99MaxSeconds" in rb.message
    assert not any(isinstance(a, PromoteStable) for a in sim.actions)


# ---------------------------------------------------------------- evidence (issue 17)


def _at_rate(sim: Sim, per_second: float, p99: float = 0.7):  # type: ignore[no-untyped-def]
    """A measure whose request counts grow with the window asked for; both sides' P99 at
    ``p99`` (0.7 s sits mid-bucket, where 900 requests bound the ratio within 1.3)."""

    def measure(now: datetime) -> g.Measurement:
        n = int(per_second * sim.windows[-1])
        return g.Measurement(window_seconds=sim.windows[-1], taken_at=now,
                             canary=steady_side(n, p99), stable=steady_side(n, p99))

    return measure


def test_short_evidence_waits_for_a_longer_window_without_counting() -> None:
    """45 requests/s a side: a 10 s window holds 450, short of the 500 a P99 needs. The
    analysis is Inconclusive, not counted, and the next window reaches back to the step's
    start (20 s: 900 requests), which passes."""
    sim = Sim(make_spec(inconclusiveLimit=0), evaluated())
    sim.start()
    sim.run(200, measure=_at_rate(sim, 45))
    assert sim.status.phase is Phase.PROMOTED, sim.status.message
    assert sim.status.canary is not None and sim.status.canary.inconclusives == 0
    assert sim.windows[:3] == [10, 20, 10]  # step 1: short, then the step so far; then fresh
    waits = [e for e in sim.events if e.reason == "AnalysisInconclusive"]
    assert waits and "not enough evidence" in waits[0].message


def test_waiting_ends_at_max_analysis_window_and_then_counts() -> None:
    """3 requests/s: even 30 s (the maxAnalysisWindow here) holds only 90 requests; from
    then on each Inconclusive analysis counts, and the limit rolls the canary back."""
    sim = Sim(make_spec(maxAnalysisWindow="30s", inconclusiveLimit=2), evaluated())
    sim.start()
    sim.run(300, measure=_at_rate(sim, 3))
    st = sim.status
    assert st.phase is Phase.ROLLED_BACK
    assert cond(st, "RolledBack").reason == "InconclusiveLimitExceeded"
    assert sim.windows[:5] == [10, 20, 30, 30, 30]
    assert st.canary is not None and st.canary.inconclusives == 3
    assert not any(isinstance(a, PromoteStable) for a in sim.actions)


def test_max_analysis_window_is_at_least_the_interval() -> None:
    with pytest.raises(ValueError, match="maxAnalysisWindow must be at least analysisInterval"):
        make_spec(maxAnalysisWindow="5s")
