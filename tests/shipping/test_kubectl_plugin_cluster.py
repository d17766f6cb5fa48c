"""`kubectl samp` (samp_operator.plugin_cli) against the real kube-apiserver of tests/cluster:
the kubeconfig context's namespace, list -A, get --watch, steering annotations, status exit
codes by outcome, -o json|yaml, plan show, and one-line errors instead of tracebacks.
The operator does not run here: the test writes status as the operator would."""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from samp_core.formats import Format
from samp_core.groups import build_groups
from samp_core.hardware import get_profile
from samp_core.planner import PlanRequest, plan
from samp_operator import plugin_cli

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())


@pytest.fixture
def ctx(cluster: Any, samp_crds: Any, cluster_namespace: str, tmp_path: Path) -> dict[str, Any]:
    """A kubeconfig whose current context's namespace is the test namespace."""
    config = yaml.safe_load(Path(cluster.admin_kubeconfig).read_text())
    current = config["current-context"]
    for c in config["contexts"]:
        if c["name"] == current:
            c["context"]["namespace"] = cluster_namespace
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    from kubernetes import client

    api = client.CustomObjectsApi(cluster.new_api_client(cluster.admin_kubeconfig))
    return {"kubeconfig": str(path), "ns": cluster_namespace, "api": api, "cluster": cluster}


def make_qm(ctx: dict[str, Any], name: str, namespace: str | None = None) -> None:
    body = json.loads(json.dumps(EXAMPLE))
    body["metadata"] = {"name": name, "namespace": namespace or ctx["ns"]}
    ctx["cluster"].apply(body)


def set_status(ctx: dict[str, Any], name: str, status: dict[str, Any]) -> None:
    current = ctx["api"].get_namespaced_custom_object("samp.dev", "v1alpha1", ctx["ns"],
                                                      "quantizedmodels", name)
    status = {"observedGeneration": current["metadata"]["generation"], **status}
    ctx["api"].patch_namespaced_custom_object_status(
        "samp.dev", "v1alpha1", ctx["ns"], "quantizedmodels", name, {"status": status},
        _content_type="application/merge-patch+json")


def cli(ctx: dict[str, Any], *args: str, capsys: Any) -> tuple[int, str, str]:
    code = plugin_cli.main([*args, "--kubeconfig", ctx["kubeconfig"]], prog="kubectl samp")
    out, err = capsys.readouterr()
    return code, out, err


CANARY = {"phase": "CanaryProgressing", "attempt": 1,
          "canary": {"step": 0, "weight": 25, "analyses": 2, "lastVerdict": "Successful"},
          "gates": [{"gate": "p99", "verdict": "Successful", "value": 0.41, "baseline": 0.3,
                     "threshold": "<= 1.2"}],
          "plan": {"profile": "cpu", "bytes16Bit": 5767168, "bytesQuantized": 2579840,
                   "effectiveBits": 7.16, "memorySavedPercent": 55.27, "predictedLoss": 0.016,
                   "groupsPerFormat": {"int4-w4a8": 13, "int8-w8a8": 3, "bf16": 1}}}


def test_list_and_get_use_the_context_namespace(ctx: dict[str, Any], capsys: Any) -> None:
    make_qm(ctx, "alpha")
    set_status(ctx, "alpha", CANARY)
    ctx["cluster"].ensure_namespace("plugin-other")
    make_qm(ctx, "beta", namespace="plugin-other")

    code, out, _ = cli(ctx, "list", capsys=capsys)
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["NAME", "PHASE", "STEP"]
    assert row.split()[:5] == ["alpha", "CanaryProgressing", "1/2", "25%", "7.16"]

    code, out, _ = cli(ctx, "list", "-A", capsys=capsys)
    lines = out.strip().splitlines()
    assert lines[0].startswith("NAMESPACE")
    assert any(r.split()[:2] == ["plugin-other", "beta"] for r in lines[1:])

    code, out, _ = cli(ctx, "get", "qm", "alpha", capsys=capsys)
    assert code == 0
    assert "Status:     ◌ CanaryProgressing (attempt 1)" in out
    assert "▶ 1. weight 25% for" in out and "p99" in out and "55.27" not in out
    assert "7.16 effective bits, 2.5Mi (44.7% of 16-bit)" in out

    code, out, _ = cli(ctx, "get", "qm", "alpha", "-o", "json", capsys=capsys)
    assert json.loads(out)["status"]["canary"]["weight"] == 25
    code, out, _ = cli(ctx, "list", "-o", "yaml", capsys=capsys)
    assert [i["metadata"]["name"] for i in yaml.safe_load(out)["items"]] == ["alpha"]


