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

import dataclasses
import hashlib
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samp_core.results import CalibrationResult, DroppedCounts, LengthStats
from samp_jobs.runlog import log

MIN_PROMPT_TOKENS = 4
MIN_SAMPLES = 8
MAX_MALFORMED_FRACTION = 0.1
MIN_LINE_CAP_BYTES = 1 << 20
MAX_NAMED_LINES = 100


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


def line_cap_bytes(opts: CalibrationOptions) -> int:
    """Longest line worth parsing: past this the prompt is far over max_sequence_length
    tokens anyway (a token is rarely over 16 bytes), so it is dropped unread."""
    return max(MIN_LINE_CAP_BYTES, 64 * opts.max_sequence_length)


def jsonl_lines(path: Path, cap: int, digest: Any = None) -> Iterator[tuple[int, str | None]]:
    """(line number, text) of a JSONL file read in bounded pieces: a line over ``cap``
    bytes yields None and is skipped without being held in memory. Not UTF-8 is an error
    naming the line and byte offset. ``digest`` (a hashlib object) sees every byte."""
    offset = 0
    with path.open("rb") as f:
        for number in itertools.count(1):
            raw = f.readline(cap + 1)
            if not raw:
                return
            if digest is not None:
                digest.update(raw)
            start, offset = offset, offset + len(raw)
            if len(raw) > cap and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # discard the rest of the line
                    raw = f.readline(cap)
                    if digest is not None:
                        digest.update(raw)
                    offset += len(raw)
                yield number, None
                continue
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CalibrationDataError(
                    f"{path}:{number}: not UTF-8 (byte offset {start + e.start} in the file: "
                    f"{e.reason}); re-encode the file as UTF-8"
                ) from None


@dataclass
class PromptFile:
    """What reading a prompt file found: prompts in file order and the lines dropped."""

    prompts: list[str]
    malformed: list[str]  # "file:line: reason", every one
    too_long_lines: list[str]  # "file:line" of lines over the byte cap
    digest: str


def read_prompts(path: Path, opts: CalibrationOptions, tokenizer: Any) -> PromptFile:
    """Read, parse and render every line; malformed ones are named, too many is an error."""
    if not path.is_file():
        raise CalibrationDataError(f"{path}: calibration file not found")
    found = PromptFile([], [], [], "")
    h = hashlib.sha256()
    lines = 0
    for i, line in jsonl_lines(path, line_cap_bytes(opts), h):
        where = f"{path}:{i}"
        if line is None:
            lines += 1
            found.too_long_lines.append(where)
            continue
        if not line.strip():
            continue
        lines += 1
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise CalibrationDataError(f"{where}: expected a JSON object per line")
            found.prompts.append(render(record, opts, tokenizer, where))
        except json.JSONDecodeError as e:
            found.malformed.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
        except CalibrationDataError as e:
            found.malformed.append(str(e))
    found.digest = "sha256:" + h.hexdigest()
    if lines == 0:
        raise CalibrationDataError(f"{path}: calibration file is empty")
    problems = found.malformed
    if problems and (not found.prompts or len(problems) > MAX_MALFORMED_FRACTION * lines):
        shown = "; ".join(problems[:3])
        raise CalibrationDataError(
            f"{path}: {len(problems)} of {lines} lines malformed (format={opts.format}): {shown}"
        )
    for where in problems:
        log("calibration.malformed_line", line=where)
    for where in found.too_long_lines:
        log("calibration.line_too_long", line=where, cap_bytes=line_cap_bytes(opts))
    return found


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


def model_context(model_dir: str | Path) -> int | None:
    """The model's context length from its config.json (None when it does not say)."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the model loader names a missing or unreadable config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def capped_to_context(opts: CalibrationOptions, context: int | None) -> CalibrationOptions:
    """Rows longer than the model's context would be packed and scored past it: cap, say so."""
    if context is None or opts.max_sequence_length <= context:
        return opts
    log(
        "calibration.max_sequence_length_capped",
        requested=opts.max_sequence_length,
        capped_to=context,
        reason="the model's max_position_embeddings",
    )
    return dataclasses.replace(opts, max_sequence_length=context)


def build_calibration(
    opts: CalibrationOptions, tokenizer: Any, context: int | None = None
) -> CalibrationSet:
    """Read → dedupe → length-filter → split held-out → sample → pack, deterministically.

    ``context`` (the model's max_position_embeddings) caps max_sequence_length."""
    if opts.format not in ("text", "chat"):
        raise CalibrationDataError(f"calibration format must be text or chat, not {opts.format!r}")
    requested = opts.max_sequence_length
    opts = capped_to_context(opts, context)
    found = _source_prompts(opts, tokenizer)
    counts = DroppedCounts(malformed=len(found.malformed), too_long=len(found.too_long_lines))
    kept, dropped = _usable(found.prompts, opts, tokenizer, counts)
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
        dataset_digest=found.digest,
        dataset_uri=opts.source,
        dropped_lines=(found.malformed + [f"{w}: longer than the line cap" for w in
                                          found.too_long_lines])[:MAX_NAMED_LINES],
        max_sequence_length_capped_to=(
            opts.max_sequence_length if opts.max_sequence_length < requested else None
        ),
    )
    log("calibration.dropped", source=opts.source, kept=len(chosen),
        **dropped.model_dump(), lines=result.dropped_lines[:10])
    return CalibrationSet(input_ids=input_ids, held_out=held, result=result)


def _source_prompts(opts: CalibrationOptions, tokenizer: Any) -> PromptFile:
    """The prompts of ``opts.source``, the lines dropped reading it, and the data's digest."""
    if opts.source.startswith("synthetic://"):
        if not opts.allow_synthetic:
            raise CalibrationDataError(
                f"{opts.source}: synthetic calibration data misses the production distribution; "
                "point --prompts at real prompts or pass --allow-synthetic"
            )
        return PromptFile(synthetic_prompts(opts, tokenizer), [], [], "synthetic")
    return read_prompts(local_path(opts.source), opts, tokenizer)


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
    """Both files written beside their targets and renamed: never a half-written one."""
    workdir.mkdir(parents=True, exist_ok=True)
    tokens, held = workdir / "calibration_tokens.pt", workdir / "heldout.jsonl"
    torch.save({"input_ids": cal.input_ids}, tokens.with_name(tokens.name + ".tmp"))
    with held.with_name(held.name + ".tmp").open("w") as f:
        for p in cal.held_out:
            f.write(json.dumps({"text": p}) + "\n")
    tokens.with_name(tokens.name + ".tmp").replace(tokens)
    held.with_name(held.name + ".tmp").replace(held)


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
