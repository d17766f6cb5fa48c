"""The one Decision both machines return: how a canary turn follows the quantization's."""

from __future__ import annotations

from samp_core.decision import (
    CreateChild,
    Decision,
    DeleteChild,
    EnsureCanary,
    Facts,
    SetWeight,
    sooner,
)
from samp_core.events import Event
from samp_core.status import Phase, QuantizedModelStatus


def test_then_replaces_status_appends_actions_and_events_and_keeps_the_sooner_requeue() -> None:
    facts = Facts(quantized=True, stage_durations=(("evaluate", 12.0),))
    first = Decision(
        status=QuantizedModelStatus(phase=Phase.EVALUATED),
        actions=(CreateChild({"kind": "Job", "metadata": {"name": "j"}}),
                 DeleteChild("ConfigMap", "old")),
        events=(Event("Normal", "Evaluated", "done"),),
        requeue_after=60.0,
        facts=facts,
    )
    later = Decision(
        status=QuantizedModelStatus(phase=Phase.CANARY),
        actions=(EnsureCanary("m-canary", "pvc://a", 1), SetWeight(25)),
        events=(Event("Normal", "CanaryStarted", "25%"),),
        requeue_after=5.0,
    )
    both = first.then(later)
    assert both.status is later.status
    assert both.actions == first.actions + later.actions
    assert [e.reason for e in both.events] == ["Evaluated", "CanaryStarted"]
    assert both.requeue_after == 5.0
    assert both.facts is facts  # the canary turn finds no facts of its own
    assert both.child_actions() == first.actions
    assert both.canary_actions() == later.actions


def test_a_requeue_wish_survives_a_decision_without_one() -> None:
    quiet = Decision(status=QuantizedModelStatus())
    waiting = Decision(status=QuantizedModelStatus(), requeue_after=30.0)
    assert quiet.then(waiting).requeue_after == 30.0
    assert waiting.then(quiet).requeue_after == 30.0
    assert quiet.then(quiet).requeue_after is None
    assert sooner(None, None) is None and sooner(3.0, 1.0) == 1.0
