"""`samp plan --attempt n`: the closed-loop re-plan the operator's attempt-n plan Job runs.

After a failed canary gate the operator opens attempt n and its plan Job runs
``samp plan`` with attempt n and attempt n-1's plan copy in its invocation
(samp_core.stage_jobs.stage_invocation); the flags below say the same locally.
The job must return a genuinely more conservative plan: strictly more bytes, no higher
predicted loss, within the headroom ``spec.rollout.replan`` allows; rebuild the same plan
when attempt n-1's copy is missing; and refuse (exit 2, permanent) when nothing can be
raised within the headroom.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from samp_core.canary import replan_ceiling
from samp_core.results import PlanResult
from samp_core.spec import QuantizationSpec, ReplanSpec
from samp_jobs.cli import main


def _manifest(
    headroom: float,
    max_attempts: int = 3,
    formats: tuple[str, ...] = ("int4-w4a16", "fp8-w8a8", "bf16"),
    fraction: float = 0.5,
) -> dict[str, Any]:
    return {
        "apiVersion": "samp.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "tiny"},
        "spec": {
            "model": {"source": "pvc://models/tiny", "dtype": "float32"},
            "calibration": {
                "source": "pvc://data/text.jsonl",
                "format": "text",
                "samples": 32,
                "maxSequenceLength": 32,
            },
            "quantization": {
                "budget": {"fractionOf16Bit": fraction},
                "allowedFormats": list(formats),
                "sensitivity": {"method": "activation", "maxTokens": 1024},
                "groupSize": 64,
            },
            "hardware": {"target": "h100"},
            "serving": {"stable": {"deployment": "d", "service": "s"}},
            "rollout": {
                "steps": [{"weight": 100, "duration": "1m"}],
                "replan": {
                    "enabled": True,
                    "maxAttempts": max_attempts,
                    "maxBudgetIncreaseFraction": headroom,
                },
            },
            "artifacts": {"uri": "pvc://data/out"},
        },
    }


@pytest.fixture
def scored(
    tiny_llama: Path, text_prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """A work dir with calibration and sensitivity done, and the manifest's path."""
    mnt = tmp_path / "mnt"
    (mnt / "models").mkdir(parents=True)
    (mnt / "models" / "tiny").symlink_to(tiny_llama)
    (mnt / "data").mkdir()
    (mnt / "data" / "text.jsonl").write_text(text_prompts.read_text())
    monkeypatch.setenv("SAMP_MODEL_ROOT", str(mnt))
    monkeypatch.setenv("SAMP_DATA_ROOT", str(mnt))
    qm = tmp_path / "qm.yaml"
    qm.write_text(yaml.safe_dump(_manifest(headroom=0.5, max_attempts=2)))
    work = tmp_path / "w"
    for stage in ("calibrate", "sensitivity"):
        rc = main([stage, "--workdir", str(work), "--manifest", str(qm), "--no-progress"])
        assert rc == 0, stage
    return work, qm


def _plan(work: Path, qm: Path, *extra: str) -> int:
    return main(["plan", "--workdir", str(work), "--manifest", str(qm), "--no-progress", *extra])


def _read(path: Path) -> PlanResult:
    return PlanResult.model_validate(json.loads(path.read_text()))


