"""Calibration data from production prompts: read, validate, dedupe, filter, sample, pack.

SAMP's premise is that the layers that matter are the ones the *served* traffic
exercises, so the input is a JSONL sample of production prompts (plain text or
chat messages rendered with the model's own chat template, exactly what vLLM
will see). Problems with that file are the user's to fix, so every error names
the file and line. Synthetic data is refused unless explicitly allowed.

The split is deterministic given the seed: a held-out fraction is set aside for
the evaluation stage, the rest is sampled and packed into fixed-length
sequences (no padding, so every token carries signal).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samp_core.results import CalibrationResult, DroppedCounts, LengthStats

MIN_PROMPT_TOKENS = 4
MIN_SAMPLES = 8
MAX_MALFORMED_FRACTION = 0.1


class CalibrationDataError(ValueError):
    """The prompt sample cannot be used; the message names file and line."""


@dataclass(frozen=True)
class CalibrationOptions:
    source: str
    format: str = "text"  # text | chat
    text_field: str = "text"
    messages_field: str = "messages"
    samples: int = 512
    max_sequence_length: int = 2048
    seed: int = 0
    held_out_fraction: float = 0.1
    allow_synthetic: bool = False


@dataclass
class CalibrationSet:
    """Packed token sequences for the passes, plus held-out prompts for evaluation."""

    input_ids: torch.Tensor  # [num_sequences, seq_len]
    held_out: list[str]  # rendered prompts (chat template applied)
    result: CalibrationResult


def local_path(source: str) -> Path:
    """Jobs read a local file; the operator mounts pvc:// / configmap:// sources there."""
    if source.startswith("file://"):
        return Path(source[len("file://") :])
    if "://" in source:
        raise CalibrationDataError(
            f"{source}: the job reads local files; mount the source and pass its path "
            "(--prompts /path/to/prompts.jsonl)"
        )
    return Path(source)


def render(record: dict[str, Any], opts: CalibrationOptions, tokenizer: Any, where: str) -> str:
    """The prompt text as the server sees it (chat template applied for chat records)."""
    if opts.format == "chat":
        msgs = record.get(opts.messages_field)
        if not isinstance(msgs, list) or not msgs:
            raise CalibrationDataError(
                f"{where}: field {opts.messages_field!r} must be a "
                "non-empty list of {role, content} messages"
            )
        for m in msgs:
            if not (
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
            ):
                raise CalibrationDataError(
                    f"{where}: every message needs string 'role' and 'content'"
                )
        if getattr(tokenizer, "chat_template", None) is None:
            raise CalibrationDataError(
                f"{where}: chat prompts but the tokenizer has no chat template"
            )
        last_is_user = msgs[-1]["role"] != "assistant"
        return str(
            tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=last_is_user)
        )
    text = record.get(opts.text_field)
    if not isinstance(text, str):
        raise CalibrationDataError(f"{where}: field {opts.text_field!r} missing or not a string")
    return text


def encode(tokenizer: Any, text: str) -> list[int]:
    """Tokenize like the server: no second BOS when the chat template already wrote one."""
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add)["input_ids"])


def read_prompts(
    path: Path, opts: CalibrationOptions, tokenizer: Any
) -> tuple[list[str], int, list[str]]:
    """(rendered prompts in file order, malformed count, first malformed reasons)."""
    if not path.is_file():
        raise CalibrationDataError(f"{path}: calibration file not found")
    prompts: list[str] = []
    problems: list[str] = []
    lines = 0
    with path.open(encoding="utf-8", errors="strict") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            lines += 1
            where = f"{path}:{i}"
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise CalibrationDataError(f"{where}: expected a JSON object per line")
                prompts.append(render(record, opts, tokenizer, where))
            except json.JSONDecodeError as e:
                problems.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
            except CalibrationDataError as e:
                problems.append(str(e))
    if lines == 0:
        raise CalibrationDataError(f"{path}: calibration file is empty")
    if problems and (not prompts or len(problems) > MAX_MALFORMED_FRACTION * lines):
        shown = "; ".join(problems[:3])
        raise CalibrationDataError(
            f"{path}: {len(problems)} of {lines} lines malformed (format={opts.format}): {shown}"
        )
    return prompts, len(problems), problems[:3]


def _percentile(sorted_vals: list[int], q: float) -> int:
    if not sorted_vals:
        return 0
    return sorted_vals[min(len(sorted_vals) - 1, int(q * (len(sorted_vals) - 1) + 0.5))]


def pack(seqs: list[list[int]], seq_len: int, sep: int | None) -> torch.Tensor:
    """Concatenate token lists (separated by EOS) and cut into full rows of seq_len.

    When the sample is smaller than one row, one shorter row is returned rather
    than padding: padded tokens would dilute every statistic.
    """
    stream: list[int] = []
    for s in seqs:
        stream.extend(s)
        if sep is not None:
            stream.append(sep)
    if len(stream) < seq_len:
        return torch.tensor([stream], dtype=torch.long)
    rows = len(stream) // seq_len
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).reshape(rows, seq_len)


