"""Benchmark: do the sensitivity scores predict the loss of the rounding that is applied?

SAMP scores each (group, format) by the Fisher term of its *round-to-nearest* error,
but the exporter rounds the 4-bit groups with GPTQ, which removes a different share of
each group's error. Judged against the exact next-token KL with only that group
GPTQ-rounded (the truth for what is shipped), this compares:

- ``fisher RTN``: today's scores (RTN candidates);
- ``fisher GPTQ``: the Fisher term of the GPTQ-rounded candidates (Hessians collected in
  the same scoring pass, as ``samp_jobs.hessians`` does for export);
- ``fisher RTN × ratio``: RTN scores calibrated per (group, format) by GPTQ's own
  proxy-loss ratio (``GptqStats.loss / rtn_loss``, a by-product of the GPTQ call).

Reports Spearman and Kendall (τ-b) rank agreement pooled over every (group, format) pair
(what the knapsack compares) and within each format, and the end result: each score set
planned at the fixed recipe's bytes, exported with GPTQ from the stored Hessians, and
measured on held-out text (perplexity, KL, top-1).

The GPTQ candidates are given to the scorer by replacing ``samp_jobs.scorer
.make_quantizer`` for the run (a lookup of the precomputed GPTQ weight per module):
the scorer has no per-module quantizer hook, and this benchmark decides whether it
should get one.

    python tests/benchmarks/bench_score_rounding.py \
        --out tests/benchmarks/results/score_rounding_tiny
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rounding_eval import compare
from scipy.stats import kendalltau, spearmanr
from tiny_setup import (  # puts operator/, jobs/ on sys.path
    FORMATS,
    ROOT,
    Scores,
    TinySetup,
    add_setup_arguments,
)

from samp_core.formats import Format, SensitivityMethod
from samp_jobs import scorer
from samp_jobs.evaluate import load_quantized
from samp_jobs.export import export
from samp_jobs.fakequant import FormatQuantizer
from samp_jobs.gptq import IntGrid, dequantize, gptq_codes
from samp_jobs.hessians import HESSIANS_FILE, HessianCollector
from samp_jobs.sensitivity import ScoringOptions, candidate_formats, score

BITS = {Format.INT4_W4A16: 4, Format.INT8_W8A8: 8}


def symmetric_scales(w: torch.Tensor, bits: int, group: int | None) -> torch.Tensor:
    """The exporter's (and ``int_qdq``'s) symmetric min-max scales, [out, in/group]."""
    g = w.float().reshape(w.shape[0], -1, group or w.shape[1])
    amax = torch.maximum(g.amin(-1).clamp(max=0).abs(), g.amax(-1).clamp(min=0))
    return (amax / ((2**bits - 1) / 2)).clamp(min=torch.finfo(torch.float32).tiny)


def gptq_candidates(
    parts: Any, groups: Any, col: HessianCollector, formats: list[Format], *, gs: int, qd: Any
) -> tuple[dict[Format, dict[int, torch.Tensor]], dict[tuple[str, Format], float]]:
    """Per GPTQ format: module weight's data_ptr -> its GPTQ-rounded weight (as the
    checkpoint stores it); and per (group, format) GPTQ's proxy-loss ratio to RTN."""
    mods = dict(parts.model.named_modules())
    table: dict[Format, dict[int, torch.Tensor]] = {f: {} for f in formats}
    ratio: dict[tuple[str, Format], float] = {}
    for g in groups:
        ws = [mods[n].weight.data for n in g.modules]
        h = col.acc[g.name].h.to(ws[0].device)
        w = torch.cat(ws).float()
        for f in formats:
            if f not in candidate_formats(g, FORMATS, gs):
                continue
            bits = BITS[f]
            scale = symmetric_scales(w, bits, gs if f is Format.INT4_W4A16 else None)
            zp = torch.zeros_like(scale)
            codes, st = gptq_codes(w, h, scale, zp, IntGrid(bits), cuda_graph=False)
            wq = dequantize(codes, scale, zp).to(qd).to(w.dtype)
            for m, part in zip(ws, torch.split(wq, [x.shape[0] for x in ws]), strict=True):
                table[f][m.data_ptr()] = part
            ratio[(g.name, f)] = st.loss / st.rtn_loss if st.rtn_loss else 1.0
    return table, ratio


