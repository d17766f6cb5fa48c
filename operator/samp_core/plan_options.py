"""The planner's choices per layer group: which formats each group may take, at what
bytes, loss and decode cost, and why the others were excluded.

Pins and overrides are explicit user intent: they bypass ``allowed_formats`` and the
native check (with a warning), never servability or shape constraints.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from samp_core.formats import ExportFormat, Format, export_format_of, format_spec
from samp_core.groups import GroupKind, LayerGroup
from samp_core.plan_request import PlanError, PlanRequest, group_bytes, sixteen_bit_formats
from samp_core.results import ExcludedFormat

__all__ = [
    "GroupOptions",
    "Option",
    "Options",
    "build_options",
    "decode_weight",
    "families_of",
    "restrict_to_family",
]


@dataclass
class Option:
    fmt: Format
    bytes: int
    loss: float
    cost: float  # decode time units: params x relative cost


@dataclass
class GroupOptions:
    group: LayerGroup
    options: list[Option]
    pinned_by: str | None


@dataclass
class Options:
    """Every group's options, plus what the plan reports about how they were chosen."""

    groups: list[GroupOptions] = field(default_factory=list)
    excluded: list[ExcludedFormat] = field(default_factory=list)
    pins_applied: dict[str, Format] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def decode_weight(group: LayerGroup) -> int:
    """Parameters that are streamed through a matmul at each decode step.

    An embedding is a row gather, not a matmul, so it adds no decode time whatever
    its format; counting it would dilute the latency budget.
    """
    return 0 if group.kind is GroupKind.EMBEDDING else group.num_params


def _shape_reason(group: LayerGroup, fmt: Format, group_size: int) -> str | None:
    """Why ``group`` cannot be stored in ``fmt`` (its shape, or a head vLLM would not
    quantize in that format), or None."""
    spec = format_spec(fmt)
    if not spec.fits(group.in_features, group_size):
        g = spec.group_size(group_size)
        return f"group size {g} does not divide in_features {group.in_features}"
    if group.kind is GroupKind.LM_HEAD and not fmt.is_unquantized and not spec.quantized_head:
        return f"vLLM serves lm_head 16-bit from a {fmt} checkpoint (it quantizes no {fmt} head)"
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


def _format_exclusion(req: PlanRequest, fmt: Format) -> str | None:
    """Why a quantized format is excluded for every group, or None if it is a candidate."""
    profile = req.profile
    sup = profile.support(fmt)
    if not sup.servable:
        return f"not servable: {sup.reason}"
    if not sup.native and not req.allow_non_native:
        return f"not native on {profile.name}: {sup.reason}"
    if req.export_format is not None and export_format_of(fmt) not in (None, req.export_format):
        return (
            f"cannot be stored in a {req.export_format.value} checkpoint "
            "(vLLM cannot mix NF4 with compressed-tensors schemes)"
        )
    if not any(fmt in per for per in req.scores.values()):
        return "no sensitivity scores for this format"
    return None


def _option(req: PlanRequest, g: LayerGroup, fmt: Format, scores: dict[Format, float]) -> Option:
    raw = 0.0 if fmt.is_unquantized else scores[fmt]
    # A quantized format cannot lower the expected loss; negative scores are estimator
    # noise, so clamp rather than reward quantization.
    return Option(
        fmt=fmt,
        bytes=group_bytes(g, fmt, req.group_size),
        loss=max(0.0, raw),
        cost=decode_weight(g) * req.profile.relative_cost(fmt),
    )


def _pinned(req: PlanRequest, g: LayerGroup, pin: tuple[Format, str], out: Options) -> None:
    fmt, how = pin
    profile = req.profile
    scores = req.scores.get(g.name, {})
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
        out.warnings.append(f"{g.name}: {how} to {fmt} has no score; counted as 0 loss")
        scores = {**scores, fmt: 0.0}
    if not sup.native:
        out.warnings.append(f"{g.name}: {how} to non-native {fmt} on {profile.name}")
    out.pins_applied[g.name] = fmt
    out.groups.append(GroupOptions(g, [_option(req, g, fmt, scores)], how))


def _free(
    req: PlanRequest,
    g: LayerGroup,
    sixteen: list[Format],
    candidates: list[Format],
    per_group_excl: dict[tuple[Format, str], list[str]],
) -> GroupOptions:
    scores = req.scores.get(g.name, {})
    opts = [_option(req, g, f, scores) for f in sixteen]
    for fmt in candidates:
        reason = _shape_reason(g, fmt, req.group_size)
        if reason is None and not (fmt in scores and math.isfinite(scores[fmt])):
            reason = "no finite sensitivity score"
        if reason is not None:
            per_group_excl.setdefault((fmt, reason), []).append(g.name)
            continue
        opts.append(_option(req, g, fmt, scores))
    return GroupOptions(g, opts, None)


def build_options(req: PlanRequest) -> Options:
    sixteen = sixteen_bit_formats(req.profile, req.allowed_formats)
    out = Options()
    candidates: list[Format] = []
    for fmt in dict.fromkeys(req.allowed_formats):
        if fmt.is_unquantized:
            continue
        why = _format_exclusion(req, fmt)
        if why is None:
            candidates.append(fmt)
        else:
            out.excluded.append(ExcludedFormat(format=fmt, reason=why))

    known_keys = {g.name for g in req.groups} | {m for g in req.groups for m in g.modules}
    stray = sorted(set(req.pins) - known_keys)
    if stray:
        raise PlanError(f"pins name no group or module: {stray[:5]}")

    per_group_excl: dict[tuple[Format, str], list[str]] = {}
    for g in req.groups:
        pin = _resolve_pin(req, g)
        if pin is not None:
            _pinned(req, g, pin, out)
        elif g.kind is GroupKind.EMBEDDING or (
            req.keep_lm_head_16bit and g.kind is GroupKind.LM_HEAD
        ):
            scores = req.scores.get(g.name, {})
            out.groups.append(GroupOptions(g, [_option(req, g, sixteen[0], scores)], "keep16bit"))
        else:
            out.groups.append(_free(req, g, sixteen, candidates, per_group_excl))
    for (fmt, reason), names in per_group_excl.items():
        out.excluded.append(ExcludedFormat(format=fmt, reason=reason, groups=names))
    return out


def restrict_to_family(
    groups: list[GroupOptions], family: ExportFormat
) -> list[GroupOptions] | None:
    """Options usable in one export family, or None if a pin forces another family."""
    out: list[GroupOptions] = []
    for go in groups:
        keep = [o for o in go.options if export_format_of(o.fmt) in (None, family)]
        if not keep:
            return None
        out.append(GroupOptions(go.group, keep, go.pinned_by))
    return out


def families_of(groups: list[GroupOptions]) -> list[ExportFormat]:
    fams = {export_format_of(o.fmt) for go in groups for o in go.options}
    found = [f for f in ExportFormat if f in fams]
    return found or [ExportFormat.COMPRESSED_TENSORS]
