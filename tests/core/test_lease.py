"""Leader election timing (samp_core.lease): who may take the Lease, and when a holder
must stop acting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from samp_core.lease import (
    LeaseRecord,
    LeaseTiming,
    Sighting,
    Verdict,
    claimed,
    decide,
    released,
    seconds_until_free,
    sight,
    still_leader,
)

T0 = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
TIMING = LeaseTiming(lease_duration=15, renew_deadline=10, retry_period=2)


def held_by(holder: str, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration_seconds=15, acquire_time=T0, renew_time=T0,
                       transitions=transitions)


def test_no_lease_is_created() -> None:
    assert decide(sight(None, None, "", now=100.0), "a", now=100.0) == Verdict.CREATE


def test_a_renewing_holder_is_waited_for_and_a_silent_one_replaced() -> None:
    seen = sight(None, held_by("b"), "7", now=100.0)
    assert decide(seen, "a", now=100.0) == Verdict.WAIT
    # The same record read again does not restart the clock: the holder is silent.
    seen = sight(seen, held_by("b"), "7", now=114.9)
    assert seen.unchanged_since == 100.0
    assert decide(seen, "a", now=114.9) == Verdict.WAIT
    assert seconds_until_free(seen, 114.9) == pytest.approx(0.1)
    assert decide(seen, "a", now=115.0) == Verdict.TAKE_OVER
    # A renewal (new resourceVersion) restarts it.
    renewed = sight(seen, held_by("b"), "8", now=114.0)
    assert renewed.unchanged_since == 114.0
    assert decide(renewed, "a", now=120.0) == Verdict.WAIT


def test_the_other_replicas_clock_is_never_read() -> None:
    # renewTime an hour in the past (a skewed clock) does not make the lease expired.
    skewed = LeaseRecord(holder="b", duration_seconds=15, acquire_time=T0 - timedelta(hours=1),
                         renew_time=T0 - timedelta(hours=1))
    assert decide(sight(None, skewed, "3", now=50.0), "a", now=51.0) == Verdict.WAIT


def test_released_lease_is_taken_at_once_and_own_lease_renewed() -> None:
    gone = released(held_by("b", transitions=2), T0)
    assert gone.holder == "" and gone.duration_seconds == 1 and gone.transitions == 2
    seen = sight(None, gone, "9", now=10.0)
    assert decide(seen, "a", now=10.0) == Verdict.TAKE_OVER
    assert seconds_until_free(seen, 10.0) == 0.0
    assert decide(sight(None, held_by("a"), "9", now=10.0), "a", now=10.0) == Verdict.RENEW


def test_claimed_counts_transitions_and_keeps_acquire_time_on_renewal() -> None:
    later = T0 + timedelta(seconds=4)
    taken = claimed(held_by("b", transitions=3), "a", later, TIMING)
    assert (taken.holder, taken.transitions, taken.acquire_time, taken.renew_time) == (
        "a", 4, later, later)
    assert taken.duration_seconds == 15
    renewed = claimed(taken, "a", later + timedelta(seconds=2), TIMING)
    assert renewed.acquire_time == later and renewed.transitions == 4
    assert renewed.renew_time == later + timedelta(seconds=2)
    assert claimed(None, "a", T0, TIMING).transitions == 0


def test_a_holder_stops_before_anyone_may_take_over() -> None:
    assert not still_leader(None, 0.0, TIMING)
    assert still_leader(100.0, 109.9, TIMING)
    assert not still_leader(100.0, 110.0, TIMING)
    # The renewal that began at 100 reached the API server after 100, so every other
    # candidate saw the change at >= 100 and may take over only at >= 115.
    seen = sight(None, held_by("a"), "5", now=100.0)
    assert decide(seen, "b", now=110.0) == Verdict.WAIT


@pytest.mark.parametrize(("duration", "deadline", "retry", "flag"), [
    (15, 15, 2, "lease-duration"), (15, 10, 10, "renew-deadline"), (15, 10, 0, "retry-period"),
])
def test_timing_that_breaks_the_safety_margin_is_refused(
        duration: float, deadline: float, retry: float, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        LeaseTiming(lease_duration=duration, renew_deadline=deadline, retry_period=retry)


def test_sighting_is_a_value() -> None:
    seen = Sighting(record=None, version="", unchanged_since=1.0)
    assert sight(seen, None, "", now=5.0) is seen
