"""Structured logs, result documents and the termination message.

The operator learns what a Job did from two places only: the full result
document next to the artifact, and the pod's termination message (Kubernetes
keeps at most 4 KiB of it), so every stage ends by writing both. Logs are JSON
lines on stderr so cluster log pipelines can parse them; progress bars also go
to stderr and never mix with data written to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from samp_core.results import ResultBase, Stage
from samp_core.stored_result import stored_result_document

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
RESULT_FILES: dict[str, str] = {
    "calibrate": "calibration.json",
    "sensitivity": "sensitivity.json",
    "plan": "plan.json",
    "export": "export.json",
    "evaluate": "evaluation.json",
}


def log(event: str, **fields: Any) -> None:
    """One JSON object per line on stderr: {"ts", "event", ...fields}."""
    record = {"ts": round(time.time(), 3), "event": event, **fields}
    print(json.dumps(record, default=str, sort_keys=True), file=sys.stderr, flush=True)


def termination_path(requested: str | None) -> Path | None:
    """The explicit path, else /dev/termination-log only where it is writable (in a pod)."""
    if requested:
        return Path(requested)
    default = Path(DEFAULT_TERMINATION_LOG)
    if default.exists() and os.access(default, os.W_OK):
        return default
    return None


def write_result(doc: ResultBase, workdir: Path, termination_log: str | None = None,
                 stored: str | None = None) -> Path:
    """Write the document into the work dir and its summary to the termination message
    (and, in an operator's Job, to ``stored``: StagePaths.stored_result)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stage = str(doc.stage)
    path = workdir / RESULT_FILES[stage]
    path.write_text(doc.model_dump_json(by_alias=True, indent=2) + "\n")
    summary = doc.summary_json()
    target = termination_path(termination_log)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(summary)
    log("result", stage=stage, path=str(path), summary=json.loads(summary))
    if stored is not None:
        store_for_operator(stage, doc.inputs_hash, summary, stored)
    return path


def store_for_operator(stage: str, inputs_hash: str, summary: str, stored: str) -> None:
    """In an operator's Job (StagePaths.stored_result set): the summary again, under the
    stage's inputs hash, for when the pod and its message are gone
    (samp_core.stored_result)."""
    if not inputs_hash:
        raise ValueError(f"{stage}: a result without an inputs hash cannot be stored for "
                         "the operator")
    path = Path(stored)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(stored_result_document(Stage(stage), inputs_hash, summary))


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found; run the earlier stage first")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
