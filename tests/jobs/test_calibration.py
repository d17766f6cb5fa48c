"""Calibration reads production prompts strictly and deterministically."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from jobhelpers import write_jsonl
from transformers import AutoTokenizer

from samp_jobs.calibration import (
    CalibrationDataError,
    CalibrationOptions,
    build_calibration,
    pack,
)


@pytest.fixture(scope="module")
def tok(tiny_llama: Path) -> object:
    return AutoTokenizer.from_pretrained(tiny_llama)


def opts(path: Path, **kw: object) -> CalibrationOptions:
    base: dict[str, object] = {"source": str(path), "max_sequence_length": 64, "samples": 100}
    base.update(kw)
    return CalibrationOptions(**base)  # type: ignore[arg-type]


def test_chat_prompts_are_rendered_with_the_chat_template(chat_prompts: Path, tok: object):
    cal = build_calibration(opts(chat_prompts, format="chat"), tok)
    assert cal.result.num_samples + len(cal.held_out) == 48
    assert all(
        p.startswith("<s><|user|>\n") and p.endswith("<|assistant|>\n") for p in cal.held_out
    )
    assert cal.input_ids.shape[1] == 64
    assert cal.result.num_tokens == cal.input_ids.numel()
    assert cal.result.lengths.p50 <= cal.result.lengths.p90 <= cal.result.lengths.max
    # the template wrote BOS already: no second BOS inside a packed row
    bos = tok.bos_token_id  # type: ignore[attr-defined]
    row = cal.input_ids.flatten().tolist()
    assert all(not (a == bos and b == bos) for a, b in itertools.pairwise(row))


def test_sampling_is_deterministic_and_seeded(text_prompts: Path, tok: object):
    a = build_calibration(opts(text_prompts, samples=20, seed=3), tok)
    b = build_calibration(opts(text_prompts, samples=20, seed=3), tok)
    c = build_calibration(opts(text_prompts, samples=20, seed=4), tok)
    assert a.input_ids.equal(b.input_ids) and a.held_out == b.held_out
    assert not a.input_ids.equal(c.input_ids)
    assert a.result.num_samples == 20


def test_duplicates_and_lengths_are_dropped_and_counted(tmp_path: Path, tok: object):
    recs: list[object] = [{"text": f"sample number {i} with several words"} for i in range(20)]
    recs += [{"text": "sample number 0  with several words"}]  # whitespace duplicate
    recs += [{"text": "hi"}, {"text": "word " * 200}]
    cal = build_calibration(opts(write_jsonl(tmp_path / "p.jsonl", recs)), tok)
    d = cal.result.dropped
    assert (d.duplicates, d.too_short, d.too_long, d.malformed) == (1, 1, 1, 0)


def test_empty_file_names_the_file(tmp_path: Path, tok: object):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(CalibrationDataError, match=r"empty\.jsonl: calibration file is empty"):
        build_calibration(opts(path), tok)


def test_malformed_lines_name_file_and_line(tmp_path: Path, tok: object):
    recs: list[object] = [{"text": f"good prompt number {i} here"} for i in range(5)]
    recs += ["{not json", {"txt": "wrong field"}]
    path = write_jsonl(tmp_path / "bad.jsonl", recs)
    with pytest.raises(CalibrationDataError) as e:
        build_calibration(opts(path), tok)
    msg = str(e.value)
    assert "bad.jsonl:6: not valid JSON" in msg and "bad.jsonl:7: field 'text'" in msg


def test_few_malformed_lines_are_dropped_and_counted(tmp_path: Path, tok: object):
    recs: list[object] = [{"text": f"good prompt number {i} here"} for i in range(30)]
    recs.append("{oops")
    cal = build_calibration(opts(write_jsonl(tmp_path / "p.jsonl", recs)), tok)
    assert cal.result.dropped.malformed == 1


def test_chat_format_requires_messages(text_prompts: Path, tok: object):
    with pytest.raises(CalibrationDataError, match=r"text\.jsonl:1: field 'messages'"):
        build_calibration(opts(text_prompts, format="chat"), tok)


def test_tiny_set_is_refused_with_counts(tmp_path: Path, tok: object):
    path = write_jsonl(tmp_path / "tiny.jsonl", [{"text": "one two three four five"}] * 12)
    with pytest.raises(CalibrationDataError, match=r"only 1 usable prompts.*11 duplicates"):
        build_calibration(opts(path), tok)


def test_missing_file_and_remote_uri(tmp_path: Path, tok: object):
    with pytest.raises(CalibrationDataError, match="not found"):
        build_calibration(opts(tmp_path / "nope.jsonl"), tok)
    with pytest.raises(CalibrationDataError, match="mount the source"):
        build_calibration(CalibrationOptions(source="s3://bucket/p.jsonl"), tok)


def test_synthetic_refused_unless_allowed(tok: object):
    with pytest.raises(CalibrationDataError, match="allow-synthetic"):
        build_calibration(CalibrationOptions(source="synthetic://random"), tok)
    cal = build_calibration(
        CalibrationOptions(
            source="synthetic://random", allow_synthetic=True, samples=16, max_sequence_length=32
        ),
        tok,
    )
    assert cal.result.dataset_digest == "synthetic" and cal.result.num_samples == 16


def test_pack_without_padding():
    assert pack([[1, 2, 3], [4, 5]], 3, sep=0).tolist() == [[1, 2, 3], [0, 4, 5]]
    assert pack([[1, 2]], 8, sep=None).tolist() == [[1, 2]]
