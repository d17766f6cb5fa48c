"""GPTQ speed on the four Linear groups of a Llama-3-8B (or -70B) layer (one H200): eager
column loop vs the CUDA-graph block vs the fused Triton block kernel (codes compared with
the graphed reference), plus what the sequential pass moves between host and GPU.

    python tests/benchmarks/gptq_speed.py --out $OUT/gptq_speed.json
    python tests/benchmarks/gptq_speed.py --shape 70b --no-eager --out $OUT/gptq_speed_70b.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "jobs"))
sys.path.insert(0, str(ROOT / "operator"))

from samp_jobs.gptq import HessianAccumulator, IntGrid, gptq_codes  # noqa: E402

# (name, rows = stacked outputs of the group, cols = in_features) per model shape, and its layers
SHAPES = {
    "8b": [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096),
           ("down", 4096, 14336)],
    "70b": [("qkv", 10240, 8192), ("o", 8192, 8192), ("gate_up", 57344, 8192),
            ("down", 8192, 28672)],
}
LAYERS = {"8b": 32, "70b": 80}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def measure(
    name: str, rows: int, cols: int, tokens: int, dev: torch.device, *, eager: bool = True
) -> dict[str, Any]:
    """Hessian, GPTQ (eager, graphed, fused) and Cholesky times for one group shape."""
    g = torch.Generator(device=dev).manual_seed(0)
    w = torch.randn(rows, cols, device=dev, generator=g) * 0.02
    x = torch.randn(tokens, cols, device=dev, generator=g, dtype=torch.bfloat16)
    acc = HessianAccumulator(cols, dev)
    _, t_h = timed(lambda: [acc.add(c) for c in x.split(4096)])
    scale = w.reshape(rows, cols // 128, 128).abs().amax(-1) / 7.5
    zp = torch.zeros_like(scale)
    grid = IntGrid(4)
    gptq_codes(w[:256, :512], acc.h[:512, :512], scale[:256, :4], zp[:256, :4], grid)  # warm
    gptq_codes(w[:256, :512], acc.h[:512, :512], scale[:256, :4], zp[:256, :4], grid,
               fused=False)  # warm the graphed path too
    gptq_codes(w, acc.h, scale, zp, grid)  # Triton specialises on strides: build for this shape
    q_e, t_e = None, float("nan")
    if eager:  # minutes on the 70B shapes; the graphed loop is its bit-exact stand-in
        (q_e, _), t_e = timed(
            lambda: gptq_codes(w, acc.h, scale, zp, grid, cuda_graph=False, fused=False))
    (q_g, st_g), t_g = timed(
        lambda: gptq_codes(w, acc.h, scale, zp, grid, cuda_graph=True, fused=False))
    (q_f, st_f), t_f = timed(lambda: gptq_codes(w, acc.h, scale, zp, grid, fused=True))
    eye = torch.eye(cols, device=dev)
    _, t_chol = timed(lambda: torch.linalg.cholesky(acc.h + 0.01 * eye))
    row = {
        "group": name,
        "rows": rows,
        "cols": cols,
        "hessian_s_per_16k_tokens": round(t_h, 4),
        "eager_s": round(t_e, 3),
        "graph_s": round(t_g, 3),
        "fused_s": round(t_f, 4),
        "fused_codes_differing": int((q_f != q_g).sum()),
        "fused_loss_rel_diff": abs(st_f.loss - st_g.loss) / st_g.loss,
        "cholesky_s": round(t_chol, 4),
        "codes_equal": None if q_e is None else bool(torch.equal(q_e, q_g)),
        "loss_ratio_vs_rtn": round(st_g.loss / st_g.rtn_loss, 4),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--no-eager", action="store_true", help="skip the eager column loop")
    args = ap.parse_args()
    dev = torch.device("cuda")
    res: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "shape": args.shape}
    rows_out = [measure(name, rows, cols, args.tokens, dev, eager=not args.no_eager)
                for name, rows, cols in SHAPES[args.shape]]
    res["groups"] = rows_out
    n = LAYERS[args.shape]
    for kind in ("eager", "graph", "fused"):
        per_layer = sum(r[f"{kind}_s"] for r in rows_out)
        res[f"per_layer_{kind}_s"] = round(per_layer, 3)
        res[f"model_{n}_layers_{kind}_s"] = round(n * per_layer, 1)
    hidden = SHAPES[args.shape][1][2]
    host = torch.empty(64 * 2048 * hidden, dtype=torch.bfloat16)  # one layer's hidden states
    host.normal_()
    _, t_h2d = timed(lambda: host.to(dev))
    d = host.to(dev)
    _, t_d2h = timed(d.cpu)
    pinned = host.pin_memory()
    _, t_pin = timed(lambda: pinned.to(dev, non_blocking=True))
    res["hidden_bytes"] = host.numel() * 2
    res["hidden_layer_h2d_pageable_s"] = round(t_h2d, 3)
    res["hidden_layer_d2h_s"] = round(t_d2h, 3)
    res["hidden_layer_h2d_pinned_s"] = round(t_pin, 3)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
