"""`samp read-result`: the reader Job's command (samp_core.stored_result).

Reads the summary a stage stored in the artifact store under the operator's inputs hash,
checks it was stored for exactly those inputs, and leaves it in this pod's termination
message, as the stage's own pod would have. Exit 2 (bad input: the Job fails at once,
with the reason as its message) when there is none or it is for other inputs.
No torch: it starts in about a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from samp_core.results import Stage
from samp_core.stored_result import StoredResultError, summary_from_stored
from samp_jobs.runlog import log, termination_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samp read-result", description=__doc__)
    p.add_argument("--stage", required=True, choices=[s.value for s in Stage])
    p.add_argument("--inputs-hash", required=True, help="the operator's inputs hash")
    p.add_argument("--file", required=True, help="the stored result (results/...json)")
    p.add_argument("--stage-job", default="the stage Job", help="for the messages")
    p.add_argument("--termination-log", help="default /dev/termination-log when writable")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    stage = Stage(ns.stage)
    target = termination_path(ns.termination_log)
    try:
        summary = summary_from_stored(stage, ns.inputs_hash, Path(ns.file).read_text())
    except (OSError, UnicodeDecodeError, StoredResultError) as err:
        why = f"{ns.file} does not exist" if isinstance(err, FileNotFoundError) else str(err)
        message = (f"{ns.stage_job} completed, but its pod (and the result in its termination "
                   f"message) is gone, and the artifact store has no result of {stage.value} "
                   f"for inputs {ns.inputs_hash}: {why}")
        log("error", stage=stage.value, error="StoredResultMissing", message=message)
        if target is not None:
            target.write_text(message[:3000])
        print(f"samp read-result: {message}", file=sys.stderr)
        return 2
    if target is not None:
        target.write_text(summary)
    log("result", stage=stage.value, path=ns.file, source="artifact store")
    return 0
