"""NVIDIA ModelOpt ``auto_quantize`` on the rounding benchmark's own tokens (a peer).

ModelOpt searches FP8, INT8 and INT4 (AWQ, block 128) per layer group under an
effective-bits budget with its gradient (Fisher/Taylor) scores and a knapsack, then
calibrates (AWQ for INT4, max for FP8/INT8). Its model is fake-quantized in torch; it is
scored by the same teacher-forced code as every other row (rounding_eval.py) on the
same calibration and held-out token rows bench_rounding.py builds.

ModelOpt counts bits its own way (int4 as 4.0, scales not counted, 16-bit lm_head in the
total), so each row also carries the bytes of its choice under SAMP's accounting: the
chosen format per group re-planned through the SAMP planner as overrides. lm_head stays
16-bit (``disabled_layers``), as in every other row.

Runs where ModelOpt's quantizers run: CUDA (its INT4 AWQ and FP8 fake-quant kernels).

    python tests/benchmarks/peer_modelopt.py --model examples/tiny/model --bits 4.6,5.5,6.4 \
        --out $OUT/modelopt_tiny.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("operator", "jobs"):
    sys.path.insert(0, str(ROOT / _sub))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rounding_eval import base_logprobs, compare  # noqa: E402

FORMAT_OF = {"FP8": "fp8-w8a8", "INT8": "int8-w8a8", "INT4": "int4-w4a16"}


def benchmark_tokens(args: argparse.Namespace, tok: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Calibration rows and held-out rows exactly as bench_rounding.py builds them."""
    from samp_jobs.calibration import CalibrationOptions, build_calibration, encode
    from samp_jobs.evaluate import read_eval_set

    cal = build_calibration(
        CalibrationOptions(
            source=str(args.prompts),
            format="text",
            samples=100_000,
            max_sequence_length=args.seq_len,
            seed=0,
        ),
        tok,
    )
    _tasks, texts = read_eval_set(args.eval_set, tok)
    held = [torch.tensor(encode(tok, t)[: args.seq_len]) for t in texts[: args.max_texts]]
    return cal.input_ids[: args.calib_seqs], [r for r in held if r.numel() > 1]


def samp_accounting(model_dir: Path, chosen: dict[str, str], group_size: int) -> dict[str, Any]:
    """Bytes of ModelOpt's choice under SAMP's accounting (planner with one pin per group)."""
    from samp_core.formats import Format
    from samp_core.hardware import get_profile
    from samp_core.planner import Budget, PlanRequest, plan
    from samp_jobs.modeling import decoder_parts, discover_groups, load_model

    model, _ = load_model(model_dir)
    groups = discover_groups(decoder_parts(model))
    pins = []
    for g in groups:
        fmt = chosen.get(g.modules[0], "bf16")
        pins.append((f"^{re.escape(g.modules[0])}$", Format(fmt)))
    scores = {g.name: {f: 1.0 for f in Format if not f.is_unquantized} for g in groups}
    p = plan(
        PlanRequest(
            groups=groups,
            scores=scores,
            profile=get_profile("sm90"),
            budget=Budget(fraction_of_16bit=1.0),
            allowed_formats=[Format.INT4_W4A16, Format.FP8_W8A8, Format.INT8_W8A8, Format.BF16],
            overrides=pins,
            allow_non_native=True,
            group_size=group_size,
            curve_points=0,
        )
    )
    return {
        "bytes": p.total_bytes,
        "fraction_of_16bit": round(p.fraction_of_16bit, 4),
        "effective_bits": round(p.effective_bits, 3),
    }


def search(mtq: Any, model: Any, bits: float, batches: list[dict[str, Any]]) -> Any:
    """ModelOpt's search: gradient scores over FP8, INT8 and INT4-AWQ, lm_head left 16-bit."""
    return mtq.auto_quantize(
        model,
        constraints={"effective_bits": bits},
        quantization_formats=["FP8_DEFAULT_CFG", "INT8_DEFAULT_CFG", "INT4_AWQ_CFG"],
        data_loader=batches,
        forward_step=lambda m, b: m(**b),
        loss_func=lambda out, b: torch.nn.functional.cross_entropy(
            out.logits[:, :-1].flatten(0, 1).float(), b["input_ids"][:, 1:].flatten()
        ),
        disabled_layers=["*lm_head*"],
        num_calib_steps=len(batches),
        num_score_steps=len(batches),
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=ROOT / "examples/tiny/model")
    ap.add_argument("--prompts", type=Path, default=ROOT / "examples/tiny/prompts.jsonl")
    ap.add_argument("--eval-set", type=Path, default=ROOT / "examples/tiny/eval.jsonl")
    ap.add_argument("--calib-seqs", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-texts", type=int, default=120)
    ap.add_argument("--group-size", type=int, default=64, help="SAMP accounting only")
    ap.add_argument("--bits", default="4.6,5.5,6.4,7.2", help="ModelOpt effective_bits targets")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import modelopt
    import modelopt.torch.quantization as mtq
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    calib, held = benchmark_tokens(args, tok)
    dev = torch.device("cuda")
    held = [r.to(dev) for r in held]
    rows: list[dict[str, Any]] = []
    for bits in (float(b) for b in args.bits.split(",")):
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(dev)
        model.train(False)
        base = base_logprobs(model, held)
        batches = [{"input_ids": calib[i : i + 4].to(dev)} for i in range(0, len(calib), 4)]
        t = time.perf_counter()
        try:
            model, state = search(mtq, model, bits, batches)
        except ValueError as e:  # a budget under ModelOpt's reachable minimum
            print(f"target {bits}: {e}", flush=True)
            continue
        wall = time.perf_counter() - t
        chosen: dict[str, str] = {}
        raw: dict[str, str] = {}
        for name, fmt in state["best"]["recipe"].items():
            module = name.split(".quant_recipe")[0]
            raw[module] = str(fmt)
            kind = next((v for k, v in FORMAT_OF.items() if k in str(fmt).upper()), None)
            if kind is not None:
                chosen[module] = kind
        m = compare(model, held, base)
        row = {
            "method": "ModelOpt auto_quantize (FP8/INT8/INT4-AWQ)",
            "modelopt_effective_bits_target": bits,
            "modelopt_effective_bits": round(
                float(state["best"]["constraints"]["effective_bits"]), 3
            ),
            "satisfied": bool(state["best"]["is_satisfied"]),
            "seconds": round(wall, 2),
            **samp_accounting(args.model, chosen, args.group_size),
            **{k: round(v, 6) for k, v in m.items()},
            "formats": dict(sorted(raw.items())),
        }
        print("PEER " + json.dumps({k: v for k, v in row.items() if k != "formats"}), flush=True)
        rows.append(row)
        del model
        torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": "python tests/benchmarks/peer_modelopt.py " + " ".join(sys.argv[1:]),
        "modelopt": modelopt.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
        "calibration_tokens": int(calib.numel()),
        "rows": rows,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
