"""Progress of a running stage: the record a Job logs, and what status shows of it. Pure.

A stage Job logs a progress record now and then, one JSON line among its other log lines
(samp_jobs.runlog.progress)::

    {"event": "progress", "stage": "sensitivity", "done": 12, "total": 80,
     "unit": "layers", "started": 1764630000.0, "ts": 1764630060.0}

While the stage's Job runs, the operator reads the tail of its pod's log (a few lines, at
most every :data:`REFRESH_SECONDS`), :func:`last_record` finds the newest record of that
stage, and :func:`refreshed` decides whether ``status.progress`` changes: only when the
figure moved and the last write is at least :data:`REFRESH_SECONDS` old, so a 70B pass
that logs every layer still costs one status write per interval at most.
:func:`still_running` clears it once the stage is no longer the one running.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from samp_core.conditions import rfc3339
from samp_core.status import StageProgress, StageStatus

PROGRESS_EVENT = "progress"
REFRESH_SECONDS = 20.0  # at most one log read and one status write per resource per this
LOG_TAIL_LINES = 50  # a stage logs a record at least every few lines at its busiest
LOG_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class ProgressRecord:
    """One progress line of a stage's log (times are the pod's epoch seconds)."""

    stage: str
    done: int
    total: int
    unit: str
    started: float
    ts: float

    def to_json(self) -> str:
        return json.dumps({"event": PROGRESS_EVENT, "stage": self.stage, "done": self.done,
                           "total": self.total, "unit": self.unit,
                           "started": round(self.started, 3), "ts": round(self.ts, 3)},
                          sort_keys=True)


def _record(doc: Any) -> ProgressRecord | None:
    if not isinstance(doc, dict) or doc.get("event") != PROGRESS_EVENT:
        return None
    try:
        rec = ProgressRecord(stage=str(doc["stage"]), done=int(doc["done"]),
                             total=int(doc["total"]), unit=str(doc.get("unit", ""))[:32],
                             started=float(doc["started"]), ts=float(doc["ts"]))
    except (KeyError, TypeError, ValueError):
        return None
    return rec if 0 <= rec.done <= rec.total and rec.ts >= rec.started else None


def last_record(log_tail: str, stage: str) -> ProgressRecord | None:
    """The newest well-formed progress record of ``stage`` in a log tail, else None.
    Other lines (logs, tracebacks, a line cut by the byte limit) are skipped."""
    for line in reversed(log_tail.splitlines()):
        start = line.find("{")
        if start < 0:
            continue
        try:
            rec = _record(json.loads(line[start:]))
        except ValueError:
            continue
        if rec is not None and rec.stage == stage:
            return rec
    return None


def to_status(rec: ProgressRecord, job: str, now: datetime) -> StageProgress:
    """The status figure: percent, and an ETA from the pace so far (none before the first
    unit is done)."""
    percent = 100.0 * rec.done / rec.total if rec.total else 0.0
    eta = None
    if 0 < rec.done <= rec.total:
        eta = round((rec.ts - rec.started) * (rec.total - rec.done) / rec.done)
    return StageProgress(stage=rec.stage, job=job[:63], done=rec.done, total=rec.total,
                         unit=rec.unit, percent=round(percent, 1), eta_seconds=eta,
                         updated_at=rfc3339(now))


def _age(progress: StageProgress, now: datetime) -> float:
    try:
        then = datetime.fromisoformat(progress.updated_at.replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    return (now - then).total_seconds()


def refreshed(current: StageProgress | None, rec: ProgressRecord | None, job: str,
              now: datetime, min_seconds: float = REFRESH_SECONDS) -> StageProgress | None:
    """``status.progress`` after reading ``rec`` from ``job``'s log: the new figure when it
    changed and the current one is old enough (or of another Job), else the current one."""
    if rec is None:
        return current
    if current is None or current.job != job or current.stage != rec.stage:
        return to_status(rec, job, now)
    if (current.done, current.total, current.unit) == (rec.done, rec.total, rec.unit):
        return current
    return to_status(rec, job, now) if _age(current, now) >= min_seconds else current


def read_due(last_read: float | None, monotonic_now: float,
             min_seconds: float = REFRESH_SECONDS) -> bool:
    """Whether to read the log now: never more often than ``min_seconds`` per resource
    (``last_read``: the adapter's monotonic time of its last read, None if none)."""
    return last_read is None or monotonic_now - last_read >= min_seconds


def still_running(progress: StageProgress | None, records: list[StageStatus]
                  ) -> StageProgress | None:
    """Keep ``progress`` only while its stage's Job is the one running."""
    if progress is None:
        return None
    running = any(r.stage == progress.stage and r.job == progress.job and r.state == "Running"
                  for r in records)
    return progress if running else None
