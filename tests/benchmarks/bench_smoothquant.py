"""Benchmark: does SmoothQuant help the int8-activation formats (W8A8, W4A8) on the cpu profile?

Plans on the ``cpu`` profile: INT8 W8A8 on every decoder group, the tiny-cpu plan (fisher
scores over int4-w4a8 / int8-w8a8 / bf16 at ``--fraction`` of 16-bit, as
examples/tiny-cpu.yaml) and, with ``--w4a8``, W4A8 everywhere (GPTQ, the default rounding
for 4-bit). Each plan is exported without smoothing and after SmoothQuant at every
``--alphas`` value: the 16-bit model is smoothed (smoothquant.py here; activation maxima
from the calibration rows), saved as a plain checkpoint in its own dtype, exported by the
real ``samp_jobs.export.export`` (GPTQ's Hessians from its own pass over the smoothed model),
reloaded with transformers (activations quantized per token on the fly) and scored on
held-out rows. lm_head stays 16-bit. Writes ``--out``.json and ``--out``.md.

    python tests/benchmarks/bench_smoothquant.py --group-size 32 --calib-seqs 64 \
        --out tests/benchmarks/results/smoothquant_tiny_cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rounding_eval import compare
from smoothquant import channel_absmax_hooks, fold, llama_mappings, smooth
from tiny_setup import TinySetup, add_setup_arguments  # puts operator/, jobs/ on sys.path
from transformers import AutoTokenizer

from samp_core.formats import Format, SensitivityMethod
from samp_core.results import PlanResult
from samp_jobs.evaluate import load_quantized
from samp_jobs.export import export
from samp_jobs.sensitivity import ScoringOptions, score

ROOT_DIR = Path(__file__).resolve().parents[2]
CPU_FORMATS = [Format.INT4_W4A8, Format.INT8_W8A8, Format.BF16]
MAPPING_SETS = {"norms": ("layernorm",), "all": ("layernorm", "up_proj", "v_proj")}


def cpu_plan(
    setup: TinySetup,
    scores: dict[str, dict[Format, float]],
    fraction: float,
    pin: Format | None = None,
) -> PlanResult:
    pins = [(r"\.layers\.", pin)] if pin else None
    return setup.plan_at(
        scores, fraction, pins, profile="cpu", formats=CPU_FORMATS, allow_non_native=False
    )


def activation_maxima(setup: TinySetup, names: list[str]) -> dict[str, torch.Tensor]:
    amax, handles = channel_absmax_hooks(setup.model, names)
    try:
        with torch.no_grad():
            for i in range(0, len(setup.ids), 8):
                setup.model(input_ids=setup.ids[i : i + 8].to(setup.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return amax


def smoothed_source(
    setup: TinySetup,
    args: argparse.Namespace,
    alpha: float | None,
    which: str,
    amax: dict[str, torch.Tensor],
    *,
    where: Path,
) -> float:
    """Write the 16-bit checkpoint (smoothed unless ``alpha`` is None) to ``where``;
    returns the fold's seconds."""
    t = time.perf_counter()
    model = copy.deepcopy(setup.model)
    if alpha is not None:
        maps = llama_mappings(model, setup.parts.layers_path, len(setup.parts.layers))
        maps = [m for m in maps if any(k in m.producer for k in MAPPING_SETS[which])]
        smooth(model, maps, amax, alpha)
    seconds = time.perf_counter() - t
    model.to(setup.quant_dtype).save_pretrained(where)
    AutoTokenizer.from_pretrained(args.model).save_pretrained(where)
    return seconds


def inject_outliers(setup: TinySetup, factor: float, channels: int = 4) -> None:
    """Make ``channels`` input channels of every RMSNorm -> Linear input ``factor`` times
    larger and the consumers' columns as much smaller: the 16-bit function is unchanged
    (the inverse of a SmoothQuant fold), the activations get the few dominant channels
    large LLMs have and this tiny model lacks."""
    gen = torch.Generator().manual_seed(0)
    maps = llama_mappings(setup.model, setup.parts.layers_path, len(setup.parts.layers))
    for m in maps:
        if "layernorm" in m.producer:
            width = setup.model.get_submodule(m.consumers[0]).in_features
            s = torch.ones(width, device=setup.device)
            s[torch.randperm(width, generator=gen)[:channels].to(setup.device)] = 1.0 / factor
            fold(setup.model, m, s)


