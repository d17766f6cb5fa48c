"""Time each format's matmul on the GPU and write the MeasuredCosts the planner reads.

Shapes are the four Linear groups of a Llama-3-8B decoder layer (fused q/k/v,
o, fused gate/up, down), at decode (``--decode-tokens``, default 16) and
prefill (``--prefill-tokens``, default 8192) token counts. Per format:

- ``bf16``: ``x @ w.T`` (cuBLAS).
- ``fp8-w8a8``: ``torch._scaled_mm`` with row-wise scales (cuBLASLt fp8 tensor
  cores) on activations quantized per token outside the timed region (vLLM fuses
  that quantization into one kernel); the time with torch's eager, unfused
  quantization timed in is recorded too (``fp8_ms``).
- ``int8-w8a8``: ``torch._int_mm`` (int32 accumulate), likewise (``int8_ms`` with
  quantization and rescale timed in).
- ``int4-w4a16``: the fastest of what torch offers: ``torch._weight_int4pack_mm``
  (tinygemm, group size 128, a fused dequantize-and-multiply kernel) and a
  plain "dequantize to bf16, then cuBLAS" fallback; both are recorded.

Formats with no kernel in torch/triton (int4-w4a8, nvfp4 on sm90, bitsandbytes
nf4 when bitsandbytes is absent) are left out of ``relativeCost``, so their
assumed cost stays (MeasuredCosts: "formats it could not run are simply
absent"). Relative cost = summed decode time over the four shapes / bf16's.
The vLLM serving kernels (Machete, CUTLASS W8A8) are not in the image; these
torch kernels are the nearest stand-ins, so the figures are what torch gives on
this GPU, not vLLM's.

Usage (GPU machine, repository root):
    python tests/benchmarks/gpu_matmul_costs.py --out operator/samp_core/profiles/sm90.measured.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

# Llama-3-8B decoder layer: (in_features, out_features) of each fused group.
SHAPES_8B: list[tuple[int, int]] = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
GROUP = 128


def bench(fn: Callable[[], Any]) -> float:
    """Median milliseconds (events, warm-up first) via triton.testing.do_bench."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def fp8_quant(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / torch.finfo(torch.float8_e4m3fn).max
    return (t.float() / scale).to(torch.float8_e4m3fn), scale


