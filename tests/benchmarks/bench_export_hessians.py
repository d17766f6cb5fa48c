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
from rounding_eval import compare
from tiny_setup import TinySetup, add_setup_arguments  # puts operator/, jobs/ on sys.path

from samp_core.formats import SensitivityMethod
from samp_jobs.evaluate import load_quantized
from samp_jobs.export import export
from samp_jobs.hessians import HESSIANS_FILE
from samp_jobs.sensitivity import score


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(ap)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    setup = TinySetup.load(args)
    model, held, base, ids = setup.model, setup.held, setup.base, setup.ids
    fisher = [SensitivityMethod.FISHER]
    opts = setup.scoring_options()
    t = time.perf_counter()
    score(setup.parts, setup.groups, ids, opts, fisher)
    plain_s = time.perf_counter() - t
    by_method, hessians, with_s = setup.scores_with_hessians(opts, fisher)
    scores = by_method[SensitivityMethod.FISHER]
    p = setup.plan_at(scores, setup.recipe_fraction(scores))
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
        out["hessian_bytes"] = hessians.save(hfile)
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
