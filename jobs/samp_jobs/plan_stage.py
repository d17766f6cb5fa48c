"""The plan stage: the exact SAMP plan, or in re-plan attempt n a more conservative one.

Attempt n > 1 raises the most sensitive groups of attempt n-1's plan toward 16-bit within
the spec's headroom (samp_core.replan.conservative_plan). Without attempt n-1's plan copy
(object-store work directory, or a spec change made during a re-plan) the chain is rebuilt
from attempt 1; the planner and the re-plan are deterministic, so this is the plan that
attempt would have made.
"""

from __future__ import annotations

from pathlib import Path

from samp_core.planner import PlanError, PlanRequest, plan
from samp_core.replan import conservative_plan, replan_ceiling
from samp_core.results import PlanResult, SensitivityResult
from samp_core.spec import BudgetSpec, QuantizationSpec
from samp_core.stage_contract import QuantizationInputs, StageInvocation
from samp_jobs import stage_options as opt
from samp_jobs.runlog import log, read_json, write_result


def run_plan(inv: StageInvocation) -> PlanResult:
    work = opt.workdir(inv)
    sens = SensitivityResult.model_validate(
        read_json(work / "sensitivity.json", "sensitivity result"))
    q = inv.inputs.quantization
    if sens.group_size != q.group_size:
        log("plan.group_size", scored=sens.group_size, requested=q.group_size,
            note="using the group size the scores were computed with")
        q = q.model_copy(update={"group_size": sens.group_size})
        inv = inv.model_copy(update={"inputs": inv.inputs.model_copy(update={"quantization": q})})
    req = opt.plan_request_for(inv, sens.groups, sens.scores)
    previous_path = Path(inv.paths.previous_plan) if inv.paths.previous_plan else None
    if inv.attempt > 1 and previous_path is not None and previous_path.is_file():
        previous = PlanResult.model_validate(read_json(previous_path, "previous plan"))
        log("plan.replan", attempt=inv.attempt, previous=str(previous_path))
        result = _replan(inv, previous, sens, req, inv.attempt)
    else:
        result = plan(req)
        for k in range(2, inv.attempt + 1):
            if k == inv.attempt:
                log("plan.replan", attempt=k, previous="rebuilt", missing=str(previous_path))
            result = _replan(inv, result, sens, req, k)
    result.inputs_hash = inv.inputs_hash
    result.score_unit = sens.score_unit
    if inv.paths.plan_copy is not None:  # before the result: success implies the copy exists
        copy = Path(inv.paths.plan_copy)
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_name(copy.name + ".tmp")
        tmp.write_text(result.model_dump_json(by_alias=True, indent=2) + "\n")
        tmp.replace(copy)
    write_result(result, work, inv.runtime.termination_log, inv.paths.stored_result)
    return result


def _replan_policy(q: QuantizationInputs, req: PlanRequest) -> QuantizationSpec:
    """The policy as samp_core.replan reads it. Built unvalidated: a flag run may state a
    byte budget below the CRD's 1Mi floor, which the re-plan arithmetic handles fine."""
    b = req.budget
    return QuantizationSpec.model_construct(
        budget=BudgetSpec.model_construct(
            max_weight_bytes=None if b.max_weight_bytes is None else str(b.max_weight_bytes),
            fraction_of_16bit=b.fraction_of_16bit,
            effective_bits=b.effective_bits,
        ),
        allowed_formats=list(q.formats),
        allow_non_native_formats=q.allow_non_native,
    )


def _replan(
    inv: StageInvocation, previous: PlanResult, sens: SensitivityResult, req: PlanRequest,
    attempt: int,
) -> PlanResult:
    """Attempt ``attempt``'s plan: ``previous`` with its most sensitive groups raised toward
    16-bit within the headroom (samp_core.replan.conservative_plan)."""
    q = _replan_policy(inv.inputs.quantization, req)
    rp = inv.inputs.replan
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
