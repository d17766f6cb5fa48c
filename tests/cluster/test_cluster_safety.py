"""Issue 15's safety items that live in the API itself, against the real kube-apiserver.

* A promote/abort value is consumed once: ``status.handledRequests`` must survive the
  status subresource (a field the CRD schema lacked would be pruned on write, and the
  same ``"true"`` would promote the next rollout again).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane

from samp_core import canary as cn
from samp_core.reconcile import parse_status
from samp_core.status import AccuracySummary, HandledRequests, Phase, QuantizedModelStatus
from spec_fixtures import make_spec

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tiny-cpu.yaml"


def _qm_path(namespace: str, name: str = "", sub: str = "") -> str:
    p = f"/apis/samp.dev/v1alpha1/namespaces/{namespace}/quantizedmodels"
    return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def _example(namespace: str, name: str) -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    return doc


def test_handled_requests_survive_the_status_subresource(
    cluster: ControlPlane, samp_crds: list[str], cluster_namespace: str
) -> None:
    ns, name = cluster_namespace, "handled"
    status, created = cluster.request("POST", _qm_path(ns), _example(ns, name))
    assert status == 201, created
    written = QuantizedModelStatus(
        phase=Phase.PROMOTED, handled_requests=HandledRequests(promote="true")
    )
    status, body = cluster.request(
        "PATCH", _qm_path(ns, name, "status"), {"status": written.to_wire()},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200, body
    status, got = cluster.request("GET", _qm_path(ns, name))
    assert got["status"].get("handledRequests") == {"promote": "true"}, got["status"]

    # The next rollout starts from what the server holds; "true" is still annotated.
    read = parse_status(got["status"]).model_copy(update={
        "phase": Phase.EVALUATED, "artifact_uri": "pvc://models/tiny/attempt-1",
        "accuracy": AccuracySummary(perplexity_base=10.0, perplexity_quantized=10.1,
                                    passed=True),
    })
    spec, now = make_spec(), datetime(2026, 1, 1, tzinfo=UTC)
    ann = {cn.ANNOTATION_PROMOTE: "true"}
    first = cn.decide(spec, read, cn.Observation(name=name, annotations=ann), now)
    assert first.status.phase is Phase.CANARY
    again = cn.decide(spec, first.status,
                      cn.Observation(name=name, annotations=ann, canary_ready=True), now)
    assert again.status.phase is Phase.CANARY  # not promoted by the old value
