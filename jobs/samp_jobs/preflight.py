"""Checks of a stage's inputs before any stage runs: a bad input is found in seconds,
not after a whole GPU pipeline, and exits 2 (bad input, which the operator does not
retry) naming the file and, where it can, the line or byte offset.

Cheap on purpose: the work dir is written to once, safetensors shards are checked from
their headers and sizes (no weight is read), the eval set is parsed without a tokenizer,
and the budget is checked against the shapes in those headers (samp_core.feasibility).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

from samp_core.feasibility import policy_budget_problem
from samp_core.hardware import get_profile
from samp_core.stage_contract import QuantizationInputs
from samp_jobs.evaluate import eval_records
from samp_jobs.runlog import log, silence_progress

MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors format's own limit
# Stages whose hours an unreachable budget would waste (plan itself says so anyway).
BEFORE_PLAN = ("quantize", "calibrate", "sensitivity")


class BadInputError(ValueError):
    """An input a stage cannot use; the message names the file and how to fix it."""


def preflight(
    stage: str,
    *,
    workdir: str | Path,
    model_dir: str | Path | None,
    eval_set: str | Path | None,
    progress: bool = True,
    quantization: QuantizationInputs | None = None,
    profile: str | None = None,
) -> None:
    """Everything ``stage`` (``quantize``: every stage) reads, checked up front; with the
    policy and profile, also that its budget is reachable on the model at all."""
    if not progress:
        silence_progress()
    check_workdir_writable(Path(workdir))
    shapes: dict[str, list[int]] = {}
    if model_dir and stage in ("quantize", "calibrate", "sensitivity", "export", "evaluate"):
        shapes = check_safetensors(Path(model_dir))
    if eval_set is not None and stage in ("quantize", "evaluate"):
        n = len(eval_records(Path(eval_set)))
        log("preflight.eval_set", path=str(eval_set), records=n)
    elif stage in ("quantize", "evaluate"):
        log(
            "preflight.eval_set",
            path=None,
            note="no eval set: accuracy is measured on the held-out calibration prompts only "
            "(no task exact match or JSON validity)",
        )
    if shapes and quantization is not None and profile and stage in BEFORE_PLAN:
        check_budget(quantization, profile, shapes)


def check_workdir_writable(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".samp-write-check-"):
            pass
    except OSError as e:
        raise BadInputError(
            f"{workdir}: work dir is not writable ({e.strerror or e}); every stage writes its "
            "result there: mount it read-write or pass another --workdir"
        ) from None


def check_budget(q: QuantizationInputs, profile: str, shapes: dict[str, list[int]]) -> None:
    """An unreachable budget is refused before calibration and scoring spend their hours:
    the smallest plan depends only on shapes, profile and pins."""
    try:
        target = get_profile(profile)
    except KeyError as e:
        raise BadInputError(f"--profile / spec.hardware.target: {e.args[0]}") from None
    problem = policy_budget_problem(q, target, shapes)
    if problem:
        raise BadInputError(
            "spec.quantization.budget (flags: --max-weight-bytes, --fraction-of-16bit, "
            f"--effective-bits) is out of reach on this model: {problem} (flag runs: "
            "keepLmHead16Bit false is --quantize-lm-head, overrides are --override)"
        )
    log("preflight.budget", profile=profile, reachable=True)


def check_safetensors(model_dir: Path) -> dict[str, list[int]]:
    """Every shard's header parses and the file holds every byte the header promises;
    returns every tensor's shape (name -> shape) from those headers."""
    shapes: dict[str, list[int]] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        problem = _safetensors_problem(shard, shapes)
        if problem:
            raise BadInputError(
                f"{shard}: {problem}; the shard is truncated or corrupt: download it again"
            )
    return shapes


def _safetensors_problem(path: Path, shapes: dict[str, list[int]]) -> str | None:
    """What is wrong with one shard, or None; adds its tensors' shapes to ``shapes``."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than the 8-byte header length"
            (n,) = struct.unpack("<Q", head)
            if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
                return f"header of {n} bytes does not fit in the file's {size} bytes"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"cannot be read ({os.strerror(e.errno) if e.errno else e})"
    except ValueError as e:
        return f"header is not valid JSON ({e})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            return f"tensor {name!r} has no data_offsets"
        end = max(end, int(offsets[1]))
        shape = meta.get("shape")
        if isinstance(shape, list):
            shapes[name] = shape
    if 8 + n + end > size:
        return (
            f"the header promises {8 + n + end} bytes but the file has {size} "
            f"(missing from byte offset {size})"
        )
    return None
