"""The SAMP job stages on a CUDA GPU: correctness against the CPU, time and memory at scale.

Parts (each appends to ``--out`` as soon as it finishes, so a cut-off run
still leaves what it measured):

1. ``tiny``: the bundled tiny model scored (fisher) on the CPU and on the GPU,
   planned with the same request, and the same plan exported on the CPU and on
   the GPU: plans compared assignment by assignment, exported tensors compared
   (integer codes exactly, scales relatively), the GPU export reloaded in
   transformers on the GPU.
2. ``kernels``: FP8 (torch.float8_e4m3fn + torch._scaled_mm) and bitsandbytes
   NF4 (when importable) on CUDA against a float reference.
3. ``llama70b_layers``: a few decoder layers of Llama-3-70B shape (random
   weights), activation + fisher sensitivity, to extrapolate per-layer cost.
4. ``70b-export``: GPTQ export of those 70B-shaped slices by export's own layer-by-layer
   pass (what a 70B takes when its Hessians do not fit the disk), per-layer seconds.
5. ``llama8b``: a Llama-3-8B-shaped model (random weights, bf16) through the
   real stages (``samp_jobs.pipeline.run_calibrate/run_sensitivity/run_plan/
   run_export``) with ``--rows`` × 2048 calibration tokens; wall time per stage,
   tokens/s, peak GPU memory, and the floors (forward FLOPs at 781 TFLOP/s,
   weight bytes at 4.2 TB/s).

Usage (GPU machine, repository root):
    python tests/benchmarks/gpu_pipeline.py --out $OUT/gpu_pipeline.json
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("operator", "jobs"):
    sys.path.insert(0, str(ROOT / _sub))

from samp_core.formats import Format, SensitivityMethod  # noqa: E402
from samp_core.planner import Budget, PlanRequest, plan  # noqa: E402
from samp_core.results import Stage  # noqa: E402
from samp_core.stage_contract import (  # noqa: E402
    CalibrationInputs,
    ModelInputs,
    QuantizationInputs,
    RuntimeOptions,
    StageInputs,
    StageInvocation,
    StagePaths,
)
from samp_jobs.measured_costs import profile_with_measured_costs  # noqa: E402

TINY = ROOT / "examples/tiny/model"
BF16_FLOPS = 781e12
HBM_BPS = 4.2e12
SEQ = 2048
DEV = "cuda"  # --device cpu only for a smoke test of the script itself
FORMATS = [Format.INT4_W4A16, Format.FP8_W8A8, Format.INT8_W8A8, Format.BF16]  # sm90 candidates


def dump(path: Path, res: dict[str, Any]) -> None:
    path.write_text(json.dumps(res, indent=2, default=str) + "\n")


def peak_reset() -> None:
    gc.collect()
    if DEV == "cpu":
        return
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def peak() -> int:
    if DEV == "cpu":
        return 0
    return int(torch.cuda.max_memory_allocated())


# ----------------------------------------------------------------------------- tiny
def tiny_check(tmp: Path) -> dict[str, Any]:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from samp_jobs.calibration import CalibrationOptions, build_calibration
    from samp_jobs.evaluate import load_quantized
    from samp_jobs.export import export
    from samp_jobs.modeling import decoder_parts, discover_groups, load_model
    from samp_jobs.sensitivity import ScoringOptions, score

    tok = AutoTokenizer.from_pretrained(TINY)
    cal = build_calibration(
        CalibrationOptions(
            source=str(ROOT / "examples/tiny/prompts.jsonl"),
            samples=100_000,
            max_sequence_length=512,
        ),
        tok,
    )
    ids = cal.input_ids[:8, :256].contiguous()
    fmts = FORMATS
    plans = {}
    for dev_name in ("cpu", DEV):
        model, _ = load_model(TINY)
        if dev_name == "cpu":
            model.float()
        dev = torch.device(dev_name)
        parts = decoder_parts(model)
        groups = discover_groups(parts, dev)
        opts = ScoringOptions(formats=fmts, group_size=64, device=dev, progress=False)
        run = score(parts, groups, ids, opts, [SensitivityMethod.FISHER])
        plans[dev_name] = plan(
            PlanRequest(
                groups=groups,
                scores=run.scores[SensitivityMethod.FISHER],
                profile=profile_with_measured_costs("sm90"),
                budget=Budget(fraction_of_16bit=0.5),
                allowed_formats=fmts,
                group_size=64,
                curve_points=0,
            )
        )
    a = {x.group: x.format.value for x in plans["cpu"].assignments}
    b = {x.group: x.format.value for x in plans[DEV].assignments}
    same = sum(a[k] == b[k] for k in a)
    out: dict[str, Any] = {
        "plan_groups": len(a),
        "plan_same_assignments": same,
        "plan_differences": {k: [a[k], b[k]] for k in a if a[k] != b[k]},
        "cpu_plan": plans["cpu"].summary().by_format,
        "gpu_plan": plans[DEV].summary().by_format,
    }
    # The same (CPU) plan exported on each device: the quantized tensors must agree.
    dirs = {}
    for dev_name in ("cpu", DEV):
        d = tmp / f"tiny-export-{dev_name}"
        t = time.time()
        export(TINY, plans["cpu"], d, input_ids=ids[:4], device=torch.device(dev_name))
        out[f"export_seconds_{dev_name}"] = round(time.time() - t, 2)
        dirs[dev_name] = d
    ta = {}
    tb = {}
    for f in sorted(dirs["cpu"].glob("*.safetensors")):
        ta.update(load_file(f))
    for f in sorted(dirs[DEV].glob("*.safetensors")):
        tb.update(load_file(f))
    int_exact, int_total, float_max_rel, code_mismatch = 0, 0, 0.0, 0
    for k, va in ta.items():
        vb = tb[k]
        if not va.is_floating_point():
            int_total += va.numel()
            eq = va == vb
            int_exact += int(eq.sum())
            code_mismatch += int((~eq).sum())
        else:
            va32, vb32 = va.float(), vb.float()
            rel = float((va32 - vb32).abs().max() / va32.abs().max().clamp(min=1e-12))
            float_max_rel = max(float_max_rel, rel)
    fp8_keys = [k for k, v in ta.items() if v.dtype == torch.float8_e4m3fn]
    fp8_diff = sum(int((ta[k].float() != tb[k].float()).sum()) for k in fp8_keys)
    fp8_total = sum(ta[k].numel() for k in fp8_keys)
    out["export_compare"] = {
        "tensors": len(ta),
        "same_keys": sorted(ta) == sorted(tb),
        "int_elements": int_total,
        "int_elements_equal": int_exact,
        "fp8_elements": fp8_total,
        "fp8_elements_different": fp8_diff,
        "float_tensors_max_relative_difference": float_max_rel,
    }
    # Reload both exports in transformers on the GPU; compare logits.
    qa = load_quantized(dirs["cpu"]).to(DEV)
    qb = load_quantized(dirs[DEV]).to(DEV)
    probe = ids[:2, :128].to(DEV)
    with torch.no_grad():
        la, lb = qa(input_ids=probe).logits.float(), qb(input_ids=probe).logits.float()
    out["reload_on_gpu"] = {
        "device": str(next(qb.parameters()).device),
        "logits_relative_difference_cpu_export_vs_gpu_export": float((la - lb).norm() / la.norm()),
        "top1_agreement": float((la.argmax(-1) == lb.argmax(-1)).float().mean()),
    }
    return out


# -------------------------------------------------------------------------- kernels
def kernel_check() -> dict[str, Any]:
    dev = torch.device("cuda")
    torch.manual_seed(1)
    x = torch.randn(512, 4096, device=dev, dtype=torch.bfloat16)
    w = torch.randn(2048, 4096, device=dev, dtype=torch.bfloat16) * 0.02
    ref = x.double() @ w.double().t()
    fmax = torch.finfo(torch.float8_e4m3fn).max
    xs = x.abs().amax(-1, keepdim=True).float() / fmax
    ws = w.abs().amax(-1, keepdim=True).float() / fmax
    xq = (x.float() / xs).to(torch.float8_e4m3fn)
    wq = (w.float() / ws).to(torch.float8_e4m3fn)
    y = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16)
    deq = (xq.double() * xs.double()) @ (wq.double() * ws.double()).t()
    out: dict[str, Any] = {
        "fp8_scaled_mm": {
            "dtype": str(xq.dtype),
            "rel_err_vs_dequantized_fp64": float((y.double() - deq).norm() / deq.norm()),
            "rel_err_vs_bf16_inputs_fp64": float((y.double() - ref).norm() / ref.norm()),
            "finite": bool(torch.isfinite(y).all()),
        }
    }
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bf

        q, state = bf.quantize_4bit(w, quant_type="nf4", blocksize=64)
        wd = bf.dequantize_4bit(q, state)
        lin = bnb.nn.Linear4bit(
            4096, 2048, bias=False, quant_type="nf4", compute_dtype=torch.bfloat16
        )
        lin.weight = bnb.nn.Params4bit(w.cpu(), requires_grad=False, quant_type="nf4")
        lin = lin.to(dev)
        y4 = lin(x)
        ref4 = x.double() @ wd.double().t()
        xv = x[:1]
        gemv = lin(xv)  # batch 1 takes the NF4 gemv kernel
        out["bnb_nf4"] = {
            "version": bnb.__version__,
            "dequant_rel_err_vs_weight": float((wd.float() - w.float()).norm() / w.float().norm()),
            "linear4bit_rel_err_vs_dequant_fp64": float((y4.double() - ref4).norm() / ref4.norm()),
            "gemv_rel_err": float((gemv.double() - ref4[:1]).norm() / ref4[:1].norm()),
            "weight_device": str(lin.weight.device),
        }
    except Exception as e:
        out["bnb_nf4"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


# ------------------------------------------------------------------------ placement
def placement_check() -> dict[str, Any]:
    """The same fisher + activation scores whether weights are resident or streamed per layer
    from pinned memory, and whether the tokens go in one pass or one micro-batch per pass."""
    from samp_jobs.modeling import decoder_parts, discover_groups, load_model
    from samp_jobs.sensitivity import ScoringOptions, score

    model, _ = load_model(TINY)
    parts = decoder_parts(model)
    dev = torch.device(DEV)
    groups = discover_groups(parts, dev)
    ids = torch.randint(3, 2000, (8, 256), generator=torch.Generator().manual_seed(0))
    fmts = FORMATS
    methods = [SensitivityMethod.FISHER, SensitivityMethod.ACTIVATION]
    runs = {}
    for name, extra in {
        "auto": {},
        "streamed": {"resident_weights": False},
        "streamed_chunked": {"resident_weights": False, "max_micro_batches_per_chunk": 1},
    }.items():
        opts = ScoringOptions(formats=fmts, group_size=64, device=dev, progress=False, **extra)
        runs[name] = score(parts, groups, ids, opts, methods)
    out: dict[str, Any] = {n: vars(r.memory) for n, r in runs.items()}
    for m in methods:
        ref = runs["auto"].scores[m]
        for n in ("streamed", "streamed_chunked"):
            got = runs[n].scores[m]
            worst = max(
                abs(got[g][f] - v) / max(abs(v), 1e-30)
                for g, per in ref.items()
                for f, v in per.items()
            )
            out[f"{m.value}_{n}_max_rel_diff_vs_auto"] = worst
    out["weights_back_on_cpu"] = all(p.device.type == "cpu" for p in model.parameters())
    return out


# --------------------------------------------------------------------- random models
def random_llama(out: Path, *, hidden: int, inter: int, layers: int, heads: int) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TINY)
    vocab = 128256
    if DEV == "cpu":  # smoke test: same code, shapes cut down
        hidden, inter, heads, vocab = hidden // 16, inter // 16, heads // 16, 2048
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=min(8, heads),
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(DEV):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
            del name
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, max_shard_size="4GB")
    tok.save_pretrained(out)
    del model
    peak_reset()
    return out


def params_of(path: Path) -> dict[str, int]:
    cfg = json.loads((path / "config.json").read_text())
    h, i, n, v = (
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_hidden_layers"],
        cfg["vocab_size"],
    )
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * i
    return {
        "per_layer_linear": per_layer,
        "layers": n,
        "head": h * v,
        "embed": h * v,
        "matmul_params": per_layer * n + h * v,
    }


def floors(path: Path, tokens: int) -> dict[str, float]:
    p = params_of(path)
    fwd = 2 * p["matmul_params"] * tokens / BF16_FLOPS
    wbytes = 2 * (p["matmul_params"] + p["embed"]) / HBM_BPS
    return {
        "forward_s": round(fwd, 3),
        "activation_s": round(max(fwd, wbytes), 3),
        "fisher_fwd_bwd_s": round(max(3 * fwd, wbytes), 3),
        "weights_read_s": round(wbytes, 4),
        "export_read_write_s": round(wbytes * 1.5, 4),
    }


def prompts_file(path: Path, n: int = 1500) -> Path:
    words = (ROOT / "examples/tiny/prompts.jsonl").read_text().split()
    rnd = random.Random(0)
    with path.open("w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rnd.choice(words) for _ in range(220))}) + "\n")
    return path


def run_stages(
    model: Path,
    work: Path,
    rows: int,
    *,
    methods: list[str],
    do_export: bool,
    res: dict[str, Any],
    save: Callable[[], None],
) -> None:
    from samp_jobs.pipeline import run_calibrate, run_export, run_plan, run_sensitivity

    inv = job_invocation(work, model, rows, budget=Budget(fraction_of_16bit=0.35))
    st: dict[str, Any] = {}
    res["stages"] = st
    t = time.time()
    cal = run_calibrate(inv)
    st["calibrate"] = {"seconds": round(time.time() - t, 2), "tokens": cal.num_tokens}
    save()
    for m in methods:
        inv = with_method(inv, m)
        peak_reset()
        t = time.time()
        doc = run_sensitivity(inv)
        wall = time.time() - t
        st[f"sensitivity_{m}"] = {
            "seconds": round(wall, 2),
            "scoring_seconds": round(doc.wall_seconds, 2),
            "tokens": doc.num_tokens,
            "tokens_per_s": round(doc.num_tokens / doc.wall_seconds),
            "peak_gpu_bytes": peak(),
            "load_seconds": round(wall - doc.wall_seconds, 2),
        }
        save()
        print(m, st[f"sensitivity_{m}"], flush=True)
    t = time.time()
    try:
        p = run_plan(inv.for_stage(Stage.PLAN))
        st["plan"] = {"seconds": round(time.time() - t, 3),
                      "summary": p.summary().model_dump(mode="json", by_alias=True)}
    except ValueError as e:  # a 1-layer slice cannot meet 35% with a 16-bit head
        st["plan"] = {"seconds": round(time.time() - t, 3), "error": str(e)[:300]}
        return
    res["cost_sources"] = sorted(
        {
            profile_with_measured_costs("sm90").support(f).cost_source
            for f in (Format.BF16, Format.FP8_W8A8)
        }
    )
    if do_export:
        peak_reset()
        t = time.time()
        try:
            ex = run_export(inv.for_stage(Stage.EXPORT))
        except Exception as e:  # keep the rest of the run (and what was measured) going
            st["export"] = {"error": f"{type(e).__name__}: {e}"[:500]}
            save()
            return
        st["export"] = {
            "seconds": round(time.time() - t, 2),
            "peak_gpu_bytes": peak(),
            "bytes": ex.bytes_on_disk,
            "files": len(ex.files),
            "phase_seconds": ex.phase_seconds,
        }
        save()
        from samp_jobs.pipeline import run_evaluate

        peak_reset()
        t = time.time()
        try:  # base + quantized model on the GPU(s), held-out prompts (random weights!)
            ev = run_evaluate(inv.for_stage(Stage.EVALUATE))
            st["evaluate"] = {
                "seconds": round(time.time() - t, 2),
                "peak_gpu_bytes": peak(),
                "prompts": ev.num_prompts,
                "tokens": ev.num_tokens,
                "top1_agreement": ev.top1_agreement,
            }
        except Exception as e:
            st["evaluate"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        save()


def llama70b_slice(n_layers: int, rows: int, tmp: Path) -> dict[str, Any]:
    """Score a few 70B-shaped decoder layers exactly as a full 80-layer 70B run would place
    them: weights streamed per layer from pinned host memory, tokens chunked to fit the
    boundary states of all 81 boundaries on the GPU."""
    from samp_jobs.placement import plan_memory
    from samp_jobs.sensitivity import ScoringOptions, SequentialScorer, score

    t = time.time()
    m = random_llama(tmp / f"l70-{n_layers}", hidden=8192, inter=28672, layers=n_layers, heads=64)
    r: dict[str, Any] = {"build_seconds": round(time.time() - t, 1), "params": params_of(m)}
    ids = calibration_ids(tmp / f"w70-{n_layers}", m, rows)
    parts, groups, dev = scoring_setup(m)
    fmts = FORMATS
    base = ScoringOptions(formats=fmts, device=dev, progress=False)
    inputs = SequentialScorer(parts, groups, ids, base).placement_inputs(True)
    p = params_of(m)
    full = {
        **inputs,
        "model_bytes": 2 * (80 * p["per_layer_linear"] + p["head"] + p["embed"]),
        "num_boundaries": 81,
    }
    if DEV == "cpu":
        full.update(accelerator=True, device_budget=int(139 * 2**30 * 0.9))
    full_plan = plan_memory(**full)
    r["full_70b_memory_plan"] = vars(full_plan)
    opts = ScoringOptions(
        formats=fmts,
        device=dev,
        progress=False,
        resident_weights=False,
        max_micro_batches_per_chunk=full_plan.micro_batches_per_chunk,
    )
    for method in (SensitivityMethod.FISHER, SensitivityMethod.ACTIVATION):
        peak_reset()
        run = score(parts, groups, ids, opts, [method])
        r[method.value] = {
            "seconds": round(run.wall_seconds, 2),
            "tokens": run.num_tokens,
            "peak_gpu_bytes": peak(),
            "memory_plan": vars(run.memory) if run.memory else None,
        }
        print("70b", n_layers, method.value, r[method.value], flush=True)
    r["floors"] = floors(m, ids.numel())
    del parts, groups
    shutil.rmtree(m, ignore_errors=True)
    return r


def profile_fisher(tmp: Path, rows: int, n_layers: int = 4) -> dict[str, Any]:
    """Where fisher scoring's GPU time goes: torch.profiler over an 8B-shaped slice,
    kernel time summed by kind (GEMM, attention, elementwise/reduction, copies)."""
    from torch.profiler import ProfilerActivity, profile

    from samp_jobs.sensitivity import ScoringOptions, score

    m = random_llama(tmp / "prof8", hidden=4096, inter=14336, layers=n_layers, heads=32)
    ids = calibration_ids(tmp / "wprof", m, rows)
    parts, groups, dev = scoring_setup(m)
    opts = ScoringOptions(formats=FORMATS, device=dev, progress=False)
    score(parts, groups, ids[:4], opts, [SensitivityMethod.FISHER])  # warm-up
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
    t = time.time()
    with profile(activities=acts) as prof:
        score(parts, groups, ids, opts, [SensitivityMethod.FISHER])
        if DEV == "cuda":
            torch.cuda.synchronize()
    wall = time.time() - t
    kinds: dict[str, float] = {}
    top = []
    for e in prof.key_averages():
        us = float(getattr(e, "device_time_total", 0.0) or getattr(e, "cuda_time_total", 0.0))
        if us <= 0 or e.key.startswith("aten::") or e.key.startswith("cuda"):
            continue  # kernels only (aten ops double count their kernels)
        k = e.key.lower()
        kind = (
            "gemm"
            if any(x in k for x in ("gemm", "sm90_xmma", "cutlass", "nvjet", "matmul"))
            else "attention"
            if any(x in k for x in ("flash", "fmha", "attention", "sdpa"))
            else "copy"
            if "memcpy" in k or "memset" in k
            else "elementwise/reduction"
        )
        kinds[kind] = kinds.get(kind, 0.0) + us / 1e6
        top.append((us / 1e6, e.key[:90], e.count))
    top.sort(reverse=True)
    floor = floors(m, int(ids.numel()))["fisher_fwd_bwd_s"]
    shutil.rmtree(m, ignore_errors=True)
    return {
        "layers": n_layers,
        "tokens": int(ids.numel()),
        "wall_seconds_profiled": round(wall, 2),
        "kernel_seconds_by_kind": {k: round(v, 3) for k, v in sorted(kinds.items())},
        "top_kernels": [[round(a, 3), b, c] for a, b, c in top[:15]],
        "floor_fisher_s": floor,
    }


def job_invocation(
    work: Path, model: Path, rows: int, *, budget: Budget | None = None, micro_batch: int = 4
) -> StageInvocation:
    """The stages' invocation over `rows` x 2048 tokens of the random-word prompts (sm90)."""
    prompts = prompts_file(work.parent / f"{work.name}-prompts.jsonl")
    return StageInvocation(
        stage=Stage.CALIBRATE,
        inputs=StageInputs(
            model=ModelInputs(source=str(model)),
            calibration=CalibrationInputs(source=str(prompts), samples=100_000,
                                          max_sequence_length=SEQ, held_out_fraction=0.01),
            profile="sm90",
            quantization=QuantizationInputs(budget=budget, formats=FORMATS,
                                            max_tokens=rows * SEQ),
        ),
        paths=StagePaths(workdir=str(work), artifact=str(work / "artifact"), model=str(model),
                         prompts=str(prompts)),
        runtime=RuntimeOptions(device=DEV, progress=False, micro_batch=micro_batch),
    )


