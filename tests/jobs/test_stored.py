"""A stage of an operator's Job stores its summary under its inputs hash at the invocation's
StagePaths.stored_result (samp_jobs.runlog), and
`samp read-result` (samp_jobs.stored) brings it back as a termination message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samp_core.results import CalibrationResult, LengthStats, Stage
from samp_core.stored_result import stored_result_path
from samp_jobs.runlog import write_result
from samp_jobs.stored import main as read_result

H = "sha256:" + "12" * 32


def doc() -> CalibrationResult:
    return CalibrationResult(source="pvc://prompts/p.jsonl", num_samples=8, num_tokens=512,
                             lengths=LengthStats(p50=60, p90=64, max=64),
                             inputs_hash=H)


def test_stage_in_an_operator_job_stores_its_summary_and_the_reader_returns_it(
        tmp_path: Path) -> None:
    result = doc()
    stored = Path(stored_result_path(str(tmp_path / "w"), Stage.CALIBRATE, H))
    write_result(result, tmp_path / "w", str(tmp_path / "stage-termination"), str(stored))
    assert stored.is_file()
    out = tmp_path / "reader-termination"
    assert read_result(["--stage", "calibrate", "--inputs-hash", H, "--file", str(stored),
                        "--termination-log", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(result.summary_json())
    assert json.loads(out.read_text()) == json.loads(
        (tmp_path / "stage-termination").read_text())


def test_reader_refuses_other_inputs_and_a_missing_file(tmp_path: Path) -> None:
    stored = stored_result_path(str(tmp_path), Stage.CALIBRATE, H)
    write_result(doc(), tmp_path, str(tmp_path / "t0"), stored)
    other = "sha256:" + "34" * 32
    out = tmp_path / "t1"
    assert read_result(["--stage", "calibrate", "--inputs-hash", other, "--file", stored,
                        "--stage-job", "m-g1-cal", "--termination-log", str(out)]) == 2
    assert out.read_text().startswith("m-g1-cal completed, but its pod")
    assert f"made from inputs '{H}', not {other}" in out.read_text()
    missing = str(tmp_path / "results" / "nope.json")
    assert read_result(["--stage", "calibrate", "--inputs-hash", H, "--file", missing,
                        "--termination-log", str(out)]) == 2
    assert f"{missing} does not exist" in out.read_text()


def test_outside_an_operator_job_nothing_extra_is_stored(tmp_path: Path) -> None:
    write_result(doc(), tmp_path, str(tmp_path / "t"))  # no StagePaths.stored_result
    assert not (tmp_path / "results").exists()


def test_a_result_without_an_inputs_hash_is_not_stored_for_the_operator(
        tmp_path: Path) -> None:
    stored = stored_result_path(str(tmp_path), Stage.CALIBRATE, H)
    with pytest.raises(ValueError, match="without an inputs hash"):
        write_result(doc().model_copy(update={"inputs_hash": ""}), tmp_path, None, stored)
