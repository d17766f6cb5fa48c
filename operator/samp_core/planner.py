"""The SAMP planner: one format per layer group, minimising predicted loss under a budget.

This is a multiple-choice knapsack: each group picks exactly one format; a format
costs bytes (and optionally decode time) and adds its sensitivity score to the
predicted loss (scores are additive to first order, the same assumption ModelOpt
``auto_quantize`` and HAWQ-V3 make). We solve it exactly as a binary program with
``scipy.optimize.milp`` (HiGHS, relative gap 0), never greedily: greedy by
loss-per-byte is optimal only for the LP relaxation and can be arbitrarily bad on
the integer problem.

Where each part lives: the request, budget and errors in ``samp_core.plan_request``;
each group's options and exclusions in ``samp_core.plan_options``; the exact solve
(integer byte row, exact re-check, tie-break toward fewer bytes) in ``samp_core.mckp``.
Infeasibility is decided here in exact arithmetic before any solver runs, so the
error can name the smallest feasible budget. Losses are normalised by their largest
value, so "exact" means within HiGHS's absolute gap of 1e-6 of the largest
single-group score.

The trade-off curve is a sweep of exact solves, not the full Pareto frontier (see
``_curve``). Planning 70B (322 groups, 13 curve points) takes 0.5-4 s, 405B (506 groups) ~8 s.

NF4 (bitsandbytes) cannot share a checkpoint with compressed-tensors schemes in
vLLM, so formats are planned per export family and the better family wins.
"""

from __future__ import annotations

import math

from samp_core.formats import ExportFormat, Format, checkpoint_bytes
from samp_core.groups import GroupKind
from samp_core.mckp import Solution, solve
from samp_core.plan_options import (
    GroupOptions,
    Option,
    Options,
    build_options,
    decode_weight,
    families_of,
    restrict_to_family,
)
from samp_core.plan_request import (
    Budget,
    PlanError,
    PlanInfeasibleError,
    PlanRequest,
    group_bytes,
)
from samp_core.results import CurvePoint, GroupAssignment, PlanResult
from samp_core.stage_contract import request_from_spec

__all__ = [
    "Budget",
    "PlanError",
    "PlanInfeasibleError",
    "PlanRequest",
    "group_bytes",
    "plan",
    "request_from_spec",
]


def _fmt_bits(bytes_: int, params: int) -> float:
    return 8 * bytes_ / params if params else 0.0


def _ceil_dp(x: float, digits: int = 4) -> float:
    """Round up so a budget given at this precision is really feasible."""
    f = 10.0**digits
    return math.ceil(x * f - 1e-9) / f


class _Scale:
    """The request's totals: what 16-bit costs, the byte limit and the latency cap."""

    def __init__(self, req: PlanRequest) -> None:
        self.num_params = sum(g.num_params for g in req.groups)
        self.bytes_16 = sum(group_bytes(g, Format.BF16, req.group_size) for g in req.groups)
        self.budget = req.budget.resolve(self.bytes_16, self.num_params)
        self.cost_16 = float(sum(decode_weight(g) for g in req.groups))
        rel = req.max_relative_latency
        self.latency_cap = None if rel is None else rel * self.cost_16

    def infeasible(self, message: str, min_bytes: int) -> PlanInfeasibleError:
        return PlanInfeasibleError(
            message,
            requested_bytes=self.budget,
            min_feasible_bytes=min_bytes,
            min_effective_bits=_fmt_bits(min_bytes, self.num_params),
            min_fraction_of_16bit=min_bytes / self.bytes_16,
        )


def _families(req: PlanRequest, opts: Options) -> dict[ExportFormat, list[GroupOptions]]:
    """Each checkpoint family to plan, with the options it can store."""
    families: dict[ExportFormat, list[GroupOptions]] = {}
    wanted = [req.export_format] if req.export_format is not None else families_of(opts.groups)
    for fam in wanted:
        restricted = restrict_to_family(opts.groups, fam)
        if restricted is not None:
            families[fam] = restricted
    if not families:
        raise PlanError(
            "pins force formats from different checkpoint families than requested (NF4 and "
            "compressed-tensors cannot be mixed in one vLLM checkpoint)"
        )
    return families


def _min_feasible_bytes(
    req: PlanRequest, s: _Scale, families: dict[ExportFormat, list[GroupOptions]]
) -> int:
    """The smallest plan's bytes; raises, naming it, when the budgets cannot be met."""
    min_bytes = min(sum(min(o.bytes for o in go.options) for go in fg) for fg in families.values())
    if s.budget < min_bytes:
        bits = _fmt_bits(min_bytes, s.num_params)
        frac = min_bytes / s.bytes_16
        raise s.infeasible(
            f"budget {s.budget} bytes ({_fmt_bits(s.budget, s.num_params):.4f} effective bits, "
            f"{100 * s.budget / s.bytes_16:.2f}% of 16-bit) is below the smallest feasible plan "
            f"on {req.profile.name} with the allowed formats and pins: {min_bytes} bytes = "
            f"{_ceil_dp(bits):.4f} effective bits = {_ceil_dp(frac, 6):.6f} of 16-bit",
            min_bytes,
        )
    if s.latency_cap is not None:
        min_cost = min(
            sum(min(o.cost for o in go.options) for go in fg) for fg in families.values()
        )
        if min_cost > s.latency_cap * (1 + 1e-9):
            raise s.infeasible(
                f"latency budget {req.max_relative_latency} of bf16 is below the fastest plan "
                f"({min_cost / s.cost_16:.4f} of bf16) on {req.profile.name}",
                min_bytes,
            )
    return min_bytes


