"""Is the budget reachable at all? The smallest feasible plan depends only on the layer
shapes, the hardware profile and the pins, so it can be checked before any GPU runs.

``budget_problem`` asks the planner itself (zero sensitivity scores: feasibility does not
depend on them) and, when the budget is out of reach, names the pin that puts it there
(keepLmHead16Bit, keepEmbeddings16Bit or an override) by retrying without each one.

Where it runs: ``samp validate --model DIR`` and the Jobs' preflight (before the first
stage), both of which read the shapes from local safetensors headers. The operator does
not check it at admission: the weights live behind pvc:// (mounted only in the Jobs'
pods) or hf:// (the operator fetches nothing from the hub), so the operator has no shapes
to check without starting a pod; the calibrate Job's preflight refuses in seconds instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from samp_core.formats import Format
from samp_core.groups import LayerGroup, build_groups
from samp_core.hardware import HardwareProfile, get_profile
from samp_core.planner import PlanError, PlanInfeasibleError, plan
from samp_core.spec import QuantizedModelSpec
from samp_core.stage_contract import QuantizationInputs, plan_request, quantization_inputs

EMBEDDING_MARKERS = ("embed", "wte", "wpe")


def linear_shapes(tensors: Mapping[str, list[int]]) -> dict[str, tuple[int, int]]:
    """``(in, out)`` of every Linear weight among checkpoint tensors (name -> shape): 2-D
    ``*.weight`` tensors that are not embeddings, in checkpoint order."""
    return {
        name.removesuffix(".weight"): (shape[1], shape[0])
        for name, shape in tensors.items()
        if name.endswith(".weight") and len(shape) == 2
        and not any(m in name for m in EMBEDDING_MARKERS)
    }


def _infeasible(q: QuantizationInputs, profile: HardwareProfile,
                groups: list[LayerGroup]) -> PlanInfeasibleError | None:
    scores = {g.name: dict.fromkeys(Format, 0.0) for g in groups}
    try:
        plan(plan_request(q, groups=groups, scores=scores, profile=profile).model_copy(
            update={"curve_points": 0}))
    except PlanInfeasibleError as err:
        return err
    return None


def _relaxed_pins(q: QuantizationInputs) -> list[tuple[str, QuantizationInputs]]:
    """(spec field, the policy without that one pin) for every pin the policy sets."""
    pins: list[tuple[str, QuantizationInputs]] = []
    if q.keep_lm_head_16bit:
        pins.append(("keepLmHead16Bit", q.model_copy(update={"keep_lm_head_16bit": False})))
    if q.keep_embeddings_16bit:
        pins.append(("keepEmbeddings16Bit",
                     q.model_copy(update={"keep_embeddings_16bit": False})))
    for i, override in enumerate(q.overrides):
        rest = [o for j, o in enumerate(q.overrides) if j != i]
        pins.append((f"overrides[{i}] ({override.match!r})",
                     q.model_copy(update={"overrides": rest})))
    return pins


def policy_budget_problem(q: QuantizationInputs, profile: HardwareProfile,
                          tensors: Mapping[str, list[int]]) -> str | None:
    """Why ``q.budget`` cannot be met on a model with these tensors (name -> shape) on
    ``profile``, naming the pin that puts it out of reach; None when it can be met (or
    when ``q`` has no budget: stages that do not plan need none)."""
    if q.budget is None:
        return None
    groups = build_groups(linear_shapes(tensors))
    if not groups:
        return None  # no Linear weight in the headers: the model load will say so
    try:
        err = _infeasible(q, profile, groups)
    except PlanError as other:  # pins from incompatible checkpoint families
        return str(other)
    if err is None:
        return None
    culprits = [name for name, relaxed in _relaxed_pins(q)
                if _infeasible(relaxed, profile, groups) is None]
    cause = (
        f"; the pin {' or '.join(culprits)} alone puts it out of reach: relax that pin or "
        "raise the budget"
        if culprits else "; raise the budget or allow smaller formats"
    )
    return f"{err}{cause}"


def budget_problem(spec: QuantizedModelSpec, tensors: Mapping[str, list[int]]) -> str | None:
    """Why spec.quantization.budget cannot be met on this model, or None when it can."""
    return policy_budget_problem(quantization_inputs(spec.quantization),
                                 get_profile(spec.hardware.target), tensors)
