"""Operator metrics (prometheus_client) and the /metrics, /healthz, /readyz endpoint.

Metrics, on their own registry:

* ``samp_quantizedmodels{phase}``: resources per phase (gauge).
* ``samp_stage_duration_seconds{stage}``: Job start to completion of succeeded stages.
* ``samp_job_failures_total{stage,reason}``: failed pods and failed Jobs.
* ``samp_reconciles_total{result}``: reconciles by result (ok, conflict, error).
* ``samp_reconcile_errors_total{error}``: reconciles that raised, by exception type.
* ``samp_reconcile_duration_seconds``: time of one reconcile (API calls included).
* ``samp_events_total{type,reason}``: Kubernetes Events posted.

/healthz answers 200 while the operator's event loop is responsive (a heartbeat the loop
refreshes every few seconds is younger than 30 s); /readyz answers 200 once Kopf has
started and the watch indexes are filled.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

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
