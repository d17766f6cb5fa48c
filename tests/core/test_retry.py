"""``samp.dev/retry`` (kubectl samp retry): a RolledBack or Failed resource starts over,
once per annotation value, and a value in any other phase is set aside."""

from __future__ import annotations

from datetime import timedelta

from test_reconcile import World, created, deleted, manifest

from samp_core import canary as cn
from samp_core.canary.model import ANNOTATION_RETRY
from samp_core.conditions import rfc3339
from samp_core.decision import EnsureCanary
from samp_core.status import CanaryStatus, Phase


def _retry(w: World, value: str) -> None:
    w.body["metadata"].setdefault("annotations", {})[ANNOTATION_RETRY] = value


def _failed_calibration() -> World:
    w = World(manifest())
    w.step()
    w.fail("calibrate", message="CUDA out of memory")
    w.step()
    assert w.status.phase == Phase.FAILED
    return w


def test_retry_of_a_failed_stage_replaces_its_job_once() -> None:
    w = _failed_calibration()
    w.now += timedelta(minutes=5)
    _retry(w, rfc3339(w.now))
    d = w.step()
    # The failed Job goes first; the new one of the same name comes once it is gone.
    assert [r.name for r in deleted(d) if r.kind == "Job"] == ["llama-g1-cal"]
    assert created(d) == [] and w.status.phase == Phase.CALIBRATING
    assert ("Normal", "RetryRequested") in [e[:2] for e in w.events]
    assert "calibrate" in next(e[2] for e in w.events if e[1] == "RetryRequested")
    assert w.status.handled_requests is not None
    assert w.status.handled_requests.retry == rfc3339(w.now)
    w.now += timedelta(seconds=5)
    d = w.step()
    assert "llama-g1-cal" in [o["metadata"]["name"] for o in created(d)]
    assert w.created.count("llama-g1-cal") == 2 and w.status.phase == Phase.CALIBRATING
    # The new Job fails too: the same value does not retry again.
    w.fail("calibrate", message="CUDA out of memory again")
    w.step()
    assert w.status.phase == Phase.FAILED
    n = len(w.created)
    w.step()
    assert len(w.created) == n and w.status.phase == Phase.FAILED


def test_retry_value_in_a_running_phase_is_set_aside() -> None:
    w = World(manifest())
    w.step()
    _retry(w, rfc3339(w.now))  # while calibrating: nothing to start over
    w.step()
    assert w.status.handled_requests is not None and w.status.handled_requests.retried_at is None
    w.fail("calibrate")
    w.step()
    assert w.status.phase == Phase.FAILED  # the old value does not restart the failure
    assert not any(e[1] == "RetryRequested" for e in w.events)
    # Withdrawn and written again, the same value acts.
    del w.body["metadata"]["annotations"][ANNOTATION_RETRY]
    w.step()
    assert w.status.handled_requests is not None and w.status.handled_requests.retry is None
    _retry(w, rfc3339(w.now))
    w.step()
    assert any(e[1] == "RetryRequested" for e in w.events)


def test_retry_of_a_rolled_back_canary_starts_it_over_from_step_one() -> None:
    w = World(manifest())
    w.run_to_evaluated()
    status = w.status.model_copy(update={
        "phase": Phase.ROLLED_BACK,
        "canary": CanaryStatus(step=1, weight=0, started_at=rfc3339(w.now), failures=1),
    })
    w.body["status"] = status.to_wire()
    d = w.step()
    assert w.status.phase == Phase.ROLLED_BACK and not d.events  # left to the canary
    w.now += timedelta(minutes=2)
    _retry(w, rfc3339(w.now))
    d = w.step()
    assert d.facts.quantized and w.status.phase == Phase.EVALUATED and w.status.canary is None
    assert not any(c.type in ("RolledBack", "Promoted") for c in w.status.conditions)
    assert any(e.reason == "RetryRequested" for e in d.events)
    assert d.facts.resource is not None
    started = cn.decide(d.facts.resource.spec, d.status,
                        cn.Observation(name="llama", annotations=dict(
                            w.body["metadata"]["annotations"])), w.now)
    assert started.status.phase == Phase.CANARY
    assert started.status.canary is not None and started.status.canary.step == 0
    assert any(isinstance(a, EnsureCanary) for a in started.actions)
    # Written back, the same value never restarts it again.
    w.body["status"] = started.status.model_copy(update={"phase": Phase.ROLLED_BACK}).to_wire()
    d = w.step()
    assert w.status.phase == Phase.ROLLED_BACK and not d.events
