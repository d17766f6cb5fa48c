"""The SAMP planner: one format per layer group, minimising predicted loss under a budget.

This is a multiple-choice knapsack: each group picks exactly one format; a format
costs bytes (and optionally decode time) and adds its sensitivity score to the
predicted loss (scores are additive to first order, the same assumption ModelOpt
``auto_quantize`` and HAWQ-V3 make). We solve it exactly as a binary program with
``scipy.optimize.milp`` (HiGHS, relative gap 0), never greedily: greedy by
loss-per-byte is optimal only for the LP relaxation and can be arbitrarily bad on
the integer problem.

Exactness details that matter at 70B scale (byte counts ~1e8 per group):
- the byte row is rewritten relative to each group's cheapest option and divided
  by the gcd of all deltas, so it has integer coefficients and an integer
  right-hand side; the solution is then re-checked in exact integer arithmetic
  and the row tightened if HiGHS's feasibility tolerance let a byte slip through;
- infeasibility is decided in exact arithmetic before any solver runs, so the
  error can name the smallest feasible budget;
- losses are normalised by their largest value, so "exact" means within HiGHS's
  absolute gap of 1e-6 of the largest single-group score;
- among loss-optimal plans a second solve picks the smallest one, so free
  compression (a group whose score is 0) is taken; it runs only when some group
  has tied options, since otherwise it cannot change the answer.

The trade-off curve is a sweep of exact solves, not the full Pareto frontier (see
``_curve``). Planning 70B (322 groups, 13 curve points) takes 0.5-4 s, 405B (506 groups) ~8 s.

NF4 (bitsandbytes) cannot share a checkpoint with compressed-tensors schemes in
vLLM, so formats are planned per export family and the better family wins.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from samp_core.formats import ExportFormat, Format, RoundingMethod
from samp_core.groups import GroupKind, LayerGroup
from samp_core.hardware import (
    HardwareProfile,
    checkpoint_bytes,
    effective_group_size,
    export_format_of,
    requires_group_divisibility,
    weight_bytes,
)
from samp_core.results import CurvePoint, ExcludedFormat, GroupAssignment, PlanResult, Rounding
from samp_core.spec import QuantizationSpec

__all__ = [
    "Budget",
    "PlanError",
    "PlanInfeasibleError",
    "PlanRequest",
    "group_bytes",
    "plan",
    "request_from_spec",
]

_QUANTIZED_DEFAULT: tuple[Format, ...] = tuple(f for f in Format if not f.is_unquantized)


class PlanError(ValueError):
    """The request cannot be planned as written (bad pin, unknown group, ...)."""


class PlanInfeasibleError(PlanError):
    """No assignment fits the budget; the message names the smallest budget that does."""

    def __init__(
        self,
        message: str,
        *,
        requested_bytes: int,
        min_feasible_bytes: int,
        min_effective_bits: float,
        min_fraction_of_16bit: float,
    ) -> None:
        super().__init__(message)
        self.requested_bytes = requested_bytes
        self.min_feasible_bytes = min_feasible_bytes
        self.min_effective_bits = min_effective_bits
        self.min_fraction_of_16bit = min_fraction_of_16bit


class Budget(BaseModel):
    """The memory budget for the planned weights: exactly one of three equivalent forms.

    It covers the groups handed to the planner (usually every Linear plus
    lm_head and embeddings); biases, norms and the KV cache are outside it.
    """

    model_config = ConfigDict(
        populate_by_name=True, alias_generator=to_camel, extra="forbid", frozen=True
    )

    max_weight_bytes: int | None = Field(default=None, gt=0)
    fraction_of_16bit: float | None = Field(default=None, gt=0)
    effective_bits: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        given = [
            n
            for n in ("max_weight_bytes", "fraction_of_16bit", "effective_bits")
            if getattr(self, n) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "budget needs exactly one of maxWeightBytes, fractionOf16Bit, effectiveBits; "
                f"got {given or 'none'}"
            )
        return self

    def resolve(self, bytes_16bit: int, num_params: int) -> int:
        """The byte limit, floored, for planned weights of this size."""
        if self.max_weight_bytes is not None:
            return self.max_weight_bytes
        if self.fraction_of_16bit is not None:
            return math.floor(self.fraction_of_16bit * bytes_16bit)
        assert self.effective_bits is not None
        return math.floor(self.effective_bits * num_params / 8)


class PlanRequest(BaseModel):
    """Everything the planner needs; no defaults hide a decision the user should see.

    ``scores[group][format]`` is the estimated loss increase when only that group
    uses that format (16-bit formats are 0 and may be omitted). ``pins`` maps a
    group name, or the name of any module in a group, to a format; ``overrides``
    are ``(regex, format)`` rules searched (``re.search``) in group and module
    names, first match wins, pins first. Pins and overrides are explicit user
    intent, so they bypass ``allowed_formats`` and the native check (with a
    warning), but never servability or shape constraints; use ``Format.BF16`` to keep
    matches unquantized. Embeddings always stay 16-bit: neither vLLM's
    compressed-tensors nor its bitsandbytes loader quantizes embedding tables.
    ``export_format`` None plans every checkpoint family the formats allow and
    keeps the best; set it to plan one family only.
    ``max_relative_latency`` bounds predicted decode time of the planned Linears
    as a fraction of all-bf16 (decode is memory-bound: time ~ params x relative
    cost of the format on this profile).
    """

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="forbid")

    groups: list[LayerGroup] = Field(min_length=1)
    scores: dict[str, dict[Format, float]]
    profile: HardwareProfile
    budget: Budget
    allowed_formats: list[Format] = Field(default_factory=lambda: list(_QUANTIZED_DEFAULT))
    pins: dict[str, Format] = Field(default_factory=dict)
    overrides: list[tuple[str, Format]] = Field(default_factory=list)
    keep_lm_head_16bit: bool = True
    keep_embeddings_16bit: bool = True
    export_format: ExportFormat | None = None
    allow_non_native: bool = False
    group_size: int = Field(default=128, gt=0)
    max_relative_latency: float | None = Field(default=None, gt=0)
    curve_points: int = Field(default=12, ge=0, le=64)
    time_limit_s: float = Field(default=60.0, gt=0)
    # Carried into the plan for the exporter. Round-to-nearest unless asked: GPTQ needs
    # calibration tokens at export; the API (request_from_spec) and `samp plan` default
    # to GPTQ for the 4-bit groups.
    rounding: Rounding = Field(default_factory=lambda: Rounding(method=RoundingMethod.RTN))

    @field_validator("overrides")
    @classmethod
    def _regexes_compile(cls, v: list[tuple[str, Format]]) -> list[tuple[str, Format]]:
        for pattern, _ in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"override pattern {pattern!r}: {e}") from None
        return v

    @model_validator(mode="after")
    def _names(self) -> PlanRequest:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError("duplicate group names")
        unknown = sorted(set(self.scores) - set(names))
        if unknown:
            raise ValueError(f"scores for unknown groups: {unknown[:5]}")
        return self


def request_from_spec(
    quantization: QuantizationSpec,
    *,
    groups: list[LayerGroup],
    scores: dict[str, dict[Format, float]],
    profile: HardwareProfile,
    max_relative_latency: float | None = None,
) -> PlanRequest:
    """The planner request for a QuantizedModel's ``spec.quantization``.

    The spec goes through the stage contract's mapping, the same one the plan Job
    uses (samp_core.stage_contract.quantization_inputs, then plan_request), so the
    operator and the plan job cannot drift.
    """
    from samp_core.stage_contract import plan_request, quantization_inputs

    return plan_request(quantization_inputs(quantization), groups=groups, scores=scores,
                        profile=profile, max_relative_latency=max_relative_latency)


def group_bytes(group: LayerGroup, fmt: Format, group_size: int) -> int:
    """Bytes of ``group`` stored in ``fmt`` (all fused modules, scales included)."""
    return weight_bytes(
        fmt, group.in_features, group.out_features, group_size, num_tensors=group.num_modules
    )


# ------------------------------------------------------------------ internals


@dataclass
class _Option:
    fmt: Format
    bytes: int
    loss: float
    cost: float  # decode time units: params x relative cost


@dataclass
class _GroupOptions:
    group: LayerGroup
    options: list[_Option]
    pinned_by: str | None


@dataclass
class _Solution:
    choice: list[int]  # option index per group
    loss: float
    bytes: int
    status: str


def _decode_weight(group: LayerGroup) -> int:
    """Parameters that are streamed through a matmul at each decode step.

    An embedding is a row gather, not a matmul, so it adds no decode time whatever
    its format; counting it would dilute the latency budget.
    """
    return 0 if group.kind is GroupKind.EMBEDDING else group.num_params


def _sixteen_bit(profile: HardwareProfile, allowed: Sequence[Format]) -> list[Format]:
    """16-bit formats usable on this profile: those listed, else the profile's preferred one."""
    listed = [f for f in allowed if f.is_unquantized and profile.is_servable(f)]
    if listed:
        return listed
    for f in (Format.BF16, Format.FP16):
        if profile.is_servable(f):
            return [f]
    raise PlanError(f"profile {profile.name} serves no 16-bit format")