def _best_family(
    req: PlanRequest,
    s: _Scale,
    families: dict[ExportFormat, list[GroupOptions]],
    min_bytes: int,
) -> tuple[ExportFormat, list[GroupOptions], Solution]:
    best: tuple[ExportFormat, list[GroupOptions], Solution] | None = None
    for fam, fg in families.items():
        sol = solve(fg, s.budget, s.latency_cap, req.time_limit_s, tie_break=True)
        if sol is None:
            continue
        if best is None or (sol.loss, sol.bytes) < (best[2].loss, best[2].bytes):
            best = (fam, fg, sol)
    if best is None:
        raise s.infeasible(
            f"no plan meets both the byte budget ({s.budget}) and the latency budget "
            f"({req.max_relative_latency} of bf16) together; relax one of them",
            min_bytes,
        )
    return best


def _assignment(go: GroupOptions, o: Option) -> GroupAssignment:
    return GroupAssignment(
        group=go.group.name,
        kind=go.group.kind,
        format=o.fmt,
        bytes=o.bytes,
        score=o.loss,
        num_params=go.group.num_params,
        modules=list(go.group.modules),
        pinned_by=go.pinned_by,
    )


def plan(request: PlanRequest) -> PlanResult:
    """Solve the SAMP multiple-choice knapsack exactly and return the plan with its curve."""
    req = request
    opts = build_options(req)
    s = _Scale(req)
    warnings = opts.warnings
    if not req.keep_embeddings_16bit and any(g.kind is GroupKind.EMBEDDING for g in req.groups):
        warnings.append("embeddings stay 16-bit: vLLM quantizes Linear layers only")
    families = _families(req, opts)
    min_bytes = _min_feasible_bytes(req, s, families)
    fam, fg, sol = _best_family(req, s, families, min_bytes)
    chosen = [(go, go.options[c]) for go, c in zip(fg, sol.choice, strict=True)]
    curve = _curve(families, min_bytes, s.latency_cap, req, own=(s.budget, sol))
    if len(families) > 1:
        warnings.append(
            f"planned {', '.join(f.value for f in families)} separately (NF4 cannot mix with "
            f"compressed-tensors); chose {fam.value}"
        )
    cost = sum(o.cost for _, o in chosen)
    return PlanResult(
        profile=req.profile.name,
        export_format=fam,
        group_size=req.group_size,
        assignments=[_assignment(go, o) for go, o in chosen],
        total_bytes=sol.bytes,
        checkpoint_bytes=sum(
            checkpoint_bytes(
                o.fmt,
                go.group.in_features,
                go.group.out_features,
                req.group_size,
                num_tensors=go.group.num_modules,
            )
            for go, o in chosen
        ),
        bytes_16bit=s.bytes_16,
        num_params=s.num_params,
        effective_bits=_fmt_bits(sol.bytes, s.num_params),
        predicted_loss=sol.loss,
        budget_bytes=s.budget,
        min_feasible_bytes=min_bytes,
        predicted_relative_latency=cost / s.cost_16 if s.cost_16 else None,
        excluded=opts.excluded,
        pins_applied=opts.pins_applied,
        curve=curve,
        solver_status=sol.status,
        warnings=warnings,
        rounding=req.rounding,
    )


def _curve(
    families: dict[ExportFormat, list[GroupOptions]],
    min_bytes: int,
    latency_cap: float | None,
    req: PlanRequest,
    own: tuple[int, Solution],
) -> list[CurvePoint]:
    """Min predicted loss at evenly spaced budgets from the smallest feasible to the point
    where more bytes stop helping.

    Each point is an exact solve, so the curve is the true trade-off at those budgets.
    (The full Pareto frontier is exact too but has up to ~1e5-1e6 breakpoints at 70B
    scale, too many to store in a status document.) A running minimum keeps it
    monotone even if a solve stops at its time limit: a plan that fits a smaller
    budget also fits a larger one.
    """
    if req.curve_points == 0:
        return []
    # Bytes beyond which loss cannot fall: every group at its min-loss, min-bytes option.
    top = max(
        sum(min(go.options, key=lambda o: (o.loss, o.bytes)).bytes for go in fg)
        for fg in families.values()
    )
    top = max(top, min_bytes)
    k = req.curve_points
    budgets = {min_bytes + (top - min_bytes) * i // max(1, k - 1) for i in range(k)}
    own_budget, own_sol = own
    per_point_limit = max(1.0, req.time_limit_s / max(1, len(budgets)))
    points: list[CurvePoint] = []
    prev: CurvePoint | None = None
    # The requested budget is on the curve too ("you are here"), already solved.
    for b in sorted(budgets | {own_budget}):
        cand: list[Solution] = [own_sol] if b == own_budget else []
        for fg in families.values() if b != own_budget else ():
            s = solve(fg, b, latency_cap, per_point_limit, tie_break=False)
            if s is not None:
                cand.append(s)
        if not cand:
            continue  # latency budget makes this byte budget infeasible
        s = min(cand, key=lambda s: (s.loss, s.bytes))
        p = CurvePoint(budget_bytes=b, bytes=s.bytes, predicted_loss=s.loss)
        if prev is not None and prev.predicted_loss <= p.predicted_loss:
            p = CurvePoint(budget_bytes=b, bytes=prev.bytes, predicted_loss=prev.predicted_loss)
        points.append(p)
        prev = p
    return points
