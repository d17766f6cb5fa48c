"""Time each format's matmul on the GPU and write the MeasuredCosts the planner reads.

Shapes are the four Linear groups of a Llama-3-8B decoder layer (fused q/k/v,
o, fused gate/up, down), at decode (``--decode-tokens``, default 16) and
prefill (``--prefill-tokens``, default 8192) token counts. Per format:

- ``bf16``: ``x @ w.T`` (cuBLAS).
- ``fp8-w8a8``: ``torch._scaled_mm`` with row-wise scales (cuBLASLt fp8 tensor
  cores). Timed three ways: the matmul alone on pre-quantized activations
  (``fp8_mm_only_ms``); with torch's eager, unfused per-token quantization
  (``fp8_ms``); and with the fused Triton per-token quantization kernel of
  ``triton_w4a16.py`` (``fp8_fusedq_ms``: one quantization pass, then the
  matmul, as vLLM runs it). **The shipped cost is "matmul + fused Triton quant"**
  (``*_fusedq_ms``); the other two go to the ``--detail`` file and the notes.
- ``int8-w8a8``: ``torch._int_mm`` (int32 accumulate), likewise (``int8_ms`` with
  torch's eager quantization and rescale, ``int8_fusedq_ms`` = fused Triton
  quantization + ``_int_mm``). The int32 -> bf16 rescale is not in the shipped
  figure, as in ``int8_mm_only_ms``: vLLM's W8A8 GEMM does it in its epilogue.
- ``int4-w4a16``: the fastest correct of ``torch._weight_int4pack_mm`` (tinygemm,
  group size 128), a plain "dequantize to bf16, then cuBLAS" fallback, and the
  Triton W4A16 kernel of ``triton_w4a16.py`` (fused dequantize-and-multiply,
  split-K at decode; its config is tuned per shape over a handful of
  candidates). All three are recorded. Weights are quantized with the
  arithmetic of ``samp_jobs.fakequant.int_qdq(w, 4, 128)``.

Correctness comes first: at start ``triton_w4a16.selfcheck`` runs on the GPU
(small shapes), and before any kernel is timed on a benchmark shape its output
is compared with the fp32 product of the dequantized operands. A kernel (or a
Triton config) whose relative error is not below 1e-2 is not timed; its error
is recorded in ``--detail`` instead, so it can never set a cost.

Formats with no kernel here (int4-w4a8, nvfp4 on sm90, bitsandbytes nf4 when
bitsandbytes is absent) are left out of ``relativeCost``, so their assumed
cost stays (MeasuredCosts: "formats it could not run are simply absent"); so
are fp8/int8 if the fused quantization kernel fails its check. Relative cost =
summed decode time over the four shapes / bf16's. The vLLM serving kernels
(Machete, Marlin, CUTLASS W8A8) are not in the image; these torch and Triton
kernels are the nearest stand-ins, so the figures are what they give on this
GPU, not vLLM's.

Usage (GPU machine with torch and triton, repository root; the shipped file is
``operator/samp_core/profiles/sm90.measured.json``):
    python tests/benchmarks/gpu_matmul_costs.py --out sm90.measured.json --detail detail.json
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
import triton
import triton_w4a16 as tw  # this directory is on sys.path when the script runs

# Llama-3-8B decoder layer: (in_features, out_features) of each fused group.
SHAPES_8B: list[tuple[int, int]] = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
GROUP = tw.GROUP
MAX_ERR = tw.MAX_ERR
# int4-w4a16 variants: name -> per-shape time key. The format's cost is the fastest
# variant that passed the check on every shape.
INT4_VARIANTS = {
    "tinygemm": "int4_tinygemm_ms",
    "dequant_mm": "int4_dequant_mm_ms",
    "triton": "int4_triton_ms",
}
rel_err = tw.rel_err


def bench(fn: Callable[[], Any]) -> float:
    """Median milliseconds (events, warm-up first) via triton.testing.do_bench."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def fp8_quant(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return tw.ref_quant_per_token(t, torch.float8_e4m3fn)