def run_row(
    setup: TinySetup, src: Path, p: PlanResult, tmp: Path, label: dict[str, Any]
) -> dict[str, Any]:
    t = time.perf_counter()
    export(src, p, tmp / "ckpt", input_ids=setup.ids, device=setup.device)
    seconds = time.perf_counter() - t
    q = load_quantized(tmp / "ckpt", dtype=torch.float32).to(setup.device)
    m = compare(q, setup.held, setup.base)
    row = {**label, **{k: round(v, 6) for k, v in m.items()}, "export_s": round(seconds, 2)}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(ap)
    ap.add_argument("--fraction", type=float, default=0.65)
    ap.add_argument("--alphas", default="0.3,0.5,0.7,0.8")
    ap.add_argument("--mappings", default="all,norms", help="comma list of: all, norms")
    ap.add_argument("--w4a8", action="store_true", help="also W4A8 on every decoder group")
    ap.add_argument(
        "--inject-outliers",
        type=float,
        default=0.0,
        help="scale 4 channels of every norm output by this factor, exactly compensated",
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    setup = TinySetup.load(args)
    if args.inject_outliers:
        inject_outliers(setup, args.inject_outliers)
    base_ppl = compare(setup.model, setup.held, setup.base)["perplexity"]
    opts = ScoringOptions(
        formats=CPU_FORMATS,
        profile="cpu",
        group_size=setup.group_size,
        quant_dtype=setup.quant_dtype,
        progress=False,
        device=setup.device,
    )
    t = time.perf_counter()
    scores = score(setup.parts, setup.groups, setup.ids, opts, [SensitivityMethod.FISHER])
    score_s = time.perf_counter() - t
    plans = {
        "W8A8 everywhere": cpu_plan(
            setup, scores.scores[SensitivityMethod.FISHER], 1.0, Format.INT8_W8A8
        ),
        f"tiny-cpu plan @ {args.fraction}": cpu_plan(
            setup, scores.scores[SensitivityMethod.FISHER], args.fraction
        ),
    }
    if args.w4a8:
        plans["W4A8 everywhere (GPTQ)"] = cpu_plan(
            setup, scores.scores[SensitivityMethod.FISHER], 1.0, Format.INT4_W4A8
        )
    maps = llama_mappings(setup.model, setup.parts.layers_path, len(setup.parts.layers))
    t = time.perf_counter()
    amax = activation_maxima(setup, [m.consumers[0] for m in maps])
    amax_s = time.perf_counter() - t
    variants: list[tuple[str, float | None]] = [("none", None)] + [
        (w, float(a)) for w in args.mappings.split(",") for a in args.alphas.split(",") if a
    ]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for which, alpha in variants:
            src, fold_s = args.model, 0.0
            if alpha is not None or args.inject_outliers:
                src = tmp / f"src-{which}-{alpha}"
                fold_s = smoothed_source(setup, args, alpha, which, amax, where=src)
                m16 = compare(load_quantized(src, dtype=torch.float32).to(setup.device),
                              setup.held, setup.base)
                rows.append(
                    {
                        "plan": "16-bit (as exported from, fold check)",
                        "smoothing": which,
                        "alpha": alpha,
                        **{k: round(v, 6) for k, v in m16.items()},
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            for name, p in plans.items():
                label = {
                    "plan": name,
                    "smoothing": which,
                    "alpha": alpha,
                    "fraction_of_16bit": round(p.fraction_of_16bit, 4),
                    "smooth_fold_s": round(fold_s, 3),
                }
                rows.append(run_row(setup, src, p, tmp, label))
    doc = {
        "command": "python tests/benchmarks/bench_smoothquant.py " + " ".join(argv or sys.argv[1:]),
        "model_name": "tiny example"
        if Path(args.model).resolve() == (ROOT_DIR / "examples/tiny/model").resolve()
        else f"model {args.model}",
        "perplexity_16bit": round(base_ppl, 4),
        "injected_outlier_factor": args.inject_outliers,
        "held_out_rows": len(setup.held),
        "held_out_tokens": sum(int(r.numel()) - 1 for r in setup.held),
        "calibration_tokens": int(setup.ids.numel()),
        "fisher_scoring_s": round(score_s, 1),
        "activation_maxima_s": round(amax_s, 3),
        # SmoothQuant has something to migrate only where a few channels dominate: the
        # largest channel's max |x| over the median channel's, per consumer input.
        "outlier_ratio_max_over_median": {
            n: round(float(v.max() / v.median().clamp(min=1e-12)), 2) for n, v in amax.items()
        },
        "plans": {n: {a.group: a.format.value for a in p.assignments} for n, p in plans.items()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    return 0


def markdown(doc: dict[str, Any]) -> str:
    base = doc["perplexity_16bit"]
    ratios = doc["outlier_ratio_max_over_median"]
    lines = [
        f"# SmoothQuant on the cpu profile ({doc.get('model_name', 'tiny example')}"
        + (
            f", {doc['injected_outlier_factor']:g}x outlier channels injected)"
            if doc["injected_outlier_factor"]
            else ")"
        ),
        "",
        f"16-bit perplexity {base} on {doc['held_out_tokens']} held-out tokens; "
        f"{doc['calibration_tokens']} calibration tokens. Input outlier ratio (largest channel "
        "max |x| / median channel's) per Linear input: "
        + ", ".join(f"{k.removeprefix('model.layers.')}: {v}" for k, v in ratios.items())
        + ". Command:",
        "",
        "```bash",
        doc["command"],
        "```",
        "",
        "| plan | smoothing | alpha | Δppl | mean KL | top-1 | export s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        dppl = 100.0 * (r["perplexity"] / base - 1.0)
        lines.append(
            f"| {r['plan']} | {r['smoothing']} | {r['alpha'] if r['alpha'] is not None else ''}"
            f" | {dppl:+.2f}% | {r['mean_kl']:.5f} | {r['top1_agreement']:.4f}"
            f" | {r.get('export_s', '')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
