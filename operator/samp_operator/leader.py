"""Leader election: the operator replicas compete for one coordination.k8s.io Lease.

Only the holder runs Kopf (watches, handlers, timers, the engine); the others only read
the Lease every retry period and take it over when its holder released it or fell silent
for ``leaseDurationSeconds`` (the timing rules are samp_core.lease, pure). Argo Rollouts
and Flagger elect their leader the same way (client-go's Lease lock).

Standing down is immediate: :meth:`LeaderElector.is_leader` turns false the moment the
last successful renewal is ``renew_deadline`` old, by the monotonic clock, whatever the
event loop is doing; :func:`fence` makes every write through the operator's API client
check it first (reads pass), so an in-flight reconcile in a worker thread cannot write
once leadership is gone. The Lease itself is read and written through a client of its
own, so renewals never queue behind reconciles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Gauge

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

log = logging.getLogger("samp.leader")
READS = frozenset({"GET", "HEAD", "OPTIONS"})


class NotLeaderError(RuntimeError):
    """This replica does not hold the Lease (any more): the write was not sent."""


@dataclass(frozen=True)
class ElectionSettings:
    namespace: str
    lease_name: str
    identity: str
    timing: LeaseTiming = field(default_factory=LeaseTiming)


def fence(client: kubernetes.client.ApiClient, may_write: Callable[[], bool]) -> None:
    """Refuse every non-read request of ``client`` while ``may_write()`` is false."""
    send = client.call_api

    def call_api(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method.upper() not in READS and not may_write():
            raise NotLeaderError(f"{method} {url.split('?', maxsplit=1)[0]}: not the leader")
        return send(method, url, *args, **kwargs)

    client.call_api = call_api  # type: ignore[method-assign]


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    return LeaseRecord(holder=spec.holder_identity or "",
                       duration_seconds=int(spec.lease_duration_seconds or 0),
                       acquire_time=spec.acquire_time, renew_time=spec.renew_time,
                       transitions=int(spec.lease_transitions or 0))


def _version(lease: Any) -> str:
    return str(lease.metadata.resource_version or "")


def _spec(record: LeaseRecord) -> kubernetes.client.V1LeaseSpec:
    return kubernetes.client.V1LeaseSpec(
        holder_identity=record.holder, lease_duration_seconds=record.duration_seconds,
        acquire_time=record.acquire_time, renew_time=record.renew_time,
        lease_transitions=record.transitions)


class LeaderElector:
    """Acquires, renews and releases the Lease; blocking calls run in its own thread."""

    def __init__(self, settings: ElectionSettings, client: kubernetes.client.ApiClient,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.timing = settings.timing
        self.api = kubernetes.client.CoordinationV1Api(client)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samp-lease")
        self._seen: Sighting | None = None
        self._lease: Any = None
        self._renew_started: float | None = None
        self._lost = False
        self.observed = asyncio.Event()  # the Lease was read at least once (readiness)
        self.gauge = Gauge("samp_leader", "1 while this replica holds the Lease",
                           registry=registry) if registry is not None else None

    def is_leader(self) -> bool:
        """Whether this replica may act now. Once false after leading, false for good
        (as client-go's OnStoppedLeading): writes refused in between are not redone."""
        if self._lost:
            return False
        if still_leader(self._renew_started, time.monotonic(), self.timing):
            return True
        if self._renew_started is not None:
            self._lost = True
        return False

    @property
    def holder(self) -> str | None:
        return self._seen.record.holder if self._seen and self._seen.record else None

    # ------------------------------------------------------------- blocking calls

    def _timeout(self) -> float:
        return max(1.0, min(5.0, self.timing.renew_deadline / 2))

    def try_once(self) -> bool:
        """Read the Lease and create, take over or renew it when the rules allow;
        True when this replica holds it now."""
        s = self.settings
        started = time.monotonic()
        try:
            lease = self.api.read_namespaced_lease(s.lease_name, s.namespace,
                                                   _request_timeout=self._timeout())
        except ApiException as err:
            if err.status != 404:
                raise
            lease = None
        record = _record(lease) if lease is not None else None
        version = _version(lease) if lease is not None else ""
        self._seen = sight(self._seen, record, version, started)
        self._lease = lease
        verdict = decide(self._seen, s.identity, started)
        if verdict == Verdict.WAIT or self._lost:
            return False  # a lost lease is never renewed: the others take it
        new = claimed(record, s.identity, datetime.now(UTC), self.timing)
        try:
            written = self._write(lease, new)
        except ApiException as err:
            if err.status == 409:  # another replica wrote first: read again next time
                return False
            raise
        self._seen = sight(self._seen, new, _version(written), started)
        self._lease = written
        self._renew_started = started
        if verdict != Verdict.RENEW:
            log.info("acquired lease %s/%s as %s (%s)", s.namespace, s.lease_name, s.identity,
                     verdict.value)
        return True

    def _write(self, lease: Any, record: LeaseRecord) -> Any:
        s = self.settings
        if lease is None:
            body = kubernetes.client.V1Lease(
                metadata=kubernetes.client.V1ObjectMeta(name=s.lease_name,
                                                        namespace=s.namespace),
                spec=_spec(record))
            return self.api.create_namespaced_lease(s.namespace, body,
                                                    _request_timeout=self._timeout())
        body = kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(
                name=s.lease_name, namespace=s.namespace,
                resource_version=lease.metadata.resource_version),
            spec=_spec(record))
        return self.api.replace_namespaced_lease(s.lease_name, s.namespace, body,
                                                 _request_timeout=self._timeout())

    def release_now(self) -> None:
        """Hand the Lease back (empty holder) so a follower takes it at its next try."""
        if not self.is_leader() or self._lease is None or self._seen is None \
                or self._seen.record is None:
            return
        self._renew_started = None  # stop acting before the write
        self._write(self._lease, released(self._seen.record, datetime.now(UTC)))
        log.info("released lease %s/%s", self.settings.namespace, self.settings.lease_name)

    # ------------------------------------------------------------ event loop side

    async def _attempt(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            ok = await loop.run_in_executor(self.executor, self.try_once)
        except Exception as err:  # the API server is unreachable or refused: try again
            log.warning("lease %s/%s: %s", self.settings.namespace, self.settings.lease_name,
                        getattr(err, "reason", None) or err)
            ok = False
        else:
            self.observed.set()
        if self.gauge is not None:
            self.gauge.set(1 if self.is_leader() else 0)
        return ok

    async def acquire(self) -> None:
        """Return once this replica holds the Lease."""
        announced = ""
        while not await self._attempt():
            if self.holder and self.holder != announced:
                announced = self.holder
                log.info("following %s (lease %s/%s)", announced, self.settings.namespace,
                         self.settings.lease_name)
            wait = self.timing.retry_period
            if self._seen is not None:
                wait = min(wait, max(0.05, seconds_until_free(self._seen, time.monotonic())))
            await asyncio.sleep(wait)

    async def hold(self) -> str:
        """Renew every retry period; return (why) once leadership is lost."""
        while True:
            await asyncio.sleep(self.timing.retry_period)
            renewed = await self._attempt()
            holder = self.holder
            if not renewed and holder and holder != self.settings.identity:
                self._lost = True  # someone else holds it: stop at once
                return f"the lease is held by {holder}"
            if not self.is_leader():
                return f"no renewal succeeded within {self.timing.renew_deadline:g} s"

    async def release(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self.release_now)
        except Exception as err:  # the others wait out the lease duration instead
            log.warning("could not release lease: %s", getattr(err, "reason", None) or err)
        if self.gauge is not None:
            self.gauge.set(0)
