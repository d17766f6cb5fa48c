"""spec.gates.prometheusUrl: the operator's allow-list, and no redirect to another host
(against real HTTP servers on loopback)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from samp_operator.prometheus import PrometheusProvider, QueryError
from samp_operator.prometheus_hosts import host_allowed, refusal
from samp_operator.settings import from_env_and_args


def test_empty_allow_list_allows_every_host() -> None:
    assert host_allowed("http://169.254.169.254/latest", [])


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://prometheus.monitoring.svc:9090", True),
    ("http://thanos.observability.svc.cluster.local", True),
    ("http://127.0.0.1:9091", True),
    ("http://127.0.0.1:9092", False),
    ("http://169.254.169.254/latest/meta-data", False),
    ("http://evil.svc.cluster.local.attacker.io", False),
])
def test_allow_list_matches_names_ports_and_domains(url: str, allowed: bool) -> None:
    hosts = ["prometheus.monitoring.svc", "*.svc.cluster.local", "127.0.0.1:9091"]
    assert host_allowed(url, hosts) is allowed
    assert (refusal(url, hosts) is None) is allowed


def test_refusal_names_the_field_and_the_setting() -> None:
    text = refusal("http://169.254.169.254/x", ["prometheus.monitoring.svc"]) or ""
    assert "169.254.169.254" in text and "spec.gates.prometheusUrl" in text
    assert "--prometheus-allowed-host" in text


def test_setting_from_variable_and_flag() -> None:
    env = {"SAMP_PROMETHEUS_ALLOWED_HOSTS": "a.svc, *.monitoring.svc"}
    assert from_env_and_args(None, env).prometheus.allowed_hosts == ("a.svc", "*.monitoring.svc")
    assert from_env_and_args(None, {}).prometheus.allowed_hosts == ()


class _Redirect(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target + self.path)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Answer(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[str, type[_Answer]]]:
    answer = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    # the other host: "localhost" instead of 127.0.0.1
    _Redirect.target = f"http://localhost:{answer.server_address[1]}"
    redirect = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    for server in (answer, redirect):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{redirect.server_address[1]}", _Answer
    for server in (answer, redirect):
        server.shutdown()
        server.server_close()


def test_a_redirect_is_not_followed(servers: tuple[str, type[_Answer]]) -> None:
    url, answer = servers
    with pytest.raises(QueryError, match="redirected, which is not followed") as err:
        PrometheusProvider(url).query("vector(1)")
    # The target goes to the operator's log only, never to status.
    assert "http://localhost" in err.value.detail and "localhost" not in str(err.value)
    assert answer.hits == 0


def test_the_operator_refuses_a_spec_prometheus_outside_the_allow_list() -> None:
    """The provider of a resource whose prometheusUrl is not allowed measures nothing: every
    analysis is an Error naming the setting, and no request leaves the operator."""
    from samp_operator.canary_driver import NoPrometheus
    from samp_operator.prometheus_access import ProviderFactory
    from samp_operator.settings import PrometheusDefaults
    from spec_fixtures import make_spec

    spec = make_spec()
    spec = spec.model_copy(update={"gates": spec.gates.model_copy(
        update={"prometheus_url": "http://169.254.169.254/latest"})})
    defaults = PrometheusDefaults(allowed_hosts=("prometheus.monitoring.svc",))
    provider = ProviderFactory(None, defaults).provider(spec, "ns", "chat")  # type: ignore[arg-type]
    assert isinstance(provider, NoPrometheus)
    assert "--prometheus-allowed-host" in provider.message
    allowed = ProviderFactory(None, PrometheusDefaults()).provider(spec, "ns", "chat")  # type: ignore[arg-type]
    assert not isinstance(allowed, NoPrometheus)
