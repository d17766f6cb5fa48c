"""Tenants never read each other's series (issue 15), against a real Prometheus.

Prometheus (Debian's 2.42) scrapes four "pods", each a loopback endpoint exposing the
vLLM series a vLLM pod would, with the ``namespace`` and ``pod`` labels a Kubernetes
service discovery relabelling attaches (static labels here):

* tenant-a's canary ``chat-canary`` (pod ``chat-canary-5d8f9c-x7k2p``): healthy, fast;
* tenant-a's stable ``chat``: healthy, fast;
* tenant-b's canary, the same resource name and served model name ``chat-canary``:
  every request fails and takes seconds;
* in tenant-a, another Deployment ``chat-shadow`` that also serves ``chat-canary``:
  failing too.

The operator's provider for tenant-a's resource (samp_operator.prometheus_access, as
``KubeCanary`` builds it) must see only tenant-a's canary pod. Before the fix the
queries had no namespace or pod matcher and summed all three ``chat-canary`` sources,
so tenant-b's failures rolled tenant-a back (or its healthy figures promoted b's).
The exporters stand in for vLLM only as a source of series; the PromQL, the label
matching and the answers are Prometheus's own.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from samp_core import gates as g
from samp_core.canary import AnalysisRequest
from samp_core.spec import GatesSpec, QuantizedModelSpec
from samp_local.processes import PrometheusProcess, ScrapeTarget
from samp_operator.canary_kube import KubeCanary
from samp_operator.prometheus import PrometheusProvider
from samp_operator.settings import PrometheusDefaults
from spec_fixtures import make_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_series import RATE, VllmSeries

pytestmark = [pytest.mark.prometheus]

def _spec() -> QuantizedModelSpec:
    """Resource ``chat``: served as ``chat``, its canary ``chat-canary``, stable ``chat``."""
    spec = make_spec()
    stable = spec.serving.stable
    assert stable is not None
    serving = spec.serving.model_copy(update={
        "served_model_name": "chat",
        "stable": stable.model_copy(update={"deployment": "chat", "served_model_name": None}),
    })
    return spec.model_copy(update={"serving": serving})


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed; run .ci/system-packages")
    pods = {
        ("tenant-a", "chat-canary-5d8f9c-x7k2p"): VllmSeries("chat-canary", failing=False),
        ("tenant-a", "chat-6b7c8d-q9w8e"): VllmSeries("chat", failing=False),
        ("tenant-b", "chat-canary-77f6d5-h4j5k"): VllmSeries("chat-canary", failing=True),
        ("tenant-a", "chat-shadow-5c4b3a-m2n3b"): VllmSeries("chat-canary", failing=True),
    }
    targets = [
        ScrapeTarget(pod.server_address[1], pod.model, f"{ns}-{name}",
                     labels={"namespace": ns, "pod": name})
        for (ns, name), pod in pods.items()
    ]
    prom = PrometheusProcess(Path(tmp_path_factory.mktemp("tenants")), targets)
    try:
        prom.start()
        time.sleep(13)  # a 10 s window of scrapes, every second
        yield prom
    finally:
        prom.stop()
        for pod in pods.values():
            pod.shutdown()
            pod.server_close()


def _request() -> AnalysisRequest:
    return AnalysisRequest("chat-canary", "chat", 10, datetime.now(UTC), 0, 50)


def test_the_operators_queries_read_only_the_tenants_own_pods(
    tenants: PrometheusProcess,
) -> None:
    spec = _spec()
    provider = KubeCanary(None, PrometheusDefaults(url=tenants.url)).providers.provider(
        spec, "tenant-a", "chat"
    )
    assert isinstance(provider, PrometheusProvider)
    m = provider.measure(_request(), spec.gates)
    assert m.error is None and not m.query_errors, (m.error, m.query_errors)
    # one pod at RATE/s over 10 s: not three of them
    assert m.canary.requests is not None and 0.5 * RATE * 10 < m.canary.requests < 1.5 * RATE * 10
    assert m.canary.errors == 0
    assert m.canary.p99_seconds is not None and m.canary.p99_seconds <= 0.5
    assert m.stable is not None and m.stable.errors == 0
    results = {r.gate: r for r in g.evaluate(spec.gates, m, has_stable=True)}
    assert results["errorRate"].verdict == "Successful"
    # The ratio's point value is decisive (the same histogram a side); its verdict waits for
    # evidence: every request of both sides lies in one bucket (le 0.5), so the P99 interval
    # starts at 0 and the ratio's is 0-inf however many requests there are.
    ratio = results["p99RatioToStable"]
    assert ratio.value == pytest.approx(1.0) and ratio.verdict != "Failed", ratio
    queries = dict(provider.queries)
    assert 'namespace="tenant-a"' in queries["canary.requests"]
    assert 'pod=~"chat-canary-[a-z0-9]+-[a-z0-9]+"' in queries["canary.requests"]
    assert 'pod=~"chat-[a-z0-9]+-[a-z0-9]+"' in queries["stable.p99"]


def test_unscoped_queries_mix_the_tenants(tenants: PrometheusProcess) -> None:
    """What the operator's queries did before: tenant-b's and the shadow's failures and
    slowness count against tenant-a's canary."""
    spec = _spec()
    m = PrometheusProvider(tenants.url).measure(_request(), spec.gates)
    assert m.canary.errors is not None and m.canary.errors > 0.5 * RATE * 10
    results = {r.gate: r for r in g.evaluate(spec.gates, m, has_stable=True)}
    assert results["errorRate"].verdict == "Failed"
    # the other tenants' slow requests: a P99 near 5 s against the stable's 0.5 s
    assert results["p99RatioToStable"].value > 5, results["p99RatioToStable"]


def test_custom_queries_get_the_namespace(tenants: PrometheusProcess) -> None:
    gates = GatesSpec.model_validate({"customQueries": [{
        "name": "fails",
        "query": 'sum(increase(vllm:request_success_total{namespace="$namespace",'
                 'model_name="$canary",finished_reason="error"}[$window]))',
        "max": 0,
    }]})
    spec = _spec().model_copy(update={"gates": gates})
    defaults = PrometheusDefaults(url=tenants.url)
    own = KubeCanary(None, defaults).providers.provider(spec, "tenant-b", "chat")
    assert isinstance(own, PrometheusProvider)
    failed = own.measure(_request(), gates).custom["fails"]
    assert failed is not None and failed > 0.5 * RATE * 10  # tenant-b's own failures
    other = KubeCanary(None, defaults).providers.provider(spec, "tenant-c", "chat")
    assert isinstance(other, PrometheusProvider)
    assert other.measure(_request(), gates).custom["fails"] is None  # nothing of b's
