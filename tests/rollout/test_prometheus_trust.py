"""Trust and credentials toward Prometheus (issue 15), with a real Prometheus serving TLS
and basic auth (its --web.config.file) and the Secret on the real kube-apiserver.

Before: the provider's session had ``verify = False`` (any certificate accepted),
credentials could only travel in the URL, and a non-200 body and the URL landed in every
tenant's status. Now TLS is verified by default (a CA from the Secret's ``ca.crt``, or
``insecureSkipVerify`` opt-in), credentials come from ``spec.gates.prometheusSecretRef``,
and status carries a short reason only.
"""

from __future__ import annotations

import base64
import crypt
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from controlplane import Certs, ControlPlane, free_port

from samp_core import gates as g
from samp_core.canary import AnalysisRequest
from samp_core.spec import QuantizedModelSpec
from samp_operator.canary_driver import NoPrometheus
from samp_operator.canary_kube import KubeCanary
from samp_operator.prometheus import PrometheusProvider
from samp_operator.settings import PrometheusDefaults
from spec_fixtures import make_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_series import RATE, VllmSeries

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.timeout(300)]

USER, PASSWORD = "samp", "s3cret-pw"


@dataclass
class SecurePrometheus:
    url: str
    ca: Path
    namespace: str


@pytest.fixture
def secure_prometheus(
    tmp_path: Path, cluster_namespace: str
) -> Iterator[SecurePrometheus]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed; run .ci/system-packages")
    certs = Certs(tmp_path / "certs")
    certs.make_ca()
    crt, key = certs.issue("prometheus", "/CN=prometheus", server_sans=["IP:127.0.0.1"])
    web = tmp_path / "web.yml"
    web.write_text(json.dumps({
        "tls_server_config": {"cert_file": str(crt), "key_file": str(key)},
        "basic_auth_users": {USER: crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))},
    }))
    series = VllmSeries("chat-canary", failing=False)
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{
            "job_name": "vllm", "scrape_interval": "1s", "scrape_timeout": "1s",
            "static_configs": [{
                "targets": [f"127.0.0.1:{series.server_address[1]}"],
                "labels": {"namespace": cluster_namespace, "pod": "chat-canary-5d8f9c-x7k2p"},
            }],
        }],
    }))
    port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--web.config.file={web}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/-/ready", verify=str(certs.ca_crt), timeout=2,
                                auth=(USER, PASSWORD)).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.5)
        time.sleep(12)  # a 10 s window of scrapes
        yield SecurePrometheus(url, certs.ca_crt, cluster_namespace)
    finally:
        proc.terminate()
        proc.wait(10)
        series.shutdown()
        series.server_close()


def _spec(url: str, secret: str | None = None, insecure: bool = False) -> QuantizedModelSpec:
    spec = make_spec()
    gates = spec.gates.model_dump(by_alias=True, exclude_none=True)
    gates.update(prometheusUrl=url, prometheusInsecureSkipVerify=insecure)
    if secret is not None:
        gates["prometheusSecretRef"] = {"name": secret}
    return QuantizedModelSpec.model_validate(
        {**spec.model_dump(by_alias=True, exclude_none=True), "gates": gates}
    )


def _secret(cluster: ControlPlane, ns: str, name: str, data: dict[str, str]) -> None:
    status, body = cluster.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    })
    assert status == 201, body


def _measure(cluster: ControlPlane, spec: QuantizedModelSpec, ns: str) -> g.Measurement:
    provider = KubeCanary(cluster.api_client, PrometheusDefaults()).providers.provider(
        spec, ns, "chat")
    request = AnalysisRequest("chat-canary", None, 10, datetime.now(UTC), 0, 50)
    return provider.measure(request, spec.gates)


def _status_text(m: g.Measurement, spec: QuantizedModelSpec) -> str:
    """What would reach status: the gate rows' messages."""
    return json.dumps([r.to_wire() for r in g.evaluate(spec.gates, m, has_stable=False)])


def test_credentials_and_ca_come_from_the_secret(
    cluster: ControlPlane, secure_prometheus: SecurePrometheus
) -> None:
    p = secure_prometheus
    _secret(cluster, p.namespace, "prom", {"username": USER, "password": PASSWORD,
                                           "ca.crt": p.ca.read_text()})
    m = _measure(cluster, _spec(p.url, "prom"), p.namespace)
    assert m.error is None and not m.query_errors, (m.error, m.query_errors)
    assert m.canary.requests is not None and m.canary.requests > 0.5 * RATE * 10


def test_tls_is_verified_by_default(
    cluster: ControlPlane, secure_prometheus: SecurePrometheus
) -> None:
    """No CA given: the test CA is not trusted, so the answer is an Error (before: the
    session accepted any certificate). The status text names the fix, not the URL."""
    p = secure_prometheus
    _secret(cluster, p.namespace, "prom", {"username": USER, "password": PASSWORD})
    spec = _spec(p.url, "prom")
    m = _measure(cluster, spec, p.namespace)
    assert m.error is not None and "TLS verification failed" in m.error, m.error
    assert "127.0.0.1" not in _status_text(m, spec)
    # insecureSkipVerify is the explicit opt-in
    m = _measure(cluster, _spec(p.url, "prom", insecure=True), p.namespace)
    assert m.error is None and not m.query_errors, (m.error, m.query_errors)


def test_status_never_holds_the_url_or_the_answer(
    cluster: ControlPlane, secure_prometheus: SecurePrometheus
) -> None:
    p = secure_prometheus
    _secret(cluster, p.namespace, "prom", {"username": USER, "password": "wrong",
                                           "ca.crt": p.ca.read_text()})
    spec = _spec(p.url, "prom")
    m = _measure(cluster, spec, p.namespace)
    assert set(m.query_errors.values()) == {"HTTP status 401"}, m.query_errors
    text = _status_text(m, spec)
    assert "Error" in text and "127.0.0.1" not in text and "Unauthorized" not in text
    # a Secret that is not there: an Error naming the field, never a pass
    missing = KubeCanary(cluster.api_client, PrometheusDefaults()).providers.provider(
        _spec(p.url, "nope"), p.namespace, "chat")
    assert isinstance(missing, NoPrometheus)
    assert "spec.gates.prometheusSecretRef" in missing.message and "404" in missing.message


def test_the_operators_credentials_never_go_to_a_specs_url() -> None:
    defaults = PrometheusDefaults(url="https://prometheus.monitoring:9090")
    object.__setattr__(defaults, "credentials",
                       defaults.credentials.__class__(token="operator-token"))
    provider: Any = KubeCanary(None, defaults).providers.provider(
        _spec("https://tenant-prometheus:9090"), "ns", "chat")
    assert isinstance(provider, PrometheusProvider)
    assert provider.credentials.token is None and "Authorization" not in provider._session.headers
    own: Any = KubeCanary(None, defaults).providers.provider(make_spec(), "ns", "chat")
    assert own._session.headers["Authorization"] == "Bearer operator-token"
