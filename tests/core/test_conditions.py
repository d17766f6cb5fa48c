"""The one condition-upsert rule shared by the reconcile and canary machines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from samp_core.conditions import with_condition

T0 = datetime(2026, 11, 28, 12, tzinfo=UTC)


def test_transition_time_moves_only_when_status_changes() -> None:
    first = with_condition([], "Ready", "False", "Calibrating", "a", T0, 1)
    same = with_condition(first, "Ready", "False", "Scoring", "b", T0 + timedelta(minutes=5), 1)
    flipped = with_condition(same, "Ready", "True", "Evaluated", "c", T0 + timedelta(hours=1), 2)
    assert first[0].last_transition_time == "2026-11-28T12:00:00Z"
    assert same[0].last_transition_time == "2026-11-28T12:00:00Z"
    assert (same[0].reason, same[0].message) == ("Scoring", "b")
    assert flipped[0].last_transition_time == "2026-11-28T13:00:00Z"
    assert flipped[0].observed_generation == 2


def test_other_conditions_keep_their_place_and_input_is_not_mutated() -> None:
    base = with_condition([], "Calibrated", "True", "Done", "", T0)
    base = with_condition(base, "Ready", "False", "Scoring", "", T0)
    out = with_condition(base, "Calibrated", "False", "Rerun", "", T0)
    assert [c.type for c in out] == ["Calibrated", "Ready"]
    assert base[0].status == "True" and out[0].status == "False"
