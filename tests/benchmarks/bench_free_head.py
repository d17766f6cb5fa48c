"""Benchmark: should lm_head be a free group by default (``keepLmHead16Bit: false``)?

At equal weight bytes, plan SAMP twice from the same fisher scores (head pinned 16-bit, and
head free to take any format the profile serves), export both with GPTQ (Hessians from the
scoring pass, head included), reload and score on held-out text. Prints one JSON document.

    python tests/benchmarks/bench_free_head.py \
        --out tests/benchmarks/results/free_head_tiny_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("operator", "jobs"):
    sys.path.insert(0, str(ROOT / _sub))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_score_rounding import FORMATS  # noqa: E402
from rounding_eval import base_logprobs, compare  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from samp_core.formats import SensitivityMethod  # noqa: E402
from samp_core.hardware import get_profile  # noqa: E402
from samp_core.planner import Budget, PlanInfeasibleError, PlanRequest, plan  # noqa: E402
from samp_core.results import PlanResult, Rounding  # noqa: E402
from samp_jobs.calibration import CalibrationOptions, build_calibration, encode  # noqa: E402
from samp_jobs.evaluate import load_quantized, read_eval_set  # noqa: E402
from samp_jobs.export import export  # noqa: E402
from samp_jobs.hessians import HESSIANS_FILE, collector_for  # noqa: E402
from samp_jobs.modeling import decoder_parts, discover_groups, load_model  # noqa: E402
from samp_jobs.sensitivity import ScoringOptions, candidate_formats, score  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "examples/tiny/model")
    ap.add_argument("--prompts", type=Path, default=ROOT / "examples/tiny/prompts.jsonl")
    ap.add_argument("--eval-set", type=Path, default=ROOT / "examples/tiny/eval.jsonl")
    ap.add_argument("--calib-seqs", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--fractions", default="0.36,0.40,0.45")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    model, _ = load_model(args.model)
    qd = next(model.parameters()).dtype
    model.float()
    parts = decoder_parts(model)
    groups = discover_groups(parts)
    tok = AutoTokenizer.from_pretrained(args.model)
    cal = CalibrationOptions(
        source=str(args.prompts), samples=100_000, max_sequence_length=args.seq_len, seed=0
    )
    ids = build_calibration(cal, tok).input_ids[: args.calib_seqs]
    _t, texts = read_eval_set(args.eval_set, tok)
    held = [torch.tensor(encode(tok, t)[: args.seq_len]) for t in texts[:120]]
    held = [r for r in held if r.numel() > 1]
    base = base_logprobs(model, held)
    gs = args.group_size
    opts = ScoringOptions(formats=FORMATS, group_size=gs, quant_dtype=qd, progress=False)
    cands = {g.name: candidate_formats(g, FORMATS, gs) for g in groups}
    opts.hessians = collector_for(groups, cands, Rounding(), model, opts.device)
    scores = score(parts, groups, ids, opts, [SensitivityMethod.FISHER]).scores[
        SensitivityMethod.FISHER
    ]

    def make_plan(frac: float, keep: bool) -> PlanResult:
        return plan(
            PlanRequest(
                groups=groups,
                scores=scores,
                profile=get_profile("sm90"),
                budget=Budget(fraction_of_16bit=frac),
                allowed_formats=FORMATS,
                allow_non_native=True,
                group_size=gs,
                curve_points=0,
                keep_lm_head_16bit=keep,
                rounding=Rounding(),
            )
        )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hfile = Path(tmp) / HESSIANS_FILE
        opts.hessians.save(hfile)
        for frac in (float(x) for x in args.fractions.split(",") if x):
            for keep in (True, False):
                try:
                    p = make_plan(frac, keep)
                except PlanInfeasibleError as e:  # a 16-bit head alone can exceed a budget
                    row = {
                        "fraction_of_16bit": frac,
                        "head": "16-bit (pinned)" if keep else "free",
                        "infeasible": str(e)[:160],
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    continue
                export(args.model, p, Path(tmp) / "ckpt", hessians=hfile)
                m = compare(load_quantized(Path(tmp) / "ckpt", dtype=torch.float32), held, base)
                row = {
                    "fraction_of_16bit": round(p.fraction_of_16bit, 4),
                    "head": "16-bit (pinned)" if keep else f"free: {p.format_of()['lm_head']}",
                    **{k: round(v, 6) for k, v in m.items()},
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    doc = {
        "command": "python tests/benchmarks/bench_free_head.py " + " ".join(argv or sys.argv[1:]),
        "perplexity_16bit": round(compare(model, held, base)["perplexity"], 4),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
