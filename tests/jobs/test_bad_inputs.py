"""Bad inputs to the Jobs exit 2 (the operator does not retry it) naming the file, before
any stage runs where that is cheap, and never leave a partial artifact or random weights."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import pytest
from jobhelpers import write_jsonl
from transformers import AutoTokenizer

from samp_jobs.calibration import (
    CalibrationOptions,
    build_calibration,
    model_context,
    read_prompts,
)
from samp_jobs.cli import main
from samp_jobs.modeling import ModelLoadError, load_model
from samp_jobs.report import calibration_line
from samp_jobs.staging import staged_dir


@pytest.fixture(scope="module")
def tok(tiny_llama: Path) -> object:
    return AutoTokenizer.from_pretrained(tiny_llama)


def _prompts(path: Path, n: int = 40) -> Path:
    return write_jsonl(path, [{"text": f"good prompt number {i} says hello"} for i in range(n)])


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _calibrate(work: Path, model: Path, prompts: Path, *extra: str) -> int:
    args = ["calibrate", "--workdir", str(work), "--model", str(model)]
    return main([*args, "--prompts", str(prompts), "--max-seq-len", "64", "--no-progress", *extra])


def test_config_that_does_not_match_the_weights_is_refused(tiny_llama: Path, tmp_path: Path):
    from transformers import GPT2Config

    model = _copy_model(tiny_llama, tmp_path / "m")
    GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=300).to_json_file(
        model / "config.json"
    )
    with pytest.raises(ModelLoadError, match=r"does not match the weights in model\.safetensors"):
        load_model(model)
    # one layer more than the weights hold: missing weights, not a random layer
    cfg = json.loads((tiny_llama / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ModelLoadError, match=r"missing \(\['model\.layers\.2\."):
        load_model(model)


def test_non_utf8_prompts_exit_2_naming_line_and_offset(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = _prompts(tmp_path / "p.jsonl", 20)
    good = path.read_bytes()
    lines = good.split(b"\n")
    lines[2] = b'{"text": "caf\xe9 latte"}'  # Latin-1, not UTF-8
    path.write_bytes(b"\n".join(lines))
    offset = len(lines[0]) + len(lines[1]) + 2 + lines[2].index(b"\xe9")
    assert _calibrate(tmp_path / "w", tiny_llama, path) == 2
    err = capsys.readouterr().err
    assert f"p.jsonl:3: not UTF-8 (byte offset {offset} in the file" in err
    assert "Traceback" not in err


def test_truncated_safetensors_exits_2_before_any_stage(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    model = _copy_model(tiny_llama, tmp_path / "m")
    shard = model / "model.safetensors"
    size = shard.stat().st_size
    with shard.open("r+b") as f:
        f.truncate(size - 1000)
    work = tmp_path / "w"
    assert _calibrate(work, model, _prompts(tmp_path / "p.jsonl")) == 2
    err = capsys.readouterr().err
    assert f"model.safetensors: the header promises {size} bytes" in err
    assert f"missing from byte offset {size - 1000}" in err
    assert not (work / "calibration.json").exists()


def test_read_only_workdir_exits_2(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    if os.geteuid() == 0:  # root writes through mode bits; sysfs refuses new files to anyone
        work = Path("/sys/kernel")
    else:
        work = tmp_path / "ro"
        work.mkdir()
        work.chmod(0o555)
    assert _calibrate(work, tiny_llama, _prompts(tmp_path / "p.jsonl")) == 2
    err = capsys.readouterr().err
    assert f"{work}: work dir is not writable" in err and "Traceback" not in err


def test_one_malformed_line_is_named_in_the_result_document(tmp_path: Path, tok: object):
    recs: list[object] = [{"text": f"good prompt number {i} says hello"} for i in range(300)]
    recs.insert(150, "{oops")
    path = write_jsonl(tmp_path / "p.jsonl", recs)
    cal = build_calibration(CalibrationOptions(source=str(path), max_sequence_length=64), tok)
    assert cal.result.dropped.malformed == 1
    assert cal.result.dropped_lines == [f"{path}:151: not valid JSON (Expecting property "
                                        "name enclosed in double quotes at column 2)"]
    doc = json.loads(cal.result.model_dump_json(by_alias=True))
    assert doc["droppedLines"] == cal.result.dropped_lines


def test_a_10mb_line_is_skipped_without_being_held(tmp_path: Path, tok: object):
    path = _prompts(tmp_path / "p.jsonl", 30)
    with path.open("a") as f:
        f.write(json.dumps({"text": "word " * 2_000_000}) + "\n")  # 10 MB
        f.write(json.dumps({"text": "the last prompt is still read fine"}) + "\n")
    opts = CalibrationOptions(source=str(path), max_sequence_length=64)
    tracemalloc.start()
    try:
        found = read_prompts(path, opts, tok)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.too_long_lines == [f"{path}:31"]
    assert found.prompts[-1] == "the last prompt is still read fine"
    assert peak < 5_000_000, f"peak {peak} bytes: the 10 MB line was held"
    cal = build_calibration(opts, tok)
    assert cal.result.dropped.too_long == 1
    assert cal.result.dropped_lines == [f"{path}:31: longer than the line cap"]


@pytest.mark.parametrize("content", ["", "\n\n", '{"text": "fine"}\n{"prompt": "no text"}\n'])
def test_bad_eval_set_is_refused_before_the_first_stage(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
):
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(content)
    work = tmp_path / "w"
    rc = main([
        "quantize", "--workdir", str(work), "--model", str(tiny_llama),
        "--prompts", str(_prompts(tmp_path / "p.jsonl")), "--profile", "cpu",
        "--fraction-of-16bit", "0.5", "--eval-set", str(eval_set), "--no-progress",
    ])
    assert rc == 2
    err = capsys.readouterr().err
    expected = "eval.jsonl:2: needs 'messages' or 'text'" if content.strip() else (
        "eval.jsonl: eval set is empty")
    assert expected in err
    assert not (work / "calibration.json").exists()


def test_failed_stage_leaves_no_partial_artifact(tmp_path: Path):
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "model.safetensors").write_text("the previous complete export")
    with pytest.raises(RuntimeError, match="disk full"), staged_dir(target) as tmp:
        tmp.mkdir()
        (tmp / "model-00001-of-00002.safetensors").write_text("half")
        raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
    assert (target / "model.safetensors").read_text() == "the previous complete export"
    with staged_dir(target) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
    assert [p.name for p in target.iterdir()] == ["model.safetensors"]
    assert (target / "model.safetensors").read_text() == "new"


def test_max_sequence_length_is_capped_at_the_model_context(
    tiny_llama: Path, tmp_path: Path, tok: object, capsys: pytest.CaptureFixture[str]
):
    assert model_context(tiny_llama) == 256
    recs = [{"text": " ".join(f"w{i} x{j}" for j in range(15))} for i in range(40)]
    path = write_jsonl(tmp_path / "long.jsonl", recs)
    opts = CalibrationOptions(source=str(path), max_sequence_length=2048, samples=100)
    cal = build_calibration(opts, tok, model_context(tiny_llama))
    assert cal.input_ids.shape[1] == 256
    assert cal.result.max_sequence_length_capped_to == 256
    assert "maxSequenceLength capped to the model's context, 256 tokens" in calibration_line(
        cal.result
    )  # the run's printed report
    err = capsys.readouterr().err
    assert '"capped_to": 256' in err and '"event": "calibration.dropped"' in err


def test_no_progress_silences_library_bars(monkeypatch: pytest.MonkeyPatch):
    from tqdm import std as tqdm_std
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from samp_jobs.runlog import silence_progress

    monkeypatch.setenv("TQDM_DISABLE", "0")  # restored after the test
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    monkeypatch.setattr(tqdm_std.tqdm, "__init__", tqdm_std.tqdm.__init__)
    try:
        silence_progress()
        assert tqdm(range(3)).disable  # a library's bar that does not pass disable=
        assert tqdm(range(3), disable=False).disable
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


def test_unreachable_budget_exits_2_before_calibrate_naming_the_pin(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """On cpu every quantized format stores at least a byte per weight, so with the 16-bit
    lm_head the tiny model's floor is 0.577 of 16-bit (0.507 without the pin): 0.55 is out
    of reach because of keepLmHead16Bit alone, found from the safetensors headers before
    any calibration runs."""
    work = tmp_path / "w"
    flags = [
        "--workdir", str(work), "--model", str(tiny_llama),
        "--prompts", str(_prompts(tmp_path / "p.jsonl")), "--profile", "cpu",
        "--formats", "int4-w4a8,int8-w8a8,bf16", "--group-size", "64",
        "--fraction-of-16bit", "0.55", "--max-seq-len", "64", "--no-progress",
    ]
    for stage in ("quantize", "calibrate"):
        assert main([stage, *flags]) == 2
        err = capsys.readouterr().err
        assert "spec.quantization.budget" in err and "is out of reach on this model" in err
        assert "the pin keepLmHead16Bit alone puts it out of reach" in err
        assert "--quantize-lm-head" in err
        assert not (work / "calibration.json").exists()
    # relaxing that pin makes the same budget reachable: calibrate runs
    assert main(["calibrate", *flags, "--quantize-lm-head"]) == 0
    assert (work / "calibration.json").is_file()
