"""Is the budget reachable at all? The smallest feasible plan depends only on the layer
shapes, the hardware profile and the pins, so it can be checked before any GPU runs.

``budget_problem`` asks the planner itself (zero sensitivity scores: feasibility does not
depend on them) and, when the budget is out of reach, names the pin that puts it there
(keepLmHead16Bit, keepEmbeddings16Bit or an override) by retrying without each one.
"""

from __future__ import annotations

from collections.abc import Mapping

from samp_core.formats import Format
from samp_core.groups import LayerGroup, build_groups
from samp_core.hardware import get_profile
from samp_core.planner import PlanError, PlanInfeasibleError, plan, request_from_spec
from samp_core.spec import QuantizationSpec, QuantizedModelSpec

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


def _infeasible(q: QuantizationSpec, spec: QuantizedModelSpec,
                groups: list[LayerGroup]) -> PlanInfeasibleError | None:
    scores = {g.name: dict.fromkeys(Format, 0.0) for g in groups}
    profile = get_profile(spec.hardware.target)
    try:
        plan(request_from_spec(q, groups=groups, scores=scores, profile=profile))
    except PlanInfeasibleError as err:
        return err
    return None


def budget_problem(spec: QuantizedModelSpec, tensors: Mapping[str, list[int]]) -> str | None:
    """Why spec.quantization.budget cannot be met on this model, or None when it can."""
    groups = build_groups(linear_shapes(tensors))
    q = spec.quantization
    try:
        err = _infeasible(q, spec, groups)
    except PlanError as other:  # pins from incompatible checkpoint families
        return str(other)
    if err is None:
        return None
    pins: list[tuple[str, QuantizationSpec]] = []
    if q.keep_lm_head16_bit:
        pins.append(("keepLmHead16Bit", q.model_copy(update={"keep_lm_head16_bit": False})))
    if q.keep_embeddings16_bit:
        pins.append(("keepEmbeddings16Bit",
                     q.model_copy(update={"keep_embeddings16_bit": False})))
    for i, override in enumerate(q.overrides):
        rest = [o for j, o in enumerate(q.overrides) if j != i]
        pins.append((f"overrides[{i}] ({override.match!r})",
                     q.model_copy(update={"overrides": rest})))
    culprits = [name for name, relaxed in pins if _infeasible(relaxed, spec, groups) is None]
    cause = (
        f"; the pin {' or '.join(culprits)} alone puts it out of reach: relax that pin or "
        "raise the budget"
        if culprits else "; raise the budget or allow smaller formats"
    )
    return f"{err}{cause}"
