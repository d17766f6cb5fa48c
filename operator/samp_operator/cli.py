"""The `samp` command.

Subcommands:
  samp validate FILE...        check QuantizedModel manifests; every problem, with a fix
  samp crds [--check] [--out]  write (or check) the generated CRD YAML
  samp rollout status|promote|abort|pause|resume NAME [-n NS]
                               show or steer a canary (annotations; never writes spec)
  samp get|list|promote|abort|pause|resume|status|version, samp plan show NAME
                               the kubectl plugin's commands (kubectl samp --help)
  samp operator run [flags]    run the operator (samp_operator.main; needs the 'operator' extra)
  samp quantize|calibrate|sensitivity|plan|export|evaluate ...
                               the SAMP job stages (samp_jobs.cli; needs the 'jobs' extra):
                               a stage Job runs `samp <stage> --invocation FILE`
  samp read-result ...         the reader Job of a stage whose pod is gone (samp_jobs.stored)

Each subcommand imports only what it needs, so `samp validate` works in the
operator image without torch and the stages work in the jobs image without kopf.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from samp_core.api import QuantizedModel
from samp_core.crd import CRD_FILE_NAME, render_yaml
from samp_core.manifest_text import load_documents
from samp_core.validation import Problem, validate_manifest

JOB_STAGES = ("quantize", "calibrate", "sensitivity", "plan", "export", "evaluate")
PLUGIN_COMMANDS = ("get", "list", "promote", "abort", "pause", "resume", "status", "version",
                   "--version")


def _load_documents(path: Path) -> list[tuple[str, object]]:
    """(label, document) pairs of a YAML file; a parse error (a duplicate key too) is itself
    a problem."""
    docs = load_documents(path.read_text(encoding="utf-8"))
    return [(f"{path}" + (f"[{i}]" if len(docs) > 1 else ""), doc) for i, doc in enumerate(docs)]


def validate(paths: Sequence[str], model_dir: str | None = None) -> int:
    """Validate every QuantizedModel in the files; exit status 1 when any has a problem.
    With ``model_dir`` (a local checkpoint), also whether its budget is reachable at all."""
    failed = False
    for name in paths:
        path = Path(name)
        try:
            documents = _load_documents(path)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            print(f"{name}: cannot read: {err}", file=sys.stderr)
            failed = True
            continue
        if not documents:
            print(f"{name}: no YAML document found", file=sys.stderr)
            failed = True
        for label, doc in documents:
            if isinstance(doc, dict) and doc.get("kind") not in (None, "QuantizedModel"):
                print(f"{label}: skipped {doc.get('kind')} (not a QuantizedModel)")
                continue
            resource, problems = validate_manifest(doc)
            if resource is None:
                failed = True
                print(f"{label}: {len(problems)} problem(s)", file=sys.stderr)
                for problem in problems:
                    print(f"  - {_indent(problem)}", file=sys.stderr)
            elif model_dir and (why := _budget_problem(resource, model_dir)):
                failed = True
                print(f"{label}: 1 problem(s)\n  - spec.quantization.budget: {why}",
                      file=sys.stderr)
            else:
                print(f"{label}: valid QuantizedModel {resource.namespace}/{resource.name}")
    return 1 if failed else 0


def _budget_problem(resource: QuantizedModel, model_dir: str) -> str | None:
    from samp_core.feasibility import budget_problem
    from samp_operator.checkpoint_shapes import tensor_shapes

    try:
        return budget_problem(resource.spec, tensor_shapes(Path(model_dir)))
    except (OSError, ValueError) as err:
        return f"cannot check it against --model: {err}"


def _indent(problem: Problem) -> str:
    return str(problem)


def crds(out_dir: str, check: bool) -> int:
    target = Path(out_dir) / CRD_FILE_NAME
    expected = render_yaml()
    if check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != expected:
            print(f"{target} is out of date; run `make crds`", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(expected, encoding="utf-8")
    print(f"wrote {target}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    delegated = _delegate(args)
    if delegated is not None:
        return delegated
    from samp_operator import rollout_cli

    parser = _parser()
    ns = parser.parse_args(args)
    if ns.command == "validate":
        return validate(ns.files, ns.model)
    if ns.command == "crds":
        return crds(ns.out, ns.check)
    if ns.command == "rollout":
        return rollout_cli.run(ns)
    parser.error(f"unknown command {ns.command}")
    return 2


def _delegate(args: list[str]) -> int | None:
    """Commands with their own parsers (plugin, operator, read-result, the job stages):
    their exit code, or None for the commands :func:`_parser` knows."""
    if args and (args[0] in PLUGIN_COMMANDS or args[:2] == ["plan", "show"]):
        from samp_operator.plugin_cli import main as plugin_main

        return plugin_main(args, prog="samp")
    if args and args[0] == "operator":
        from samp_operator.main import main as operator_main

        return operator_main(args[1:])
    if args and args[0] == "read-result":  # the reader Job (samp_core.stored_result)
        from samp_jobs.stored import main as read_result

        return read_result(args[1:])
    if args and args[0] in JOB_STAGES:
        return _job_stage(args)
    return None


def _job_stage(args: list[str]) -> int:
    if "--no-progress" in args:
        # Before torch, transformers and compressed-tensors import tqdm: their own
        # bars (loading, compressing) read these once, at import.
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from samp_jobs.cli import main as jobs_main
    except ImportError as err:
        print(
            f"samp {args[0]} needs the jobs extra ({err}); install it with "
            "`pip install 'samp-operator[jobs]'`",
            file=sys.stderr,
        )
        return 2
    return jobs_main(args)


def _parser() -> argparse.ArgumentParser:
    from samp_operator import rollout_cli

    parser = argparse.ArgumentParser(prog="samp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_validate = sub.add_parser("validate", help="check QuantizedModel manifests")
    p_validate.add_argument("files", nargs="+", metavar="FILE")
    p_validate.add_argument("--model", metavar="DIR", help="local checkpoint (safetensors): "
                            "also check that the budget is reachable on it")
    p_crds = sub.add_parser("crds", help="write or check the generated CRD")
    p_crds.add_argument("--out", default="crds", help="directory of the CRD YAML")
    p_crds.add_argument("--check", action="store_true", help="fail if the file is stale")
    sub.add_parser("operator", help="run the operator (samp operator run --help)")
    rollout_cli.add_parser(sub)
    for stage in JOB_STAGES:
        sub.add_parser(stage, help=f"SAMP job stage '{stage}' (samp {stage} --help)")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
