"""`samp quantize|calibrate|sensitivity|plan|export|evaluate`: the SAMP job stages.

Each stage reads its inputs from ``--workdir`` and writes its result document
there (see samp_jobs.pipeline for the layout); ``quantize`` runs them all in
one process. Settings come from flags, or from a QuantizedModel manifest
(``--manifest qm.yaml``) whose spec supplies calibration, policy and target;
``--model`` / ``--prompts`` give the local paths the operator mounts for the
manifest's URIs. Exit status: 0 done, 2 bad input (message names what to fix),
1 unexpected failure.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from samp_core.formats import ExportFormat, Format, RoundingMethod, SensitivityMethod
from samp_core.planner import Budget, PlanError
from samp_jobs.calibration import CalibrationDataError, CalibrationOptions
from samp_jobs.evaluate import EvalDataError
from samp_jobs.export import ExportError
from samp_jobs.modeling import ModelLoadError
from samp_jobs.pipeline import STAGES, JobConfig, run_all
from samp_jobs.preflight import BadInputError, preflight
from samp_jobs.runlog import log
from samp_jobs.sources import resolve_model, resolve_prompts

STAGE_NAMES = ("quantize", "calibrate", "sensitivity", "plan", "export", "evaluate")


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


def _parser(stage: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"samp {stage}", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, required=True, help="stage inputs and outputs")
    p.add_argument("--manifest", type=Path, help="QuantizedModel YAML supplying the spec")
    p.add_argument("--model", help="local model directory (overrides spec.model.source)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--termination-log", help="default /dev/termination-log when writable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars on stderr")
    if stage in ("calibrate", "quantize"):
        g = p.add_argument_group("calibration")
        g.add_argument("--prompts", help="JSONL of production prompts (local path)")
        g.add_argument("--format", dest="prompt_format", default="text", choices=["text", "chat"])
        g.add_argument("--text-field", default="text")
        g.add_argument("--messages-field", default="messages")
        g.add_argument("--samples", type=int, default=512)
        g.add_argument("--max-seq-len", type=int, default=2048)
        g.add_argument("--held-out-fraction", type=float, default=0.1)
        g.add_argument("--allow-synthetic", action="store_true")
    if stage in ("sensitivity", "plan", "quantize"):
        g = p.add_argument_group("scoring and planning")
        g.add_argument(
            "--method",
            type=SensitivityMethod,
            default=SensitivityMethod.FISHER,
            help="fisher (default), activation (forward only) or kl (exact, slow)",
        )
        g.add_argument(
            "--formats",
            type=_formats,
            help="comma list of candidate formats, e.g. int4-w4a16,fp8-w8a8,bf16",
        )
        g.add_argument("--profile", help="hardware profile or target: cpu, sm80, sm90, h100...")
        g.add_argument("--group-size", type=int, default=128)
        g.add_argument("--micro-batch", type=int, default=4)
        g.add_argument("--max-tokens", type=int, default=262_144)
        b = g.add_mutually_exclusive_group()
        b.add_argument("--max-weight-bytes", type=int)
        b.add_argument("--fraction-of-16bit", type=float)
        b.add_argument("--effective-bits", type=float)
        g.add_argument(
            "--override", type=_override, action="append", default=[], metavar="REGEX=FORMAT|keep"
        )
        g.add_argument("--quantize-lm-head", action="store_true")
        g.add_argument("--allow-non-native", action="store_true")
        g.add_argument("--export-format", type=ExportFormat)
        g.add_argument(
            "--rounding",
            type=RoundingMethod,
            default=RoundingMethod.GPTQ,
            help="gptq (default: the 4-bit groups GPTQ-rounded at export) or rtn",
        )
    if stage == "plan":
        r = p.add_argument_group(
            "re-plan (closed loop: a canary gate failed, derive a more conservative plan)"
        )
        r.add_argument(
            "--attempt",
            type=int,
            default=1,
            help="attempt number; n > 1 raises the most sensitive groups of attempt n-1's "
            "plan toward 16-bit within the headroom (samp_core.canary.conservative_plan)",
        )
        r.add_argument(
            "--previous-plan",
            type=Path,
            help="attempt n-1's plan document; when absent the chain is rebuilt from attempt 1",
        )
        r.add_argument(
            "--plan-copy", type=Path, help="also write the plan document here (kept per attempt)"
        )
        r.add_argument(
            "--replan-headroom",
            type=float,
            default=None,
            help="without --manifest: spec.rollout.replan.maxBudgetIncreaseFraction (0.1)",
        )
        r.add_argument(
            "--replan-max-attempts",
            type=int,
            default=None,
            help="without --manifest: spec.rollout.replan.maxAttempts (3); the headroom opens "
            "linearly and is complete at the last attempt",
        )
    if stage in ("export", "evaluate", "quantize"):
        p.add_argument("--artifact", type=Path, help="checkpoint dir (default WORKDIR/artifact)")
    if stage == "export":
        p.add_argument(
            "--plan",
            type=Path,
            help="plan document to export (default WORKDIR/plan.json, the latest plan)",
        )
    if stage in ("evaluate", "quantize"):
        p.add_argument("--eval-set", type=Path, help="JSONL with expected answers")
        p.add_argument("--max-new-tokens", type=int, default=32)
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


def config_from(ns: argparse.Namespace, stage: str) -> JobConfig:
    cfg = JobConfig(
        workdir=ns.workdir,
        model=ns.model or "",
        dtype=ns.dtype,
        trust_remote_code=ns.trust_remote_code,
        device=ns.device,
        termination_log=ns.termination_log,
        progress=not ns.no_progress,
        seed=ns.seed,
    )
    if ns.manifest is not None:
        refuse_spec_flags(ns, stage)
        apply_manifest(cfg, ns)
    cfg.fill_from_workdir()
    a: dict[str, Any] = vars(ns)
    if a.get("prompts") and ns.manifest is None:  # with a manifest it only sets the source
        cfg.calibration = CalibrationOptions(
            source=a["prompts"],
            format=a["prompt_format"],
            text_field=a["text_field"],
            messages_field=a["messages_field"],
            samples=a["samples"],
            max_sequence_length=a["max_seq_len"],
            seed=ns.seed,
            held_out_fraction=a["held_out_fraction"],
            allow_synthetic=a["allow_synthetic"],
        )
    if "method" in a and ns.manifest is None:
        cfg.method = a["method"]
        cfg.formats = a["formats"] or cfg.formats
        cfg.group_size = a["group_size"]
        cfg.micro_batch = a["micro_batch"]
        cfg.max_tokens = a["max_tokens"]
        cfg.keep_lm_head_16bit = not a["quantize_lm_head"]
        cfg.allow_non_native = a["allow_non_native"]
        cfg.export_format = a["export_format"]
        cfg.rounding = a["rounding"]
        cfg.overrides = [(rx, Format.BF16 if f == "keep" else Format(f)) for rx, f in a["override"]]
        for key, field in (
            ("max_weight_bytes", "max_weight_bytes"),
            ("fraction_of_16bit", "fraction_of_16bit"),
            ("effective_bits", "effective_bits"),
        ):
            if a.get(key) is not None:
                cfg.budget = Budget(**{field: a[key]})
    if a.get("profile"):
        cfg.profile = a["profile"]
    elif ns.manifest is None:
        saved = cfg.workdir / "job.json"
        if saved.is_file():
            import json

            cfg.profile = json.loads(saved.read_text()).get("profile", cfg.profile)
    if a.get("artifact"):
        cfg.artifact = a["artifact"]
    if a.get("eval_set"):
        cfg.eval_set = a["eval_set"]
    if "max_new_tokens" in a:
        cfg.max_new_tokens = a["max_new_tokens"]
    if a.get("plan"):
        cfg.plan_path = a["plan"]
    if "attempt" in a:
        if a["attempt"] < 1:
            raise PlanError("--attempt counts from 1")
        cfg.attempt = a["attempt"]
        cfg.previous_plan = a["previous_plan"]
        cfg.plan_copy = a["plan_copy"]
        if ns.manifest is None:
            from samp_core.spec import ReplanSpec

            cfg.replan = ReplanSpec(
                enabled=True,
                max_attempts=max(cfg.attempt, a["replan_max_attempts"] or 3),
                max_budget_increase_fraction=0.1
                if a["replan_headroom"] is None
                else a["replan_headroom"],
            )
    del stage
    return cfg


def apply_manifest(cfg: JobConfig, ns: argparse.Namespace) -> None:
    """Take calibration, policy and target from a QuantizedModel manifest."""
    import yaml

    from samp_core.api import parse
    from samp_core.planner import request_from_spec
    from samp_jobs.measured_costs import profile_with_measured_costs

    qm = parse(yaml.safe_load(ns.manifest.read_text()))
    spec = qm.spec
    cfg.model = ns.model or resolve_model(spec.model.source, Path(ns.workdir))
    cfg.trust_remote_code = cfg.trust_remote_code or spec.model.trust_remote_code
    if cfg.dtype == "auto":
        cfg.dtype = spec.model.dtype
    c = spec.calibration
    cfg.calibration = CalibrationOptions(
        source=getattr(ns, "prompts", None) or resolve_prompts(c.source),
        format=c.format,
        text_field=c.text_field,
        messages_field=c.messages_field,
        samples=c.samples,
        max_sequence_length=c.max_sequence_length,
        seed=c.seed,
        held_out_fraction=c.held_out_fraction,
        allow_synthetic=c.allow_synthetic,
    )
    cfg.seed = c.seed
    q = spec.quantization
    cfg.method = q.sensitivity.method
    cfg.max_tokens = q.sensitivity.max_tokens
    cfg.formats = list(q.allowed_formats)
    cfg.group_size = int(q.group_size)
    profile = profile_with_measured_costs(spec.hardware.target)
    cfg.profile = profile.name

    def request(groups: Any, scores: Any) -> Any:
        return request_from_spec(q, groups=groups, scores=scores, profile=profile)

    cfg.plan_request = request
    cfg.quantization = q
    cfg.replan = spec.rollout.replan


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point the `samp` dispatcher calls with argv = [stage, ...flags]."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in STAGE_NAMES:
        print(f"usage: samp {{{','.join(STAGE_NAMES)}}} --workdir DIR ...", file=sys.stderr)
        return 2
    stage = args[0]
    ns = _parser(stage).parse_args(args[1:])
    bad_input: tuple[type[BaseException], ...] = (
        CalibrationDataError,
        EvalDataError,
        ExportError,
        ModelLoadError,
        BadInputError,
        PlanError,
        FileNotFoundError,
        ValidationError,
    )
    try:
        cfg = config_from(ns, stage)
        preflight(stage, workdir=cfg.workdir, model_dir=cfg.model, eval_set=cfg.eval_set,
                  progress=cfg.progress)
        if stage == "quantize":
            run_all(cfg, evaluate=not ns.skip_evaluate)
            from samp_jobs.report import render

            print(render(cfg.workdir, cfg.artifact_dir))
        else:
            runner: Callable[[JobConfig], Any] = STAGES[stage]
            runner(cfg)
    except bad_input as e:
        log("error", stage=stage, error=type(e).__name__, message=str(e))
        print(f"samp {stage}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        log(
            "error",
            stage=stage,
            error=type(e).__name__,
            message=str(e),
            traceback=traceback.format_exc(),
        )
        print(f"samp {stage}: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
