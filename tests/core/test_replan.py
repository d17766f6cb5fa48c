"""The closed-loop re-plan (samp_core.replan) on the real planner: raise the most
sensitive groups of a failed plan toward 16-bit within the attempt's headroom."""

from __future__ import annotations

from samp_core import replan as rp
from samp_core.formats import Format
from samp_core.groups import build_groups
from samp_core.hardware import get_profile
from samp_core.planner import Budget, PlanRequest, plan
from samp_core.results import SensitivityResult
from spec_fixtures import make_spec


def _tiny_plan() -> tuple[object, SensitivityResult]:
    shapes: dict[str, tuple[int, int]] = {}
    for i in range(4):
        p = f"model.layers.{i}"
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}.self_attn.{n}"] = (256, 256)
        shapes[f"{p}.mlp.gate_proj"] = (256, 512)
        shapes[f"{p}.mlp.up_proj"] = (256, 512)
        shapes[f"{p}.mlp.down_proj"] = (512, 256)
    shapes["lm_head"] = (256, 1024)
    groups = build_groups(shapes)
    scores = {
        grp.name: {
            Format.INT4_W4A16: 1.0 + 3.0 * (grp.name.endswith("down_proj")) + 0.1 * i,
            Format.INT8_W8A8: 0.1 + 0.01 * i,
        }
        for i, grp in enumerate(groups)
        if grp.name != "lm_head"
    }
    sens = SensitivityResult(
        method="fisher",
        num_tokens=8192,
        groups=groups,
        scores=scores,
        wall_seconds=1.0,
        group_size=32,
    )
    p = plan(
        PlanRequest(
            groups=groups,
            scores=scores,
            profile=get_profile("sm90"),
            budget=Budget(fraction_of_16bit=0.65),  # make_spec's (examples/tiny-cpu.yaml)
            allowed_formats=[Format.INT4_W4A16, Format.INT8_W8A8, Format.BF16],
            group_size=32,
        )
    )
    return p, sens


def test_conservative_plan_raises_most_sensitive_groups_within_headroom() -> None:
    prev, sens = _tiny_plan()
    spec = make_spec(replan={"enabled": True, "maxAttempts": 3, "maxBudgetIncreaseFraction": 0.2})
    base, ceiling2 = rp.replan_ceiling(prev, spec.quantization, spec.rollout.replan, 2)
    _, ceiling3 = rp.replan_ceiling(prev, spec.quantization, spec.rollout.replan, 3)
    assert ceiling2 == int(base * 1.1) and ceiling3 == int(base * 1.2)
    new = rp.conservative_plan(
        prev, sens, get_profile("sm90"), spec.quantization, spec.rollout.replan, 2
    )
    assert new is not None
    assert new.total_bytes <= ceiling2 and new.total_bytes > prev.total_bytes
    before, after = prev.format_of(), new.format_of()
    changed = [k for k in before if before[k] != after[k]]
    assert changed
    # only raises, never lowers; the most sensitive (down_proj, highest score first)
    order = {Format.INT4_W4A16: 0, Format.INT8_W8A8: 1, Format.BF16: 2}
    assert all(order[after[k]] > order[before[k]] for k in changed)
    top = max(
        (a for a in prev.assignments if a.pinned_by is None and not a.format.is_unquantized),
        key=lambda a: a.score,
    )
    assert top.group in changed
    assert new.predicted_loss < prev.predicted_loss
    assert any("attempt 2" in w for w in new.warnings)
    # attempt 3 starts from attempt 2 and opens more headroom
    newer = rp.conservative_plan(
        new, sens, get_profile("sm90"), spec.quantization, spec.rollout.replan, 3
    )
    assert newer is not None and newer.total_bytes > new.total_bytes


def test_conservative_plan_without_headroom_is_none() -> None:
    prev, sens = _tiny_plan()
    spec = make_spec(replan={"enabled": True, "maxBudgetIncreaseFraction": 0.0})
    assert (
        rp.conservative_plan(
            prev, sens, get_profile("sm90"), spec.quantization, spec.rollout.replan, 2
        )
        is None
    )
