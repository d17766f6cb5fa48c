"""The canary through the real operator on the real control plane, with real vLLM beside it.

Wiring (README.md, "How this joins the operator"):

* the operator runs as ``samp operator run`` (canary on) against the test control plane
  (etcd, kube-apiserver, controller-manager, scheduler, KWOK), under an identity with the
  stage rules of tests/operator plus the rollout's (Deployments, Services, HTTPRoutes);
* the stage Jobs are played by tests/operator's JobRuntime (real result summaries in the
  termination message), so the resource reaches Evaluated;
* the operator's canary hook then creates the canary Deployment and Service in the
  cluster (KWOK makes its pod Ready; no container runs), moves the weights of a real
  Gateway API HTTPRoute, measures the real Prometheus (``spec.gates.prometheusUrl``),
  and promotes by server-side applying the stable Deployment, which it then owns
  (``serving.stable.management: OperatorOwned``, the default);
* the vLLM servers run beside the cluster as local processes under the served names the
  manifests carry (``tiny-llama`` and ``tiny-llama-canary``); the load generator reads
  the HTTPRoute's backend weights from the API server every half second and splits its
  requests accordingly — it plays the gateway that would implement the route.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from samp_local.load import Backend, LoadGenerator
from samp_local.processes import ScrapeTarget
from samp_operator.traffic import weights_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from operator_harness import (
    OPERATOR_RULES,
    Api,
    JobRuntime,
    Operator,
    qm_manifest,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.vllm, pytest.mark.prometheus, pytest.mark.slow]

ROLLOUT_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "delete", "patch", "update"],
    },
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments/status"], "verbs": ["get"]},
    {
        "apiGroups": [""],
        "resources": ["services"],
        "verbs": ["get", "list", "watch", "create", "delete"],
    },
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["httproutes"],
        "verbs": ["get", "list", "watch", "update", "patch"],
    },
]


class CanaryOperator(Operator):
    """tests/operator's Operator with the canary on (it starts the operator --no-canary)."""

    def start(self, timeout: float = 60) -> Operator:
        import subprocess

        import operator_harness as h

        orig = subprocess.Popen

        def popen(args: list[str], *a: Any, **kw: Any) -> Any:
            return orig([x for x in args if x != "--no-canary"], *a, **kw)

        h.subprocess.Popen = popen  # type: ignore[assignment]
        try:
            return super().start(timeout)
        finally:
            h.subprocess.Popen = orig  # type: ignore[assignment]


class RouteShare:
    """The canary's share as the HTTPRoute in the API server says, refreshed every 0.5 s."""

    def __init__(self, cluster: Any, ns: str, route: str, stable: str, canary: str) -> None:
        self.cluster, self.path = (
            cluster,
            (f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes/{route}"),
        )
        self.stable, self.canary = stable, canary
        self.share = 0.0
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            status, doc = self.cluster.request("GET", self.path)
            if status != 200:
                continue
            pairs = weights_of(doc, self.stable, self.canary)
            if pairs:
                s, c = pairs[0]
                self.share = c / (s + c) if s + c else 0.0
                w = round(100 * self.share)
                if not self.seen or self.seen[-1] != w:
                    self.seen.append(w)

    def canary_share(self) -> float:
        return self.share

    def __enter__(self) -> RouteShare:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)


def _deployment(name: str, ns: str, labels: dict[str, str], args: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "vllm", "image": "vllm/vllm-openai:v0.11.0", "args": args}
                    ]
                },
            },
        },
    }