def test_steering_writes_only_annotations(ctx: dict[str, Any], capsys: Any) -> None:
    make_qm(ctx, "steer")
    before = ctx["api"].get_namespaced_custom_object("samp.dev", "v1alpha1", ctx["ns"],
                                                     "quantizedmodels", "steer")
    for action in ("pause", "promote", "abort", "resume"):
        code, out, _ = cli(ctx, action, "steer", capsys=capsys)
        assert code == 0 and f"steer: {action} requested" in out
    after = ctx["api"].get_namespaced_custom_object("samp.dev", "v1alpha1", ctx["ns"],
                                                    "quantizedmodels", "steer")
    notes = after["metadata"]["annotations"]
    assert "samp.dev/promote" in notes and "samp.dev/abort" in notes
    assert "samp.dev/pause" not in notes  # resumed
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_retry_writes_one_annotation_and_only_after_a_bad_ending(
        ctx: dict[str, Any], capsys: Any) -> None:
    make_qm(ctx, "again")
    set_status(ctx, "again", CANARY)
    code, _, err = cli(ctx, "retry", "again", capsys=capsys)
    assert code == 2
    assert "is CanaryProgressing: retry starts over a RolledBack or Failed rollout only" in err
    assert "abort it first" in err and "Traceback" not in err
    get = ctx["api"].get_namespaced_custom_object
    assert "samp.dev/retry" not in (get("samp.dev", "v1alpha1", ctx["ns"], "quantizedmodels",
                                        "again")["metadata"].get("annotations") or {})
    set_status(ctx, "again", {"phase": "RolledBack"})
    before = get("samp.dev", "v1alpha1", ctx["ns"], "quantizedmodels", "again")
    code, out, _ = cli(ctx, "retry", "again", capsys=capsys)
    assert code == 0 and "retry requested (phase RolledBack: the canary starts over" in out
    after = get("samp.dev", "v1alpha1", ctx["ns"], "quantizedmodels", "again")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]  # spec as is
    assert after["spec"] == before["spec"]
    stamp = after["metadata"]["annotations"]["samp.dev/retry"]
    assert stamp.endswith("Z") and stamp[:4].isdigit()
    set_status(ctx, "again", {"phase": "Failed", "conditions": [
        {"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": "bad",
         "lastTransitionTime": "2026-12-01T10:00:00Z"}]})
    code, _, err = cli(ctx, "retry", "again", capsys=capsys)
    assert code == 2 and "fix the spec" in err


@pytest.mark.parametrize(("status", "code"), [
    ({"phase": "Promoted"}, 0),
    ({"phase": "RolledBack"}, 1),
    ({"phase": "Paused"}, 4),
    ({**CANARY, "conditions": [{"type": "Promoted", "status": "False",
                                "reason": "AwaitingPromotion", "message": "promote me",
                                "lastTransitionTime": "2026-12-01T10:00:00Z"}]}, 4),
    ({**CANARY}, 3),
])
def test_status_exit_code_says_the_outcome(ctx: dict[str, Any], capsys: Any,
                                           status: dict[str, Any], code: int) -> None:
    make_qm(ctx, "st")
    set_status(ctx, "st", status)
    got, out, _ = cli(ctx, "status", "st", "--timeout", "2s", capsys=capsys)
    assert got == code, out


def test_status_waits_for_the_outcome(ctx: dict[str, Any], capsys: Any) -> None:
    make_qm(ctx, "wait")
    set_status(ctx, "wait", CANARY)
    later = threading.Timer(2.0, set_status, (ctx, "wait", {"phase": "Promoted"}))
    later.start()
    start = time.monotonic()
    code, out, _ = cli(ctx, "status", "wait", "--timeout", "60s", capsys=capsys)
    later.join()
    assert code == 0 and 1.5 < time.monotonic() - start < 30
    assert "CanaryProgressing" in out and "Promoted" in out and "outcome: succeeded" in out


