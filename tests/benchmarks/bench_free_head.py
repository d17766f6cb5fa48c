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
from rounding_eval import compare
from tiny_setup import TinySetup, add_setup_arguments  # puts operator/, jobs/ on sys.path

from samp_core.formats import SensitivityMethod
from samp_core.planner import PlanInfeasibleError
from samp_jobs.evaluate import load_quantized
from samp_jobs.export import export
from samp_jobs.hessians import HESSIANS_FILE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(ap)
    ap.add_argument("--fractions", default="0.36,0.40,0.45")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    setup = TinySetup.load(args)
    model, held, base = setup.model, setup.held, setup.base
    fisher = SensitivityMethod.FISHER
    by_method, hessians, _seconds = setup.scores_with_hessians(setup.scoring_options(), [fisher])
    scores = by_method[fisher]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hfile = Path(tmp) / HESSIANS_FILE
        hessians.save(hfile)
        for frac in (float(x) for x in args.fractions.split(",") if x):
            for keep in (True, False):
                try:
                    p = setup.plan_at(scores, frac, keep_lm_head_16bit=keep)
                except PlanInfeasibleError as e:  # a 16-bit head alone can exceed a budget
                    row = {
                        "fraction_of_16bit": frac,
                        "head": "16-bit (pinned)" if keep else "free",
                        "infeasible": str(e)[:160],
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    continue
                export(args.model, p, Path(tmp) / "ckpt", hessians=hfile, device=setup.device)
                q = load_quantized(Path(tmp) / "ckpt", dtype=torch.float32).to(setup.device)
                m = compare(q, held, base)
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
