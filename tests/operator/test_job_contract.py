"""The operator's Jobs run the real jobs CLI: the contract between the two, end to end.

No cluster: the state machine (samp_core.reconcile) decides, and each Job it creates is
"run" here by executing the Job's own container command with its own environment and its
ConfigMap's invocation document, the only change being the mount roots (/mnt/pvc,
/etc/samp, /dev/termination-log) mapped to temporary directories. The termination-log
file each stage writes is then handed back to the state machine as the pod's termination
message, exactly the production transport.
So a document the CLI cannot read, a path it cannot resolve, a hash chain the two sides
compute differently, or a summary the operator cannot read fails this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from samp_core.decision import CreateChild, DeleteChild
from samp_core.reconcile import ObservedJob, parse_status, reconcile
from samp_core.results import Stage, parse_result
from samp_core.stage_jobs import JobSettings
from samp_core.stage_layout import CONFIG_MOUNT, PVC_ROOT, TERMINATION_LOG
from samp_core.status import Phase
from samp_core.stored_result import stored_result_path, summary_from_stored

ROOT = Path(__file__).resolve().parents[2]
SAMP = str(Path(sys.executable).with_name("samp"))

pytestmark = pytest.mark.slow


def _manifest() -> dict[str, Any]:
    return {
        "apiVersion": "samp.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "tiny", "namespace": "ml", "generation": 1, "uid": "u1"},
        "spec": {
            "model": {"source": "pvc://models/tiny", "dtype": "float32"},
            "calibration": {"source": "pvc://data/text.jsonl", "samples": 32,
                            "maxSequenceLength": 32},
            "quantization": {
                "budget": {"fractionOf16Bit": 0.8},
                "allowedFormats": ["int8-w8a8", "bf16"],
                "sensitivity": {"method": "activation", "maxTokens": 1024},
                "groupSize": 64,
            },
            "hardware": {"target": "cpu", "gpusPerJob": 0},
            "artifacts": {"uri": "pvc://out/samp"},
            "gates": {"latency": {"p99MaxSeconds": 5}},  # no serving.stable: a ceiling
            "rollout": {"replan": {"enabled": True, "maxAttempts": 2,
                                   "maxBudgetIncreaseFraction": 0.1}},
        },
    }


def _run_job(job: dict[str, Any], cfg: dict[str, str], root: Path) -> tuple[int, str, str]:
    """Execute the Job's container command locally; returns (exit code, message, logs)."""
    c = job["spec"]["template"]["spec"]["containers"][0]
    cfg_dir = root / "etc-samp" / job["metadata"]["name"]
    cfg_dir.mkdir(parents=True, exist_ok=True)
    term = root / f"termination-{job['metadata']['name']}"

    def local(arg: str) -> str:
        return (arg.replace(PVC_ROOT, str(root / "pvc")).replace(CONFIG_MOUNT, str(cfg_dir))
                .replace(TERMINATION_LOG, str(term)))

    for key, text in cfg.items():
        (cfg_dir / key).write_text(local(text))
    cmd = [SAMP if c["command"][0] == "samp" else c["command"][0],
           *[local(a) for a in c["command"][1:]]]
    env = {**os.environ, **{e["name"]: local(e["value"]) for e in c["env"]}}
    env["HOME"] = env["TMPDIR"] = str(root / "scratch")
    (root / "scratch").mkdir(exist_ok=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          check=False, cwd=ROOT)
    message = term.read_text() if term.exists() else ""
    return proc.returncode, message, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_every_stage_job_runs_the_real_cli_and_its_summary_reaches_status(
        tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "jobs"))
    from jobhelpers import build_model, write_jsonl

    pvc = tmp_path / "pvc"
    build_model("llama", pvc / "models" / "tiny")
    (pvc / "data").mkdir(parents=True)
    write_jsonl(pvc / "data" / "text.jsonl", [
        {"text": f"the quick brown fox number {i} jumps over the lazy dog {i * 7}"}
        for i in range(40)])
    (pvc / "out").mkdir()

    body = _manifest()
    jobs: dict[str, ObservedJob] = {}
    config_maps: dict[str, dict[str, str]] = {}
    ran: list[str] = []
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def drive() -> None:
        nonlocal now
        for _ in range(12):
            d = reconcile(body, list(jobs.values()), sorted(config_maps), now,
                          JobSettings(default_image="samp-jobs:test"))
            body["status"] = d.status.to_wire()
            for gone in (a for a in d.actions if isinstance(a, DeleteChild)):
                jobs.pop(gone.name, None) if gone.kind == "Job" else config_maps.pop(gone.name,
                                                                                     None)
            if d.status.phase in (Phase.EVALUATED, Phase.FAILED):
                break
            for obj in (a.manifest for a in d.actions if isinstance(a, CreateChild)):
                name = obj["metadata"]["name"]
                if obj["kind"] == "ConfigMap":
                    config_maps[name] = obj["data"]
                    continue
                rc, message, logs = _run_job(obj, config_maps[name], tmp_path)
                assert rc == 0, f"{name} exited {rc}:\n{logs}"
                ran.append(name)
                labels = obj["metadata"]["labels"]
                now += timedelta(seconds=10)
                jobs[name] = ObservedJob(
                    name=name, stage=labels["samp.dev/stage"],
                    inputs_hash=obj["metadata"]["annotations"]["samp.dev/inputs-hash"],
                    generation=1, state="Succeeded", started_at=now - timedelta(seconds=9),
                    finished_at=now, result=message)

    drive()
    st = parse_status(body["status"])
    assert st.phase == Phase.EVALUATED, json.dumps(body["status"], indent=1)[:3000]
    assert [r.state for r in st.stages] == ["Succeeded"] * 5
    assert st.plan is not None and st.plan.profile == "cpu" and st.plan.bytes_quantized > 0
    assert st.accuracy is not None and st.accuracy.perplexity_base
    assert st.artifact_uri is not None and st.artifact_uri.startswith(
        "pvc://out/samp/ml/tiny/artifact-")
    workdir = pvc / "out" / "samp" / "ml" / "tiny"
    assert any(workdir.glob("w-*/plan.json")), list(workdir.rglob("*"))[:20]
    assert any(workdir.glob("artifact-*/config.json")), list(workdir.rglob("*"))[:20]
    # Every stage also stored its summary under the operator's inputs hash, which a reader
    # Job returns when the pod is gone (samp_core.stored_result).
    (wdir,) = workdir.glob("w-*")
    for rec in st.stages:
        stage = Stage(rec.stage)
        stored = Path(stored_result_path(str(wdir), stage, rec.inputs_hash)).read_text()
        assert json.loads(summary_from_stored(stage, rec.inputs_hash, stored)) == \
            json.loads(jobs[rec.job or ""].result or "")

    # Attempt 2, as the canary opens it after a failed gate (phase Planning, attempt + 1):
    # the a2 plan Job derives a more conservative plan from attempt 1's kept copy, and
    # export and evaluate run again into a new artifact.
    plan1, artifact1 = st.plan, st.artifact_uri
    body["status"] = st.model_copy(update={"phase": Phase.PLANNING, "attempt": 2,
                                           "accuracy": None}).to_wire()
    drive()
    st2 = parse_status(body["status"])
    assert st2.phase == Phase.EVALUATED, json.dumps(body["status"], indent=1)[:3000]
    assert ran[-3:] == ["tiny-g1-a2-plan", "tiny-g1-a2-export", "tiny-g1-a2-eval"]
    assert len(ran) == 8  # calibration and sensitivity were reused
    assert st2.plan is not None and st2.plan.bytes_quantized > plan1.bytes_quantized
    assert st2.plan.predicted_loss <= plan1.predicted_loss
    assert st2.accuracy is not None and st2.accuracy.perplexity_base
    assert st2.artifact_uri is not None and st2.artifact_uri != artifact1
    copies = sorted(workdir.glob("w-*/plans/*.json"))
    assert len(copies) == 2, copies  # one kept plan per attempt
    # Every document carries the hash the operator computed for its stage: one chain.
    (w,) = workdir.glob("w-*")
    documents = {r.stage: parse_result((w / f).read_text()).inputs_hash for r, f in zip(
        st2.stages, ["calibration.json", "sensitivity.json", "plan.json"], strict=False)}
    assert documents == {r.stage: r.inputs_hash for r in st2.stages[:3]}
