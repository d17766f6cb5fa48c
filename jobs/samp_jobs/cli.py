"""`samp quantize|calibrate|sensitivity|plan|export|evaluate`: the SAMP job stages.

Every stage runs one typed StageInvocation (samp_core.stage_contract), built by
samp_jobs.invocation from ``--invocation FILE`` (the document the operator's Job mounts),
from a QuantizedModel manifest (``--manifest qm.yaml``) or from flags; ``quantize`` runs
all stages in one process. ``--model`` / ``--prompts`` / ``--eval-set`` give local paths
for a manifest's URIs. Every stage takes the whole pipeline's flags, because its inputs
hash chains the earlier stages' inputs. Each stage reads its inputs from the work
directory and writes its result document there (samp_jobs.pipeline). Exit status: 0
done, 2 bad input (the message names what to fix), 1 unexpected failure.

Example (the bundled tiny model, CPU profile):

    samp quantize --workdir out/tiny --model examples/tiny/model \\
        --prompts examples/tiny/prompts.jsonl --format chat --profile cpu \\
        --formats int4-w4a8,int8-w8a8,bf16 --fraction-of-16bit 0.45 \\
        --eval-set examples/tiny/eval.jsonl
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from samp_core.formats import ExportFormat, Format, RoundingMethod, SensitivityMethod
from samp_core.planner import PlanError
from samp_core.results import Stage
from samp_jobs import stage_options as opt
from samp_jobs.calibration import CalibrationDataError
from samp_jobs.evaluate import EvalDataError
from samp_jobs.export import ExportError
from samp_jobs.invocation import InvocationError, from_args
from samp_jobs.modeling import ModelLoadError
from samp_jobs.pipeline import STAGES, run_all
from samp_jobs.preflight import BadInputError, preflight
from samp_jobs.runlog import log

STAGE_NAMES = ("quantize", "calibrate", "sensitivity", "plan", "export", "evaluate")
BAD_INPUT: tuple[type[BaseException], ...] = (
    CalibrationDataError,
    EvalDataError,
    ExportError,
    ModelLoadError,
    BadInputError,
    PlanError,
    FileNotFoundError,
    ValidationError,
    InvocationError,
)


def _formats(text: str) -> list[Format]:
    try:
        return [Format(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError as e:
        known = ", ".join(f.value for f in Format)
        raise argparse.ArgumentTypeError(f"{e}; known formats: {known}") from None


def _override(text: str) -> tuple[str, str]:
    regex, sep, fmt = text.rpartition("=")
    if not sep or not regex:
        raise argparse.ArgumentTypeError("override is REGEX=FORMAT or REGEX=keep")
    return regex, fmt


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--invocation", type=Path,
                   help="StageInvocation document (what the operator's Job mounts)")
    p.add_argument("--workdir", type=Path, help="stage inputs and outputs")
    p.add_argument("--manifest", type=Path, help="QuantizedModel YAML supplying the spec")
    p.add_argument("--model", help="local model directory (overrides spec.model.source)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--termination-log", help="default /dev/termination-log when writable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars on stderr")
    p.add_argument("--artifact", type=Path, help="checkpoint dir (default WORKDIR/artifact)")
    p.add_argument("--eval-set", type=Path, help="JSONL with expected answers")
    p.add_argument("--max-new-tokens", type=int, default=32)


def _calibration_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--prompts", help="JSONL of production prompts (local path)")
    g.add_argument("--format", dest="prompt_format", default="text", choices=["text", "chat"])
    g.add_argument("--text-field", default="text")
    g.add_argument("--messages-field", default="messages")
    g.add_argument("--samples", type=int, default=512)
    g.add_argument("--max-seq-len", type=int, default=2048)
    g.add_argument("--held-out-fraction", type=float, default=0.1)
    g.add_argument("--allow-synthetic", action="store_true")


def _policy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scoring and planning")
    g.add_argument("--method", type=SensitivityMethod, default=SensitivityMethod.FISHER,
                   help="fisher (default), activation (forward only) or kl (exact, slow)")
    g.add_argument("--formats", type=_formats,
                   help="comma list of candidate formats, e.g. int4-w4a16,fp8-w8a8,bf16")
    g.add_argument("--profile", default="sm90",
                   help="hardware profile or target: cpu, sm80, sm90 (default), h100...")
    g.add_argument("--group-size", type=int, default=128)
    g.add_argument("--micro-batch", type=int, default=4)
    g.add_argument("--max-tokens", type=int, default=262_144)
    b = g.add_mutually_exclusive_group()
    b.add_argument("--max-weight-bytes", type=int)
    b.add_argument("--fraction-of-16bit", type=float)
    b.add_argument("--effective-bits", type=float)
    g.add_argument("--override", type=_override, action="append", default=[],
                   metavar="REGEX=FORMAT|keep")
    g.add_argument("--quantize-lm-head", action="store_true")
    g.add_argument("--allow-non-native", action="store_true")
    g.add_argument("--export-format", type=ExportFormat)
    g.add_argument("--rounding", type=RoundingMethod, default=RoundingMethod.GPTQ,
                   help="gptq (default: the 4-bit groups GPTQ-rounded at export) or rtn")


def _replan_flags(p: argparse.ArgumentParser, stage: str) -> None:
    r = p.add_argument_group(
        "re-plan (closed loop: a canary gate failed, derive a more conservative plan)")
    r.add_argument("--attempt", type=int, default=1,
                   help="attempt number; n > 1 raises the most sensitive groups of attempt "
                   "n-1's plan toward 16-bit within the headroom (samp_core.replan)")
    r.add_argument("--replan-headroom", type=float, default=None,
                   help="without --manifest: spec.rollout.replan.maxBudgetIncreaseFraction "
                   "(0.1)")
    r.add_argument("--replan-max-attempts", type=int, default=None,
                   help="without --manifest: spec.rollout.replan.maxAttempts (3); the "
                   "headroom opens linearly and is complete at the last attempt")
    plan_only = argparse.SUPPRESS if stage != "plan" else None
    r.add_argument("--previous-plan", type=Path, help=plan_only or
                   "attempt n-1's plan document; when absent the chain is rebuilt from 1")
    r.add_argument("--plan-copy", type=Path, help=plan_only or
                   "also write the plan document here (kept per attempt)")
    r.add_argument("--plan", type=Path, help=argparse.SUPPRESS if stage != "export" else
                   "plan document to export (default WORKDIR/plan.json, the latest plan)")


def _parser(stage: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"samp {stage}", description=__doc__.split("\n")[0])
    _common_flags(p)
    _calibration_flags(p)
    _policy_flags(p)
    _replan_flags(p, stage)
    if stage == "quantize":
        p.add_argument("--skip-evaluate", action="store_true")
    return p


# Flags whose settings a manifest's spec supplies: with --manifest they would be ignored,
# so giving one is refused (flag -> the spec field to edit instead).
SPEC_FLAGS = {
    "prompt_format": "calibration.format", "text_field": "calibration.textField",
    "messages_field": "calibration.messagesField", "samples": "calibration.samples",
    "max_seq_len": "calibration.maxSequenceLength",
    "held_out_fraction": "calibration.heldOutFraction",
    "allow_synthetic": "calibration.allowSynthetic", "seed": "calibration.seed",
    "method": "quantization.sensitivity.method", "formats": "quantization.allowedFormats",
    "group_size": "quantization.groupSize", "max_tokens": "quantization.sensitivity.maxTokens",
    "max_weight_bytes": "quantization.budget", "fraction_of_16bit": "quantization.budget",
    "effective_bits": "quantization.budget", "override": "quantization.overrides",
    "quantize_lm_head": "quantization.keepLmHead16Bit",
    "allow_non_native": "quantization.allowNonNativeFormats",
    "export_format": "quantization.exportFormat", "rounding": "quantization.rounding.method",
    "replan_headroom": "rollout.replan.maxBudgetIncreaseFraction",
    "replan_max_attempts": "rollout.replan.maxAttempts",
}


def refuse_spec_flags(ns: argparse.Namespace, stage: str) -> None:
    """With --manifest, a flag the spec supplies is an error, not silently ignored."""
    parser = _parser(stage)
    given = [
        (dest, field) for dest, field in SPEC_FLAGS.items()
        if dest in vars(ns) and getattr(ns, dest) != parser.get_default(dest)
    ]
    if given:
        flags = ", ".join(f"--{d.replace('_', '-')} (spec.{f})" for d, f in given)
        raise PlanError(
            f"--manifest supplies these settings, so {flags} would be ignored; "
            "edit the manifest's fields instead, or run without --manifest"
        )


def _run(stage: str, ns: argparse.Namespace) -> None:
    if ns.manifest is not None:
        refuse_spec_flags(ns, stage)
    inv = from_args(ns, Stage.CALIBRATE if stage == "quantize" else Stage(stage))
    preflight(stage, workdir=opt.workdir(inv),
              model_dir=None if stage == "plan" else opt.model_dir(inv),
              eval_set=inv.paths.eval_set, progress=inv.runtime.progress,
              quantization=inv.inputs.quantization, profile=inv.inputs.profile)
    if stage == "quantize":
        run_all(inv, evaluate=not ns.skip_evaluate)
        from samp_jobs.report import render

        print(render(Path(inv.paths.workdir), Path(inv.paths.artifact)))
    else:
        STAGES[Stage(stage)](inv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point the `samp` dispatcher calls with argv = [stage, ...flags]."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in STAGE_NAMES:
        print(f"usage: samp {{{','.join(STAGE_NAMES)}}} --workdir DIR ...", file=sys.stderr)
        return 2
    stage = args[0]
    ns = _parser(stage).parse_args(args[1:])
    try:
        _run(stage, ns)
    except BAD_INPUT as e:
        log("error", stage=stage, error=type(e).__name__, message=str(e))
        print(f"samp {stage}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        log("error", stage=stage, error=type(e).__name__, message=str(e),
            traceback=traceback.format_exc())
        print(f"samp {stage}: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