def int8_quant(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / 127.0
    return (t.float() / scale).round().clamp(-128, 127).to(torch.int8), scale


def int4_group(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per group of 128 along in_features: (codes int in [-8,7], scales)."""
    n, k = w.shape
    g = w.float().reshape(n, k // GROUP, GROUP)
    scale = g.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 7.0
    q = (g / scale).round().clamp(-8, 7)
    return q.reshape(n, k), scale.squeeze(-1)


def shape_case(m: int, k: int, n: int) -> dict[str, Any]:
    dev = torch.device("cuda")
    torch.manual_seed(m * 7 + k + n)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    ref = x.float() @ w.float().t()
    out: dict[str, Any] = {"m": m, "k": k, "n": n}
    out["bf16_ms"] = bench(lambda: x @ w.t())
    out["bf16_err"] = rel_err(x @ w.t(), ref)
    # FP8 W8A8: weight quantized offline, activation quantized per token inside the timing.
    wq, ws = fp8_quant(w)
    ws_t = ws.t().contiguous()  # [1, n]
    mp = max(16, (m + 15) // 16 * 16)  # _scaled_mm wants dims that are multiples of 16
    xp = x if mp == m else torch.nn.functional.pad(x, (0, 0, 0, mp - m))

    def fp8() -> torch.Tensor:
        xq, xs = fp8_quant(xp)
        return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws_t, out_dtype=torch.bfloat16)

    out["fp8_ms"] = bench(fp8)
    xq_pre, xs_pre = fp8_quant(xp)
    out["fp8_mm_only_ms"] = bench(
        lambda: torch._scaled_mm(
            xq_pre, wq.t(), scale_a=xs_pre, scale_b=ws_t, out_dtype=torch.bfloat16
        )
    )
    out["fp8_err"] = rel_err(fp8()[:m], ref)
    wq8, ws8 = int8_quant(w)

    def int8() -> torch.Tensor:
        xq, xs = int8_quant(xp if mp >= 17 else torch.nn.functional.pad(x, (0, 0, 0, 17 - m)))
        acc = torch._int_mm(xq, wq8.t())
        return (acc.float() * xs * ws8.t()).to(torch.bfloat16)

    try:
        out["int8_ms"] = bench(int8)
        xi, _ = int8_quant(xp if mp >= 17 else torch.nn.functional.pad(x, (0, 0, 0, 17 - m)))
        out["int8_mm_only_ms"] = bench(lambda: torch._int_mm(xi, wq8.t()))
        out["int8_err"] = rel_err(int8()[:m], ref)
    except RuntimeError as e:  # _int_mm shape rules differ between versions
        out["int8_error"] = str(e)[:200]
    codes, scales = int4_group(w)
    wdq = (codes.reshape(n, k // GROUP, GROUP) * scales.unsqueeze(-1)).reshape(n, k)
    ref4 = x.float() @ wdq.t()
    packed_u8 = codes.to(torch.int16).add(8).to(torch.uint8)  # [n, k] values 0..15
    # Plain dequantize-then-cuBLAS (what any GPU can do with torch alone).
    nib = (packed_u8[:, ::2] | (packed_u8[:, 1::2] << 4)).contiguous()
    sc_bf = scales.to(torch.bfloat16)

    def deq_mm() -> torch.Tensor:
        lo = (nib & 0xF).to(torch.bfloat16) - 8
        hi = (nib >> 4).to(torch.bfloat16) - 8
        wd = torch.stack((lo, hi), -1).reshape(n, k // GROUP, GROUP) * sc_bf.unsqueeze(-1)
        return x @ wd.reshape(n, k).t()

    out["int4_dequant_mm_ms"] = bench(deq_mm)
    out["int4_dequant_mm_err"] = rel_err(deq_mm(), ref4)
    try:  # tinygemm: fused int4 dequant + matmul, w = (q - 8) * scale + zero, zero = 0
        hi_first = ((packed_u8[:, ::2] << 4) | packed_u8[:, 1::2]).contiguous()
        wpk = torch._convert_weight_to_int4pack(hi_first, 8)
        sz = torch.stack((scales.t(), torch.zeros_like(scales.t())), -1)
        sz = sz.to(torch.bfloat16).contiguous()  # [k/g, n, 2]

        def tiny() -> torch.Tensor:
            return torch._weight_int4pack_mm(x, wpk, GROUP, sz)

        err = rel_err(tiny(), ref4)
        out["int4_tinygemm_err"] = err
        if err < 5e-2:
            out["int4_tinygemm_ms"] = bench(tiny)
        else:
            out["int4_tinygemm_error"] = f"relative error {err:.3g} against the dequantized ref"
    except (RuntimeError, AttributeError) as e:
        out["int4_tinygemm_error"] = str(e)[:200]
    return out


def summarise(rows: list[dict[str, Any]], suffix: str = "_mm_only_ms") -> dict[str, float]:
    def total(key: str) -> float | None:
        vals = [r.get(key) for r in rows]
        return None if any(v is None for v in vals) else float(sum(vals))  # type: ignore[arg-type]

    bf = total("bf16_ms") or 1.0
    rel: dict[str, float] = {"bf16": 1.0}
    if (t := total("fp8" + suffix)) is not None:
        rel["fp8-w8a8"] = t / bf
    if (t := total("int8" + suffix)) is not None:
        rel["int8-w8a8"] = t / bf
    int4 = [t for t in (total("int4_tinygemm_ms"), total("int4_dequant_mm_ms")) if t is not None]
    if int4:
        rel["int4-w4a16"] = min(int4) / bf
    return {k: round(v, 4) for k, v in rel.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="MeasuredCosts JSON to write")
    ap.add_argument("--detail", type=Path, help="per-shape timings JSON")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--prefill-tokens", type=int, default=8192)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    cap = torch.cuda.get_device_capability()
    decode = [shape_case(args.decode_tokens, k, n) for k, n in SHAPES_8B]
    prefill = [shape_case(args.prefill_tokens, k, n) for k, n in SHAPES_8B]
    rel_decode, rel_prefill = summarise(decode), summarise(prefill)
    rel_decode_unfused = summarise(decode, "_ms")
    device = torch.cuda.get_device_name(0)
    doc = {
        "apiVersion": "samp.dev/v1alpha1",
        "kind": "KernelBenchmark",
        "profile": f"sm{cap[0]}{cap[1]}",
        "device": device,
        "batchTokens": args.decode_tokens,
        "shapes": [list(s) for s in SHAPES_8B],
        "relativeCost": rel_decode,
        "createdAt": datetime.now(UTC).isoformat(),
        "notes": (
            f"tests/benchmarks/gpu_matmul_costs.py on {device}, torch {torch.__version__}: "
            f"median decode matmul time over Llama-3-8B layer shapes at "
            f"{args.decode_tokens} tokens relative to bf16; fp8 = torch._scaled_mm, int8 = "
            "torch._int_mm (activations quantized outside the timing: vLLM fuses that "
            "per-token quant into one kernel; with torch's unfused eager quant timed in: "
            f"{json.dumps(rel_decode_unfused)}), int4-w4a16 = "
            "fastest of torch._weight_int4pack_mm (tinygemm) and dequantize+cuBLAS. "
            f"Prefill ({args.prefill_tokens} tokens) relative: {json.dumps(rel_prefill)}"
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if args.detail:
        detail = {
            "device": device,
            "torch": torch.__version__,
            "decode": decode,
            "prefill": prefill,
            "relative_decode": rel_decode,
            "relative_decode_with_unfused_act_quant": rel_decode_unfused,
            "relative_prefill": rel_prefill,
        }
        args.detail.write_text(json.dumps(detail, indent=2) + "\n")
    print("decode relative", rel_decode, "prefill relative", rel_prefill, flush=True)
    for r in decode + prefill:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
