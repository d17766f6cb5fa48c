"""Where ``kubectl samp plan show`` finds a rollout's plan document.

The export Job writes the plan beside the checkpoint (``<artifactUri>/samp_plan.json``).
A local path (the demo's artifact directory) is read directly; ``pvc://CLAIM/PATH`` is
read under ``--pvc-root`` when the claim is mounted on this machine; otherwise the user
is told where the file is and how to bring it here (``--file``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from samp_core.results import PlanResult
from samp_operator.plan_view import plan_table, terminal_plot, write_figure
from samp_operator.plugin_kube import CliError

PLAN_FILE = "samp_plan.json"


def plan_path(artifact_uri: str, pvc_root: Path | None) -> Path:
    """The local path of the plan document of an artifact URI, or a CliError saying how."""
    uri = artifact_uri.removeprefix("file://")
    if uri.startswith("/"):
        return Path(uri) / PLAN_FILE
    if uri.startswith("pvc://") and pvc_root is not None:
        return pvc_root / uri.removeprefix("pvc://") / PLAN_FILE
    claim = uri.removeprefix("pvc://").split("/", 1)[0]
    raise CliError(
        f"the plan is {artifact_uri}/{PLAN_FILE}, which this machine cannot read: pass "
        f"--pvc-root DIR where the claim {claim!r} is mounted, or copy the file out "
        "(kubectl cp from a pod that mounts it) and pass --file")


def load_plan(path: Path) -> PlanResult:
    try:
        return PlanResult.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except OSError as err:
        raise CliError(f"{path}: cannot read the plan ({err.strerror})", 1) from None
    except (ValueError, ValidationError) as err:
        first = str(err).splitlines()[0]
        raise CliError(f"{path}: not a SAMP plan document ({first})", 1) from None


def show_plan(obj: Mapping[str, Any] | None, args: argparse.Namespace,
              out: Callable[[str], None]) -> int:
    """Print the plan of ``obj`` (or of ``args.file``); write ``args.figure`` if asked."""
    if args.file is not None:
        path = args.file
    else:
        assert obj is not None
        status = obj.get("status") or {}
        uri = status.get("artifactUri")
        if not uri:
            phase = status.get("phase", "Pending")
            raise CliError(f"quantizedmodel {obj['metadata']['name']} has no plan yet "
                           f"(phase {phase}); try again after Exporting", 3)
        path = plan_path(str(uri), args.pvc_root)
    plan = load_plan(path)
    if args.output != "text":
        import yaml

        doc = plan.model_dump(mode="json", by_alias=True)
        out(json.dumps(doc, indent=2) if args.output == "json"
            else yaml.safe_dump(doc, sort_keys=False).rstrip())
    else:
        out(f"Plan {path}\n{plan_table(plan)}\n\n{terminal_plot(plan)}")
    if args.figure is not None:
        try:
            write_figure(plan, args.figure)
        except (ValueError, OSError) as err:
            raise CliError(str(err), 1) from None
        if args.output == "text":
            out(f"wrote {args.figure}")
    return 0
