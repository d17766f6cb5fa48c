"""A readable end-of-run report for `samp quantize`: the plan table and the accuracy figures.

Stages log JSON to stderr for machines; people running the pipeline locally want one short
answer on stdout: what was chosen, how much it saves, and what it cost in accuracy.
"""

from __future__ import annotations

from pathlib import Path

from samp_core.results import CalibrationResult, EvaluationResult, PlanResult, parse_result
from samp_jobs.export import PLAN_TABLE


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def accuracy_table(ev: EvaluationResult) -> str:
    rows = [
        ("perplexity", f"{ev.perplexity_base:.3f}", f"{ev.perplexity_quant:.3f}",
         _pct(ev.perplexity_recovery_pct)),
        ("task exact match", _rate(ev.task_exact_match_base), _rate(ev.task_exact_match_quant),
         _pct(ev.task_recovery_pct)),
        ("JSON validity", _rate(ev.json_validity_base), _rate(ev.json_validity_quant),
         _pct(ev.json_recovery_pct)),
    ]
    lines = ["| metric | 16-bit | quantized | recovery |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines.append(
        f"\nmean KL {ev.mean_kl:.4f} nats, top-1 agreement {_rate(ev.top1_agreement)}, "
        f"{ev.answer_flips} answer flip(s) over {ev.num_prompts} prompts"
    )
    return "\n".join(lines)


def calibration_line(cal: CalibrationResult) -> str:
    """What calibration kept and dropped (and where it capped the sequence length)."""
    d = cal.dropped
    line = (
        f"calibration: {cal.num_samples} prompts, {cal.num_tokens} tokens; dropped "
        f"{d.duplicates} duplicate(s), {d.too_short} too short, {d.too_long} too long, "
        f"{d.malformed} malformed"
    )
    if cal.dropped_lines:
        line += " (" + "; ".join(cal.dropped_lines[:3]) + ")"
    if cal.max_sequence_length_capped_to is not None:
        line += (
            f"; maxSequenceLength capped to the model's context, "
            f"{cal.max_sequence_length_capped_to} tokens"
        )
    return line


def render(workdir: Path, artifact_dir: Path) -> str:
    """The report for a work dir a `samp quantize` run filled."""
    parts: list[str] = []
    cal_file = workdir / "calibration.json"
    if cal_file.is_file():
        cal = parse_result(cal_file.read_text(encoding="utf-8"))
        if isinstance(cal, CalibrationResult):
            parts.append(calibration_line(cal))
    table = artifact_dir / PLAN_TABLE
    if table.is_file():
        parts.append(table.read_text(encoding="utf-8").rstrip())
    plan_file = workdir / "plan.json"
    if plan_file.is_file():
        plan = parse_result(plan_file.read_text(encoding="utf-8"))
        if isinstance(plan, PlanResult):
            parts.append("groups per format: " + ", ".join(
                f"{fmt} {n}" for fmt, n in sorted(plan.groups_per_format().items())))
    eval_file = workdir / "evaluation.json"
    if eval_file.is_file():
        ev = parse_result(eval_file.read_text(encoding="utf-8"))
        if isinstance(ev, EvaluationResult):
            parts.append("# Accuracy against the 16-bit model\n\n" + accuracy_table(ev))
    parts.append(f"checkpoint: {artifact_dir}")
    return "\n\n".join(parts) + "\n"
