"""Run the job stages on a CUDA device and check them against the CPU.

What it shows (results in tests/benchmarks/results/device_check_<gpu>.json):
1. the tiny example scored on the GPU matches the CPU scores (rank and value);
2. a larger random Llama (default 8 layers of hidden 2048) is scored layer by
   layer with peak GPU memory well under the model's own size, and timed;
3. a W4A16 + FP8 plan exported on the GPU reloads with transformers on the GPU
   and reproduces the fake-quant logits.

Usage (on a machine with a GPU, repository root):
    python tests/benchmarks/device_check.py --out tests/benchmarks/results
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("operator", "jobs"):
    sys.path.insert(0, str(ROOT / _sub))

from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from samp_core.formats import Format, SensitivityMethod  # noqa: E402
from samp_core.hardware import get_profile  # noqa: E402
from samp_core.planner import Budget, PlanRequest, plan  # noqa: E402
from samp_jobs.calibration import CalibrationOptions, build_calibration  # noqa: E402
from samp_jobs.evaluate import load_quantized  # noqa: E402
from samp_jobs.export import export  # noqa: E402
from samp_jobs.modeling import decoder_parts, discover_groups, load_model  # noqa: E402
from samp_jobs.sensitivity import (  # noqa: E402
    ScoringOptions,
    make_quantizer,
    perturbed,
    score,
    spearman,
)

TINY = ROOT / "examples/tiny/model"
FORMATS = [Format.INT4_W4A16, Format.FP8_W8A8, Format.INT8_W8A8, Format.NVFP4, Format.BF16]
METHODS = [SensitivityMethod.ACTIVATION, SensitivityMethod.FISHER, SensitivityMethod.KL]


def scores_on(device: str, ids: torch.Tensor) -> dict[str, Any]:
    model, _ = load_model(TINY)
    if device == "cpu":
        model.float()
    parts = decoder_parts(model)
    groups = discover_groups(parts, torch.device(device))
    opts = ScoringOptions(
        formats=FORMATS, group_size=64, device=torch.device(device), progress=False
    )
    run = score(parts, groups, ids, opts, METHODS)
    return {"run": run, "groups": groups}


def compare_tiny(ids: torch.Tensor) -> dict[str, Any]:
    cpu, gpu = scores_on("cpu", ids), scores_on("cuda", ids)
    out: dict[str, Any] = {
        "gpu_seconds": round(gpu["run"].wall_seconds, 2),
        "cpu_seconds": round(cpu["run"].wall_seconds, 2),
        "gpu_peak_bytes": gpu["run"].peak_memory_bytes,
    }
    for m in METHODS:
        a, b = cpu["run"].scores[m], gpu["run"].scores[m]
        keys = [(g, f) for g in a for f in a[g]]
        va, vb = [a[g][f] for g, f in keys], [b[g][f] for g, f in keys]
        rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(va, vb, strict=True))
        out[m.value] = {
            "spearman_cpu_vs_gpu": round(spearman(va, vb), 4),
            "max_relative_difference": round(rel, 4),
        }
    return out


def big_model(tmp: Path, hidden: int, layers: int) -> Path:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(TINY)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=int(2.75 * hidden),
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=max(1, hidden // 512),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    out = tmp / "big"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_big(path: Path, ids: torch.Tensor) -> dict[str, Any]:
    dev = torch.device("cuda")
    model, _ = load_model(path)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    parts = decoder_parts(model)
    groups = discover_groups(parts, dev)
    opts = ScoringOptions(
        formats=[Format.INT4_W4A16, Format.FP8_W8A8, Format.BF16],
        group_size=128,
        device=dev,
        progress=False,
    )
    res: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "weight_bytes_bf16": weight_bytes,
        "tokens": int(ids.numel()),
    }
    for m in (SensitivityMethod.ACTIVATION, SensitivityMethod.FISHER):
        torch.cuda.synchronize()
        run = score(parts, groups, ids, opts, [m])
        res[m.value] = {
            "seconds": round(run.wall_seconds, 2),
            "peak_gpu_bytes": run.peak_memory_bytes,
        }
    # Plan W4A16 + FP8 at 35% of 16-bit, export on the GPU, reload, compare logits.
    p = plan(
        PlanRequest(
            groups=groups,
            scores=run.scores[SensitivityMethod.FISHER],
            profile=get_profile("sm90"),
            budget=Budget(fraction_of_16bit=0.35),
            allowed_formats=[Format.INT4_W4A16, Format.FP8_W8A8, Format.BF16],
            group_size=128,
            curve_points=0,
        )
    )
    t = time.time()
    out = path.parent / "big-artifact"
    export(path, p, out, device=dev)
    res["export_seconds"] = round(time.time() - t, 2)
    res["plan"] = p.summary().model_dump(mode="json", by_alias=True)
    loaded = load_quantized(out).to(dev)
    mods = dict(model.named_modules())
    model.to(dev)
    probe = ids[:1, :256].to(dev)
    with torch.no_grad(), ExitStack() as stack:
        base = model(input_ids=probe).logits.float()
        got = loaded(input_ids=probe).logits.float()
        for a in p.assignments:
            if not a.format.is_unquantized:
                stack.enter_context(
                    perturbed([mods[n] for n in a.modules], make_quantizer(a.format, opts))
                )
        want = model(input_ids=probe).logits.float()
    res["reload"] = {
        "quant_effect_mean_abs": float((want - base).abs().mean()),
        "checkpoint_vs_fakequant_mean_abs": float((got - want).abs().mean()),
        "top1_agreement_checkpoint_vs_fakequant": float(
            (got.argmax(-1) == want.argmax(-1)).float().mean()
        ),
    }
    return res


def depth_probe(path: Path, ids: torch.Tensor) -> dict[str, Any]:
    dev = torch.device("cuda")
    model, _ = load_model(path)
    parts = decoder_parts(model)
    groups = discover_groups(parts, dev)
    opts = ScoringOptions(
        formats=[Format.INT4_W4A16, Format.FP8_W8A8, Format.BF16],
        group_size=128,
        device=dev,
        progress=False,
    )
    gc.collect()
    torch.cuda.empty_cache()
    run = score(parts, groups, ids, opts, [SensitivityMethod.FISHER])
    return {
        "layers": len(parts.layers),
        "weight_bytes_bf16": sum(p.numel() * p.element_size() for p in model.parameters()),
        "seconds": round(run.wall_seconds, 2),
        "peak_gpu_bytes": run.peak_memory_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/samp-device-check"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    tok = AutoTokenizer.from_pretrained(TINY)
    cal = build_calibration(
        CalibrationOptions(
            source=str(ROOT / "examples/tiny/prompts.jsonl"),
            samples=100_000,
            max_sequence_length=512,
        ),
        tok,
    )
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    result["tiny_cpu_vs_gpu"] = compare_tiny(cal.input_ids[:8, :128].contiguous())
    print(json.dumps(result, indent=1), flush=True)
    args.tmp.mkdir(parents=True, exist_ok=True)
    ids = cal.input_ids[:16]
    # Layer-sequential: doubling the depth must not raise the peak GPU memory. Probed
    # first, in a clean process state, so no earlier model inflates the peak.
    shallow = big_model(args.tmp, args.hidden, args.layers)
    deep = big_model(args.tmp / "deep", args.hidden, 2 * args.layers)
    result["depth_probe_fisher"] = [depth_probe(shallow, ids), depth_probe(deep, ids)]
    result["big"] = run_big(shallow, ids)
    name = result["device"].split()[-1].lower()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"device_check_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
