"""The one place a :class:`~samp_core.stage_contract.StageInvocation` becomes the stages'
options: the model directory, calibration options, scoring options, the planner request.

Stages read nothing else: not the QuantizedModel, not flags, not files left by earlier
stages' settings. Whatever built the invocation (the operator's ConfigMap, a manifest or
flags in samp_jobs.invocation), a stage computes the same thing from the same document.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from samp_core.planner import PlanRequest
from samp_core.stage_contract import StageInvocation, plan_request
from samp_jobs.calibration import CalibrationOptions
from samp_jobs.invocation import InvocationError
from samp_jobs.measured_costs import profile_with_measured_costs
from samp_jobs.sources import resolve_model


def workdir(inv: StageInvocation) -> Path:
    return Path(inv.paths.workdir)


def artifact_dir(inv: StageInvocation) -> Path:
    return Path(inv.paths.artifact)


def model_dir(inv: StageInvocation) -> str:
    """The local model directory: the mounted path, else a hub snapshot of the source."""
    if inv.paths.model:
        return inv.paths.model
    if not inv.inputs.model.source:
        raise InvocationError("no model: pass --model DIR or --manifest (spec.model.source)")
    return resolve_model(inv.inputs.model.source, workdir(inv))


def seed(inv: StageInvocation) -> int:
    cal = inv.inputs.calibration
    return cal.seed if cal is not None else 0


def seed_everything(inv: StageInvocation) -> None:
    random.seed(seed(inv))
    torch.manual_seed(seed(inv))


def torch_device(inv: StageInvocation) -> torch.device:
    from samp_jobs.modeling import pick_device

    return pick_device(inv.runtime.device)


def calibration_options(inv: StageInvocation) -> CalibrationOptions:
    cal = inv.inputs.calibration
    if cal is None or not inv.paths.prompts:
        raise InvocationError("calibrate needs --prompts (or spec.calibration in the manifest)")
    return CalibrationOptions(
        source=inv.paths.prompts,
        format=cal.format,
        text_field=cal.text_field,
        messages_field=cal.messages_field,
        samples=cal.samples,
        max_sequence_length=cal.max_sequence_length,
        seed=cal.seed,
        held_out_fraction=cal.held_out_fraction,
        allow_synthetic=cal.allow_synthetic,
    )


def scoring_options(inv: StageInvocation, device: torch.device, quant_dtype: torch.dtype) -> Any:
    """ScoringOptions over the formats the target can serve (the planner drops the rest)."""
    from samp_jobs.runlog import log
    from samp_jobs.sensitivity import ScoringOptions

    q = inv.inputs.quantization
    profile = profile_with_measured_costs(inv.inputs.profile)
    formats = [f for f in q.formats if profile.is_servable(f)]
    dropped = sorted(f.value for f in set(q.formats) - set(formats))
    if dropped:
        log("sensitivity.skip_formats", profile=profile.name, formats=dropped)
    return ScoringOptions(
        formats=formats,
        profile=profile.name,
        group_size=q.group_size,
        micro_batch=inv.runtime.micro_batch,
        device=device,
        quant_dtype=quant_dtype,
        progress=inv.runtime.progress,
    )


def plan_request_for(inv: StageInvocation, groups: Any, scores: Any) -> PlanRequest:
    """The planner request, on the profile with measured kernel costs where shipped."""
    return plan_request(inv.inputs.quantization, groups=groups, scores=scores,
                        profile=profile_with_measured_costs(inv.inputs.profile))
