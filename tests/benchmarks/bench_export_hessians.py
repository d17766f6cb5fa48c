"""Benchmark: export with GPTQ from the sensitivity pass's Hessians vs its own calibration pass.

On one model and one plan (SAMP at the fixed recipe's bytes, GPTQ on the 4-bit groups):
fisher scoring without and with Hessian collection, the Hessian file's size, then the
export both ways (``input_ids``: export's layer-by-layer pass on inputs from already
quantized layers; ``hessians``: the stored 16-bit-input Hessians, no forward pass), each
checkpoint reloaded and scored on held-out text. Prints one JSON document.

    python tests/benchmarks/bench_export_hessians.py \
        --out tests/benchmarks/results/export_hessians_tiny_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("operator", "jobs"):
    sys.path.insert(0, str(ROOT / _sub))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_score_rounding import FORMATS  # noqa: E402
from rounding_eval import base_logprobs, compare  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from samp_core.formats import Format, SensitivityMethod  # noqa: E402
from samp_core.hardware import get_profile  # noqa: E402
from samp_core.planner import Budget, PlanRequest, plan  # noqa: E402
from samp_core.results import Rounding  # noqa: E402
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
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    model, _ = load_model(args.model)
    qd = next(model.parameters()).dtype
    model.float()
    parts = decoder_parts(model)
    groups = discover_groups(parts)
    tok = AutoTokenizer.from_pretrained(args.model)
    opts_cal = CalibrationOptions(
        source=str(args.prompts), samples=100_000, max_sequence_length=args.seq_len, seed=0
    )
    ids = build_calibration(opts_cal, tok).input_ids[: args.calib_seqs]
    _t, texts = read_eval_set(args.eval_set, tok)
    held = [torch.tensor(encode(tok, t)[: args.seq_len]) for t in texts[:120]]
    held = [r for r in held if r.numel() > 1]
    base = base_logprobs(model, held)
    gs = args.group_size
    opts = ScoringOptions(formats=FORMATS, group_size=gs, quant_dtype=qd, progress=False)
    fisher = [SensitivityMethod.FISHER]
    t = time.perf_counter()
    score(parts, groups, ids, opts, fisher)
    plain_s = time.perf_counter() - t
    cands = {g.name: candidate_formats(g, FORMATS, gs) for g in groups}
    opts.hessians = collector_for(groups, cands, Rounding(), model, opts.device)
    t = time.perf_counter()
    scores = score(parts, groups, ids, opts, fisher).scores[SensitivityMethod.FISHER]
    with_s = time.perf_counter() - t
    req = {
        "groups": groups,
        "scores": scores,
        "profile": get_profile("sm90"),
        "allowed_formats": FORMATS,
        "allow_non_native": True,
        "group_size": gs,
        "curve_points": 0,
        "rounding": Rounding(),
    }
    pins = [(r"\.mlp\.", Format.INT4_W4A16), (r"\.self_attn\.", Format.FP8_W8A8)]
    recipe = plan(PlanRequest(budget=Budget(fraction_of_16bit=1.0), overrides=pins, **req))
    p = plan(PlanRequest(budget=Budget(fraction_of_16bit=recipe.fraction_of_16bit), **req))
    out: dict[str, object] = {
        "command": "python tests/benchmarks/bench_export_hessians.py "
        + " ".join(argv or sys.argv[1:]),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "calibration_tokens": int(ids.numel()),
        "fraction_of_16bit": round(p.fraction_of_16bit, 4),
        "gptq_modules": len(p.gptq_modules()),
        "fisher_seconds": round(plain_s, 2),
        "fisher_with_hessians_seconds": round(with_s, 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        hfile = Path(tmp) / HESSIANS_FILE
        t = time.perf_counter()
        out["hessian_bytes"] = opts.hessians.save(hfile)
        out["hessian_write_seconds"] = round(time.perf_counter() - t, 3)
        for name, kw in (("calibration pass", {"input_ids": ids}), ("stored", {"hessians": hfile})):
            t = time.perf_counter()
            res = export(args.model, p, Path(tmp) / "ckpt", **kw)  # type: ignore[arg-type]
            wall = time.perf_counter() - t
            m = compare(load_quantized(Path(tmp) / "ckpt", dtype=torch.float32), held, base)
            out[f"export ({name})"] = {
                "seconds": round(wall, 2),
                "gptq_seconds": round((res.phase_seconds or {}).get("gptq", 0.0), 2),
                **{k: round(v, 6) for k, v in m.items()},
            }
    out["perplexity_16bit"] = round(compare(model, held, base)["perplexity"], 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
