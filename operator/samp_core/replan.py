"""Re-plan after a failed canary gate: raise the most sensitive groups toward 16-bit.

The closed loop of SAMP. When a canary gate fails and ``spec.rollout.replan`` allows
another attempt, the plan Job of attempt n gets attempt n-1's plan as its invocation's
``previousPlan`` (samp_core.stage_jobs.stage_invocation) and calls
:func:`conservative_plan` on attempt n-1's plan and sensitivity documents: each of the
most sensitive freely chosen groups goes one step toward 16-bit while the total stays
within this attempt's ceiling (:func:`replan_ceiling`). The result is solved by the
exact planner (samp_core.planner) with every group pinned. Pure, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from samp_core.formats import Format
from samp_core.hardware import HardwareProfile
from samp_core.planner import Budget, PlanRequest, group_bytes, plan
from samp_core.results import GroupAssignment, PlanResult, SensitivityResult, inputs_hash
from samp_core.spec import QuantizationSpec, ReplanSpec

__all__ = ["conservative_plan", "replan_ceiling"]


def _format_bytes(plan_result: PlanResult, sens: SensitivityResult) -> dict[str, dict[Format, int]]:
    return {
        grp.name: {
            f: group_bytes(grp, f, plan_result.group_size)
            for f in [*sens.scores.get(grp.name, {}), Format.BF16, Format.FP16]
        }
        for grp in sens.groups
    }


def replan_ceiling(
    previous: PlanResult, quantization: QuantizationSpec, replan: ReplanSpec, attempt: int
) -> tuple[int, int]:
    """(base budget bytes, ceiling for ``attempt``): the headroom opens linearly with attempts,
    reaching ``maxBudgetIncreaseFraction`` at the last attempt."""
    b = quantization.budget
    base = Budget(
        max_weight_bytes=b.max_bytes(),
        fraction_of_16bit=b.fraction_of_16bit,
        effective_bits=b.effective_bits,
    ).resolve(previous.bytes_16bit, previous.num_params)
    span = max(1, replan.max_attempts - 1)
    share = min(1.0, max(0, attempt - 1) / span)
    return base, math.floor(base * (1.0 + replan.max_budget_increase_fraction * share))


def _raisable(previous: PlanResult) -> list[GroupAssignment]:
    """Groups the previous plan chose freely (or raised itself), most sensitive first."""
    return sorted(
        (
            a
            for a in previous.assignments
            if (a.pinned_by is None or a.pinned_by.startswith("replan"))
            and not a.format.is_unquantized
        ),
        key=lambda a: a.score,
        reverse=True,
    )


def _one_step_up(  # noqa: PLR0917
    a: GroupAssignment,
    scores: Mapping[Format, float],
    here: Mapping[Format, int],
    profile: HardwareProfile,
    quantization: QuantizationSpec,
    sixteen: Format,
) -> tuple[int, float, Format]:
    """(bytes, score, format) of the cheapest allowed, servable format above ``a``'s."""
    allowed = set(quantization.allowed_formats)
    options: list[tuple[int, float, Format]] = []
    for f, s in scores.items():
        if f.is_unquantized or f not in allowed or not math.isfinite(s):
            continue
        sup = profile.support(f)
        if not sup.servable or (not sup.native and not quantization.allow_non_native_formats):
            continue
        if here[f] > here[a.format] and max(0.0, s) < a.score:
            options.append((here[f], max(0.0, s), f))
    options.append((here[sixteen], 0.0, sixteen))
    return min(options, key=lambda o: (o[0], o[1]))


def conservative_plan(  # noqa: PLR0917
    previous: PlanResult,
    sensitivity: SensitivityResult,
    profile: HardwareProfile,
    quantization: QuantizationSpec,
    replan: ReplanSpec,
    attempt: int,
) -> PlanResult | None:
    """A plan that raises the most sensitive groups of ``previous`` toward 16-bit.

    Groups the previous plan chose freely (not pinned, overridden or kept 16-bit)
    are taken in order of their current sensitivity score, highest first; each is
    raised one step: to the cheapest format with more bytes and a lower score that
    the spec allows and the profile serves (16-bit is always a step). A raise is
    taken while the total stays within this attempt's ceiling
    (:func:`replan_ceiling`). Nothing else changes, so the new plan differs from
    the failed one only where it is more precise. Returns None when no group can
    be raised within the headroom (the caller stops re-planning). The result is
    solved by the exact planner with every group pinned, so its accounting is the
    planner's own.
    """
    base, ceiling = replan_ceiling(previous, quantization, replan, attempt)
    sizes = _format_bytes(previous, sensitivity)
    sixteen = next((a.format for a in previous.assignments if a.format.is_unquantized), Format.BF16)
    chosen: dict[str, Format] = {a.group: a.format for a in previous.assignments}
    total = previous.total_bytes
    notes: list[str] = []
    for a in _raisable(previous):
        here = sizes[a.group]
        size, score, fmt = _one_step_up(
            a, sensitivity.scores.get(a.group, {}), here, profile, quantization, sixteen
        )
        delta = size - here[a.format]
        if total + delta <= ceiling:
            chosen[a.group] = fmt
            total += delta
            notes.append(
                f"attempt {attempt}: {a.group} {a.format.value} -> {fmt.value} "
                f"(score {a.score:.3g} -> {score:.3g}, +{delta} bytes)"
            )
    if not notes:
        return None
    notes.append(
        f"re-plan attempt {attempt}: {total} bytes, base budget {base}, "
        f"ceiling {ceiling} (+{100 * (ceiling / base - 1):.1f}%)"
    )
    return _solve_pinned(previous, sensitivity, profile, chosen, max(ceiling, total), attempt,
                         notes)


def _solve_pinned(  # noqa: PLR0917
    previous: PlanResult,
    sensitivity: SensitivityResult,
    profile: HardwareProfile,
    chosen: dict[str, Format],
    max_bytes: int,
    attempt: int,
    notes: list[str],
) -> PlanResult:
    """The exact planner with every group pinned to ``chosen``: its own accounting."""
    request = PlanRequest(
        groups=sensitivity.groups,
        scores=sensitivity.scores,
        profile=profile,
        budget=Budget(max_weight_bytes=max_bytes),
        allowed_formats=sorted(set(chosen.values()), key=list(Format).index),
        pins=chosen,
        keep_lm_head_16bit=False,
        export_format=previous.export_format,
        allow_non_native=True,
        group_size=previous.group_size,
        curve_points=0,
    )
    result = plan(request)
    # Pins were only the means: keep the user's pins visible as such, mark the raises.
    was = {a.group: a for a in previous.assignments}
    assignments = [
        a.model_copy(
            update={
                "pinned_by": was[a.group].pinned_by
                if a.format == was[a.group].format
                else f"replan:{attempt}"
            }
        )
        for a in result.assignments
    ]
    return result.model_copy(
        update={
            "assignments": assignments,
            "pins_applied": previous.pins_applied,
            "inputs_hash": inputs_hash(previous=previous.inputs_hash, attempt=attempt, pins=chosen),
            "warnings": notes,
        }
    )