def test_get_watch_draws_each_change_until_the_end(ctx: dict[str, Any], capsys: Any) -> None:
    make_qm(ctx, "live")
    set_status(ctx, "live", CANARY)

    def steps() -> None:
        time.sleep(1.0)
        set_status(ctx, "live", {**CANARY, "canary": {**CANARY["canary"], "step": 1,
                                                       "weight": 100}})
        time.sleep(1.0)
        set_status(ctx, "live", {"phase": "RolledBack"})

    writer = threading.Thread(target=steps)
    writer.start()
    code, out, _ = cli(ctx, "get", "qm", "live", "--watch", "--timeout", "60s",
                       capsys=capsys)
    writer.join()
    assert code == 0
    assert "weight 25%, analyses" in out and "weight 100%, analyses" in out
    assert "✖ RolledBack" in out.split("Name:")[-1]


def test_errors_are_one_line(ctx: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    code, _, err = cli(ctx, "get", "qm", "missing", capsys=capsys)
    assert code == 5 and err.count("\n") == 1 and "missing" in err and "not found" in err
    code, _, err = cli(ctx, "promote", "missing", "-n", "no-such-namespace", capsys=capsys)
    assert code == 5 and err.count("\n") == 1 and "no-such-namespace/missing" in err
    dead = yaml.safe_load(Path(ctx["kubeconfig"]).read_text())
    dead["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    (tmp_path / "dead").write_text(yaml.safe_dump(dead))
    code = plugin_cli.main(["list", "--kubeconfig", str(tmp_path / "dead")])
    err = capsys.readouterr().err
    assert code == 5 and err.count("\n") == 1 and "cannot reach the API server" in err
    code = plugin_cli.main(["list", "--kubeconfig", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 5 and "cannot load a kubeconfig" in err and "Traceback" not in err


def _plan_document() -> dict[str, Any]:
    shapes = {f"model.layers.{i}.{n}": s for i in range(2) for n, s in {
        "self_attn.q_proj": (256, 256), "self_attn.k_proj": (256, 128),
        "self_attn.v_proj": (256, 128), "self_attn.o_proj": (256, 256),
        "mlp.gate_proj": (256, 768), "mlp.up_proj": (256, 768),
        "mlp.down_proj": (768, 256)}.items()} | {"lm_head": (256, 1000)}
    groups = build_groups(shapes)
    # sm90: a real 4-bit format (on cpu W4A8 stores int8 containers, no curve to draw)
    scores = {g.name: {Format.INT8_W8A8: 0.1 * (i + 1), Format.INT4_W4A16: 0.9 + i}
              for i, g in enumerate(groups)}
    request = PlanRequest.model_validate({
        "groups": groups, "scores": scores, "profile": get_profile("sm90"),
        "budget": {"fraction_of_16bit": 0.5}, "allowed_formats": ["int8-w8a8", "int4-w4a16"],
        "group_size": 32, "curve_points": 6})
    return plan(request).model_dump(mode="json", by_alias=True)


def test_plan_show_prints_table_and_curve(ctx: dict[str, Any], capsys: Any,
                                          tmp_path: Path) -> None:
    artifact = tmp_path / "claim" / "quantized" / "g1"
    artifact.mkdir(parents=True)
    (artifact / "samp_plan.json").write_text(json.dumps(_plan_document()))
    make_qm(ctx, "planned")
    set_status(ctx, "planned", {"phase": "Evaluated", "artifactUri": "pvc://claim/quantized/g1"})

    code, _, err = cli(ctx, "plan", "show", "planned", capsys=capsys)
    assert code == 5 and "--pvc-root" in err and "pvc://claim/quantized/g1" in err
    figure = tmp_path / "curve.svg"
    code, out, _ = cli(ctx, "plan", "show", "planned", "--pvc-root", str(tmp_path),
                       "--figure", str(figure), capsys=capsys)
    assert code == 0
    assert "GROUP" in out and "model.layers.1.mlp.down_proj" in out
    assert "◆" in out and "weight bytes" in out
    root = ET.fromstring(figure.read_text())
    circles = root.findall("{http://www.w3.org/2000/svg}circle")
    assert len(circles) >= 3 and any(c.get("fill") == "#d62728" for c in circles)

    code, out, _ = cli(ctx, "plan", "show", "planned", "--pvc-root", str(tmp_path), "-o",
                       "json", capsys=capsys)
    assert json.loads(out)["kind"] == "PlanResult"
    code, _, err = cli(ctx, "plan", "show", "planned", "--pvc-root", str(tmp_path),
                       "--figure", str(tmp_path / "curve.gif"), capsys=capsys)
    assert code == 1 and "write .svg or .png" in err
