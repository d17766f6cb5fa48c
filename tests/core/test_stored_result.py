"""A stage's result read back from the artifact store (samp_core.stored_result)."""

from __future__ import annotations

import json

import pytest

from samp_core.api import QuantizedModel
from samp_core.results import Stage
from samp_core.stage_jobs import JobSettings, job_manifest, stage_hashes_for, stage_invocation
from samp_core.stage_layout import CONFIG_MOUNT
from samp_core.stored_result import (
    StoredResultError,
    is_reader,
    reader_for,
    reader_job_manifest,
    stored_result_document,
    stored_result_path,
    summary_from_stored,
)
from samp_core.validation import validate_manifest

H = "sha256:" + "ab" * 32
SUMMARY = '{"inputsHash":"sha256:job-chain","kind":"CalibrationResult","numSamples":64}'


def resource() -> QuantizedModel:
    manifest = {"apiVersion": "samp.dev/v1alpha1", "kind": "QuantizedModel",
                "metadata": {"name": "llama", "namespace": "ml", "generation": 1, "uid": "u"},
                "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B@main"},
                         "calibration": {"source": "pvc://prompts/prod.jsonl"},
                         "quantization": {"budget": {"fractionOf16Bit": 0.4}},
                         "hardware": {"target": "h100"},
                         "gates": {"latency": {"p99MaxSeconds": 2.0}},
                         "artifacts": {"uri": "pvc://artifacts/samp"}}}
    res, problems = validate_manifest(manifest)
    assert res is not None, problems
    return res


def test_stored_summary_round_trips_for_its_own_inputs_only() -> None:
    doc = stored_result_document(Stage.CALIBRATE, H, SUMMARY)
    assert json.loads(summary_from_stored(Stage.CALIBRATE, H, doc)) == json.loads(SUMMARY)
    with pytest.raises(StoredResultError, match=r"made from inputs 'sha256:abab.*not sha256:cd"):
        summary_from_stored(Stage.CALIBRATE, "sha256:" + "cd" * 32, doc)
    with pytest.raises(StoredResultError, match="of stage 'calibrate', not plan"):
        summary_from_stored(Stage.PLAN, H, doc)
    with pytest.raises(StoredResultError, match="not JSON"):
        summary_from_stored(Stage.CALIBRATE, H, doc[:20])
    with pytest.raises(StoredResultError, match="no summary"):
        summary_from_stored(Stage.CALIBRATE, H, '{"stage": "calibrate"}')
    assert stored_result_path("/mnt/pvc/a/w-1/", Stage.CALIBRATE, H) == \
        "/mnt/pvc/a/w-1/results/calibrate-abababababababab.json"


def test_reader_job_is_the_stage_job_without_gpu_or_config_reading_the_store() -> None:
    res = resource()
    hashes = stage_hashes_for(res)
    stage_job = job_manifest(res, "u", Stage.SENSITIVITY, hashes, JobSettings())
    name = stage_job["metadata"]["name"]
    reader = reader_job_manifest(stage_job, name, stage=Stage.SENSITIVITY,
                                 inputs_hash=hashes[Stage.SENSITIVITY],
                                 workdir="/mnt/pvc/artifacts/samp/ml/llama/w-x",
                                 gpu_resource="nvidia.com/gpu")
    assert reader["metadata"]["name"] == f"{name}-read" and is_reader(f"{name}-read")
    assert not is_reader(name)
    assert reader["metadata"]["labels"] == stage_job["metadata"]["labels"]
    assert reader["metadata"]["annotations"] == stage_job["metadata"]["annotations"]
    assert reader["metadata"]["ownerReferences"] == stage_job["metadata"]["ownerReferences"]
    (c,) = reader["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["samp", "read-result"]
    assert c["command"][c["command"].index("--file") + 1] == stored_result_path(
        "/mnt/pvc/artifacts/samp/ml/llama/w-x", Stage.SENSITIVITY, hashes[Stage.SENSITIVITY])
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    assert CONFIG_MOUNT not in {m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"] for v in reader["spec"]["template"]["spec"]["volumes"]}
    assert {m["name"] for m in c["volumeMounts"]} <= volumes
    assert any(m["mountPath"].startswith("/mnt/pvc/artifacts") for m in c["volumeMounts"])
    # The stage's own manifest is left as it was.
    assert "nvidia.com/gpu" in json.dumps(stage_job)


def test_stage_invocation_names_the_file_its_reader_reads() -> None:
    res = resource()
    hashes = stage_hashes_for(res)
    settings = JobSettings()
    reader = reader_for(res, "llama-g1-cal", uid="u", stage=Stage.CALIBRATE, hashes=hashes,
                        settings=settings)
    assert reader is not None
    (c,) = reader["spec"]["template"]["spec"]["containers"]
    inv = stage_invocation(res, Stage.CALIBRATE, hashes)
    assert inv.paths.stored_result == c["command"][c["command"].index("--file") + 1]
    assert inv.inputs_hash == c["command"][c["command"].index("--inputs-hash") + 1] == \
        hashes[Stage.CALIBRATE]
