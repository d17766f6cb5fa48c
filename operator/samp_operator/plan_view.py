"""``kubectl samp plan show``: the plan table and the bytes-vs-loss trade-off curve.

The curve (samp_core.results.PlanResult.curve) is a sweep of exact solves at budgets from
the smallest feasible one to all-16-bit; the plan the operator chose is one of its points.
It prints as a terminal plot, and is written as SVG (drawn here, no dependency) or PNG
(matplotlib, when installed).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from samp_core.results import CurvePoint, PlanResult
from samp_core.units import format_bytes


def plan_table(plan: PlanResult) -> str:
    """Summary lines, then one row per layer group."""
    kept = 100 * plan.total_bytes / plan.bytes_16bit if plan.bytes_16bit else 0.0
    lines = [
        f"profile {plan.profile}, export {plan.export_format.value}, group size "
        f"{plan.group_size}",
        f"weights {format_bytes(plan.total_bytes)} = {kept:.1f}% of 16-bit "
        f"({format_bytes(plan.bytes_16bit)}), {plan.effective_bits:.2f} effective bits; "
        f"budget {format_bytes(plan.budget_bytes)}, smallest feasible "
        f"{format_bytes(plan.min_feasible_bytes)}",
        f"predicted loss {plan.predicted_loss:.4g}"
        + (f" {plan.score_unit}" if plan.score_unit else ""),
        "",
    ]
    rows = [("GROUP", "KIND", "FORMAT", "SIZE", "SCORE", "PINNED BY")]
    rows += [(a.group, a.kind.value, a.format.value, format_bytes(a.bytes),
              f"{a.score:.3g}", a.pinned_by or "") for a in plan.assignments]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    for excluded in plan.excluded:
        where = f" ({len(excluded.groups)} groups)" if excluded.groups else ""
        lines.append(f"excluded {excluded.format.value}{where}: {excluded.reason}")
    return "\n".join(lines)


def _chosen(plan: PlanResult) -> CurvePoint | None:
    return next((p for p in plan.curve if p.bytes == plan.total_bytes), None)


def terminal_plot(plan: PlanResult, width: int = 64, height: int = 14) -> str:
    """Predicted loss (y) against weight bytes (x); ◆ marks the chosen plan."""
    points = sorted(plan.curve, key=lambda p: p.bytes)
    if len(points) < 2:
        return "(no trade-off curve in this plan)"
    x0, x1 = points[0].bytes, points[-1].bytes
    y0, y1 = min(p.predicted_loss for p in points), max(p.predicted_loss for p in points)
    grid = [[" "] * width for _ in range(height)]

    def cell(p: CurvePoint) -> tuple[int, int]:
        col = round((p.bytes - x0) / ((x1 - x0) or 1) * (width - 1))
        row = round((y1 - p.predicted_loss) / ((y1 - y0) or 1) * (height - 1))
        return row, col

    for p in points:
        row, col = cell(p)
        grid[row][col] = "•"
    chosen = _chosen(plan)
    if chosen is not None:
        row, col = cell(chosen)
        grid[row][col] = "◆"
    label_width = max(len(f"{y1:.3g}"), len(f"{y0:.3g}"))
    lines = ["predicted loss"]
    for i, row_cells in enumerate(grid):
        label = f"{y1:.3g}" if i == 0 else f"{y0:.3g}" if i == height - 1 else ""
        lines.append(f"{label:>{label_width}} │{''.join(row_cells)}".rstrip())
    lines.append(" " * label_width + " └" + "─" * width)
    left, right = format_bytes(x0), format_bytes(x1)
    lines.append(" " * (label_width + 2) + left + right.rjust(width - len(left))
                 + "  weight bytes")
    if chosen is not None:
        lines.append(f"◆ chosen: {format_bytes(chosen.bytes)}, loss "
                     f"{chosen.predicted_loss:.4g}")
    return "\n".join(lines)


def svg(plan: PlanResult, width: int = 640, height: int = 400) -> str:
    """The curve as a standalone SVG (axes, points, the chosen plan in red)."""
    points = sorted(plan.curve, key=lambda p: p.bytes)
    if not points:
        raise ValueError("the plan has no trade-off curve to draw")
    pad = 60
    x0, x1 = points[0].bytes, points[-1].bytes
    y0, y1 = min(p.predicted_loss for p in points), max(p.predicted_loss for p in points)

    def xy(p: CurvePoint) -> tuple[float, float]:
        x = pad + (p.bytes - x0) / ((x1 - x0) or 1) * (width - 2 * pad)
        y = height - pad - (p.predicted_loss - y0) / ((y1 - y0) or 1) * (height - 2 * pad)
        return round(x, 1), round(y, 1)

    coords = [xy(p) for p in points]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">'
        f"SAMP trade-off: predicted loss vs weight bytes ({escape(plan.profile)})</text>",
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{pad}" y="{height - pad + 18}">{format_bytes(x0)}</text>',
        f'<text x="{width - pad}" y="{height - pad + 18}" text-anchor="end">'
        f"{format_bytes(x1)}</text>",
        f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">weight bytes</text>',
        f'<text x="{pad - 6}" y="{pad + 4}" text-anchor="end">{y1:.3g}</text>',
        f'<text x="{pad - 6}" y="{height - pad}" text-anchor="end">{y0:.3g}</text>',
        '<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="'
        + " ".join(f"{x},{y}" for x, y in coords) + '"/>',
    ]
    parts += [f'<circle cx="{x}" cy="{y}" r="3" fill="#1f77b4"/>' for x, y in coords]
    chosen = _chosen(plan)
    if chosen is not None:
        x, y = xy(chosen)
        parts += [f'<circle cx="{x}" cy="{y}" r="6" fill="#d62728"/>',
                  f'<text x="{x + 9}" y="{y - 9}" fill="#d62728">chosen: '
                  f"{format_bytes(chosen.bytes)}</text>"]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_figure(plan: PlanResult, path: Path) -> None:
    """SVG by hand; PNG through matplotlib, which is optional."""
    if path.suffix.lower() == ".svg":
        path.write_text(svg(plan), encoding="utf-8")
        return
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: write .svg or .png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise ValueError(f"{path}: PNG needs matplotlib (pip install matplotlib); "
                         "an .svg needs nothing") from None
    points: Sequence[CurvePoint] = sorted(plan.curve, key=lambda p: p.bytes)
    fig, ax = pyplot.subplots(figsize=(6.4, 4))
    ax.plot([p.bytes for p in points], [p.predicted_loss for p in points], "o-")
    chosen = _chosen(plan)
    if chosen is not None:
        ax.plot([chosen.bytes], [chosen.predicted_loss], "o", color="#d62728", markersize=9,
                label=f"chosen: {format_bytes(chosen.bytes)}")
        ax.legend()
    ax.set_xlabel("weight bytes")
    ax.set_ylabel("predicted loss")
    ax.set_title(f"SAMP trade-off ({plan.profile})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