def with_method(inv: StageInvocation, method: str) -> StageInvocation:
    """The sensitivity invocation scoring with ``method`` (its hash follows)."""
    q = inv.inputs.quantization.model_copy(update={"method": SensitivityMethod(method)})
    inputs = inv.inputs.model_copy(update={"quantization": q})
    return inv.model_copy(update={"inputs": inputs}).for_stage(Stage.SENSITIVITY)


def scoring_setup(model_dir: Path) -> tuple[Any, Any, torch.device]:
    """(decoder parts, layer groups, device) of a model loaded the way the jobs load it."""
    from samp_jobs.modeling import decoder_parts, discover_groups, load_model

    model, _ = load_model(model_dir)
    parts = decoder_parts(model)
    dev = torch.device(DEV)
    return parts, discover_groups(parts, dev), dev


def calibration_ids(work: Path, model: Path, rows: int) -> torch.Tensor:
    from samp_jobs.calibration import load_calibration_tokens
    from samp_jobs.pipeline import run_calibrate

    run_calibrate(job_invocation(work, model, rows))
    return load_calibration_tokens(work)[:rows]


def llama70b_export_slice(n_layers: int, rows: int, tmp: Path) -> dict[str, Any]:
    """GPTQ export of a few 70B-shaped decoder layers by export's own layer-by-layer pass,
    the path a full 70B takes when its stored Hessians (about 4.1 GB per layer, 330 GB for
    80 layers) do not fit the stage's disk: every decoder group int4-w4a16 with GPTQ,
    ``Rounding().max_tokens`` calibration tokens, the layer on the GPU, the hidden states
    between layers on the GPU."""
    from samp_core.results import Rounding
    from samp_jobs.export import export

    t = time.time()
    m = random_llama(tmp / f"x70-{n_layers}", hidden=8192, inter=28672, layers=n_layers, heads=64)
    r: dict[str, Any] = {"build_seconds": round(time.time() - t, 1), "params": params_of(m)}
    ids = calibration_ids(tmp / f"wx70-{n_layers}", m, rows)
    parts, groups, _dev = scoring_setup(m)
    zero = {g.name: dict.fromkeys(FORMATS, 0.0) for g in groups}
    p = plan(PlanRequest(
        groups=groups, scores=zero, profile=profile_with_measured_costs("sm90"),
        budget=Budget(fraction_of_16bit=1.0), allowed_formats=FORMATS,
        overrides=[(r"\.layers\.", Format.INT4_W4A16)], curve_points=0, rounding=Rounding(),
    ))
    del parts, groups
    peak_reset()
    t = time.time()
    ex = export(m, p, tmp / f"x70-{n_layers}-out", input_ids=ids, device=torch.device(DEV))
    r["export"] = {
        "seconds": round(time.time() - t, 2),
        "tokens": int(min(len(ids), Rounding().max_tokens // SEQ) * SEQ),
        "gptq_modules": len(p.gptq_modules()),
        "peak_gpu_bytes": peak(),
        "phase_seconds": ex.phase_seconds,
    }
    print("70b export", n_layers, r["export"], flush=True)
    shutil.rmtree(m, ignore_errors=True)
    shutil.rmtree(tmp / f"x70-{n_layers}-out", ignore_errors=True)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=128, help="calibration sequences of 2048")
    ap.add_argument("--layers70b", default="1,3", help="decoder layer counts to time")
    ap.add_argument("--rows70b", type=int, default=128)
    ap.add_argument("--rows-profile", type=int, default=32)
    ap.add_argument("--parts", default="tiny,kernels,placement,8b,70b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--methods8b", default="activation,fisher")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/samp-gpu"))
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    global DEV  # noqa: PLW0603 - the smoke-test switch
    DEV = args.device
    args.tmp.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if DEV == "cuda" else DEV,
        "torch": torch.__version__,
        "weights": "random (normal, std 0.02), bf16",
    }
    if "tiny" in parts:
        res["tiny"] = tiny_check(args.tmp)
        dump(args.out, res)
        print("tiny", json.dumps(res["tiny"]), flush=True)
    if "kernels" in parts:
        res["kernels"] = kernel_check()
        dump(args.out, res)
        print("kernels", json.dumps(res["kernels"]), flush=True)
    if "placement" in parts:
        res["placement"] = placement_check()
        dump(args.out, res)
        print("placement", json.dumps(res["placement"]), flush=True)
    if "8b" in parts:
        t = time.time()
        m = random_llama(args.tmp / "l8", hidden=4096, inter=14336, layers=32, heads=32)
        r = {"build_seconds": round(time.time() - t, 1), "params": params_of(m)}
        res["llama8b"] = r
        dump(args.out, res)
        run_stages(
            m,
            args.tmp / "w8",
            args.rows,
            methods=args.methods8b.split(","),
            do_export=True,
            res=r,
            save=lambda: dump(args.out, res),
        )
        r["floors"] = floors(m, args.rows * SEQ)
        dump(args.out, res)
    if "profile" in parts:
        res["profile"] = profile_fisher(args.tmp, args.rows_profile)
        dump(args.out, res)
        print("profile", json.dumps(res["profile"], indent=1), flush=True)
    if "70b" in parts:
        res["llama70b_layers"] = {}
        for n_layers in (int(x) for x in args.layers70b.split(",")):
            res["llama70b_layers"][str(n_layers)] = llama70b_slice(n_layers, args.rows70b, args.tmp)
            dump(args.out, res)
    if "70b-export" in parts:
        res["llama70b_export"] = {}
        for n_layers in (int(x) for x in args.layers70b.split(",")):
            res["llama70b_export"][str(n_layers)] = llama70b_export_slice(
                n_layers, args.rows70b, args.tmp)
            dump(args.out, res)
        e = res["llama70b_export"]
        if {"1", "3"} <= set(e):
            per = (e["3"]["export"]["phase_seconds"]["gptq"]
                   - e["1"]["export"]["phase_seconds"]["gptq"]) / 2
            res["llama70b_export_gptq_per_layer_s"] = round(per, 2)
            res["llama70b_export_gptq_80_layers_s"] = round(
                e["1"]["export"]["phase_seconds"]["gptq"] + 79 * per, 1)
        dump(args.out, res)
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