def scored_with(
    table: dict[Format, dict[int, torch.Tensor]] | None,
    run: Any,
) -> Any:
    """Run ``run()`` with the scorer's quantizers swapped for GPTQ lookups (if ``table``)."""
    if table is None:
        return run()
    original = scorer.make_quantizer

    def make(fmt: Format, opts: ScoringOptions) -> FormatQuantizer:
        q = original(fmt, opts)
        if fmt not in table:
            return q
        lookup = table[fmt]
        return FormatQuantizer(
            fmt, lambda w: lookup[w.data_ptr()].to(w.device, w.dtype), q.activation
        )

    scorer.make_quantizer = make
    try:
        return run()
    finally:
        scorer.make_quantizer = original


def agreement(pred: Scores, truth: Scores) -> dict[str, Any]:
    keys = [(g, f) for g in truth for f in truth[g]]
    out: dict[str, Any] = {}
    for label, sel in [("all", keys)] + [
        (f.value, [k for k in keys if k[1] is f]) for f in FORMATS if not f.is_unquantized
    ]:
        a = [pred[g][f] for g, f in sel]
        b = [truth[g][f] for g, f in sel]
        out[label] = {
            "pairs": len(sel),
            "spearman": round(float(spearmanr(a, b).statistic), 4),
            "kendall": round(float(kendalltau(a, b).statistic), 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(ap)
    ap.add_argument("--max-texts", type=int, default=120)
    ap.add_argument("--device", default="cpu", help="scoring and export device")
    ap.add_argument("--fractions", default="0.40,0.45", help="budgets besides the recipe's")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "tests/benchmarks/results/score_rounding_tiny"
    )
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.time()
    setup = TinySetup.load(args, device=args.device, max_texts=args.max_texts)
    parts, groups, ids = setup.parts, setup.groups, setup.ids
    model, held, base = setup.model, setup.held, setup.base
    gs, qd, dev = setup.group_size, setup.quant_dtype, setup.device
    opts = setup.scoring_options()
    gptq_fmts = [Format.INT4_W4A16, Format.INT8_W8A8]
    both = [SensitivityMethod.FISHER, SensitivityMethod.KL]
    rtn, col, rtn_s = setup.scores_with_hessians(opts, both, gptq_fmts)
    opts.hessians = None
    t = time.time()
    table, ratio = gptq_candidates(parts, groups, col, gptq_fmts, gs=gs, qd=qd)
    gptq_s = time.time() - t
    t = time.time()
    gq = scored_with(table, lambda: score(parts, groups, ids, opts, both)).scores
    gq_s = time.time() - t
    fisher_rtn, kl_rtn = rtn[SensitivityMethod.FISHER], rtn[SensitivityMethod.KL]
    fisher_gq, kl_gq = gq[SensitivityMethod.FISHER], gq[SensitivityMethod.KL]
    calibrated = {
        g: {f: v * ratio.get((g, f), 1.0) for f, v in per.items()} for g, per in fisher_rtn.items()
    }
    # what is shipped: GPTQ on int4 (the default), RTN elsewhere; and GPTQ on int4+int8
    truth4 = {
        g: {f: (kl_gq if f is Format.INT4_W4A16 else kl_rtn)[g][f] for f in per}
        for g, per in kl_rtn.items()
    }
    sets = {
        "fisher RTN (today)": fisher_rtn,
        "fisher GPTQ candidates": {
            g: {f: (fisher_gq if f is Format.INT4_W4A16 else fisher_rtn)[g][f] for f in per}
            for g, per in fisher_rtn.items()
        },
        "fisher RTN x GPTQ proxy ratio": {
            g: {f: (calibrated if f is Format.INT4_W4A16 else fisher_rtn)[g][f] for f in per}
            for g, per in fisher_rtn.items()
        },
        "exact KL RTN": kl_rtn,
        "exact KL shipped (oracle)": truth4,
    }
    ranks = {name: agreement(sc, truth4) for name, sc in sets.items()}
    ranks_rtn_truth = {"fisher RTN vs exact KL RTN": agreement(fisher_rtn, kl_rtn)}

    # End result: each score set planned at the recipe's bytes, exported with GPTQ.
    frac = setup.recipe_fraction(fisher_rtn)
    ends: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        hfile = Path(tmp) / HESSIANS_FILE
        col.save(hfile)
        for fr in (frac, *(float(x) for x in args.fractions.split(",") if x)):
            for name, scores in sets.items():
                p = setup.plan_at(scores, fr)
                export(args.model, p, Path(tmp) / "ckpt", hessians=hfile, device=dev)
                m = compare(
                    load_quantized(Path(tmp) / "ckpt", dtype=torch.float32).to(dev), held, base
                )
                row = {
                    "fraction_of_16bit": round(p.fraction_of_16bit, 4),
                    "scores": name,
                    **{k: round(v, 6) for k, v in m.items()},
                }
                print(json.dumps(row), flush=True)
                ends.append(row)
    ref = compare(model, held, base)["perplexity"]
    result = {
        "command": " ".join(
            ["python", "tests/benchmarks/bench_score_rounding.py", *(argv or sys.argv[1:])]
        ),
        "model": str(args.model),
        "group_size": gs,
        "calibration_tokens": int(ids.numel()),
        "held_out_tokens": int(sum(r.numel() - 1 for r in held)),
        "perplexity_16bit": round(ref, 4),
        "seconds": {
            "score_rtn_fisher_kl_plus_hessians": round(rtn_s, 1),
            "gptq_candidates": round(gptq_s, 1),
            "score_gptq_fisher_kl": round(gq_s, 1),
            "total": round(time.time() - t0, 1),
        },
        "rank_agreement_with_exact_kl_shipped": ranks,
        "rank_agreement_reference": ranks_rtn_truth,
        "plans_exported_with_gptq": ends,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return 0


def render(r: dict[str, Any]) -> str:
    ref = r["perplexity_16bit"]
    lines = [
        f"# Scores vs the rounding applied: {Path(r['model']).name}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Calibration tokens {r['calibration_tokens']}, held-out tokens {r['held_out_tokens']}, "
        f"group size {r['group_size']}; seconds {r['seconds']}.",
        "",
        "Rank agreement with the exact KL of what is shipped (GPTQ on int4, RTN elsewhere):",
        "",
        "| scores | pairs | Spearman (all) | Kendall (all) | Spearman int4 | Kendall int4 | "
        "Spearman int8 | Spearman fp8 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in r["rank_agreement_with_exact_kl_shipped"].items():
        lines.append(
            f"| {name} | {a['all']['pairs']} | {a['all']['spearman']} | {a['all']['kendall']} | "
            f"{a['int4-w4a16']['spearman']} | {a['int4-w4a16']['kendall']} | "
            f"{a['int8-w8a8']['spearman']} | {a['fp8-w8a8']['spearman']} |"
        )
    ref_a = r["rank_agreement_reference"]["fisher RTN vs exact KL RTN"]["all"]
    lines += [
        "",
        f"Reference: fisher RTN vs exact KL RTN, Spearman {ref_a['spearman']}, "
        f"Kendall {ref_a['kendall']}.",
        "",
        "Each score set planned and exported with GPTQ (stored Hessians), held-out:",
        "",
        "| of 16-bit | scores | Δppl | mean KL | top-1 |",
        "|---:|---|---:|---:|---:|",
    ]
    for x in r["plans_exported_with_gptq"]:
        lines.append(
            f"| {x['fraction_of_16bit']:.3f} | {x['scores']} | "
            f"{100 * (x['perplexity'] / ref - 1):+.2f}% | {x['mean_kl']:.5f} | "
            f"{x['top1_agreement']:.4f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