def int8_quant(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return tw.ref_quant_per_token(t, torch.int8)


def checked_time(
    out: dict[str, Any],
    key: str,
    fn: Callable[[], torch.Tensor],
    ref: torch.Tensor,
    result: Callable[[torch.Tensor], torch.Tensor] = lambda y: y,
) -> None:
    """Time ``fn`` as ``<key>_ms`` only if ``result(fn())`` matches ``ref`` (fp32,
    first rows) to MAX_ERR; otherwise record ``<key>_error`` and no time."""
    try:
        y = result(fn())[: ref.shape[0]]
    except Exception as e:  # no kernel for this shape, or a Triton compile error
        out[f"{key}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return
    err = out[f"{key}_err"] = rel_err(y, ref)
    if err < MAX_ERR:
        out[f"{key}_ms"] = bench(fn)
    else:  # also NaN
        out[f"{key}_error"] = (
            f"relative error {err:.3g} >= {MAX_ERR} against the fp32 product of the "
            "dequantized operands: not timed"
        )


def shape_case(m: int, k: int, n: int, triton_ok: dict[str, bool]) -> dict[str, Any]:
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
    if triton_ok["fp8"]:

        def fp8_fused() -> torch.Tensor:
            xq, xs = tw.quant_per_token(xp, torch.float8_e4m3fn)
            return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws_t, out_dtype=torch.bfloat16)

        # Reference: fp32 product of torch's quantized-then-dequantized operands.
        ref_fp8 = (xq_pre.float() * xs_pre)[:m] @ (wq.float() * ws).t()
        checked_time(out, "fp8_fusedq", fp8_fused, ref_fp8)
        if "fp8_fusedq_ms" in out:
            out["fp8_quant_only_ms"] = bench(lambda: tw.quant_per_token(xp, torch.float8_e4m3fn))
    else:
        out["fp8_fusedq_error"] = "the fused fp8 quantization kernel failed the selfcheck"
    wq8, ws8 = int8_quant(w)
    xi_in = xp if mp >= 17 else torch.nn.functional.pad(x, (0, 0, 0, 17 - m))  # _int_mm: M > 16

    def int8() -> torch.Tensor:
        xq, xs = int8_quant(xi_in)
        acc = torch._int_mm(xq, wq8.t())
        return (acc.float() * xs * ws8.t()).to(torch.bfloat16)

    try:
        out["int8_ms"] = bench(int8)
        xi, xis = int8_quant(xi_in)
        out["int8_mm_only_ms"] = bench(lambda: torch._int_mm(xi, wq8.t()))
        out["int8_err"] = rel_err(int8()[:m], ref)
    except RuntimeError as e:  # _int_mm shape rules differ between versions
        out["int8_error"] = str(e)[:200]
    if "int8_error" in out:
        out["int8_fusedq_error"] = "torch._int_mm did not run"
    elif triton_ok["int8"]:
        quant_scales: list[torch.Tensor] = []

        def int8_fused() -> torch.Tensor:
            xq, xs = tw.quant_per_token(xi_in, torch.int8)
            quant_scales[:] = [xs]  # for the check's rescale, outside the timed op
            return torch._int_mm(xq, wq8.t())

        ref_int8 = (xi.float() * xis)[:m] @ (wq8.float() * ws8).t()
        checked_time(
            out,
            "int8_fusedq",
            int8_fused,
            ref_int8,
            result=lambda acc: acc.float() * quant_scales[0] * ws8.t(),
        )
        if "int8_fusedq_ms" in out:
            out["int8_quant_only_ms"] = bench(lambda: tw.quant_per_token(xi_in, torch.int8))
    else:
        out["int8_fusedq_error"] = "the fused int8 quantization kernel failed the selfcheck"
    # INT4 W4A16, group 128, int_qdq arithmetic. Every variant is checked against
    # the fp32 product of the dequantized weight before it is timed.
    codes, scales = tw.quantize_int4(w)  # int8 codes in [-8, 7], bf16 scales [n, k/128]
    ref4 = x.float() @ tw.dequantize_int4(codes, scales).t()
    packed_u8 = codes.to(torch.int16).add(8).to(torch.uint8)  # [n, k] values 0..15
    # Plain dequantize-then-cuBLAS (what any GPU can do with torch alone).
    nib = (packed_u8[:, ::2] | (packed_u8[:, 1::2] << 4)).contiguous()

    def deq_mm() -> torch.Tensor:
        lo = (nib & 0xF).to(torch.bfloat16) - 8
        hi = (nib >> 4).to(torch.bfloat16) - 8
        wd = torch.stack((lo, hi), -1).reshape(n, k // GROUP, GROUP) * scales.unsqueeze(-1)
        return x @ wd.reshape(n, k).t()

    checked_time(out, "int4_dequant_mm", deq_mm, ref4)
    # tinygemm: fused int4 dequant + matmul, w = (q - 8) * scale + zero, zero = 0
    try:
        hi_first = ((packed_u8[:, ::2] << 4) | packed_u8[:, 1::2]).contiguous()
        wpk = torch._convert_weight_to_int4pack(hi_first, 8)
        sz = torch.stack((scales.t(), torch.zeros_like(scales.t())), -1)
        sz = sz.to(torch.bfloat16).contiguous()  # [k/g, n, 2]
    except (RuntimeError, AttributeError) as e:
        out["int4_tinygemm_error"] = str(e)[:200]
    else:
        checked_time(
            out, "int4_tinygemm", lambda: torch._weight_int4pack_mm(x, wpk, GROUP, sz), ref4
        )
    # Triton W4A16: every candidate config is checked, then timed; the fastest wins.
    if triton_ok["w4a16"]:
        wt = tw.pack_int4(codes, scales)
        cfg, tuning = tw.tune_w4a16(x, wt, ref4, bench)
        out["int4_triton_tuning"] = tuning
        if cfg is None:
            out["int4_triton_error"] = "no config passed the check (see int4_triton_tuning)"
        else:
            out["int4_triton_config"] = cfg.name
            out["int4_triton_err"] = next(r["err"] for r in tuning if r["config"] == cfg.name)
            # Timed again on its own so the winner's figure is not the min of a noisy search.
            out["int4_triton_ms"] = bench(lambda: tw.w4a16_matmul(x, wt, cfg))
    else:
        out["int4_triton_error"] = "the Triton W4A16 kernel failed the selfcheck"
    return out


def _total(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r.get(key) for r in rows]
    return None if any(v is None for v in vals) else float(sum(vals))  # type: ignore[arg-type]


def int4_variants(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Relative cost of each int4-w4a16 variant that passed its check on every shape."""
    bf = _total(rows, "bf16_ms") or 1.0
    found = {name: _total(rows, key) for name, key in INT4_VARIANTS.items()}
    return {name: round(t / bf, 4) for name, t in found.items() if t is not None}


def summarise(rows: list[dict[str, Any]], suffix: str = "_fusedq_ms") -> dict[str, float]:
    """bf16-relative costs; ``suffix`` picks the fp8/int8 timing (fused quant by default)."""
    bf = _total(rows, "bf16_ms") or 1.0
    rel: dict[str, float] = {"bf16": 1.0}
    if (t := _total(rows, "fp8" + suffix)) is not None:
        rel["fp8-w8a8"] = t / bf
    if (t := _total(rows, "int8" + suffix)) is not None:
        rel["int8-w8a8"] = t / bf
    if int4 := int4_variants(rows):
        rel["int4-w4a16"] = min(int4.values())
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
    # Triton kernels are checked on small shapes first; a part that fails is not
    # timed at all (and each kernel is checked again on every benchmark shape).
    print("triton selfcheck (small shapes):", flush=True)
    triton_ok = tw.selfcheck(torch.device("cuda"), full=False)
    print("triton selfcheck:", triton_ok, flush=True)
    decode = [shape_case(args.decode_tokens, k, n, triton_ok) for k, n in SHAPES_8B]
    prefill = [shape_case(args.prefill_tokens, k, n, triton_ok) for k, n in SHAPES_8B]
    rel_decode, rel_prefill = summarise(decode), summarise(prefill)
    rel_decode_mm_only = summarise(decode, "_mm_only_ms")
    rel_decode_unfused = summarise(decode, "_ms")
    int4_decode, int4_prefill = int4_variants(decode), int4_variants(prefill)
    missing = [f for f in ("fp8-w8a8", "int8-w8a8", "int4-w4a16") if f not in rel_decode]
    if missing:
        print(f"WARNING: no checked kernel for {missing}; their assumed costs stay", flush=True)
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
            f"tests/benchmarks/gpu_matmul_costs.py on {device}, torch {torch.__version__}, "
            f"triton {triton.__version__}: median decode matmul time over Llama-3-8B layer "
            f"shapes at {args.decode_tokens} tokens relative to bf16; fp8 = fused Triton "
            "per-token quant + torch._scaled_mm, int8 = fused Triton per-token quant + "
            "torch._int_mm (rescale left to the GEMM epilogue, as vLLM does); matmul only: "
            f"{json.dumps(rel_decode_mm_only)}; with torch's unfused eager quant: "
            f"{json.dumps(rel_decode_unfused)}. int4-w4a16 = fastest kernel that passed the "
            "check (rel. error < 1e-2 vs the fp32 product of the dequantized weight) of "
            f"{json.dumps(int4_decode)} (triton = fused dequant W4A16 kernel, split-K at "
            "decode, config tuned per shape). "
            f"Prefill ({args.prefill_tokens} tokens) relative: {json.dumps(rel_prefill)}, "
            f"int4 variants {json.dumps(int4_prefill)}"
            + (f". No checked kernel for {missing}: assumed costs stay" if missing else "")
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if args.detail:
        detail = {
            "device": device,
            "torch": torch.__version__,
            "triton": triton.__version__,
            "triton_selfcheck": triton_ok,
            "decode": decode,
            "prefill": prefill,
            "relative_decode": rel_decode,
            "relative_decode_mm_only": rel_decode_mm_only,
            "relative_decode_with_unfused_act_quant": rel_decode_unfused,
            "relative_decode_int4_variants": int4_decode,
            "relative_prefill": rel_prefill,
            "relative_prefill_mm_only": summarise(prefill, "_mm_only_ms"),
            "relative_prefill_with_unfused_act_quant": summarise(prefill, "_ms"),
            "relative_prefill_int4_variants": int4_prefill,
        }
        args.detail.parent.mkdir(parents=True, exist_ok=True)
        args.detail.write_text(json.dumps(detail, indent=2) + "\n")
    print("decode relative", rel_decode, "prefill relative", rel_prefill, flush=True)
    print("int4 variants decode", int4_decode, "prefill", int4_prefill, flush=True)
    for r in decode + prefill:
        print(
            {
                k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in r.items()
                if k != "int4_triton_tuning"
            }
        )
        for t in r.get("int4_triton_tuning", []):
            print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
