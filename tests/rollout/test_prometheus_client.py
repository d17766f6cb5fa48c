"""The provider's queries go through prometheus-api-client, against a real Prometheus.

``PrometheusProvider`` sends every instant query with ``PrometheusConnect.custom_query``
over a session that bounds the answer (samp_operator.prometheus_session). Here Debian's
Prometheus scrapes one vLLM-shaped endpoint (tests/rollout/vllm_series.py): every query
of a measurement passes through the library's call and its figures are Prometheus's; a
query Prometheus refuses (bad_data) is that figure's error, not an unreachable
Prometheus; and a redirect to that same Prometheus is not followed.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_api_client import PrometheusConnect

from samp_core import gates as g
from samp_core.canary import AnalysisRequest
from samp_core.spec import GatesSpec
from samp_local.processes import PrometheusProcess, ScrapeTarget
from samp_operator.prometheus import PrometheusProvider
from samp_operator.prometheus_queries import QueryError
from samp_operator.prometheus_session import BoundedSession

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_series import RATE, VllmSeries

pytestmark = [pytest.mark.prometheus]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed; run .ci/system-packages")
    pod = VllmSeries("chat-canary", failing=False)
    prom = PrometheusProcess(Path(tmp_path_factory.mktemp("client")),
                             [ScrapeTarget(pod.server_address[1], pod.model, "canary")])
    try:
        prom.start()
        time.sleep(12)  # a 10 s window of scrapes, every second
        yield prom
    finally:
        prom.stop()
        pod.shutdown()
        pod.server_close()


def _request() -> AnalysisRequest:
    return AnalysisRequest("chat-canary", None, 10, datetime.now(UTC), 0, 50)


def test_every_query_is_the_librarys(
    prometheus: PrometheusProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each HTTP request the provider makes is sent from inside ``custom_query``."""
    sent: list[str] = []
    inside: list[bool] = []  # per HTTP request: was a custom_query call running?
    original_query, original_send = PrometheusConnect.custom_query, BoundedSession.send

    def query(client: PrometheusConnect, promql: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(promql)
        try:
            return original_query(client, promql, *args, **kwargs)
        finally:
            sent.append("")  # done

    def send(session: BoundedSession, request: Any, **kwargs: Any) -> Any:
        inside.append(bool(sent) and sent[-1] != "")
        return original_send(session, request, **kwargs)

    monkeypatch.setattr(PrometheusConnect, "custom_query", query)
    monkeypatch.setattr(BoundedSession, "send", send)
    provider = PrometheusProvider(prometheus.url)
    assert provider.query("vector(2.5)") == 2.5
    m = provider.measure(_request(), GatesSpec())
    assert m.error is None and not m.query_errors, (m.error, m.query_errors)
    assert m.canary.requests is not None and 0.5 * RATE * 10 < m.canary.requests < 1.5 * RATE * 10
    assert sum(m.canary.histograms["e2e"].counts) > 0  # the histogram reads too
    queries = [q for q in sent if q]
    assert len(inside) == len(queries) > 7 and all(inside)
    assert queries[0] == "vector(2.5)" and dict(provider.queries)["canary.requests"] in queries


def test_a_refused_query_is_that_figures_error(prometheus: PrometheusProcess) -> None:
    gates = GatesSpec.model_validate({"customQueries": [
        {"name": "broken", "query": "sum(", "max": 0}]})
    m = PrometheusProvider(prometheus.url).measure(_request(), gates)
    assert m.error is None, m.error  # Prometheus answered: the other figures stand
    assert m.query_errors == {
        "query:broken": "HTTP status 400 (bad_data: the query was refused)"}
    assert m.canary.requests is not None and m.canary.requests > 0
    assert g.overall(g.evaluate(gates, m, has_stable=False)) is g.Verdict.ERROR


class _RedirectToPrometheus(BaseHTTPRequestHandler):
    target = ""
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(307)
        self.send_header("Location", self.target + self.path)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_redirect_to_prometheus_is_not_followed(prometheus: PrometheusProcess) -> None:
    _RedirectToPrometheus.target = prometheus.url.replace("127.0.0.1", "localhost")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RedirectToPrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(QueryError, match="HTTP 307: redirected, which is not followed"):
            PrometheusProvider(url).query("vector(1)")
        assert _RedirectToPrometheus.hits == 1  # no retry either
        m = PrometheusProvider(url).measure(_request(), GatesSpec())
        assert m.error is not None and "redirected" in m.error
    finally:
        server.shutdown()
        server.server_close()
    assert PrometheusProvider(prometheus.url).query("vector(1)") == 1.0  # it answers
