"""status.progress from the running stage pod's log (samp_core.progress decides).

While a stage Job runs, a reconcile reads the last lines of its running pod's log (one
``pods/log`` GET, at most every ``progress_seconds`` per resource), the core picks the
newest progress record and decides whether the figure in status changes, and the
reconcile comes back after ``progress_seconds`` so the figure moves without any Job
event. The status write stays the reconcile's one write, made only when something
changed. A refused or failed read (no ``pods/log`` permission, a node not answering)
costs the figure, never the reconcile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime

from kubernetes.client.exceptions import ApiException

from samp_core.progress import LOG_TAIL_BYTES, LOG_TAIL_LINES, last_record, read_due, refreshed
from samp_core.stage_jobs import CONTAINER
from samp_core.status import QuantizedModelStatus
from samp_operator.kube import Kube

log = logging.getLogger("samp.progress")

Key = tuple[str, str]


class ProgressReader:
    def __init__(self, kube: Kube, interval: float) -> None:
        self.kube = kube
        self.interval = interval
        self._last_read: dict[Key, float] = {}
        self._warned: set[Key] = set()
        self.reads = 0  # pods/log GETs made (for tests and benchmarks)

    def refresh(self, key: Key, status: QuantizedModelStatus,
                running_pods: Mapping[str, str], now: datetime) -> float | None:
        """Update ``status.progress`` in place from the running stage pod's log; returns
        when to look again (None: no stage pod is running, or progress is off)."""
        running = next((r for r in status.stages if r.state == "Running" and r.job), None)
        pod = running_pods.get(running.job or "") if running is not None else None
        if self.interval <= 0 or running is None or not running.job or pod is None:
            self._last_read.pop(key, None)
            return None
        job, stage = running.job, running.stage
        if not read_due(self._last_read.get(key), time.monotonic(), self.interval):
            return self.interval
        self._last_read[key] = time.monotonic()
        self.reads += 1
        try:
            text = self.kube.pod_log_tail(key[0], pod, CONTAINER, LOG_TAIL_LINES,
                                          LOG_TAIL_BYTES)
        except (ApiException, OSError) as err:
            if key not in self._warned:  # once per resource: the figure is optional
                self._warned.add(key)
                log.warning("%s/%s: cannot read the log of pod %s for progress (%s)", *key,
                            pod, getattr(err, "status", None) or type(err).__name__)
            return self.interval
        record = last_record(text, stage)
        log.debug("%s/%s: pod %s: %d log bytes, progress record %s", *key, pod, len(text),
                  record)
        status.progress = refreshed(status.progress, record, job, now, self.interval)
        return self.interval

    def forget(self, key: Key) -> None:
        self._last_read.pop(key, None)
        self._warned.discard(key)
