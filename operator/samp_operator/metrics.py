"""Operator metrics (prometheus_client) and the /metrics, /healthz, /readyz endpoint.

Metrics, on their own registry:

* ``samp_quantizedmodels{phase}``: resources per phase (gauge).
* ``samp_stage_duration_seconds{stage}``: Job start to completion of succeeded stages.
* ``samp_job_failures_total{stage,reason}``: failed pods and failed Jobs.
* ``samp_reconciles_total{result}``: reconciles by result (ok, conflict, error).
* ``samp_reconcile_errors_total{error}``: reconciles that raised, by exception type.
* ``samp_reconcile_duration_seconds``: time of one reconcile (API calls included).
* ``samp_events_total{type,reason}``: Kubernetes Events posted.
* ``samp_phase_entered_timestamp_seconds{namespace,name,phase}``: when each resource entered
  its current phase (the chart's SampRolloutStuck alert reads it).
* ``samp_canary_weight{namespace,name}``: traffic percent on the canary now.
* ``samp_gate_value{namespace,name,gate,role}``: last measured gate figure, role canary or
  stable (the dashboard's gate panel).
* ``samp_rollbacks_total{gate}``: rollbacks, by the gate that failed first.
* ``samp_model_effective_bits{namespace,name}``: the current plan's bits per weight.
* ``samp_model_accuracy{namespace,name,metric}``: the offline accuracy figures of
  ``status.accuracy`` (perplexityIncreasePercent, meanKL, top1Agreement, ...).

/healthz answers 200 while the operator's event loop is responsive (a heartbeat the loop
refreshes every few seconds is younger than 30 s); /readyz answers 200 once Kopf has
started and the watch indexes are filled.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from samp_core.status import Phase, QuantizedModelStatus

HEARTBEAT_STALE_SECONDS = 30.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.phases = Gauge("samp_quantizedmodels", "QuantizedModels by phase", ["phase"],
                            registry=r)
        self.stage_duration = Histogram(
            "samp_stage_duration_seconds", "Duration of succeeded stage Jobs", ["stage"],
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
            registry=r)
        self.job_failures = Counter("samp_job_failures", "Failed stage pods and Jobs",
                                    ["stage", "reason"], registry=r)
        self.reconciles = Counter("samp_reconciles", "Reconciles by result", ["result"],
                                  registry=r)
        self.reconcile_errors = Counter("samp_reconcile_errors", "Reconciles that raised",
                                        ["error"], registry=r)
        self.reconcile_duration = Histogram(
            "samp_reconcile_duration_seconds", "Duration of one reconcile",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.events = Counter("samp_events", "Kubernetes Events posted", ["type", "reason"],
                              registry=r)
        self.phase_entered = Gauge(
            "samp_phase_entered_timestamp_seconds", "When the resource entered its phase",
            ["namespace", "name", "phase"], registry=r)
        self.canary_weight = Gauge("samp_canary_weight", "Traffic percent on the canary",
                                   ["namespace", "name"], registry=r)
        self.gate_value = Gauge("samp_gate_value", "Last measured gate figure",
                                ["namespace", "name", "gate", "role"], registry=r)
        self.rollbacks = Counter("samp_rollbacks", "Rollbacks by the first failing gate",
                                 ["gate"], registry=r)
        self.effective_bits = Gauge("samp_model_effective_bits",
                                    "Bits per weight of the current plan, scales included",
                                    ["namespace", "name"], registry=r)
        self.accuracy = Gauge("samp_model_accuracy", "Offline accuracy figures of the model",
                              ["namespace", "name", "metric"], registry=r)
        self._rollout_phase: dict[tuple[str, str], str] = {}
        self._accuracy_series: dict[tuple[str, str], set[str]] = {}
        self._bits_series: set[tuple[str, str]] = set()
        self._gate_series: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._phase_of: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self.heartbeat = time.monotonic()
        self.ready = False

    def set_phase(self, key: tuple[str, str], phase: str | None) -> None:
        """Record a resource's phase (None: it is gone) and refresh the gauge."""
        with self._lock:
            if phase is None:
                self._phase_of.pop(key, None)
            else:
                self._phase_of[key] = phase
            counts: dict[str, int] = {}
            for p in self._phase_of.values():
                counts[p] = counts.get(p, 0) + 1
            for labels in list(self.phases._metrics):
                if labels[0] not in counts:
                    self.phases.labels(labels[0]).set(0)
            for p, n in counts.items():
                self.phases.labels(p).set(n)

    def observe_rollout(self, key: tuple[str, str],
                        status: QuantizedModelStatus | None) -> None:
        """Per-resource series: phase entry time, canary weight, gate figures, rollbacks."""
        namespace, name = key
        with self._lock:
            previous = self._rollout_phase.pop(key, None)
            if status is None:
                if previous is not None:
                    self.phase_entered.remove(namespace, name, previous)
                    self.canary_weight.remove(namespace, name)
                for gate, role in self._gate_series.pop(key, set()):
                    self.gate_value.remove(namespace, name, gate, role)
                self._observe_model(key, None)
                return
            self._observe_model(key, status)
            phase = status.phase.value
            self._rollout_phase[key] = phase
            if previous != phase:
                if previous is not None:
                    self.phase_entered.remove(namespace, name, previous)
                self.phase_entered.labels(namespace, name, phase).set(
                    time.time() if previous is not None else _entered_at(status))
                if phase == Phase.ROLLED_BACK.value and previous is not None:
                    failed = [g.gate for g in status.gates if g.verdict == "Failed"]
                    self.rollbacks.labels(failed[0] if failed else "other").inc()
            weight = status.canary.weight if status.canary is not None else 0
            self.canary_weight.labels(namespace, name).set(weight)
            series = self._gate_series.setdefault(key, set())
            for result in status.gates:
                for role, value in (("canary", result.value), ("stable", result.baseline)):
                    if value is not None:
                        self.gate_value.labels(namespace, name, result.gate, role).set(value)
                        series.add((result.gate, role))

    def _observe_model(self, key: tuple[str, str], status: QuantizedModelStatus | None) -> None:
        """The plan's effective bits and the accuracy figures (the dashboard's model panels)."""
        namespace, name = key
        plan = status.plan if status is not None else None
        if plan is not None:
            self.effective_bits.labels(namespace, name).set(plan.effective_bits)
            self._bits_series.add(key)
        elif key in self._bits_series:
            self._bits_series.discard(key)
            self.effective_bits.remove(namespace, name)
        figures: dict[str, float] = {}
        if status is not None and status.accuracy is not None:
            figures = {k: v for k, v in status.accuracy.model_dump(by_alias=True).items()
                       if isinstance(v, int | float) and not isinstance(v, bool)}
        old = self._accuracy_series.pop(key, set())
        for metric in old - set(figures):
            self.accuracy.remove(namespace, name, metric)
        for metric, value in figures.items():
            self.accuracy.labels(namespace, name, metric).set(value)
        if figures:
            self._accuracy_series[key] = set(figures)

    def healthy(self) -> bool:
        return time.monotonic() - self.heartbeat < HEARTBEAT_STALE_SECONDS

    def serve(self, address: str, port: int) -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, ctype, code = generate_latest(metrics.registry), \
                        CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    ok = metrics.healthy()
                    body, ctype, code = (b"ok\n" if ok else b"event loop stalled\n"), \
                        "text/plain", 200 if ok else 503
                elif self.path.startswith("/readyz"):
                    ok = metrics.ready and metrics.healthy()
                    body, ctype, code = (b"ok\n" if ok else b"not ready\n"), "text/plain", \
                        200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        server = ThreadingHTTPServer((address, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="samp-metrics", daemon=True).start()
        return server


def _entered_at(status: QuantizedModelStatus) -> float:
    """On first sight (e.g. after a restart), the newest condition transition, else now."""
    stamps = []
    for condition in status.conditions:
        try:
            stamps.append(datetime.fromisoformat(condition.last_transition_time).timestamp())
        except ValueError:
            continue
    return max(stamps) if stamps else time.time()
