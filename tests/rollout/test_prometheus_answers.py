"""What the provider makes of answers a real Prometheus does not give: a refused
connection, malformed 200s, bodies that trickle (to a 200 or a redirect), a proxy's page,
an oversized answer. Each is an Error the limits count, within the analysis deadline,
never an exception or a freeze. Fast; loopback endpoints only."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from samp_core import gates as g
from samp_core.canary import AnalysisRequest
from samp_core.spec import GatesSpec
from samp_local.processes import free_port
from samp_operator import prometheus as prom
from samp_operator.prometheus_session import MAX_ANSWER_BYTES


def test_unreachable_prometheus_is_a_measurement_error() -> None:
    p = prom.PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout_seconds=1)
    req = AnalysisRequest("a-canary", "a", 30, datetime.now(UTC), 0, 10)
    m = p.measure(req, GatesSpec())
    assert m.error is not None and "ConnectionError" in m.error


class _FakePrometheus(ThreadingHTTPServer):
    """A loopback HTTP endpoint that answers every query with ``answer`` (bytes), sent
    ``trickle`` seconds apart byte by byte when set: a misbehaving proxy or exporter.
    ``status``: the HTTP status (a 3xx redirects to another host)."""

    def __init__(self, answer: bytes, trickle: float = 0.0, status: int = 200) -> None:
        self.answer, self.trickle, self.status = answer, trickle, status
        super().__init__(("127.0.0.1", 0), _FakePrometheusHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> _FakePrometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _FakePrometheusHandler(BaseHTTPRequestHandler):
    server: _FakePrometheus

    def do_GET(self) -> None:
        self.send_response(self.server.status)
        if 300 <= self.server.status < 400:
            self.send_header("Location", f"http://localhost:{free_port()}{self.path}")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.answer)))
        self.end_headers()
        try:
            if not self.server.trickle:
                self.wfile.write(self.server.answer)
                return
            for i in range(len(self.server.answer)):
                self.wfile.write(self.server.answer[i : i + 1])
                self.wfile.flush()
                time.sleep(self.server.trickle)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        return None


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "success", "data": {"resultType": "string", "result": [1, "abc"]}},
        {"status": "success", "data": {"resultType": "matrix",
                                       "result": [{"metric": {}, "values": [[1, "1"]]}]}},
        {"status": "success"},
        {"status": "success", "data": None},
        [],
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
    ],
    ids=["string", "range-vector", "no-data", "null-data", "not-an-object", "no-value"],
)
def test_malformed_answers_are_errors_never_a_freeze(answer: object) -> None:
    """A 200 that is not one number is an Error the limits count, not an exception that
    stops the analysis (and with it the consecutive-error limit and the deadline)."""
    with _FakePrometheus(json.dumps(answer).encode()) as fake:
        p = prom.PrometheusProvider(fake.url, timeout_seconds=2)
        req = AnalysisRequest("a-canary", "a", 30, datetime.now(UTC), 0, 10)
        m = p.measure(req, GatesSpec())
    assert m.error is not None or m.query_errors
    verdicts = {r.verdict for r in g.evaluate(GatesSpec(), m, has_stable=True)}
    assert "Successful" not in verdicts and "Error" in verdicts
    assert g.overall(g.evaluate(GatesSpec(), m, has_stable=True)) is g.Verdict.ERROR


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, json.dumps(
            {"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}}
        ).encode()),
        # not followed, and its body read against the deadline too (requests' own
        # Session.send reads a redirect's body whole, however slowly it comes)
        (302, b"x" * 100),
    ],
    ids=["answer", "redirect"],
)
def test_each_analysis_has_a_total_deadline(status: int, body: bytes) -> None:
    """An endpoint that trickles a byte every 0.2 s never trips a 1 s read timeout; the
    analysis still ends at its deadline, as an Error."""
    with _FakePrometheus(body, trickle=0.2, status=status) as fake:
        p = prom.PrometheusProvider(fake.url, timeout_seconds=1, analysis_timeout_seconds=2)
        req = AnalysisRequest("a-canary", "a", 30, datetime.now(UTC), 0, 10)
        t0 = time.monotonic()
        m = p.measure(req, GatesSpec())
        took = time.monotonic() - t0
    assert took < 4, f"the analysis took {took:.1f} s past its 2 s deadline"
    assert m.error is not None and "deadline" in m.error


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"<html>502 Bad Gateway</html>", "invalid answer (not JSON)"),
        (b" " * (MAX_ANSWER_BYTES + 1), f"answer larger than {MAX_ANSWER_BYTES} bytes"),
    ],
    ids=["not-json", "oversized"],
)
def test_an_answer_that_is_not_prometheus_is_an_error(answer: bytes, reason: str) -> None:
    """A 200 that is a proxy's page, or larger than any instant query's answer: the
    whole measurement is an Error with a short reason (the body goes to the log only)."""
    with _FakePrometheus(answer) as fake:
        p = prom.PrometheusProvider(fake.url, timeout_seconds=2)
        req = AnalysisRequest("a-canary", "a", 30, datetime.now(UTC), 0, 10)
        m = p.measure(req, GatesSpec())
    assert m.error == f"Prometheus: {reason}"
    assert g.overall(g.evaluate(GatesSpec(), m, has_stable=True)) is g.Verdict.ERROR
