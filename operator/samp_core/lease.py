"""Leader election over a coordination.k8s.io Lease: the timing decisions, pure.

Several operator replicas compete for one Lease; only its holder reconciles. The rules
are client-go's (Argo Rollouts and Flagger use them through controller-runtime):

* A candidate never trusts another replica's clock. It judges a Lease held by someone
  else by how long the Lease has stayed *unchanged on its own monotonic clock*
  (:class:`Sighting`): a holder that renews changes ``renewTime`` every retry period;
  one that has been silent for ``leaseDurationSeconds`` is gone and may be replaced.
* The holder renews every ``retry_period``. It counts itself leader only while its last
  successful renewal *started* less than ``renew_deadline`` ago (:func:`still_leader`).
  ``renew_deadline < lease_duration`` is the safety margin: a holder that cannot renew
  stops acting before any other replica may take over.
* A holder that shuts down cleanly releases the Lease (empty holder, 1 s duration): the
  next candidate takes it at its next try instead of waiting out the duration.

The adapter (samp_operator.leader) reads and writes the Lease; it calls these functions
with what it read and the times it measured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum


@dataclass(frozen=True)
class LeaseTiming:
    """Seconds; the defaults are client-go's (and Argo Rollouts', Flagger's)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.retry_period > 0:
            raise ValueError("--leader-election-retry-period-seconds: must be positive")
        if not self.renew_deadline > self.retry_period:
            raise ValueError("--leader-election-renew-deadline-seconds: must exceed the retry "
                             f"period ({self.retry_period:g} s), or one slow renewal loses "
                             "the lease")
        if not self.lease_duration > self.renew_deadline:
            raise ValueError("--leader-election-lease-duration-seconds: must exceed the renew "
                             f"deadline ({self.renew_deadline:g} s), so a leader that cannot "
                             "renew stops before another replica takes over")


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease spec fields leader election uses; ``holder`` is "" once released."""

    holder: str
    duration_seconds: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int = 0


@dataclass(frozen=True)
class Sighting:
    """A Lease as this candidate last saw it, and since when (its own monotonic clock)
    it has looked like that. ``record`` is None when no Lease object exists."""

    record: LeaseRecord | None
    version: str
    unchanged_since: float


class Verdict(StrEnum):
    CREATE = "create"        # no Lease yet: create it, holding it
    TAKE_OVER = "take-over"  # released or expired: write ourselves as holder
    RENEW = "renew"          # ours: write a fresh renewTime
    WAIT = "wait"            # someone else holds it and renews


def sight(previous: Sighting | None, record: LeaseRecord | None, version: str,
          now: float) -> Sighting:
    """The new sighting after a read at ``now``: the clock restarts only when the Lease
    changed (another resourceVersion), so a silent holder's lease runs out."""
    if previous is not None and previous.version == version and previous.record == record:
        return previous
    return Sighting(record=record, version=version, unchanged_since=now)


def decide(seen: Sighting, me: str, now: float) -> Verdict:
    record = seen.record
    if record is None:
        return Verdict.CREATE
    if record.holder == me:
        return Verdict.RENEW
    if not record.holder or now - seen.unchanged_since >= record.duration_seconds:
        return Verdict.TAKE_OVER
    return Verdict.WAIT


def seconds_until_free(seen: Sighting, now: float) -> float:
    """How long until another's Lease may be taken (0 when it may be now)."""
    record = seen.record
    if record is None or not record.holder:
        return 0.0
    return max(0.0, seen.unchanged_since + record.duration_seconds - now)


def claimed(current: LeaseRecord | None, me: str, wall_now: datetime,
            timing: LeaseTiming) -> LeaseRecord:
    """The record to write for CREATE, TAKE_OVER or RENEW: ``me`` holding it from now."""
    duration = max(1, round(timing.lease_duration))
    if current is not None and current.holder == me:
        return replace(current, renew_time=wall_now, duration_seconds=duration)
    transitions = current.transitions + 1 if current is not None else 0
    return LeaseRecord(holder=me, duration_seconds=duration, acquire_time=wall_now,
                       renew_time=wall_now, transitions=transitions)


def released(current: LeaseRecord, wall_now: datetime) -> LeaseRecord:
    """What a holder writes when it stops cleanly, as client-go's ReleaseOnCancel does."""
    return replace(current, holder="", duration_seconds=1, renew_time=wall_now)


def still_leader(last_renew_started: float | None, now: float, timing: LeaseTiming) -> bool:
    """Whether a holder may still act: its last successful renewal (or acquisition)
    began less than ``renew_deadline`` ago, by its own monotonic clock."""
    return last_renew_started is not None and now - last_renew_started < timing.renew_deadline
