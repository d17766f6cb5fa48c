"""`samp validate --model DIR`: the budget checked against a real local checkpoint's shapes
(examples/tiny/model) before any Job runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from samp_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny-cpu.yaml"
MODEL = ROOT / "examples" / "tiny" / "model"


def _with_budget(tmp_path: Path, budget: str) -> Path:
    path = tmp_path / "qm.yaml"
    path.write_text(TINY.read_text().replace("fractionOf16Bit: 0.65", budget))
    return path


def test_reachable_budget_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(TINY), "--model", str(MODEL)]) == 0
    assert "valid QuantizedModel" in capsys.readouterr().out


def test_unreachable_budget_names_the_pin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _with_budget(tmp_path, "effectiveBits: 9.0")  # floor 9.5 bits, ~8.1 unpinned
    assert main(["validate", str(path)]) == 0  # without shapes nothing can tell
    assert main(["validate", str(path), "--model", str(MODEL)]) == 1
    err = capsys.readouterr().err
    assert "spec.quantization.budget" in err and "below the smallest feasible plan" in err
    assert "keepLmHead16Bit alone puts it out of reach" in err


def test_a_directory_without_weights_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(TINY), "--model", str(tmp_path)]) == 1
    assert "no *.safetensors file" in capsys.readouterr().err