def synthetic_prompts(opts: CalibrationOptions, tokenizer: Any) -> list[str]:
    rng = random.Random(opts.seed)
    vocab = [t for t in tokenizer.get_vocab() if t not in tokenizer.all_special_tokens]
    vocab.sort()
    longest = max(4, min(64, opts.max_sequence_length // 4))
    return [
        tokenizer.convert_tokens_to_string(rng.sample(vocab, rng.randint(4, longest)))
        for _ in range(max(opts.samples, MIN_SAMPLES) * 2)
    ]


def build_calibration(opts: CalibrationOptions, tokenizer: Any) -> CalibrationSet:
    """Read → dedupe → length-filter → split held-out → sample → pack, deterministically."""
    if opts.format not in ("text", "chat"):
        raise CalibrationDataError(f"calibration format must be text or chat, not {opts.format!r}")
    prompts, malformed, digest = _source_prompts(opts, tokenizer)
    kept, dropped = _usable(prompts, opts, tokenizer, DroppedCounts(malformed=malformed))
    rng = random.Random(opts.seed)
    order = list(range(len(kept)))
    rng.shuffle(order)
    n_held = max(1, round(opts.held_out_fraction * len(kept)))
    held = [kept[i][0] for i in sorted(order[:n_held])]
    calib_idx = sorted(order[n_held:][: opts.samples])
    chosen = [kept[i][1] for i in calib_idx]
    lengths = sorted(len(s) for s in chosen)
    eos = getattr(tokenizer, "eos_token_id", None)
    input_ids = pack(chosen, opts.max_sequence_length, eos if isinstance(eos, int) else None)
    result = CalibrationResult(
        source=opts.source,
        num_samples=len(chosen),
        num_tokens=int(input_ids.numel()),
        lengths=LengthStats(
            p50=_percentile(lengths, 0.5), p90=_percentile(lengths, 0.9), max=lengths[-1]
        ),
        dropped=dropped,
        dataset_digest=digest,
        dataset_uri=opts.source,
    )
    return CalibrationSet(input_ids=input_ids, held_out=held, result=result)


def _source_prompts(opts: CalibrationOptions, tokenizer: Any) -> tuple[list[str], int, str]:
    """The prompts of ``opts.source``, the malformed lines skipped, and the data's digest."""
    if opts.source.startswith("synthetic://"):
        if not opts.allow_synthetic:
            raise CalibrationDataError(
                f"{opts.source}: synthetic calibration data misses the production distribution; "
                "point --prompts at real prompts or pass --allow-synthetic"
            )
        return synthetic_prompts(opts, tokenizer), 0, "synthetic"
    path = local_path(opts.source)
    prompts, malformed, _ = read_prompts(path, opts, tokenizer)
    return prompts, malformed, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _usable(
    prompts: list[str], opts: CalibrationOptions, tokenizer: Any, dropped: DroppedCounts
) -> tuple[list[tuple[str, list[int]]], DroppedCounts]:
    """Prompts (with their token ids) left after dropping duplicates and bad lengths."""
    seen: set[str] = set()
    kept: list[tuple[str, list[int]]] = []
    for p in prompts:
        key = " ".join(p.split())
        if key in seen:
            dropped.duplicates += 1
            continue
        seen.add(key)
        ids = encode(tokenizer, p)
        if len(ids) < MIN_PROMPT_TOKENS:
            dropped.too_short += 1
        elif len(ids) > opts.max_sequence_length:
            dropped.too_long += 1
        else:
            kept.append((p, ids))
    if len(kept) < MIN_SAMPLES:
        raise CalibrationDataError(
            f"{opts.source}: only {len(kept)} usable prompts after dropping "
            f"{dropped.duplicates} duplicates, {dropped.too_short} shorter than "
            f"{MIN_PROMPT_TOKENS} tokens, {dropped.too_long} longer than "
            f"{opts.max_sequence_length} tokens and {dropped.malformed} malformed lines; "
            f"need at least {MIN_SAMPLES}"
        )
    return kept, dropped


def save_calibration(cal: CalibrationSet, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    torch.save({"input_ids": cal.input_ids}, workdir / "calibration_tokens.pt")
    with (workdir / "heldout.jsonl").open("w") as f:
        for p in cal.held_out:
            f.write(json.dumps({"text": p}) + "\n")


def load_calibration_tokens(workdir: Path) -> torch.Tensor:
    path = workdir / "calibration_tokens.pt"
    if not path.is_file():
        raise CalibrationDataError(f"{path}: missing; run `samp calibrate` first")
    data = torch.load(path, weights_only=True)
    ids: torch.Tensor = data["input_ids"]
    return ids


def load_held_out(workdir: Path) -> list[str]:
    path = workdir / "heldout.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["text"] for line in path.open() if line.strip()]