def _shape_reason(group: LayerGroup, fmt: Format, group_size: int) -> str | None:
    if requires_group_divisibility(fmt):
        g = effective_group_size(fmt, group_size)
        if group.in_features % g:
            return f"group size {g} does not divide in_features {group.in_features}"
    return None


def _resolve_pin(req: PlanRequest, group: LayerGroup) -> tuple[Format, str] | None:
    for key in (group.name, *group.modules):
        if key in req.pins:
            return req.pins[key], "pin"
    for pattern, fmt in req.overrides:
        rx = re.compile(pattern)
        if rx.search(group.name) or any(rx.search(m) for m in group.modules):
            return fmt, f"override:{pattern}"
    return None


def _build_options(
    req: PlanRequest,
) -> tuple[list[_GroupOptions], list[ExcludedFormat], dict[str, Format], list[str]]:
    profile = req.profile
    sixteen = _sixteen_bit(profile, req.allowed_formats)
    excluded: list[ExcludedFormat] = []
    candidates: list[Format] = []
    for fmt in dict.fromkeys(req.allowed_formats):
        if fmt.is_unquantized:
            continue
        sup = profile.support(fmt)
        if not sup.servable:
            excluded.append(ExcludedFormat(format=fmt, reason=f"not servable: {sup.reason}"))
        elif not sup.native and not req.allow_non_native:
            excluded.append(
                ExcludedFormat(format=fmt, reason=f"not native on {profile.name}: {sup.reason}")
            )
        elif req.export_format is not None and export_format_of(fmt) not in (
            None,
            req.export_format,
        ):
            excluded.append(
                ExcludedFormat(
                    format=fmt,
                    reason=f"cannot be stored in a {req.export_format.value} checkpoint "
                    "(vLLM cannot mix NF4 with compressed-tensors schemes)",
                )
            )
        elif not any(fmt in per for per in req.scores.values()):
            excluded.append(
                ExcludedFormat(format=fmt, reason="no sensitivity scores for this format")
            )
        else:
            candidates.append(fmt)

    known_keys = {g.name for g in req.groups} | {m for g in req.groups for m in g.modules}
    stray = sorted(set(req.pins) - known_keys)
    if stray:
        raise PlanError(f"pins name no group or module: {stray[:5]}")

    per_group_excl: dict[tuple[Format, str], list[str]] = {}
    pins_applied: dict[str, Format] = {}
    warnings: list[str] = []
    out: list[_GroupOptions] = []
    for g in req.groups:
        scores = req.scores.get(g.name, {})
        pin = _resolve_pin(req, g)

        def option(fmt: Format, g: LayerGroup = g, scores: dict[Format, float] = scores) -> _Option:
            raw = 0.0 if fmt.is_unquantized else scores[fmt]
            # A quantized format cannot lower the expected loss; negative scores
            # are estimator noise, so clamp rather than reward quantization.
            return _Option(
                fmt=fmt,
                bytes=group_bytes(g, fmt, req.group_size),
                loss=max(0.0, raw),
                cost=_decode_weight(g) * profile.relative_cost(fmt),
            )

        if pin is not None:
            fmt, how = pin
            sup = profile.support(fmt)
            if not sup.servable:
                raise PlanError(
                    f"{g.name}: {how} to {fmt} but {profile.name} cannot serve it: {sup.reason}"
                )
            reason = _shape_reason(g, fmt, req.group_size)
            if reason:
                raise PlanError(f"{g.name}: {how} to {fmt} impossible: {reason}")
            if g.kind is GroupKind.EMBEDDING and not fmt.is_unquantized:
                raise PlanError(f"{g.name}: embeddings stay 16-bit (vLLM quantizes Linear layers)")
            if not fmt.is_unquantized and fmt not in scores:
                warnings.append(f"{g.name}: {how} to {fmt} has no score; counted as 0 loss")
                scores = {**scores, fmt: 0.0}
            if not sup.native:
                warnings.append(f"{g.name}: {how} to non-native {fmt} on {profile.name}")
            pins_applied[g.name] = fmt
            out.append(_GroupOptions(g, [option(fmt, g, scores)], how))
            continue

        if g.kind is GroupKind.EMBEDDING or (
            req.keep_lm_head_16bit and g.kind is GroupKind.LM_HEAD
        ):
            out.append(_GroupOptions(g, [option(sixteen[0])], "keep16bit"))
            continue

        opts = [option(f) for f in sixteen]
        for fmt in candidates:
            reason = _shape_reason(g, fmt, req.group_size)
            if reason is None and not (fmt in scores and math.isfinite(scores[fmt])):
                reason = "no finite sensitivity score"
            if reason is not None:
                per_group_excl.setdefault((fmt, reason), []).append(g.name)
                continue
            opts.append(option(fmt))
        out.append(_GroupOptions(g, opts, None))

    for (fmt, reason), names in per_group_excl.items():
        excluded.append(ExcludedFormat(format=fmt, reason=reason, groups=names))
    return out, excluded, pins_applied, warnings


