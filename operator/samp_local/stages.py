"""The demo's job stages: ``samp quantize|plan|export|evaluate`` in a child process, read
by a person.

The stages log JSON lines on stderr (for cluster log pipelines). Here the whole stream
goes to a log file under ``out/logs``, and the console shows one progress display per
run with the stage now running, then one readable line per finished stage (from its
result summary). Progress bars and library warnings are turned off in the child; a
failure shows the log's last lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samp_core.results import PlanResult
from samp_core.units import format_bytes
from samp_local.console import Console

# No tqdm bars (transformers' and compressed-tensors' too) and no advisory warnings in
# the child: the console shows progress itself, and the log keeps everything else.
QUIET = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
         "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
         "PYTHONWARNINGS": "ignore"}


@dataclass
class StageRun:
    """How a child run ended: its exit status and its last non-JSON stderr lines."""

    returncode: int
    tail: list[str]


def samp_command(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("samp")
    return [str(exe) if exe.exists() else "samp", *args]


def describe(stage: str, s: Mapping[str, Any]) -> str:
    """One readable line from a stage's result summary (its termination message)."""
    if stage == "calibrate":
        dropped = s.get("dropped") or {}
        return (f"calibrate: {s.get('numSamples')} prompts, {s.get('numTokens')} tokens "
                f"(dropped {dropped.get('tooLong', 0)} too long, "
                f"{dropped.get('duplicates', 0)} duplicates)")
    if stage == "sensitivity":
        return (f"sensitivity: {s.get('numGroups')} layer groups x "
                f"{', '.join(s.get('formats') or [])} scored by {s.get('method')} on "
                f"{s.get('numTokens')} tokens (peak memory "
                f"{format_bytes(s.get('peakMemoryBytes') or 0)})")
    if stage == "plan":
        formats = ", ".join(f"{n} {f}" for f, n in sorted(
            (s.get("byFormat") or {}).items(), key=lambda kv: -kv[1]))
        return (f"plan: {s.get('effectiveBits', 0):.2f} effective bits, "
                f"{format_bytes(s.get('totalBytes') or 0)} = "
                f"{100 * (s.get('fractionOf16Bit') or 0):.1f}% of the 16-bit weights "
                f"({formats}; {s.get('rounding', 'rtn')} rounding)")
    if stage == "export":
        return (f"export: compressed-tensors checkpoint, "
                f"{format_bytes(s.get('bytesOnDisk') or 0)} on disk")
    if stage == "evaluate":
        return _evaluation(s)
    return f"{stage}: done"


def _evaluation(s: Mapping[str, Any]) -> str:
    parts = [f"evaluate: {s.get('numPrompts')} held-out prompts, perplexity "
             f"{s.get('perplexityBase', 0):.2f} -> {s.get('perplexityQuant', 0):.2f}, "
             f"top-1 agreement {100 * (s.get('top1Agreement') or 0):.1f}%"]
    for key, label in (("taskExactMatch", "task exact match"), ("jsonValidity", "JSON validity")):
        base, quant = s.get(f"{key}Base"), s.get(f"{key}Quant")
        if base is not None and quant is not None:
            parts.append(f"{label} {100 * base:.1f}% -> {100 * quant:.1f}%")
    return ", ".join(parts)


def run_stages(console: Console, label: str, args: list[str], log: Path) -> StageRun:
    """Run ``samp ARGS`` with one progress display; every line goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = samp_command(*args, "--no-progress")
    tail: list[str] = []
    with console.progress("stages", label) as bar, log.open("a") as sink:
        sink.write("$ " + " ".join(cmd) + "\n")
        sink.flush()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **QUIET})
        assert proc.stderr is not None
        for line in proc.stderr:
            sink.write(line)
            sink.flush()  # the child's stdout lands in the same file: keep the order
            record = _json(line)
            if record is None:
                if line.strip():
                    tail = [*tail[-19:], line.rstrip()]
                continue
            if record.get("event") == "stage.start":
                bar.update(f"{record.get('stage')} ...")
            elif record.get("event") == "progress":  # samp_core.progress records
                bar.update(f"{record.get('stage')}: {record.get('done')}/"
                           f"{record.get('total')} {record.get('unit')}")
            elif record.get("event") == "result":
                stage = str(record.get("stage"))
                console.say("stage", f"  {describe(stage, record.get('summary') or {})}",
                            stage=stage, summary=record.get("summary"))
        returncode = proc.wait()
        if returncode != 0:
            bar.result, bar.failed = f"exit status {returncode}", True
    return StageRun(returncode, tail)


def _json(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def plan_changes(before: PlanResult, after: PlanResult) -> list[str]:
    """What a re-plan did, group by group: 'model.layers.3.mlp.gate_up int4-w4a8 -> ...'."""
    old = {a.group: a.format.value for a in before.assignments}
    return [f"{a.group} {old[a.group]} -> {a.format.value}"
            for a in after.assignments if a.group in old and old[a.group] != a.format.value]
