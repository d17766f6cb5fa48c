"""The five stages over one work directory; each reads what the previous one wrote.

Work directory layout (what the operator's Jobs share through a volume):

    job.json                  resolved settings (model path, profile, ...) reused by later stages
    calibration.json          CalibrationResult
    calibration_tokens.pt     packed calibration sequences
    heldout.jsonl             held-out prompts for evaluate
    sensitivity.json          SensitivityResult
    hessians.safetensors      GPTQ's input Hessians from the scoring pass (GPTQ plans)
    plan.json                 PlanResult
    artifact/                 the exported checkpoint (+ samp_plan.json / samp_plan.md)
    export.json               ExportResult
    evaluation.json           EvaluationResult

Every document carries an ``inputs_hash`` chained from the previous stage's, so
the operator can tell a stale document from a current one.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from samp_core.formats import ExportFormat, Format, RoundingMethod, SensitivityMethod
from samp_core.groups import LayerGroup
from samp_core.planner import Budget, PlanError, PlanRequest, plan
from samp_core.results import (
    CalibrationResult,
    EvaluationResult,
    ExportResult,
    PlanResult,
    Rounding,
    SensitivityResult,
    inputs_hash,
)
from samp_jobs.calibration import (
    CalibrationOptions,
    build_calibration,
    load_calibration_tokens,
    load_held_out,
    save_calibration,
)
from samp_jobs.hessians import HESSIANS_FILE
from samp_jobs.measured import get_profile  # sm90 with the H200-measured kernel costs
from samp_jobs.modeling import DTYPES
from samp_jobs.runlog import log, read_json, write_result

DEFAULT_FORMATS = [
    Format.INT4_W4A16,
    Format.INT4_W4A8,
    Format.FP8_W8A8,
    Format.INT8_W8A8,
    Format.NVFP4,
    Format.BF16,
]


@dataclass
class JobConfig:
    """Everything a stage needs; built from CLI flags, a manifest, or job.json."""

    workdir: Path
    model: str = ""
    dtype: str = "auto"
    trust_remote_code: bool = False
    device: str | None = None
    termination_log: str | None = None
    progress: bool = True
    seed: int = 0
    calibration: CalibrationOptions | None = None
    method: SensitivityMethod = SensitivityMethod.FISHER
    formats: list[Format] = field(default_factory=lambda: list(DEFAULT_FORMATS))
    profile: str = "sm90"
    group_size: int = 128
    micro_batch: int = 4
    max_tokens: int = 262_144
    budget: Budget | None = None
    overrides: list[tuple[str, Format]] = field(default_factory=list)
    keep_lm_head_16bit: bool = True
    keep_embeddings_16bit: bool = True
    allow_non_native: bool = False
    export_format: ExportFormat | None = None
    artifact: Path | None = None
    eval_set: Path | None = None
    max_new_tokens: int = 32
    plan_request: Any = None  # a callable(groups, scores) -> PlanRequest from a manifest
    # Re-plan (closed loop): attempt n > 1 derives a more conservative plan from n-1's.
    attempt: int = 1
    previous_plan: Path | None = None  # attempt n-1's plan document (else rebuilt)
    plan_copy: Path | None = None  # where to keep a copy of this attempt's plan
    plan_path: Path | None = None  # the plan export reads (default workdir/plan.json)
    quantization: Any = None  # samp_core.spec.QuantizationSpec from a manifest
    rounding: RoundingMethod = RoundingMethod.GPTQ  # --rounding (a manifest's spec wins)
    replan: Any = None  # samp_core.spec.ReplanSpec (manifest or --replan-* flags)

    @property
    def artifact_dir(self) -> Path:
        return self.artifact or self.workdir / "artifact"

    def torch_device(self) -> torch.device:
        from samp_jobs.modeling import pick_device

        return pick_device(self.device)

    def persist(self) -> None:
        """Record model/profile settings so later stages run without repeating them."""
        keep = {
            "model": self.model,
            "dtype": self.dtype,
            "trust_remote_code": self.trust_remote_code,
            "profile": self.profile,
            "group_size": self.group_size,
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "job.json").write_text(json.dumps(keep, indent=2) + "\n")

    def fill_from_workdir(self) -> None:
        path = self.workdir / "job.json"
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        self.model = self.model or saved.get("model", "")
        if self.dtype == "auto":
            self.dtype = saved.get("dtype", "auto")
        self.trust_remote_code = self.trust_remote_code or bool(saved.get("trust_remote_code"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def model_digest(model: str) -> str:
    """Identity of a local model directory: config plus weight file names and sizes."""
    root = Path(model)
    h = hashlib.sha256()
    cfg = root / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for p in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return "sha256:" + h.hexdigest()


def _require_model(cfg: JobConfig) -> None:
    if not cfg.model:
        raise ValueError("no model: pass --model DIR (or --manifest) or run calibrate first")


def _load(cfg: JobConfig) -> tuple[Any, Any]:
    from samp_jobs.modeling import load_model

    _require_model(cfg)
    return load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)


# ------------------------------------------------------------------ calibrate


def run_calibrate(cfg: JobConfig) -> CalibrationResult:
    from transformers import AutoTokenizer

    _require_model(cfg)
    if cfg.calibration is None:
        raise ValueError("calibrate needs --prompts (or spec.calibration in the manifest)")
    seed_everything(cfg.seed)
    tok = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    cal = build_calibration(cfg.calibration, tok)
    cal.result.inputs_hash = inputs_hash(
        model=model_digest(cfg.model),
        dataset=cal.result.dataset_digest,
        options=asdict(cfg.calibration),
    )
    save_calibration(cal, cfg.workdir)
    cfg.persist()
    write_result(cal.result, cfg.workdir, cfg.termination_log)
    return cal.result


# ---------------------------------------------------------------- sensitivity


def _scoring_model(cfg: JobConfig) -> tuple[Any, Any, torch.dtype]:
    """Model for scoring: fp32 on the CPU (bf16 matmuls are slow and noisy there)."""
    model, tok = _load(cfg)
    quant_dtype = checkpoint_dtype(model)
    dev = cfg.torch_device()
    if dev.type == "cpu":
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


def run_sensitivity(cfg: JobConfig) -> SensitivityResult:
    from samp_jobs.modeling import decoder_parts, discover_groups
    from samp_jobs.sensitivity import ScoringOptions, score

    seed_everything(cfg.seed)
    cal_doc = CalibrationResult.model_validate(
        read_json(cfg.workdir / "calibration.json", "calibration result")
    )
    ids = load_calibration_tokens(cfg.workdir)
    rows = max(1, cfg.max_tokens // ids.shape[1])
    ids = ids[:rows]
    model, _tok, qdtype = _scoring_model(cfg)
    dev = cfg.torch_device()
    parts = decoder_parts(model)
    groups = discover_groups(parts, dev)
    profile = get_profile(cfg.profile)
    # Score only what the target can serve: the planner would drop the rest anyway.
    formats = [f for f in cfg.formats if profile.is_servable(f)]
    dropped = sorted(f.value for f in set(cfg.formats) - set(formats))
    if dropped:
        log("sensitivity.skip_formats", profile=profile.name, formats=dropped)
    opts = ScoringOptions(
        formats=formats,
        profile=profile.name,
        group_size=cfg.group_size,
        micro_batch=cfg.micro_batch,
        device=dev,
        quant_dtype=qdtype,
        progress=cfg.progress,
    )
    hessians = sensitivity_hessians(cfg, parts.model, groups, opts)
    log("sensitivity.start", method=cfg.method.value, groups=len(groups), tokens=ids.numel())
    run = score(parts, groups, ids, opts, [cfg.method])
    if hessians is not None:
        hessians.save(cfg.workdir / HESSIANS_FILE)
    doc = SensitivityResult(
        method=cfg.method,
        num_tokens=run.num_tokens,
        num_samples=run.num_sequences,
        groups=groups,
        scores=run.scores[cfg.method],
        wall_seconds=run.wall_seconds,
        peak_memory_bytes=run.peak_memory_bytes,
        device=run.device,
        group_size=cfg.group_size,
        inputs_hash=inputs_hash(
            calibration=cal_doc.inputs_hash,
            method=cfg.method,
            formats=cfg.formats,
            profile=opts.profile,
            group_size=cfg.group_size,
            max_tokens=cfg.max_tokens,
        ),
    )
    cfg.persist()
    write_result(doc, cfg.workdir, cfg.termination_log)
    return doc


def sensitivity_hessians(cfg: JobConfig, model: Any, groups: list[LayerGroup], opts: Any) -> Any:
    """GPTQ's Hessians, collected by the scoring pass when the plan will round with GPTQ
    (``opts.hessians`` set); a stale file from an earlier run is removed either way."""
    from samp_jobs.hessians import collector_for
    from samp_jobs.sensitivity import candidate_formats

    q = cfg.quantization
    rounding = (
        Rounding(method=q.rounding.method, formats=list(q.rounding.gptq_formats))
        if q is not None
        else Rounding(method=cfg.rounding)
    )
    cands = {g.name: candidate_formats(g, opts.formats, opts.group_size) for g in groups}
    (cfg.workdir / HESSIANS_FILE).unlink(missing_ok=True)
    opts.hessians = collector_for(groups, cands, rounding, model, opts.device)
    return opts.hessians


# ----------------------------------------------------------------------- plan


def plan_request(cfg: JobConfig, groups: list[LayerGroup], scores: Any) -> PlanRequest:
    if cfg.plan_request is not None:
        req: PlanRequest = cfg.plan_request(groups, scores)
        return req
    if cfg.budget is None:
        raise ValueError(
            "plan needs a budget: --max-weight-bytes, --fraction-of-16bit or "
            "--effective-bits (or spec.quantization.budget)"
        )
    return PlanRequest(
        groups=groups,
        scores=scores,
        profile=get_profile(cfg.profile),
        budget=cfg.budget,
        allowed_formats=cfg.formats,
        overrides=cfg.overrides,
        keep_lm_head_16bit=cfg.keep_lm_head_16bit,
        keep_embeddings_16bit=cfg.keep_embeddings_16bit,
        allow_non_native=cfg.allow_non_native,
        export_format=cfg.export_format,
        group_size=cfg.group_size,
        rounding=Rounding(method=cfg.rounding),
    )


def run_plan(cfg: JobConfig) -> PlanResult:
    sens = SensitivityResult.model_validate(
        read_json(cfg.workdir / "sensitivity.json", "sensitivity result")
    )
    if sens.group_size != cfg.group_size:
        log(
            "plan.group_size",
            scored=sens.group_size,
            requested=cfg.group_size,
            note="using the group size the scores were computed with",
        )
        cfg.group_size = sens.group_size
    req = plan_request(cfg, sens.groups, sens.scores)
    result: PlanResult | None = None
    if cfg.attempt > 1 and cfg.previous_plan is not None and cfg.previous_plan.is_file():
        previous = PlanResult.model_validate(read_json(cfg.previous_plan, "previous plan"))
        log("plan.replan", attempt=cfg.attempt, previous=str(cfg.previous_plan))
        result = _replan(cfg, previous, sens, req, cfg.attempt)
    else:
        result = plan(req)
        result.inputs_hash = inputs_hash(
            sensitivity=sens.inputs_hash,
            request=req.model_dump(mode="json", exclude={"groups", "scores"}),
        )
        # No copy of attempt n-1's plan (object-store work dir, or a spec change made
        # during a re-plan): rebuild the chain; the planner and the re-plan are
        # deterministic, so this is the plan that attempt would have made.
        for k in range(2, cfg.attempt + 1):
            if k == cfg.attempt:
                log("plan.replan", attempt=k, previous="rebuilt", missing=str(cfg.previous_plan))
            result = _replan(cfg, result, sens, req, k)
    if cfg.plan_copy is not None:  # before the result: success implies the copy exists
        cfg.plan_copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = cfg.plan_copy.with_name(cfg.plan_copy.name + ".tmp")
        tmp.write_text(result.model_dump_json(by_alias=True, indent=2) + "\n")
        tmp.replace(cfg.plan_copy)
    write_result(result, cfg.workdir, cfg.termination_log)
    return result


def _replan(
    cfg: JobConfig, previous: PlanResult, sens: SensitivityResult, req: PlanRequest, attempt: int
) -> PlanResult:
    """Attempt ``attempt``'s plan: ``previous`` with its most sensitive groups raised toward
    16-bit within the spec's headroom (samp_core.canary.conservative_plan)."""
    from samp_core.canary import conservative_plan, replan_ceiling
    from samp_core.spec import Budget as SpecBudget
    from samp_core.spec import QuantizationSpec, ReplanSpec

    q = cfg.quantization
    if q is None:  # flags, not a manifest: the same policy as a spec would state it
        b = req.budget
        q = QuantizationSpec.model_construct(
            budget=SpecBudget.model_construct(
                max_weight_bytes=None if b.max_weight_bytes is None else str(b.max_weight_bytes),
                fraction_of_16bit=b.fraction_of_16bit,
                effective_bits=b.effective_bits,
            ),
            allowed_formats=list(req.allowed_formats),
            allow_non_native_formats=req.allow_non_native,
        )
    rp = cfg.replan if cfg.replan is not None else ReplanSpec(enabled=True)
    new = conservative_plan(previous, sens, req.profile, q, rp, attempt)
    if new is None:
        base, ceiling = replan_ceiling(previous, q, rp, attempt)
        raise PlanError(
            f"re-plan attempt {attempt}: no group of the previous plan can be raised toward "
            f"16-bit within the headroom (plan {previous.total_bytes} bytes, base budget "
            f"{base}, ceiling {ceiling}); raise spec.rollout.replan.maxBudgetIncreaseFraction "
            "or the budget"
        )
    if all(a.format.is_unquantized for a in new.assignments):
        # The stable already serves the 16-bit model; a canary of it proves nothing, and a
        # checkpoint with no quantized layer is not a compressed-tensors checkpoint.
        raise PlanError(
            f"re-plan attempt {attempt}: the headroom lets every group go back to 16-bit "
            f"({new.total_bytes} bytes), which leaves nothing quantized to canary; lower "
            "spec.rollout.replan.maxBudgetIncreaseFraction"
        )
    for note in new.warnings:
        log("plan.replan.raise", attempt=attempt, note=note)
    # A re-plan changes formats, never how they are rounded.
    return new.model_copy(update={"rounding": previous.rounding})


