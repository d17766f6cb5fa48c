"""Benchmark: SAMP against uniform and fixed-recipe quantization at equal bytes.

Not a timed test: run it, read the table, commit the result file with the
command that produced it. What it measures, on held-out prompts the
calibration never saw (fake quantization that the export tests show matches
the exported checkpoints):

- perplexity, mean next-token KL to the 16-bit model, top-1 agreement, and
  task exact match on prompts with expected answers;
- for uniform int4 (W4A16, g=group size), uniform FP8 (W8A8), uniform NF4,
  the fixed recipe (4-bit MLP, FP8 attention, 16-bit head), and SAMP planned
  at the *same byte count* as each of them, plus a SAMP budget sweep;
- rank correlation (Spearman) of the fisher and activation scores against
  the exact per-group KL, over all (group, format) pairs.

The lm_head stays 16-bit in every configuration (as in the recipe), so the
comparison is about how the decoder layers are split across formats.

Usage:
    python tests/benchmarks/bench_samp.py --model examples/tiny/model \
        --prompts examples/tiny/prompts_chat.jsonl --format chat \
        --eval-set examples/tiny/eval.jsonl --out tests/benchmarks/results/tiny_sm90
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("operator", "jobs"):
    sys.path.insert(0, str(ROOT / _sub))

from transformers import AutoTokenizer  # noqa: E402

from samp_core.formats import Format, SensitivityMethod  # noqa: E402
from samp_core.groups import GroupKind, LayerGroup  # noqa: E402
from samp_core.hardware import get_profile  # noqa: E402
from samp_core.planner import Budget, PlanRequest, group_bytes, plan  # noqa: E402
from samp_jobs.calibration import CalibrationOptions, build_calibration, encode  # noqa: E402
from samp_jobs.evaluate import TaskItem, is_correct, read_eval_set  # noqa: E402
from samp_jobs.modeling import decoder_parts, discover_groups, load_model  # noqa: E402
from samp_jobs.sensitivity import (  # noqa: E402
    ScoringOptions,
    make_quantizer,
    perturbed,
    score,
    spearman,
)

Assignment = dict[str, Format]


@dataclass
class Row:
    config: str
    bytes: int
    fraction_of_16bit: float
    perplexity: float
    mean_kl: float
    top1_agreement: float
    exact_match: float | None
    predicted_loss: float | None = None


class Evaluator:
    """Teacher-forced stats on held-out texts and greedy answers, base cached once."""

    def __init__(
        self,
        model: Any,
        tok: Any,
        texts: list[str],
        tasks: list[TaskItem],
        *,
        max_len: int,
        max_new: int,
    ) -> None:
        self.model, self.tok = model, tok
        self.ids = [torch.tensor([encode(tok, t)[:max_len]]) for t in texts]
        self.ids = [i for i in self.ids if i.shape[1] > 1]
        self.tasks, self.max_new = tasks, max_new
        with torch.no_grad():
            self.base = [
                torch.log_softmax(model(input_ids=i).logits[0, :-1].float(), -1) for i in self.ids
            ]

    def run(self) -> tuple[float, float, float, float | None]:
        nll = kl = agree = n = 0.0
        with torch.no_grad():
            for ids, lb in zip(self.ids, self.base, strict=True):
                lq = torch.log_softmax(self.model(input_ids=ids).logits[0, :-1].float(), -1)
                tgt = ids[0, 1:]
                nll -= float(lq.gather(-1, tgt[:, None]).sum())
                kl += float((lb.exp() * (lb - lq)).sum())
                agree += float((lb.argmax(-1) == lq.argmax(-1)).sum())
                n += tgt.numel()
        em = None
        if self.tasks:
            hits = 0
            for t in self.tasks:
                ids = torch.tensor([encode(self.tok, t.prompt)])
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=self.max_new,
                    do_sample=False,
                    eos_token_id=self.tok.eos_token_id,
                    pad_token_id=self.tok.pad_token_id,
                )
                ans = self.tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
                hits += is_correct(ans, t)
            em = hits / len(self.tasks)
        return math.exp(nll / n), kl / n, agree / n, em


def assignment_bytes(groups: list[LayerGroup], a: Assignment, group_size: int) -> int:
    return sum(group_bytes(g, a[g.name], group_size) for g in groups)


def uniform(groups: list[LayerGroup], fmt: Format) -> Assignment:
    return {g.name: (Format.BF16 if g.kind is GroupKind.LM_HEAD else fmt) for g in groups}


def recipe(groups: list[LayerGroup]) -> Assignment:
    out: Assignment = {}
    for g in groups:
        if g.kind in (GroupKind.MLP_GATE_UP, GroupKind.MLP_DOWN):
            out[g.name] = Format.INT4_W4A16
        elif g.kind in (GroupKind.ATTENTION_QKV, GroupKind.ATTENTION_O):
            out[g.name] = Format.FP8_W8A8
        else:
            out[g.name] = Format.BF16
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "examples/tiny/model")
    ap.add_argument("--prompts", type=Path, default=ROOT / "examples/tiny/prompts_chat.jsonl")
    ap.add_argument("--format", default="chat")
    ap.add_argument("--eval-set", type=Path, default=ROOT / "examples/tiny/eval.jsonl")
    ap.add_argument("--profile", default="sm90")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-texts", type=int, default=120)
    ap.add_argument("--max-tasks", type=int, default=96)
    ap.add_argument("--sweep", default="0.32,0.36,0.40,0.45,0.50,0.60")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/tiny_sm90")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()

    model, tok = load_model(args.model)
    qdtype = next(model.parameters()).dtype
    model.float()
    parts = decoder_parts(model)
    groups = discover_groups(parts)
    tok = AutoTokenizer.from_pretrained(args.model)
    cal = build_calibration(
        CalibrationOptions(
            source=str(args.prompts),
            format=args.format,
            samples=100_000,
            max_sequence_length=args.seq_len,
            seed=0,
        ),
        tok,
    )
    ids = cal.input_ids[: args.calib_seqs]
    tasks, texts = read_eval_set(args.eval_set, tok)
    texts = texts[: args.max_texts]
    tasks = tasks[: args.max_tasks]

    formats = [Format.INT4_W4A16, Format.FP8_W8A8, Format.NF4, Format.BF16]
    opts = ScoringOptions(
        formats=formats,
        profile=args.profile,
        group_size=args.group_size,
        micro_batch=4,
        quant_dtype=qdtype,
        progress=False,
    )
    methods = [SensitivityMethod.ACTIVATION, SensitivityMethod.FISHER, SensitivityMethod.KL]
    t_score = time.time()
    run = score(parts, groups, ids, opts, methods)
    score_s = time.time() - t_score
    kl = run.scores[SensitivityMethod.KL]
    keys = [(g, f) for g in kl for f in kl[g]]
    corr = {
        m.value: round(
            spearman([run.scores[m][g][f] for g, f in keys], [kl[g][f] for g, f in keys]), 4
        )
        for m in (SensitivityMethod.FISHER, SensitivityMethod.ACTIVATION)
    }
    corr_per_format = {
        m.value: {
            f.value: round(
                spearman(
                    [run.scores[m][g][f] for g in kl if f in kl[g]],
                    [kl[g][f] for g in kl if f in kl[g]],
                ),
                4,
            )
            for f in formats
            if not f.is_unquantized
        }
        for m in (SensitivityMethod.FISHER, SensitivityMethod.ACTIVATION)
    }

    ev = Evaluator(model, tok, texts, tasks, max_len=args.seq_len, max_new=24)
    mods = dict(model.named_modules())
    bytes16 = sum(group_bytes(g, Format.BF16, args.group_size) for g in groups)

    def measure(name: str, a: Assignment, predicted: float | None = None) -> Row:
        with ExitStack() as stack:
            for g in groups:
                if not a[g.name].is_unquantized:
                    stack.enter_context(
                        perturbed([mods[m] for m in g.modules], make_quantizer(a[g.name], opts))
                    )
            ppl, mkl, top1, em = ev.run()
        b = assignment_bytes(groups, a, args.group_size)
        row = Row(
            name,
            b,
            round(b / bytes16, 4),
            round(ppl, 4),
            round(mkl, 6),
            round(top1, 4),
            None if em is None else round(em, 4),
            predicted,
        )
        print(json.dumps(asdict(row)), flush=True)
        return row

    def samp(
        budget: int, method: SensitivityMethod, allowed: list[Format]
    ) -> tuple[Assignment, float]:
        res = plan(
            PlanRequest(
                groups=groups,
                scores=run.scores[method],
                profile=get_profile(args.profile),
                budget=Budget(max_weight_bytes=budget),
                allowed_formats=allowed,
                allow_non_native=True,
                group_size=args.group_size,
                curve_points=0,
            )
        )
        return res.format_of(), res.predicted_loss

    ct = [Format.INT4_W4A16, Format.FP8_W8A8, Format.BF16]
    rows = [measure("bf16 (reference)", uniform(groups, Format.BF16))]
    baselines = {
        "uniform int4-w4a16": uniform(groups, Format.INT4_W4A16),
        "uniform fp8-w8a8": uniform(groups, Format.FP8_W8A8),
        "uniform nf4": uniform(groups, Format.NF4),
        "recipe: int4 MLP + fp8 attention + bf16 head": recipe(groups),
    }
    for name, a in baselines.items():
        rows.append(measure(name, a))
        b = assignment_bytes(groups, a, args.group_size)
        for method in methods:
            sa, pred = samp(b, method, ct)
            rows.append(measure(f"SAMP[{method.value}] @ bytes of {name}", sa, pred))
    for frac in [float(x) for x in args.sweep.split(",") if x]:
        try:
            sa, pred = samp(int(frac * bytes16), SensitivityMethod.FISHER, ct)
        except ValueError as e:
            print(f"sweep {frac}: {e}", file=sys.stderr)
            continue
        rows.append(measure(f"SAMP[fisher] sweep {frac:.2f} of 16-bit", sa, pred))

    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "model": str(args.model),
        "profile": args.profile,
        "group_size": args.group_size,
        "calibration_tokens": int(ids.numel()),
        "held_out_texts": len(ev.ids),
        "tasks": len(tasks),
        "scoring_seconds_all_methods": round(score_s, 1),
        "spearman_vs_kl_all_pairs": corr,
        "spearman_vs_kl_per_format": corr_per_format,
        "rows": [asdict(r) for r in rows],
        "wall_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return 0


def render(r: dict[str, Any]) -> str:
    lines = [
        f"# SAMP benchmark: {Path(r['model']).name}, profile {r['profile']}, "
        f"group size {r['group_size']}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Calibration tokens {r['calibration_tokens']}; held-out texts {r['held_out_texts']}; "
        f"tasks with expected answers {r['tasks']}; scoring (activation+fisher+kl) "
        f"{r['scoring_seconds_all_methods']} s; total {r['wall_seconds']} s.",
        "",
        f"Spearman rank correlation with exact KL over all (group, format) pairs: "
        f"{r['spearman_vs_kl_all_pairs']}; per format: {r['spearman_vs_kl_per_format']}",
        "",
        "| config | bytes | of 16-bit | perplexity | mean KL | top-1 agree | exact match |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        em = "" if row["exact_match"] is None else f"{row['exact_match']:.3f}"
        lines.append(
            f"| {row['config']} | {row['bytes']} | {row['fraction_of_16bit']:.3f} | "
            f"{row['perplexity']:.3f} | {row['mean_kl']:.5f} | {row['top1_agreement']:.4f} | "
            f"{em} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
