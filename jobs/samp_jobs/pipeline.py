"""The five stages over one work directory; each reads what the previous one wrote.

Each stage takes one :class:`~samp_core.stage_contract.StageInvocation` (its options come
from it through samp_jobs.stage_options) and writes its result document, stamped with the
invocation's inputs hash, the operator's hash of the same chain.

Work directory layout (what the operator's Jobs share through a volume):

    calibration.json          CalibrationResult
    calibration_tokens.pt     packed calibration sequences
    heldout.jsonl             held-out prompts for evaluate
    sensitivity.json          SensitivityResult
    hessians.safetensors      GPTQ's input Hessians from the scoring pass (GPTQ plans)
    plan.json                 PlanResult (samp_jobs.plan_stage)
    plans/<hash>.json         the plan of each plan inputs hash (re-plans, export)
    artifact/                 the exported checkpoint (+ samp_plan.json / samp_plan.md)
    export.json               ExportResult
    evaluation.json           EvaluationResult
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from samp_core.groups import LayerGroup
from samp_core.results import (
    CalibrationResult,
    EvaluationResult,
    ExportResult,
    PlanResult,
    ResultBase,
    SensitivityResult,
    Stage,
)
from samp_core.stage_contract import StageInvocation
from samp_jobs import stage_options as opt
from samp_jobs.calibration import (
    build_calibration,
    load_calibration_tokens,
    load_held_out,
    model_context,
    save_calibration,
)
from samp_jobs.hessians import HESSIANS_FILE
from samp_jobs.modeling import DTYPES
from samp_jobs.plan_stage import run_plan
from samp_jobs.runlog import log, read_json, write_result


def _load(inv: StageInvocation) -> tuple[Any, Any]:
    from samp_jobs.modeling import load_model

    m = inv.inputs.model
    return load_model(opt.model_dir(inv), dtype=m.dtype, trust_remote_code=m.trust_remote_code)


def _write(inv: StageInvocation, doc: ResultBase) -> None:
    doc.inputs_hash = inv.inputs_hash
    write_result(doc, opt.workdir(inv), inv.runtime.termination_log,
                 inv.paths.stored_result)


# ------------------------------------------------------------------ calibrate


def run_calibrate(inv: StageInvocation) -> CalibrationResult:
    from transformers import AutoTokenizer

    options = opt.calibration_options(inv)
    opt.seed_everything(inv)
    tok = AutoTokenizer.from_pretrained(
        opt.model_dir(inv), trust_remote_code=inv.inputs.model.trust_remote_code)
    cal = build_calibration(options, tok, model_context(opt.model_dir(inv)))
    save_calibration(cal, opt.workdir(inv))
    _write(inv, cal.result)
    return cal.result


# ---------------------------------------------------------------- sensitivity


def _scoring_model(inv: StageInvocation) -> tuple[Any, Any, torch.dtype]:
    """Model for scoring: fp32 on the CPU (bf16 matmuls are slow and noisy there)."""
    model, tok = _load(inv)
    quant_dtype = checkpoint_dtype(model)
    if opt.torch_device(inv).type == "cpu":
        model.float()
    return model, tok, quant_dtype


def checkpoint_dtype(model: Any) -> torch.dtype:
    """The dtype the weights are stored in: the exporter quantizes from that, so must we."""
    stored = getattr(getattr(model, "config", None), "dtype", None)
    if isinstance(stored, torch.dtype) and stored.is_floating_point:
        return stored
    if isinstance(stored, str) and stored in DTYPES:
        return DTYPES[stored]
    first: torch.Tensor = next(model.parameters())
    return first.dtype


def run_sensitivity(inv: StageInvocation) -> SensitivityResult:
    from samp_jobs.modeling import decoder_parts, discover_groups
    from samp_jobs.sensitivity import score

    opt.seed_everything(inv)
    q = inv.inputs.quantization
    work = opt.workdir(inv)
    read_json(work / "calibration.json", "calibration result")  # calibrate ran here
    ids = load_calibration_tokens(work)
    ids = ids[: max(1, q.max_tokens // ids.shape[1])]
    model, _tok, qdtype = _scoring_model(inv)
    dev = opt.torch_device(inv)
    parts = decoder_parts(model)
    groups = discover_groups(parts, dev)
    options = opt.scoring_options(inv, dev, qdtype)
    hessians = sensitivity_hessians(inv, model, groups, options)
    log("sensitivity.start", method=q.method.value, groups=len(groups), tokens=ids.numel())
    run = score(parts, groups, ids, options, [q.method])
    if hessians is not None:
        hessians.save(work / HESSIANS_FILE)
    doc = SensitivityResult(
        method=q.method,
        num_tokens=run.num_tokens,
        num_samples=run.num_sequences,
        groups=groups,
        scores=run.scores[q.method],
        wall_seconds=run.wall_seconds,
        peak_memory_bytes=run.peak_memory_bytes,
        device=run.device,
        group_size=q.group_size,
    )
    _write(inv, doc)
    return doc


def sensitivity_hessians(
    inv: StageInvocation, model: Any, groups: list[LayerGroup], options: Any
) -> Any:
    """GPTQ's Hessians, collected by the scoring pass when the plan will round with GPTQ
    (``options.hessians`` set); a stale file from an earlier run is removed either way."""
    from samp_jobs.hessians import collector_for
    from samp_jobs.sensitivity import candidate_formats

    cands = {g.name: candidate_formats(g, options.formats, options.group_size) for g in groups}
    (opt.workdir(inv) / HESSIANS_FILE).unlink(missing_ok=True)
    options.hessians = collector_for(
        groups, cands, inv.inputs.quantization.rounding, model, options.device,
        path=opt.workdir(inv) / HESSIANS_FILE,
    )
    return options.hessians


# --------------------------------------------------------------------- export


def _export_plan(inv: StageInvocation) -> PlanResult:
    """The plan this export's hash chains from (its kept copy), else the latest plan.json."""
    path = opt.workdir(inv) / "plan.json"
    if inv.paths.plan is not None:
        if Path(inv.paths.plan).is_file():
            path = Path(inv.paths.plan)
        else:  # a plan made before plan copies existed
            log("export.plan", missing=inv.paths.plan, using=str(path))
    return PlanResult.model_validate(read_json(path, "plan result"))