# --------------------------------------------------------------------- export


def run_export(cfg: JobConfig) -> ExportResult:
    from samp_jobs.export import export

    _require_model(cfg)
    plan_path = cfg.workdir / "plan.json"
    if cfg.plan_path is not None:
        if cfg.plan_path.is_file():
            plan_path = cfg.plan_path
        else:  # a plan made before plan copies existed
            log("export.plan", missing=str(cfg.plan_path), using=str(plan_path))
    p = PlanResult.model_validate(read_json(plan_path, "plan result"))
    ids = None
    if (cfg.workdir / "calibration_tokens.pt").is_file():
        ids = load_calibration_tokens(cfg.workdir)  # GPTQ takes rounding.maxTokens of them
    result = export(
        Path(cfg.model),
        p,
        cfg.artifact_dir,
        input_ids=ids,
        device=cfg.torch_device(),
        trust_remote_code=cfg.trust_remote_code,
        hessians=cfg.workdir / HESSIANS_FILE,
    )
    result.inputs_hash = inputs_hash(plan=p.inputs_hash, model=model_digest(cfg.model))
    write_result(result, cfg.workdir, cfg.termination_log)
    return result


# ------------------------------------------------------------------- evaluate


def _load_pair_on_gpus(cfg: JobConfig) -> tuple[Any, Any, Any]:
    """Base and quantized model spread over the visible GPUs, each within half of them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from samp_jobs.evaluate import gpu_memory_map, load_quantized, quantized_gpu_budget
    from samp_jobs.placement import host_available_bytes

    _require_model(cfg)
    # the base may spill to host memory (accelerate streams it in); the quantized model
    # may not (see quantized_gpu_budget)
    base = AutoModelForCausalLM.from_pretrained(
        cfg.model,
        dtype="auto" if cfg.dtype == "auto" else DTYPES[cfg.dtype],
        trust_remote_code=cfg.trust_remote_code,
        device_map="auto",
        max_memory=gpu_memory_map(0.45, int(host_available_bytes() * 0.4)),
    )
    base.train(False)
    dense = sum(p.numel() * p.element_size() for p in base.parameters())
    stored = sum(f.stat().st_size for f in cfg.artifact_dir.glob("*.safetensors"))
    budget = quantized_gpu_budget(gpu_memory_map(0.8), dense, stored)
    quant = load_quantized(cfg.artifact_dir, cfg.trust_remote_code, max_memory=budget)
    tok = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    log(
        "evaluate.placement",
        base=sorted({str(p.device) for p in base.parameters()}),
        quant=sorted({str(p.device) for p in quant.parameters()}),
    )
    return base, tok, quant


def run_evaluate(cfg: JobConfig) -> EvaluationResult:
    from samp_jobs.evaluate import evaluate, load_quantized, read_eval_set

    seed_everything(cfg.seed)
    dev = cfg.torch_device()
    if dev.type == "cpu":
        base, tok = _load(cfg)
        base.float()  # CPU bf16 matmuls are slow; fp32 holds bf16 weights exactly
        quant = load_quantized(cfg.artifact_dir, cfg.trust_remote_code, torch.float32)
    else:
        base, tok, quant = _load_pair_on_gpus(cfg)
    texts = load_held_out(cfg.workdir)
    tasks: list[Any] = []
    eval_digest = ""
    if cfg.eval_set is not None:
        tasks, extra = read_eval_set(cfg.eval_set, tok)
        texts = texts + extra
        eval_digest = "sha256:" + hashlib.sha256(cfg.eval_set.read_bytes()).hexdigest()
    result = evaluate(
        base,
        quant,
        tok,
        texts=texts,
        tasks=tasks,
        max_new_tokens=cfg.max_new_tokens,
        progress=cfg.progress,
    )
    export_hash = ""
    if (cfg.workdir / "export.json").is_file():
        export_hash = str(read_json(cfg.workdir / "export.json", "export").get("inputsHash", ""))
    result.inputs_hash = inputs_hash(export=export_hash, eval_set=eval_digest, held_out=len(texts))
    write_result(result, cfg.workdir, cfg.termination_log)
    return result


STAGES = {
    "calibrate": run_calibrate,
    "sensitivity": run_sensitivity,
    "plan": run_plan,
    "export": run_export,
    "evaluate": run_evaluate,
}


def run_all(cfg: JobConfig, evaluate: bool = True) -> dict[str, Any]:
    """All stages in one process (``samp quantize``)."""
    out: dict[str, Any] = {}
    for name in ("calibrate", "sensitivity", "plan", "export", "evaluate"):
        if name == "evaluate" and not evaluate:
            break
        log("stage.start", stage=name)
        out[name] = STAGES[name](cfg)
    return out
