"""Benchmark: SAMP + GPTQ against SAMP + round-to-nearest and llm-compressor, at equal bytes.

Not a timed test: run it, read the table, commit the result files with the command.
Every SAMP row goes through the real export path (``samp_jobs.export.export``: the
checkpoint is written, reloaded with transformers and scored), so what is measured is
what vLLM would be given. On held-out texts the calibration never saw: perplexity, mean
next-token KL to the 16-bit model, top-1 agreement, and the export's wall time.

Configurations (lm_head 16-bit everywhere; one group size for all):
- uniform int4-w4a16, the fixed recipe (int4 MLP + FP8 attention), SAMP (fisher scores)
  at the recipe's bytes and over a budget sweep — each with RTN and with GPTQ;
- SAMP at the recipe's bytes with GPTQ also on the int8 groups;
- llm-compressor ``oneshot`` + ``GPTQModifier`` on uniform W4A16 and on the fixed recipe,
  run in the peers environment (``--peers-python``, made by ``make peers``) on the same
  calibration and held-out token rows (peer_llmcompressor.py), scored by the same code.

Writes ``OUT.json``, ``OUT.md`` (table + command) and ``OUT.svg`` (bytes vs held-out
perplexity per method).

    python tests/benchmarks/bench_rounding.py --model examples/tiny/model \
        --out tests/benchmarks/results/rounding_tiny
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("operator", "jobs"):
    sys.path.insert(0, str(ROOT / _sub))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rounding_eval import base_logprobs, compare  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from samp_core.formats import Format, RoundingMethod, SensitivityMethod  # noqa: E402
from samp_core.hardware import get_profile  # noqa: E402
from samp_core.planner import Budget, PlanRequest, plan  # noqa: E402
from samp_core.results import PlanResult, Rounding  # noqa: E402
from samp_jobs.calibration import CalibrationOptions, build_calibration, encode  # noqa: E402
from samp_jobs.evaluate import load_quantized, read_eval_set  # noqa: E402
from samp_jobs.export import export  # noqa: E402
from samp_jobs.modeling import decoder_parts, discover_groups, load_model  # noqa: E402
from samp_jobs.sensitivity import ScoringOptions, score  # noqa: E402

RTN = Rounding(method=RoundingMethod.RTN)
GPTQ4 = Rounding()  # the default: GPTQ on the 4-bit groups
GPTQ48 = Rounding(formats=[Format.INT4_W4A16, Format.INT4_W4A8, Format.INT8_W8A8])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "examples/tiny/model")
    ap.add_argument("--prompts", type=Path, default=ROOT / "examples/tiny/prompts.jsonl")
    ap.add_argument("--format", default="text")
    ap.add_argument("--eval-set", type=Path, default=ROOT / "examples/tiny/eval.jsonl")
    ap.add_argument("--profile", default="sm90")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib-seqs", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-texts", type=int, default=120)
    ap.add_argument("--sweep", default="0.36,0.40,0.45,0.50,0.60")
    ap.add_argument("--device", default=None, help="export device (default: cuda if present)")
    ap.add_argument("--peers-python", type=Path, default=ROOT / ".venv-peers/bin/python")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/rounding_tiny")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.time()
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    model, _ = load_model(args.model)
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
    _tasks, texts = read_eval_set(args.eval_set, tok)
    held = [torch.tensor(encode(tok, t)[: args.seq_len]) for t in texts[: args.max_texts]]
    held = [r for r in held if r.numel() > 1]
    base = base_logprobs(model, held)

    formats = [Format.INT4_W4A16, Format.FP8_W8A8, Format.INT8_W8A8, Format.BF16]
    opts = ScoringOptions(
        formats=formats,
        profile=args.profile,
        group_size=args.group_size,
        micro_batch=4,
        quant_dtype=qdtype,
        progress=False,
    )
    t = time.time()
    scores = score(parts, groups, ids, opts, [SensitivityMethod.FISHER]).scores[
        SensitivityMethod.FISHER
    ]
    score_s = time.time() - t
    del model, parts

    def make_plan(budget: float | None, pins: list[tuple[str, Format]]) -> PlanResult:
        return plan(
            PlanRequest(
                groups=groups,
                scores=scores,
                profile=get_profile(args.profile),
                budget=Budget(fraction_of_16bit=budget or 1.0),
                allowed_formats=formats,
                overrides=pins,
                allow_non_native=True,
                group_size=args.group_size,
                curve_points=0,
            )
        )

    rows: list[dict[str, Any]] = []

    def measure(name: str, method: str, p: PlanResult, rounding: Rounding) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            export(
                args.model,
                p.model_copy(update={"rounding": rounding}),
                Path(tmp) / "ckpt",
                input_ids=ids,
                device=dev,
            )
            wall = time.perf_counter() - t
            q = load_quantized(Path(tmp) / "ckpt", dtype=torch.float32)
            m = compare(q, held, base)
        row = {
            "config": name,
            "method": method,
            "bytes": p.total_bytes,
            "fraction_of_16bit": round(p.fraction_of_16bit, 4),
            "effective_bits": round(p.effective_bits, 3),
            "seconds": round(wall, 2),
            **{k: round(v, 6) for k, v in m.items()},
        }
        print(json.dumps(row), flush=True)
        rows.append(row)

    mlp = r"\.mlp\."
    attn = r"\.self_attn\."
    uniform = make_plan(None, [(mlp, Format.INT4_W4A16), (attn, Format.INT4_W4A16)])
    recipe = make_plan(None, [(mlp, Format.INT4_W4A16), (attn, Format.FP8_W8A8)])
    rows.append(
        {
            "config": "bf16 (reference)",
            "method": "16-bit",
            "bytes": recipe.bytes_16bit,
            "fraction_of_16bit": 1.0,
            "effective_bits": 16.0,
            "seconds": 0.0,
            **{
                k: round(v, 6)
                for k, v in compare(load_model(args.model)[0].float(), held, base).items()
            },
        }
    )
    for rname, rnd in (("RTN", RTN), ("GPTQ", GPTQ4)):
        measure("uniform int4-w4a16", f"uniform {rname}", uniform, rnd)
        measure("recipe int4 MLP + fp8 attn", f"recipe {rname}", recipe, rnd)
    at_recipe = make_plan(recipe.total_bytes / recipe.bytes_16bit, [])
    for rname, rnd in (("RTN", RTN), ("GPTQ", GPTQ4), ("GPTQ int4+int8", GPTQ48)):
        measure("SAMP @ recipe bytes", f"SAMP {rname}", at_recipe, rnd)
    for frac in [float(x) for x in args.sweep.split(",") if x]:
        try:
            p = make_plan(frac, [])
        except ValueError as e:
            print(f"sweep {frac}: {e}", file=sys.stderr)
            continue
        for rname, rnd in (("RTN", RTN), ("GPTQ", GPTQ4)):
            measure(f"SAMP sweep {frac:.2f}", f"SAMP {rname}", p, rnd)

    peers: list[dict[str, Any]] = []
    if args.peers_python.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data.pt"
            torch.save({"calibration": ids, "held_out": held}, data)
            for scheme, like in (("uniform-w4a16", uniform), ("recipe", recipe)):
                cmd = [
                    str(args.peers_python),
                    str(Path(__file__).with_name("peer_llmcompressor.py")),
                    "--model",
                    str(args.model),
                    "--data",
                    str(data),
                    "--scheme",
                    scheme,
                    "--group-size",
                    str(args.group_size),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = next(
                    (x for x in proc.stdout.splitlines() if x.startswith("PEER ")), None
                )
                if line is None:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    continue
                r = json.loads(line[5:])
                row = {
                    "config": "uniform int4-w4a16" if scheme == "uniform-w4a16" else
                    "recipe int4 MLP + fp8 attn",
                    "method": f"llm-compressor GPTQ {scheme}",
                    "bytes": like.total_bytes,
                    "fraction_of_16bit": round(like.fraction_of_16bit, 4),
                    "effective_bits": round(like.effective_bits, 3),
                    "seconds": r["seconds"],
                    **{k: round(r[k], 6) for k in ("perplexity", "mean_kl", "top1_agreement")},
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
                peers.append(row)
    else:
        print(f"no peers environment at {args.peers_python}: run `make peers`", file=sys.stderr)

    result = {
        "command": " ".join(
            ["python", "tests/benchmarks/bench_rounding.py", *(argv or sys.argv[1:])]
        ),
        "model": str(args.model),
        "profile": args.profile,
        "group_size": args.group_size,
        "device": str(dev),
        "calibration_tokens": int(ids.numel()),
        "held_out_texts": len(held),
        "held_out_tokens": int(sum(r.numel() - 1 for r in held)),
        "fisher_scoring_seconds": round(score_s, 1),
        "rows": rows,
        "wall_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    args.out.with_suffix(".svg").write_text(svg(rows))
    print(render(result))
    return 0


def render(r: dict[str, Any]) -> str:
    ref = r["rows"][0]["perplexity"]
    lines = [
        f"# Rounding benchmark: {Path(r['model']).name}, profile {r['profile']}, "
        f"group size {r['group_size']}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Device {r['device']}; calibration tokens {r['calibration_tokens']}; held-out texts "
        f"{r['held_out_texts']} ({r['held_out_tokens']} tokens); fisher scoring "
        f"{r['fisher_scoring_seconds']} s; total {r['wall_seconds']} s; torch {r['torch']}. "
        "`seconds` is the export's wall time (SAMP: the whole export incl. GPTQ; "
        "llm-compressor: `oneshot`).",
        "",
        "| config | method | bits | of 16-bit | perplexity | Δppl | mean KL | top-1 | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['config']} | {x['method']} | {x['effective_bits']:.2f} | "
            f"{x['fraction_of_16bit']:.3f} | {x['perplexity']:.3f} | "
            f"{100 * (x['perplexity'] / ref - 1):+.2f}% | {x['mean_kl']:.5f} | "
            f"{x['top1_agreement']:.4f} | {x['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def svg(rows: list[dict[str, Any]], w: int = 640, h: int = 420) -> str:
    """Bytes (fraction of 16-bit) vs held-out perplexity, one series per method."""
    pts = [x for x in rows if x["method"] != "16-bit"]
    ref = rows[0]["perplexity"]
    series: dict[str, list[tuple[float, float]]] = {}
    for x in pts:
        series.setdefault(x["method"], []).append((x["fraction_of_16bit"], x["perplexity"]))
    xs = [p[0] for s in series.values() for p in s]
    ys = [p[1] for s in series.values() for p in s] + [ref]
    x0, x1 = min(xs) - 0.01, max(xs) + 0.01
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    L, R, T, B = 70, 210, 20, 50

    def px(v: float) -> float:
        return L + (v - x0) / (x1 - x0) * (w - L - R)

    def py(v: float) -> float:
        return h - B - (v - y0) / (y1 - y0) * (h - T - B)

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
              "#7f7f7f", "#17becf", "#bcbd22"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<line x1="{L}" y1="{h - B}" x2="{w - R}" y2="{h - B}" stroke="black"/>',
        f'<line x1="{L}" y1="{T}" x2="{L}" y2="{h - B}" stroke="black"/>',
        f'<text x="{(L + w - R) / 2}" y="{h - 12}" text-anchor="middle">weight bytes '
        "(fraction of 16-bit)</text>",
        f'<text x="14" y="{(T + h - B) / 2}" transform="rotate(-90 14 {(T + h - B) / 2})" '
        'text-anchor="middle">held-out perplexity</text>',
        f'<line x1="{L}" y1="{py(ref):.1f}" x2="{w - R}" y2="{py(ref):.1f}" stroke="gray" '
        'stroke-dasharray="4 3"/>',
        f'<text x="{w - R - 4}" y="{py(ref) - 4:.1f}" text-anchor="end" fill="gray">16-bit</text>',
    ]
    for i in range(5):
        xv = x0 + (x1 - x0) * i / 4
        yv = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{px(xv):.1f}" y="{h - B + 15}" text-anchor="middle">{xv:.2f}</text>')
        out.append(f'<text x="{L - 5}" y="{py(yv) + 4:.1f}" text-anchor="end">{yv:.2f}</text>')
    for k, (name, s) in enumerate(sorted(series.items())):
        c = colors[k % len(colors)]
        ordered = sorted(s)
        if len(ordered) > 1:
            path = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in ordered)
            out.append(f'<polyline points="{path}" fill="none" stroke="{c}"/>')
        for a, b in ordered:
            out.append(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="{c}"/>')
        ly = T + 14 * k + 10
        out.append(f'<circle cx="{w - R + 12}" cy="{ly - 4}" r="4" fill="{c}"/>')
        out.append(f'<text x="{w - R + 20}" y="{ly}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
