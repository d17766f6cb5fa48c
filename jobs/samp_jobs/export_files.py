"""Writing an export's directory and accounting for it: sharded weights, tokenizer, the base
model's generation config, the plan report, every file's size and sha256, and the
ExportResult with its phase timings."""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from samp_core.results import ExportedFile, ExportResult, PlanResult
from samp_jobs.export_timing import PhaseClock
from samp_jobs.runlog import log

__all__ = [
    "HASH_CHUNK_BYTES",
    "PLAN_JSON",
    "PLAN_TABLE",
    "SHARD_SIZE",
    "copy_generation_config",
    "export_result",
    "exported_files",
    "hash_workers",
    "plan_table",
    "save_checkpoint",
    "sha256_file",
    "write_plan_report",
]

PLAN_JSON = "samp_plan.json"
PLAN_TABLE = "samp_plan.md"
HASH_CHUNK_BYTES = 16 << 20  # streamed, so memory stays bounded for multi-GB shards

# Checkpoint shards of at most 2 GB (transformers 5 defaults to one 50 GB file): the
# hash phase then runs one SHA-256 stream per shard in parallel, and pulls resume per shard.
SHARD_SIZE = "2GB"


def sha256_file(path: Path, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """``sha256:<hex>`` of a file, streamed through one reused buffer."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(chunk_bytes))
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])  # hashlib releases the GIL for large updates
    return "sha256:" + h.hexdigest()


def hash_workers(num_files: int) -> int:
    return max(1, min(num_files, os.cpu_count() or 1, 16))


def exported_files(out: Path, workers: int | None = None) -> list[ExportedFile]:
    """Every file under ``out`` with its size and sha256, hashed by a thread pool.

    Files are submitted largest first so one big shard does not start last; the list
    is returned in path order.
    """
    paths = sorted(p for p in out.rglob("*") if p.is_file())
    sizes = {p: p.stat().st_size for p in paths}
    n = workers or hash_workers(len(paths))
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="sha256") as pool:
        futures = {p: pool.submit(sha256_file, p) for p in sorted(paths, key=lambda p: -sizes[p])}
        return [
            ExportedFile(path=str(p.relative_to(out)), bytes=sizes[p], sha256=futures[p].result())
            for p in paths
        ]


def plan_table(plan: PlanResult) -> str:
    """A readable table of the plan that travels with the artifact."""
    lines = [
        f"# SAMP plan ({plan.profile}, {plan.export_format.value})",
        "",
        f"- total {plan.total_bytes} bytes = {100 * plan.fraction_of_16bit:.1f}% of 16-bit "
        f"({plan.effective_bits:.2f} effective bits), budget {plan.budget_bytes} bytes",
        f"- predicted loss increase {plan.predicted_loss:.6g}"
        f"{f' {plan.score_unit}' if plan.score_unit else ''}, group size {plan.group_size}",
        "",
        "| group | kind | format | bytes | score | pinned by |",
        "|---|---|---|---:|---:|---|",
    ]
    for a in plan.assignments:
        lines.append(
            f"| {a.group} | {a.kind.value} | {a.format.value} | {a.bytes} | {a.score:.4g} | "
            f"{a.pinned_by or ''} |"
        )
    return "\n".join(lines) + "\n"


def write_plan_report(plan: PlanResult, out: Path) -> None:
    (out / PLAN_JSON).write_text(plan.model_dump_json(by_alias=True, indent=2) + "\n")
    (out / PLAN_TABLE).write_text(plan_table(plan))


def copy_generation_config(src: Path, out: Path) -> None:
    gen = src / "generation_config.json"
    if gen.is_file() and not (out / "generation_config.json").exists():
        shutil.copy(gen, out / "generation_config.json")


def save_checkpoint(
    model: Any,
    model_dir: Path,
    plan: PlanResult,
    out: Path,
    trust_remote_code: bool,
    *,
    compressor: Any = None,
) -> None:
    """Weights (sharded; the compressor's quantization config added to config.json),
    tokenizer, generation config and plan report into a fresh ``out``."""
    from transformers import AutoTokenizer

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, max_shard_size=SHARD_SIZE)
    if compressor is not None:
        compressor.update_config(str(out))
    AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code).save_pretrained(
        out
    )
    copy_generation_config(model_dir, out)
    write_plan_report(plan, out)


def export_result(clock: PhaseClock, **fields: Any) -> ExportResult:
    """The ExportResult with its timings; logs ``export.timings`` (the phases' sum and wall)."""
    files: list[ExportedFile] = fields["files"]
    wall = clock.wall()
    result = ExportResult(
        **fields,
        bytes_on_disk=sum(f.bytes for f in files),
        wall_seconds=round(wall, 4),
        phase_seconds=clock.rounded(),
        device=str(clock.device),
    )
    log(
        "export.timings",
        device=str(clock.device),
        wallSeconds=round(wall, 4),
        phaseSeconds=clock.rounded(),
        unaccountedSeconds=round(wall - sum(clock.seconds.values()), 4),
        bytesOnDisk=result.bytes_on_disk,
        files=len(files),
    )
    return result
