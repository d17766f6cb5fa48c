"""The rollout adapters' pure parts: route weights, replica split, manifests, CLI patches,
PromQL text and answer parsing. Fast; nothing started, a query goes to a refused port
(the provider's faulty answers: test_prometheus_answers.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from samp_core.api import parse
from samp_core.canary import AnalysisRequest
from samp_core.formats import ExportFormat
from samp_core.spec import GatesSpec
from samp_local.load import LocalWeights
from samp_local.processes import free_port
from samp_operator import prometheus as prom
from samp_operator import prometheus_queries as promql
from samp_operator.rollout_cli import annotation_patch, format_status
from samp_operator.serving import canary_manifests, owned_stable_manifest, promoted_stable_patch
from samp_operator.traffic import (
    effective_weight,
    replica_split,
    route_with_weights,
    weights_of,
)

ROOT = Path(__file__).resolve().parents[2]


def tiny():  # type: ignore[no-untyped-def]
    return parse(yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text()))


ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "tiny", "namespace": "default", "resourceVersion": "7"},
    "spec": {
        "parentRefs": [{"name": "gw"}],
        "rules": [
            {
                "matches": [{"path": {"value": "/v1"}}],
                "backendRefs": [{"name": "tiny", "port": 8000}],
            },
            {"backendRefs": [{"name": "other", "port": 80}]},
        ],
    },
}


def test_route_weights_add_adjust_and_remove_the_canary_ref() -> None:
    r = route_with_weights(ROUTE, "tiny", "tiny-canary", 25, 8000)
    assert weights_of(r, "tiny", "tiny-canary") == [(75, 25)]
    refs = r["spec"]["rules"][0]["backendRefs"]
    assert refs[1] == {"name": "tiny-canary", "port": 8000, "weight": 25}
    assert r["spec"]["rules"][1] == ROUTE["spec"]["rules"][1]  # other rules untouched
    assert r["metadata"]["resourceVersion"] == "7"  # optimistic concurrency on replace
    r = route_with_weights(r, "tiny", "tiny-canary", 100, 8000)
    assert weights_of(r, "tiny", "tiny-canary") == [(0, 100)]
    r = route_with_weights(r, "tiny", "tiny-canary", 0, 8000)
    assert [x["name"] for x in r["spec"]["rules"][0]["backendRefs"]] == ["tiny"]
    with pytest.raises(ValueError, match="no rule with backendRef nope"):
        route_with_weights(ROUTE, "nope", "c", 10, None)


@pytest.mark.parametrize(
    ("total", "weight", "split", "effective"),
    [
        (4, 25, (1, 3), 25),
        (1, 50, (1, 1), 50),
        (1, 10, (1, 1), 50),
        (3, 100, (3, 0), 100),
        (3, 0, (0, 3), 0),
        (10, 10, (1, 9), 10),
    ],
)
def test_replica_split(total: int, weight: int, split: tuple[int, int], effective: int) -> None:
    assert replica_split(total, weight) == split
    assert effective_weight(*split) == effective


def test_local_weights() -> None:
    w = LocalWeights()
    w.set_weight(30)
    assert w.verify_weight(30) and not w.verify_weight(31)
    assert w.canary_share() == 0.3 and w.history == [30]


def test_canary_manifests() -> None:
    qm = tiny()
    dep, svc = canary_manifests(
        qm.name,
        "default",
        qm.spec,
        "pvc://models/tiny-llama/abc",
        served_model_name="tiny-llama-canary",
        export_format=ExportFormat.COMPRESSED_TENSORS,
        attempt=2,
        extra_pod_labels={"app": "tiny-llama"},
        owner={
            "apiVersion": "samp.dev/v1alpha1",
            "kind": "QuantizedModel",
            "name": "tiny-llama",
            "uid": "u1",
        },
    )
    tmpl = dep["spec"]["template"]
    c = tmpl["spec"]["containers"][0]
    args = c["args"]
    assert args[args.index("--served-model-name") + 1] == "tiny-llama-canary"
    assert args[args.index("--model") + 1] == "/artifacts/tiny-llama/abc"
    assert args[args.index("--quantization") + 1] == "compressed-tensors"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert tmpl["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert tmpl["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert tmpl["metadata"]["labels"]["samp.dev/served-model"] == "tiny-llama-canary"
    assert tmpl["metadata"]["labels"]["app"] == "tiny-llama"  # shares the stable Service
    assert tmpl["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"
    # vLLM needs more /dev/shm than a container's 64 MiB default (crash-looped on a real node)
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in tmpl["spec"][
        "volumes"
    ]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    # drained before SIGTERM: a scale-down cut in-flight requests on the real node
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] >= 5
    assert dep["metadata"]["ownerReferences"][0]["controller"] is True
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    s3, _ = canary_manifests("m", "ns", qm.spec, "s3://bucket/m", served_model_name="m-canary")
    assert "runai_streamer" in s3["spec"]["template"]["spec"]["containers"][0]["args"]
    # --trust-remote-code comes only from spec.model.trustRemoteCode (refused in extraArgs)
    assert "--trust-remote-code" not in args
    trusting = qm.spec.model_copy(
        update={"model": qm.spec.model.model_copy(update={"trust_remote_code": True})}
    )
    dep2, _ = canary_manifests("m", "ns", trusting, "pvc://m/x", served_model_name="m-canary")
    assert "--trust-remote-code" in dep2["spec"]["template"]["spec"]["containers"][0]["args"]


def test_canary_answers_the_names_clients_send() -> None:
    """A client of the shared Service sends the public name; the canary must answer it."""
    qm = tiny()
    dep, _ = canary_manifests(
        qm.name,
        "default",
        qm.spec,
        "pvc://models/x",
        served_model_name="tiny-llama-canary",
        aliases=("tiny-llama", "tiny-llama-canary", "tiny-llama"),
    )
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    start = args.index("--served-model-name") + 1
    # first name = vLLM's model_name label (canary series stay separable), then the aliases once
    assert args[start : start + 3] == ["tiny-llama-canary", "tiny-llama", "--host"]


def test_promoted_stable_patch_keeps_the_stable_name() -> None:
    qm = tiny()
    dep, _ = canary_manifests(
        qm.name,
        "default",
        qm.spec,
        "pvc://models/x",
        served_model_name="tiny-llama-canary",
        aliases=("tiny-llama",),
    )
    stable = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "sidecar", "image": "envoy"},
                        {"name": "vllm", "image": "old", "args": ["--model", "/old"]},
                    ]
                }
            }
        }
    }
    patch = promoted_stable_patch(stable, dep, "tiny-llama")
    containers = patch["spec"]["template"]["spec"]["containers"]
    assert containers[0] == {"name": "sidecar", "image": "envoy"}
    args = containers[1]["args"]
    start = args.index("--served-model-name") + 1
    assert args[start : start + 2] == ["tiny-llama", "--host"]  # every canary name replaced
    assert patch["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    assert args[args.index("--model") + 1] == "/artifacts/x"


def test_owned_stable_manifest_serves_under_the_stable_names() -> None:
    """OperatorOwned: the canary's template under the stable's names, selected by the
    existing selector and by the stable Service."""
    qm = tiny()
    dep, _ = canary_manifests(qm.name, "default", qm.spec, "pvc://models/x",
                              served_model_name="tiny-llama-canary", aliases=("tiny-llama",),
                              attempt=2)
    owner = {"apiVersion": "samp.dev/v1alpha1", "kind": "QuantizedModel",
             "name": "tiny-llama", "uid": "u-1"}
    body = owned_stable_manifest(
        "tiny-llama-stable", "default", dep, ["tiny-llama"],
        {"app": "tiny-llama", "samp.dev/role": "stable"}, {"app": "tiny-llama"}, 3, owner,
        "server",
    )
    spec = body["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"] == {"matchLabels": {"app": "tiny-llama", "samp.dev/role": "stable"}}
    labels = spec["template"]["metadata"]["labels"]
    assert labels["samp.dev/role"] == "stable" and labels["app"] == "tiny-llama"
    assert "samp.dev/attempt" not in labels  # one template whichever attempt promoted it
    (container,) = spec["template"]["spec"]["containers"]
    assert container["name"] == "server"  # the existing container is the one replaced
    args = container["args"]
    start = args.index("--served-model-name") + 1
    assert args[start : start + 2] == ["tiny-llama", "--host"]
    assert args[args.index("--model") + 1] == "/artifacts/x"
    (ref,) = body["metadata"]["ownerReferences"]
    assert ref["uid"] == "u-1" and ref["controller"] is True


def test_cli_patches_only_annotations() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert annotation_patch("promote", now) == {
        "metadata": {"annotations": {"samp.dev/promote": "2026-01-02T03:04:05Z"}}
    }
    assert annotation_patch("abort", now)["metadata"]["annotations"] == {
        "samp.dev/abort": "2026-01-02T03:04:05Z"
    }
    assert annotation_patch("pause")["metadata"]["annotations"] == {"samp.dev/pause": "true"}
    assert annotation_patch("resume")["metadata"]["annotations"] == {"samp.dev/pause": None}


def test_cli_status_text() -> None:
    obj = {
        "metadata": {"name": "tiny", "namespace": "ml", "annotations": {"samp.dev/pause": "true"}},
        "spec": {"rollout": {"steps": [{"weight": 10}, {"weight": 100}]}},
        "status": {
            "phase": "RolledBack",
            "attempt": 1,
            "message": "rolled back: gate p99RatioToStable failed",
            "canary": {
                "step": 0,
                "weight": 0,
                "analyses": 3,
                "lastVerdict": "Failed",
                "p99Ratio": 2.7,
            },
            "gates": [
                {
                    "gate": "p99RatioToStable",
                    "verdict": "Failed",
                    "value": 2.7,
                    "baseline": 1.0,
                    "threshold": "<= 1.5x stable",
                }
            ],
            "conditions": [
                {"type": "RolledBack", "status": "True", "reason": "GateFailed", "message": "m"}
            ],
            "history": [
                {
                    "attempt": 1,
                    "outcome": "RolledBack",
                    "startedAt": "t0",
                    "finishedAt": "t1",
                    "reason": "r",
                }
            ],
        },
    }
    text = format_status(obj)
    assert text.startswith("ml/tiny: RolledBack (attempt 1)")
    assert "step 1/2, weight 0%" in text and "P99 ratio 2.7" in text
    assert "p99RatioToStable  Failed" in text and "threshold <= 1.5x stable" in text
    assert "RolledBack=True GateFailed" in text and "samp.dev/pause=true" in text


def test_promql_text() -> None:
    p = prom.PrometheusProvider("http://127.0.0.1:1")
    q = p.side_queries("tiny-llama-canary", "30s", ttft=True)
    assert q["p99"] == (
        "histogram_quantile(0.99, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket"
        '{model_name="tiny-llama-canary"}[30s])))'
    )
    assert 'finished_reason=~"abort|error"' in q["errors"]
    assert 'http_requests_total{served_model="tiny-llama-canary",status=~"[45].."}' in q["errors"]
    assert "vllm:time_to_first_token_seconds_bucket" in q["ttftP99"]
    assert prom.prom_duration(9.2) == "10s"
    no_http = prom.PrometheusProvider("http://127.0.0.1:1", http_label=None)
    assert "http_requests_total" not in no_http.side_queries("m", "5s", ttft=False)["requests"]


def test_answer_parsing() -> None:
    assert prom._number([]) is None
    assert prom._number([{"metric": {}, "value": [1, "NaN"]}]) != prom._number(
        [{"metric": {}, "value": [1, "NaN"]}]
    )  # NaN stays NaN: the evaluator makes it Inconclusive
    assert prom._number([1.0, "2.5"]) == 2.5
    with pytest.raises(prom.QueryError, match="2 series"):
        prom._number([{"value": [1, "1"]}, {"value": [1, "2"]}])


def test_spec_values_cannot_close_a_label_matcher() -> None:
    """Issue 15: a served model name from the spec entered custom PromQL raw, so a quote in
    it closed the user's matcher and widened the query to other series."""
    gates = GatesSpec.model_validate(
        {"customQueries": [{"name": "kv", "query": 'max(kv{model_name="$canary"})', "max": 1}]}
    )
    evil = 'x"} or vector(0) or kv{model_name="y'
    p = prom.PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout_seconds=1)
    p.measure(AnalysisRequest(evil, evil, 30, datetime.now(UTC), 0, 10), gates)
    queries = dict(p.queries)
    assert queries["query:kv"] == 'max(kv{model_name="x\\"} or vector(0) or kv{model_name=\\"y"})'
    assert all('model_name="x\\"}' in q for k, q in queries.items() if k.startswith("canary."))


def test_histogram_promql_text() -> None:
    """Bucket counts are the counters' exact change over the window (now minus offset W,
    or now alone for a series born inside it), never increase()'s extrapolation."""
    sel = '{model_name="m"}'
    series = 'vllm:e2e_request_latency_seconds_bucket{model_name="m"}'
    assert promql.bucket_query("vllm:e2e_request_latency_seconds", sel, "30s") == (
        f"sum by (le) ({series}) - sum by (le) ({series} offset 30s) or sum by (le) ({series})"
    )
    assert promql.sum_query("vllm:e2e_request_latency_seconds", sel, "30s").startswith(
        'sum (vllm:e2e_request_latency_seconds_sum{model_name="m"}) - sum ('
    )
    assert promql.replicas_query(sel) == (
        'count(group by (instance) (vllm:e2e_request_latency_seconds_count{model_name="m"}))'
    )
