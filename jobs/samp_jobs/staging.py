"""Stage outputs that appear whole or not at all.

A stage that fails half-way (a bad weight, a full disk, a killed pod) must not leave
something at the artifact path that looks like a checkpoint: the export is written to a
temporary directory beside the target (same filesystem, so the rename is atomic) and
renamed over it only once the export has succeeded.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from samp_core.results import ExportResult


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh path beside ``target`` to write into; renamed to ``target`` on success,
    removed on failure (a previous complete ``target`` is kept until then)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def staged_export(model_dir: Path, plan: Any, target: Path, **options: Any) -> ExportResult:
    """samp_jobs.export.export into a staged directory, renamed to ``target`` when done."""
    from samp_jobs.export import export

    with staged_dir(target) as tmp:
        result = export(model_dir, plan, tmp, **options)
    return result.model_copy(update={"artifact_uri": str(target)})