def run_export(inv: StageInvocation) -> ExportResult:
    from samp_jobs.staging import staged_export

    work = opt.workdir(inv)
    ids = None
    if (work / "calibration_tokens.pt").is_file():
        ids = load_calibration_tokens(work)  # GPTQ takes rounding.maxTokens of them
    result = staged_export(
        Path(opt.model_dir(inv)),
        _export_plan(inv),
        opt.artifact_dir(inv),
        input_ids=ids,
        device=opt.torch_device(inv),
        trust_remote_code=inv.inputs.model.trust_remote_code,
        hessians=work / HESSIANS_FILE,
    )
    _write(inv, result)
    return result


# ------------------------------------------------------------------- evaluate


def _load_pair_on_gpus(inv: StageInvocation) -> tuple[Any, Any, Any]:
    """Base and quantized model spread over the visible GPUs, each within half of them."""
    from transformers import AutoTokenizer

    from samp_jobs.evaluate import gpu_memory_map, load_quantized, quantized_gpu_budget
    from samp_jobs.modeling import load_weights_checked
    from samp_jobs.placement import host_available_bytes

    model_path, m = opt.model_dir(inv), inv.inputs.model
    artifact = opt.artifact_dir(inv)
    # the base may spill to host memory (accelerate streams it in); the quantized model
    # may not (see quantized_gpu_budget)
    base = load_weights_checked(
        Path(model_path),
        dtype="auto" if m.dtype == "auto" else DTYPES[m.dtype],
        trust_remote_code=m.trust_remote_code,
        device_map="auto",
        max_memory=gpu_memory_map(0.45, int(host_available_bytes() * 0.4)),
    )
    base.train(False)
    dense = sum(p.numel() * p.element_size() for p in base.parameters())
    stored = sum(f.stat().st_size for f in artifact.glob("*.safetensors"))
    budget = quantized_gpu_budget(gpu_memory_map(0.8), dense, stored)
    quant = load_quantized(artifact, m.trust_remote_code, max_memory=budget)
    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=m.trust_remote_code)
    log(
        "evaluate.placement",
        base=sorted({str(p.device) for p in base.parameters()}),
        quant=sorted({str(p.device) for p in quant.parameters()}),
    )
    return base, tok, quant


def run_evaluate(inv: StageInvocation) -> EvaluationResult:
    from samp_jobs.evaluate import evaluate, load_quantized, read_eval_set

    opt.seed_everything(inv)
    if opt.torch_device(inv).type == "cpu":
        base, tok = _load(inv)
        base.float()  # CPU bf16 matmuls are slow; fp32 holds bf16 weights exactly
        quant = load_quantized(opt.artifact_dir(inv), inv.inputs.model.trust_remote_code,
                               torch.float32)
    else:
        base, tok, quant = _load_pair_on_gpus(inv)
    texts = load_held_out(opt.workdir(inv))
    tasks: list[Any] = []
    if inv.paths.eval_set is not None:
        tasks, extra = read_eval_set(Path(inv.paths.eval_set), tok)
        texts = texts + extra
    result = evaluate(
        base,
        quant,
        tok,
        texts=texts,
        tasks=tasks,
        max_new_tokens=inv.inputs.evaluation.max_new_tokens,
        progress=inv.runtime.progress,
    )
    _write(inv, result)
    return result


STAGES: dict[Stage, Callable[[StageInvocation], ResultBase]] = {
    Stage.CALIBRATE: run_calibrate,
    Stage.SENSITIVITY: run_sensitivity,
    Stage.PLAN: run_plan,
    Stage.EXPORT: run_export,
    Stage.EVALUATE: run_evaluate,
}


def run_all(inv: StageInvocation, evaluate: bool = True) -> dict[Stage, ResultBase]:
    """All stages in one process (``samp quantize``), each with its own invocation."""
    out: dict[Stage, ResultBase] = {}
    for stage, runner in STAGES.items():
        if stage == Stage.EVALUATE and not evaluate:
            break
        log("stage.start", stage=stage.value)
        out[stage] = runner(inv.for_stage(stage))
    return out
