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
from collections.abc import Callable, Iterable, Iterator, Sized
from pathlib import Path
from typing import Any, TypeVar

from samp_core.progress import ProgressRecord
from samp_core.results import ResultBase, Stage
from samp_core.stored_result import stored_result_document

T = TypeVar("T")
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


PROGRESS_EVERY_SECONDS = 5.0


def progress(items: Iterable[T], stage: str, unit: str, *, total: int | None = None,
             every: float = PROGRESS_EVERY_SECONDS,
             clock: Callable[[], float] = time.time) -> Iterator[T]:
    """``items``, logging a progress record (samp_core.progress) at the start, after the
    last item and at most every ``every`` seconds in between, so a pass over 80 layers or
    a million tokens logs a bounded number of lines. The operator reads the newest one
    from the pod's log into status.progress."""
    if total is None:
        total = len(items) if isinstance(items, Sized) else 0
    started = clock()

    def emit(done: int, now: float) -> None:
        record = ProgressRecord(stage=stage, done=done, total=max(total, done), unit=unit,
                                started=started, ts=now)
        print(record.to_json(), file=sys.stderr, flush=True)

    emit(0, started)
    last = started
    for done, item in enumerate(items, 1):
        yield item
        now = clock()
        if done == total or now - last >= every:
            emit(done, now)
            last = now


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
    tmp = path.with_name(path.name + ".tmp")  # a reader never sees half a document
    tmp.write_text(doc.model_dump_json(by_alias=True, indent=2) + "\n")
    tmp.replace(path)
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


def silence_progress() -> None:
    """--no-progress: also the bars transformers, huggingface_hub and compressed-tensors
    draw. tqdm reads TQDM_DISABLE only when imported, so in this process every bar is
    created disabled; the variables cover child processes."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import tqdm.std
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    init = tqdm.std.tqdm.__init__
    if getattr(init, "samp_silenced", False):
        return

    def silenced(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    silenced.samp_silenced = True  # type: ignore[attr-defined]
    tqdm.std.tqdm.__init__ = silenced


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found; run the earlier stage first")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
