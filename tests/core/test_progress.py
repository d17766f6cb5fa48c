"""Stage progress: the record a Job logs, parsed from a log tail, rate-limited into status,
and cleared when its stage is no longer the one running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_reconcile import World, manifest

from samp_core.progress import (
    REFRESH_SECONDS,
    ProgressRecord,
    last_record,
    read_due,
    refreshed,
    still_running,
    to_status,
)
from samp_core.status import StageStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)
JOB = "llama-g1-sens"


def rec(done: int, total: int = 80, started: float = 1000.0, ts: float | None = None,
        stage: str = "sensitivity") -> ProgressRecord:
    return ProgressRecord(stage=stage, done=done, total=total, unit="layers", started=started,
                          ts=started + 3 * done if ts is None else ts)


def test_last_record_is_the_newest_of_the_stage_among_other_lines() -> None:
    tail = "\n".join([
        rec(3).to_json(),
        '{"event": "loaded", "ts": 1.0}',
        rec(5).to_json(),
        rec(9, stage="calibrate").to_json(),  # another stage's (a reused pod name)
        "Traceback (most recent call last):",
        '{"event": "progress", "stage": "sensitivity", "done": 90, "total": 80, '
        '"started": 1, "ts": 2}',  # done > total: not a record
        '{"event": "progress", "stage": "sensitivity", "do',  # cut by the byte limit
    ])
    got = last_record(tail, "sensitivity")
    assert got == rec(5)
    assert last_record("no json here\n{not json}", "sensitivity") is None
    # A line with a prefix (e.g. a timestamp) still parses from its first brace.
    assert last_record("2026-01-01T00:00:00Z " + rec(7).to_json(), "sensitivity") == rec(7)


def test_status_figure_has_percent_and_an_eta_from_the_pace() -> None:
    p = to_status(rec(20, 80), JOB, NOW)  # 20 layers in 60 s: 60 more layers take 180 s
    assert (p.done, p.total, p.unit, p.percent, p.eta_seconds) == (20, 80, "layers", 25.0, 180)
    assert p.updated_at == "2026-01-01T00:00:00Z" and p.job == JOB
    assert to_status(rec(0, 80), JOB, NOW).eta_seconds is None  # no pace yet
    assert to_status(rec(80, 80), JOB, NOW).eta_seconds == 0


def test_writes_are_rate_limited_and_only_on_change() -> None:
    first = refreshed(None, rec(1), JOB, NOW)
    assert first is not None and first.done == 1
    soon = NOW + timedelta(seconds=REFRESH_SECONDS - 1)
    assert refreshed(first, rec(2), JOB, soon) is first  # moved, but too soon
    later = NOW + timedelta(seconds=REFRESH_SECONDS)
    assert refreshed(first, rec(1), JOB, later) is first  # old enough, but unchanged
    moved = refreshed(first, rec(7), JOB, later)
    assert moved is not None and moved.done == 7 and moved.updated_at != first.updated_at
    assert refreshed(moved, None, JOB, later) is moved  # nothing readable: keep it
    # Another Job (a retry, a new generation) replaces the figure at once.
    other = refreshed(moved, rec(1), "llama-g2-sens", later)
    assert other is not None and other.job == "llama-g2-sens"


def test_a_stage_logging_every_layer_costs_one_write_per_interval() -> None:
    """80 layers, one record a second for 80 s, read every second: at most
    80 / REFRESH_SECONDS + 1 distinct figures reach status."""
    current, writes = None, 0
    for second in range(81):
        new = refreshed(current, rec(min(second, 80), ts=1000.0 + second), JOB,
                        NOW + timedelta(seconds=second))
        writes += new is not current
        current = new
    assert writes <= 80 // REFRESH_SECONDS + 1
    assert current is not None and current.done >= 80 - REFRESH_SECONDS


@pytest.mark.parametrize(("last", "now", "due"), [
    (None, 5.0, True), (100.0, 100.0 + REFRESH_SECONDS - 0.1, False),
    (100.0, 100.0 + REFRESH_SECONDS, True),
])
def test_log_reads_are_rate_limited(last: float | None, now: float, due: bool) -> None:
    assert read_due(last, now) is due


def test_progress_lasts_while_its_job_runs() -> None:
    p = to_status(rec(3), JOB, NOW)
    running = StageStatus(stage="sensitivity", state="Running", inputs_hash="h", job=JOB)
    assert still_running(p, [running]) is p
    done = running.model_copy(update={"state": "Succeeded"})
    assert still_running(p, [done]) is None
    assert still_running(p, [running.model_copy(update={"job": "llama-g2-sens"})]) is None


def test_reconcile_clears_progress_when_the_stage_ends() -> None:
    w = World(manifest())
    w.step()
    job = w.running("calibrate")["obs"]["name"]
    w.body["status"]["progress"] = to_status(rec(4, stage="calibrate"), job, w.now).to_wire()
    w.step()
    assert w.status.progress is not None and w.status.progress.done == 4  # still running
    w.finish("calibrate")
    w.step()
    assert w.status.progress is None