def test_attempt_2_is_more_conservative_within_the_headroom(
    scored: tuple[Path, Path], tmp_path: Path
) -> None:
    work, qm = scored
    a1_copy, a2_copy = work / "plans" / "a1.json", work / "plans" / "a2.json"
    term = tmp_path / "termination-log"
    assert _plan(work, qm, "--plan-copy", str(a1_copy)) == 0
    p1 = _read(a1_copy)
    assert _read(work / "plan.json").assignments == p1.assignments

    rc = _plan(work, qm, "--attempt", "2", "--previous-plan", str(a1_copy),
               "--plan-copy", str(a2_copy), "--termination-log", str(term))
    assert rc == 0
    p2 = _read(work / "plan.json")  # what the export of attempt 2 reads
    assert _read(a2_copy).assignments == p2.assignments
    assert p2.total_bytes > p1.total_bytes
    assert p2.predicted_loss <= p1.predicted_loss
    spec = _manifest(headroom=0.5, max_attempts=2)["spec"]
    q = QuantizationSpec.model_validate(spec["quantization"])
    base, ceiling = replan_ceiling(p1, q, ReplanSpec.model_validate(spec["rollout"]["replan"]), 2)
    assert p1.total_bytes <= base < ceiling and p2.total_bytes <= ceiling
    # Only raises: every group keeps its format or moves to one with more bytes per weight.
    before = {a.group: a for a in p1.assignments}
    raised = [a for a in p2.assignments if a.format != before[a.group].format]
    assert raised and all(a.pinned_by == "replan:2" for a in raised)
    assert all(a.bytes > before[a.group].bytes for a in raised)
    assert any("re-plan attempt 2" in w for w in p2.warnings)
    assert p2.inputs_hash != p1.inputs_hash
    summary = json.loads(term.read_text())  # what the operator reads into status.plan
    assert summary["kind"] == "PlanResult" and summary["totalBytes"] == p2.total_bytes

    # Without attempt 1's copy (object-store work dir, spec changed mid re-plan) the job
    # rebuilds the chain from attempt 1 and reaches the same plan.
    rc = _plan(work, qm, "--attempt", "2", "--previous-plan", str(tmp_path / "missing.json"))
    assert rc == 0
    rebuilt = _read(work / "plan.json")
    assert rebuilt.assignments == p2.assignments and rebuilt.inputs_hash == p2.inputs_hash


def test_no_headroom_is_a_permanent_plan_error(
    scored: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work, _ = scored
    qm0 = tmp_path / "qm0.yaml"
    qm0.write_text(yaml.safe_dump(_manifest(headroom=0.0)))
    a1 = work / "plans" / "a1.json"
    assert _plan(work, qm0, "--plan-copy", str(a1)) == 0
    capsys.readouterr()
    assert _plan(work, qm0, "--attempt", "2", "--previous-plan", str(a1)) == 2
    assert "no group of the previous plan can be raised" in capsys.readouterr().err


def test_flags_without_manifest(scored: tuple[Path, Path]) -> None:
    """Local runs state the headroom with --replan-headroom / --replan-max-attempts."""
    work, _ = scored
    flags = ["plan", "--workdir", str(work), "--no-progress", "--profile", "h100",
             "--formats", "int4-w4a16,fp8-w8a8,bf16", "--group-size", "64"]
    a1 = work / "plans" / "flags-a1.json"
    assert main([*flags, "--fraction-of-16bit", "0.5", "--plan-copy", str(a1)]) == 0
    budget = str(_read(a1).bytes_16bit // 2)  # a byte budget: below the CRD's 1Mi floor
    assert main([*flags, "--max-weight-bytes", budget, "--plan-copy", str(a1)]) == 0
    p1 = _read(a1)
    assert main([*flags, "--max-weight-bytes", budget, "--attempt", "2", "--previous-plan",
                 str(a1), "--replan-headroom", "0.5", "--replan-max-attempts", "2"]) == 0
    p2 = _read(work / "plan.json")
    assert p1.total_bytes < p2.total_bytes <= int(int(budget) * 1.5)
    assert p2.predicted_loss <= p1.predicted_loss


def test_headroom_back_to_all_16_bit_is_refused(
    scored: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A re-plan that leaves nothing quantized would canary the stable model: refused."""
    work, _ = scored
    qm = tmp_path / "qm-wide.yaml"
    qm.write_text(yaml.safe_dump(
        _manifest(headroom=1.0, max_attempts=2, formats=("fp8-w8a8", "bf16"), fraction=0.8)))
    a1 = work / "plans" / "wide-a1.json"
    assert _plan(work, qm, "--plan-copy", str(a1)) == 0
    capsys.readouterr()
    assert _plan(work, qm, "--attempt", "2", "--previous-plan", str(a1)) == 2
    assert "leaves nothing quantized" in capsys.readouterr().err
