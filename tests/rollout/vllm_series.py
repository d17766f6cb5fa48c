"""A loopback /metrics endpoint exposing the series one vLLM pod would: a real Prometheus
scrapes it, so tests of the PromQL, label matching and the HTTP answers need no vLLM
process (tests/rollout/test_rollout_real.py runs real vLLM where its behaviour matters).
Counters grow at ``RATE`` requests per second from the moment it starts."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RATE = 20.0  # requests per second each pod finishes


class VllmSeries(ThreadingHTTPServer):
    """/metrics of one vLLM pod: ``RATE`` requests/s of ``model``, failing or not."""

    def __init__(self, model: str, *, failing: bool) -> None:
        self.model, self.failing, self.t0 = model, failing, time.monotonic()
        super().__init__(("127.0.0.1", 0), _Metrics)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def text(self) -> str:
        n = int(RATE * (time.monotonic() - self.t0))
        m = f'model_name="{self.model}"'
        failed = n if self.failing else 0
        fast = n - failed  # failing pods answer in 4 s, healthy ones in < 0.5 s
        return "\n".join([
            "# TYPE vllm:request_success_total counter",  # vLLM exports every reason
            f'vllm:request_success_total{{{m},finished_reason="stop"}} {n - failed}',
            f'vllm:request_success_total{{{m},finished_reason="error"}} {failed}',
            f'vllm:request_success_total{{{m},finished_reason="abort"}} 0',
            "# TYPE vllm:e2e_request_latency_seconds histogram",
            f'vllm:e2e_request_latency_seconds_bucket{{{m},le="0.5"}} {fast}',
            f'vllm:e2e_request_latency_seconds_bucket{{{m},le="5.0"}} {n}',
            f'vllm:e2e_request_latency_seconds_bucket{{{m},le="+Inf"}} {n}',
            f"vllm:e2e_request_latency_seconds_count{{{m}}} {n}",
            f"vllm:e2e_request_latency_seconds_sum{{{m}}} {n * (4.0 if self.failing else 0.2)}",
            "",
        ])


class _Metrics(BaseHTTPRequestHandler):
    server: VllmSeries

    def do_GET(self) -> None:
        body = self.server.text().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None