@pytest.mark.parametrize("scenario", ["healthy", "regression"])
def test_operator_runs_the_canary_on_the_control_plane(  # noqa: PLR0917 (fixtures)
    scenario: str,
    cluster: Any,
    samp_crds: Any,
    gateway_api_crds: Any,
    cluster_namespace: str,
    operator_rbac: Any,
    servers: Any,
    tmp_path: Path,
) -> None:
    ns = cluster_namespace
    healthy = scenario == "healthy"
    operator_rbac(OPERATOR_RULES + ROLLOUT_RULES)
    api = Api(cluster, ns)
    api.make_claims("artifacts", "prompts")
    # The stable serving target and its route, as an SRE would have them.
    stable_labels = {"app": "tiny-llama", "samp.dev/role": "stable"}
    for path, obj in [
        (
            f"/apis/apps/v1/namespaces/{ns}/deployments",
            _deployment(
                "tiny-llama-stable",
                ns,
                stable_labels,
                ["--model", "/models/base", "--served-model-name", "tiny-llama"],
            ),
        ),
        (
            f"/api/v1/namespaces/{ns}/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "tiny-llama"},
                "spec": {"selector": stable_labels, "ports": [{"port": 8000}]},
            },
        ),
        (
            f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes",
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": "tiny-llama"},
                "spec": {
                    "parentRefs": [{"name": "gw"}],
                    "rules": [{"backendRefs": [{"name": "tiny-llama", "port": 8000}]}],
                },
            },
        ),
    ]:
        status, body = cluster.request("POST", path, obj)
        assert status == 201, body

    manifest = qm_manifest(
        "tiny-llama",
        ns,
        hardware={"target": "cpu", "gpusPerJob": 0, "retries": 0},
        quantization={
            "budget": {"fractionOf16Bit": 0.65},  # the cpu floor is 0.594 (stored bytes)
            "allowedFormats": ["int4-w4a8", "int8-w8a8", "bf16"],
        },
        serving={
            "servedModelName": "tiny-llama",
            "stable": {"deployment": "tiny-llama-stable", "service": "tiny-llama"},
        },
        rollout={
            "steps": [{"weight": 50, "duration": "20s"}, {"weight": 100, "duration": "20s"}],
            "analysisInterval": "10s",
            "progressDeadline": "5m",
            "failureLimit": 1,
            "httpRoute": {"name": "tiny-llama", "stableBackend": "tiny-llama"},
        },
        gates={
            "latency": {"p99MaxRatioToStable": 3, "p99MaxSeconds": 30 if healthy else 3},
            "minRequests": 5 if healthy else 3,
            # the injected regression is n=8 sequences per request, which vLLM counts as 8:
            # the fairness check would call the canary the busier side and make the judge
            # inconclusive (CI rolled back on InconclusiveLimitExceeded, not the gate)
            "maxLoadImbalance": 100,
            "prometheusUrl": servers.prometheus.url,
        },
    )
    # The labels Kubernetes service discovery would attach to the two pods' series: the
    # operator's queries match the resource's namespace and each side's pods.
    servers.prometheus.retarget([
        ScrapeTarget(servers.stable.port, "tiny-llama", "stable",
                     labels={"namespace": ns, "pod": "tiny-llama-stable-5f6d7c-abcde"}),
        ScrapeTarget(servers.canary.port, "tiny-llama-canary", "canary",
                     labels={"namespace": ns, "pod": "tiny-llama-canary-6c7d8e-fghij"}),
    ])
    op = CanaryOperator(cluster, [ns], tmp_path / "operator.log")
    runtime = JobRuntime(cluster, ns).start()
    share = RouteShare(cluster, ns, "tiny-llama", "tiny-llama", "tiny-llama-canary")
    gen = LoadGenerator(
        Backend(servers.stable.url, "tiny-llama", 16),
        # regression: the injected fault of test_rollout_real (n=8 x 256 tokens per request)
        Backend(
            servers.canary.url, "tiny-llama-canary", 16 if healthy else 256, 1 if healthy else 8
        ),
        share,
        threads=4,
    )
    try:
        op.start()
        t0 = time.monotonic()
        with share, gen:
            api2 = _ApiView(cluster, ns)
            api2.create(manifest)
            wait_for(
                lambda: api2.phase() in ("CanaryProgressing", "Promoted", "RolledBack"),
                120,
                "the canary to start",
            )
            status, dep = cluster.request(
                "GET", f"/apis/apps/v1/namespaces/{ns}/deployments/tiny-llama-canary"
            )
            assert status == 200, dep
            c = dep["spec"]["template"]["spec"]["containers"][0]
            assert c["args"][c["args"].index("--served-model-name") + 1] == "tiny-llama-canary"
            wait_for(
                lambda: api2.phase() in ("Promoted", "RolledBack"),
                240,
                "the canary to finish",
                interval=1,
            )
        seconds = time.monotonic() - t0
        qm = api2.get()
        st = qm["status"]
        print(
            "operator canary:",
            st["phase"],
            f"{seconds:.0f}s",
            "route weights seen:",
            share.seen,
            "requests:",
            gen.stats.per_model,
        )
        reasons = api2.reasons()
        assert "CanaryStarted" in reasons
        status, _ = cluster.request(
            "GET", f"/apis/apps/v1/namespaces/{ns}/deployments/tiny-llama-canary"
        )
        assert status == 404  # the canary is removed either way
        status, stable = cluster.request(
            "GET", f"/apis/apps/v1/namespaces/{ns}/deployments/tiny-llama-stable"
        )
        args = stable["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--served-model-name") + 1] == "tiny-llama"
        status, route = cluster.request(
            "GET", f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes/tiny-llama"
        )
        assert weights_of(route, "tiny-llama", "tiny-llama-canary") == [(100, 0)]
        gates = {g["gate"]: g for g in st["gates"]}
        if healthy:
            assert st["phase"] == "Promoted", st.get("message")
            assert 50 in share.seen and 100 in share.seen  # the route really moved
            # judged at 50% in the stable's own windows (status.canary.p99Ratio); at 100%
            # the stable serves nothing, so the last analysis has no ratio row
            assert st["canary"]["p99Ratio"] <= 3 and "p99RatioToStable" not in gates
            # UpdateStable: the stable Deployment now serves the artifact
            assert args[args.index("--model") + 1].startswith("/artifacts/")
            assert "Promoted" in reasons and "AnalysisSuccessful" in reasons
        else:
            assert st["phase"] == "RolledBack", st.get("message")
            assert 50 in share.seen and 100 not in share.seen
            rolled = next(c for c in st["conditions"] if c["type"] == "RolledBack")
            assert rolled["status"] == "True" and rolled["reason"] == "GateFailed"
            # the judge (rank test) decides before the P99 gates have 500 requests a side
            assert ("gate p99" in rolled["message"] or "gate judge" in rolled["message"]) and (
                "threshold" in rolled["message"])
            assert gates["p99"]["value"] is not None and gates["p99"]["baseline"] is not None
            assert args[args.index("--model") + 1] == "/models/base"  # stable untouched
            assert "RolledBack" in reasons and "AnalysisFailed" in reasons
    finally:
        runtime.stop()
        op.stop()
        api.cleanup()
        if "Traceback" in op.logs():
            print(op.logs()[-6000:])


class _ApiView:
    def __init__(self, cluster: Any, ns: str) -> None:
        self.cluster, self.ns = cluster, ns
        self.path = f"/apis/samp.dev/v1alpha1/namespaces/{ns}/quantizedmodels"

    def create(self, manifest: dict[str, Any]) -> None:
        status, body = self.cluster.request("POST", self.path, manifest)
        assert status == 201, body

    def get(self) -> dict[str, Any]:
        status, body = self.cluster.request("GET", f"{self.path}/tiny-llama")
        assert status == 200, body
        return dict(body)

    def phase(self) -> str | None:
        return (self.get().get("status") or {}).get("phase")

    def reasons(self) -> list[str]:
        _status, doc = self.cluster.request(
            "GET",
            f"/api/v1/namespaces/{self.ns}/events?fieldSelector=involvedObject.name%3Dtiny-llama",
        )
        return [e.get("reason", "") for e in doc.get("items", [])]