def _restrict(groups: list[_GroupOptions], family: ExportFormat) -> list[_GroupOptions] | None:
    """Options usable in one export family, or None if a pin forces another family."""
    out: list[_GroupOptions] = []
    for go in groups:
        keep = [o for o in go.options if export_format_of(o.fmt) in (None, family)]
        if not keep:
            return None
        out.append(_GroupOptions(go.group, keep, go.pinned_by))
    return out


def _families(groups: list[_GroupOptions]) -> list[ExportFormat]:
    fams = {export_format_of(o.fmt) for go in groups for o in go.options}
    found = [f for f in ExportFormat if f in fams]
    return found or [ExportFormat.COMPRESSED_TENSORS]


def _solve(
    groups: list[_GroupOptions],
    budget: int,
    latency_cap: float | None,
    time_limit: float,
    tie_break: bool,
) -> _Solution | None:
    """Exact MCKP via HiGHS. None if infeasible. Groups with one option are constants."""
    base_bytes = sum(min(o.bytes for o in go.options) for go in groups)
    if base_bytes > budget:
        return None
    free = [i for i, go in enumerate(groups) if len(go.options) > 1]
    choice = [0] * len(groups)
    if not free:
        return _finish(groups, choice, budget, latency_cap, "optimal")

    cols: list[tuple[int, int]] = [(i, j) for i in free for j in range(len(groups[i].options))]
    n = len(cols)
    mins = {i: min(o.bytes for o in groups[i].options) for i in free}
    deltas = [groups[i].options[j].bytes - mins[i] for i, j in cols]
    g = reduce(math.gcd, deltas, 0) or 1
    dvec = np.array([d // g for d in deltas], dtype=np.float64)
    rhs = (budget - base_bytes) // g
    loss = np.array([groups[i].options[j].loss for i, j in cols], dtype=np.float64)
    scale = float(loss.max()) if loss.size and loss.max() > 0 else 1.0
    obj = loss / scale

    row_of = {i: r for r, i in enumerate(free)}
    rows = [row_of[i] for i, _ in cols]
    one = csr_array((np.ones(n), (rows, list(range(n)))), shape=(len(free), n))
    cons: list[LinearConstraint] = [LinearConstraint(one, 1, 1)]
    fixed_cost = sum(go.options[0].cost for k, go in enumerate(groups) if k not in mins)
    if latency_cap is not None:
        cvec = np.array([groups[i].options[j].cost for i, j in cols])
        cons.append(LinearConstraint(cvec[None, :], -np.inf, latency_cap - fixed_cost))

    def run(
        extra: list[LinearConstraint], c: np.ndarray, byte_rhs: int
    ) -> tuple[np.ndarray | None, str]:
        res = milp(
            c,
            constraints=[*cons, LinearConstraint(dvec[None, :], -np.inf, byte_rhs), *extra],
            integrality=np.ones(n),
            bounds=Bounds(0, 1),
            options={"mip_rel_gap": 0.0, "time_limit": time_limit, "presolve": True},
        )
        if res.x is None:
            if res.status == 1:  # time limit before any feasible point: not "infeasible"
                raise PlanError(
                    f"the solver found no plan within {time_limit:g}s; raise time_limit_s"
                )
            return None, "infeasible"
        status = "optimal" if res.status == 0 else f"stopped: {res.message}"
        return np.asarray(res.x), status

    byte_rhs = rhs
    for _ in range(8):
        x, status = run([], obj, byte_rhs)
        if x is None:
            return None
        sol = _pick(groups, free, cols, x, choice)
        over = _sol_bytes(groups, sol) - budget
        if over <= 0:
            break
        # Tolerance let the byte row slip; tighten by the overshoot and re-solve.
        byte_rhs -= max(1, math.ceil(over / g))
    else:
        return None

    # Exact ties (typically a score of 0 next to 16-bit's 0) are the only case the
    # second solve can change, and it costs as much as the first: skip it otherwise.
    has_ties = any(len({o.loss for o in groups[i].options}) < len(groups[i].options) for i in free)
    if tie_break and has_ties:
        best = float(obj @ x)
        tol = 1e-9 * max(1.0, abs(best))
        x2, _ = run([LinearConstraint(obj[None, :], -np.inf, best + tol)], dvec, byte_rhs)
        if x2 is not None:
            sol2 = _pick(groups, free, cols, x2, choice)
            if (
                _sol_bytes(groups, sol2) <= budget
                and _sol_loss(groups, sol2) <= _sol_loss(groups, sol) + tol * scale
                and _within_latency(groups, sol2, latency_cap)
            ):
                sol = sol2
    return _finish(groups, sol, budget, latency_cap, status)


def _pick(
    groups: list[_GroupOptions],
    free: list[int],
    cols: list[tuple[int, int]],
    x: np.ndarray,
    base: list[int],
) -> list[int]:
    choice = list(base)
    best: dict[int, float] = {}
    for k, (i, j) in enumerate(cols):
        if x[k] > best.get(i, -1.0):
            best[i] = float(x[k])
            choice[i] = j
    return choice


def _sol_bytes(groups: list[_GroupOptions], choice: list[int]) -> int:
    return sum(go.options[c].bytes for go, c in zip(groups, choice, strict=True))


def _sol_loss(groups: list[_GroupOptions], choice: list[int]) -> float:
    return float(math.fsum(go.options[c].loss for go, c in zip(groups, choice, strict=True)))


def _within_latency(
    groups: list[_GroupOptions], choice: list[int], latency_cap: float | None
) -> bool:
    # The latency row is a model estimate with float coefficients; accept HiGHS's
    # feasibility tolerance (1e-6 relative) rather than reject a plan it found.
    if latency_cap is None:
        return True
    cost = sum(go.options[c].cost for go, c in zip(groups, choice, strict=True))
    return bool(cost <= latency_cap * (1 + 1e-6))


def _finish(
    groups: list[_GroupOptions],
    choice: list[int],
    budget: int,
    latency_cap: float | None,
    status: str,
) -> _Solution | None:
    if _sol_bytes(groups, choice) > budget:
        return None
    if not _within_latency(groups, choice, latency_cap):
        return None
    return _Solution(choice, _sol_loss(groups, choice), _sol_bytes(groups, choice), status)


def _fmt_bits(bytes_: int, params: int) -> float:
    return 8 * bytes_ / params if params else 0.0


def _ceil_dp(x: float, digits: int = 4) -> float:
    """Round up so a budget given at this precision is really feasible."""
    f = 10.0**digits
    return math.ceil(x * f - 1e-9) / f


def plan(request: PlanRequest) -> PlanResult:
    """Solve the SAMP multiple-choice knapsack exactly and return the plan with its curve."""
    req = request
    groups, excluded, pins_applied, warnings = _build_options(req)
    num_params = sum(g.num_params for g in req.groups)
    bytes_16 = sum(group_bytes(g, Format.BF16, req.group_size) for g in req.groups)
    budget = req.budget.resolve(bytes_16, num_params)
    total_cost_16 = float(sum(_decode_weight(g) for g in req.groups))
    latency_cap = (
        None if req.max_relative_latency is None else req.max_relative_latency * total_cost_16
    )

    if not req.keep_embeddings_16bit and any(g.kind is GroupKind.EMBEDDING for g in req.groups):
        warnings.append("embeddings stay 16-bit: vLLM quantizes Linear layers only")
    families: dict[ExportFormat, list[_GroupOptions]] = {}
    wanted = [req.export_format] if req.export_format is not None else _families(groups)
    for fam in wanted:
        restricted = _restrict(groups, fam)
        if restricted is not None:
            families[fam] = restricted
    if not families:
        raise PlanError(
            "pins force formats from different checkpoint families than requested (NF4 and "
            "compressed-tensors cannot be mixed in one vLLM checkpoint)"
        )

    min_bytes = min(sum(min(o.bytes for o in go.options) for go in fg) for fg in families.values())
    if budget < min_bytes:
        bits = _fmt_bits(min_bytes, num_params)
        frac = min_bytes / bytes_16
        raise PlanInfeasibleError(
            f"budget {budget} bytes ({_fmt_bits(budget, num_params):.4f} effective bits, "
            f"{100 * budget / bytes_16:.2f}% of 16-bit) is below the smallest feasible plan "
            f"on {req.profile.name} with the allowed formats and pins: {min_bytes} bytes = "
            f"{_ceil_dp(bits):.4f} effective bits = {_ceil_dp(frac, 6):.6f} of 16-bit",
            requested_bytes=budget,
            min_feasible_bytes=min_bytes,
            min_effective_bits=bits,
            min_fraction_of_16bit=frac,
        )
    if latency_cap is not None:
        min_cost = min(
            sum(min(o.cost for o in go.options) for go in fg) for fg in families.values()
        )
        if min_cost > latency_cap * (1 + 1e-9):
            raise PlanInfeasibleError(
                f"latency budget {req.max_relative_latency} of bf16 is below the fastest plan "
                f"({min_cost / total_cost_16:.4f} of bf16) on {req.profile.name}",
                requested_bytes=budget,
                min_feasible_bytes=min_bytes,
                min_effective_bits=_fmt_bits(min_bytes, num_params),
                min_fraction_of_16bit=min_bytes / bytes_16,
            )

    best: tuple[ExportFormat, list[_GroupOptions], _Solution] | None = None
    for fam, fg in families.items():
        sol = _solve(fg, budget, latency_cap, req.time_limit_s, tie_break=True)
        if sol is None:
            continue
        if best is None or (sol.loss, sol.bytes) < (best[2].loss, best[2].bytes):
            best = (fam, fg, sol)
    if best is None:
        raise PlanInfeasibleError(
            f"no plan meets both the byte budget ({budget}) and the latency budget "
            f"({req.max_relative_latency} of bf16) together; relax one of them",
            requested_bytes=budget,
            min_feasible_bytes=min_bytes,
            min_effective_bits=_fmt_bits(min_bytes, num_params),
            min_fraction_of_16bit=min_bytes / bytes_16,
        )
    fam, fg, sol = best

    assignments = [
        GroupAssignment(
            group=go.group.name,
            kind=go.group.kind,
            format=go.options[c].fmt,
            bytes=go.options[c].bytes,
            score=go.options[c].loss,
            num_params=go.group.num_params,
            modules=list(go.group.modules),
            pinned_by=go.pinned_by,
        )
        for go, c in zip(fg, sol.choice, strict=True)
    ]
    cost = sum(go.options[c].cost for go, c in zip(fg, sol.choice, strict=True))
    curve = _curve(families, min_bytes, latency_cap, req, own=(budget, sol))
    if len(families) > 1:
        warnings.append(
            f"planned {', '.join(f.value for f in families)} separately (NF4 cannot mix with "
            f"compressed-tensors); chose {fam.value}"
        )
    return PlanResult(
        profile=req.profile.name,
        export_format=fam,
        group_size=req.group_size,
        assignments=assignments,
        total_bytes=sol.bytes,
        checkpoint_bytes=sum(
            checkpoint_bytes(
                go.options[c].fmt,
                go.group.in_features,
                go.group.out_features,
                req.group_size,
                num_tensors=go.group.num_modules,
            )
            for go, c in zip(fg, sol.choice, strict=True)
        ),
        bytes_16bit=bytes_16,
        num_params=num_params,
        effective_bits=_fmt_bits(sol.bytes, num_params),
        predicted_loss=sol.loss,
        budget_bytes=budget,
        min_feasible_bytes=min_bytes,
        predicted_relative_latency=cost / total_cost_16 if total_cost_16 else None,
        excluded=excluded,
        pins_applied=pins_applied,
        curve=curve,
        solver_status=sol.status,
        warnings=warnings,
        rounding=req.rounding,
    )


def _curve(
    families: dict[ExportFormat, list[_GroupOptions]],
    min_bytes: int,
    latency_cap: float | None,
    req: PlanRequest,
    own: tuple[int, _Solution],
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
        cand: list[_Solution] = [own_sol] if b == own_budget else []
        for fg in families.values() if b != own_budget else ():
            s = _solve(fg, b, latency_cap, per_point_limit, tie_break=False)
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
