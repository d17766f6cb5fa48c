"""What ``kubectl samp`` prints: one rollout in detail, a table of rollouts, the outcome.

Works on the raw API objects (camelCase dicts), so an object written by a newer or older
operator still prints what it has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from samp_core.units import format_bytes


class Outcome(IntEnum):
    """Where a rollout stands; the value is ``kubectl samp status``'s exit code."""

    SUCCEEDED = 0   # Promoted (or Evaluated and Ready when the operator runs no canary)
    FAILED = 1      # RolledBack or Failed
    TIMED_OUT = 3   # still progressing when --timeout ran out
    SUSPENDED = 4   # Paused, Suspended, or waiting for a manual promotion
    PROGRESSING = -1  # not an exit code: keep waiting


FINAL = (Outcome.SUCCEEDED, Outcome.FAILED)


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def awaiting_promotion(status: Mapping[str, Any]) -> bool:
    promoted = _condition(status, "Promoted")
    return promoted.get("status") == "False" and promoted.get("reason") == "AwaitingPromotion"


def outcome(obj: Mapping[str, Any]) -> Outcome:
    """The rollout's outcome, read as the Argo CD health script reads it."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return Outcome.PROGRESSING
    phase = status.get("phase")
    if phase == "Promoted" or (
            phase == "Evaluated" and _condition(status, "Ready").get("status") == "True"):
        return Outcome.SUCCEEDED
    if phase in ("RolledBack", "Failed"):
        return Outcome.FAILED
    if phase in ("Paused", "Suspended") or awaiting_promotion(status):
        return Outcome.SUSPENDED
    return Outcome.PROGRESSING


def num(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}{unit}"
    return f"{x}{unit}"


def age(stamp: str | None, now: datetime | None = None) -> str:
    """Kubernetes-style age: 45s, 12m, 3h, 2d."""
    if not stamp:
        return "-"
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def plan_line(plan: Mapping[str, Any] | None) -> str:
    if not plan:
        return "-"
    formats = ", ".join(f"{n} {f}" for f, n in sorted(
        (plan.get("groupsPerFormat") or {}).items(), key=lambda kv: -kv[1]))
    saved = plan.get("memorySavedPercent")
    kept = f"{100 - saved:.1f}% of 16-bit" if isinstance(saved, int | float) else ""
    size = format_bytes(plan["bytesQuantized"]) if plan.get("bytesQuantized") else "-"
    return f"{num(plan.get('effectiveBits'))} effective bits, {size} ({kept}); {formats}"


def accuracy_line(acc: Mapping[str, Any] | None) -> str:
    if not acc:
        return "-"
    parts = []
    if acc.get("perplexityIncreasePercent") is not None:
        parts.append(f"perplexity {acc.get('perplexityBase', 0):.4g} -> "
                     f"{acc.get('perplexityQuantized', 0):.4g} "
                     f"({acc['perplexityIncreasePercent']:+.2f}%)")
    if acc.get("top1Agreement") is not None:
        parts.append(f"top-1 agreement {100 * acc['top1Agreement']:.1f}%")
    if acc.get("exactMatchRecoveryPercent") is not None:
        parts.append(f"exact-match recovery {acc['exactMatchRecoveryPercent']:.1f}%")
    return ", ".join(parts) or "-"


def _steps(spec: Mapping[str, Any], canary: Mapping[str, Any] | None, phase: str) -> list[str]:
    steps = (spec.get("rollout") or {}).get("steps") or []
    current = canary.get("step", 0) if canary else None
    lines = []
    for i, step in enumerate(steps):
        if phase == "Promoted" or (current is not None and i < current):
            mark = "✔"
        elif current == i and phase == "CanaryProgressing":
            mark = "▶"
        elif phase == "RolledBack" and current == i:
            mark = "✖"
        else:
            mark = " "
        lines.append(f"  {mark} {i + 1}. weight {step.get('weight')}% for "
                     f"{step.get('duration', '-')}")
    return lines


def _gates(gates: Sequence[Mapping[str, Any]]) -> list[str]:
    if not gates:
        return []
    width = max(len(str(g.get("gate", ""))) for g in gates)
    rows = [f"  {'GATE':<{width}}  {'VERDICT':<12} {'CANARY':>9} {'STABLE':>9}  THRESHOLD"]
    for g in gates:
        rows.append(f"  {g.get('gate', ''):<{width}}  {g.get('verdict', ''):<12} "
                    f"{num(g.get('value')):>9} {num(g.get('baseline')):>9}  "
                    f"{g.get('threshold', '')}")
    return rows


def progress_line(progress: Mapping[str, Any] | None) -> str | None:
    """``sensitivity: 12/80 forward layers (15.0%), about 4m left`` (None: no stage runs)."""
    if not progress:
        return None
    line = (f"{progress.get('stage', '?')}: {progress.get('done', 0)}/"
            f"{progress.get('total', 0)} {progress.get('unit', '')} "
            f"({num(float(progress.get('percent') or 0.0))}%)")
    eta = progress.get("etaSeconds")
    if isinstance(eta, int):
        line += f", about {_duration(eta)} left"
    return line + f" (as of {age(progress.get('updatedAt'))} ago)"


def _duration(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def describe(obj: Mapping[str, Any]) -> str:
    """One rollout in detail: phase, plan, accuracy, steps and weights, gates, attempts."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = obj.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    canary = status.get("canary")
    state = {Outcome.SUCCEEDED: "✔", Outcome.FAILED: "✖", Outcome.SUSPENDED: "॥"}.get(
        outcome(obj), "◌")
    lines = [
        f"Name:       {meta.get('name')}",
        f"Namespace:  {meta.get('namespace', 'default')}",
        f"Status:     {state} {phase} (attempt {status.get('attempt', 1)})",
    ]
    if status.get("message"):
        lines.append(f"Message:    {status['message']}")
    progress = progress_line(status.get("progress"))
    if progress:
        lines.append(f"Progress:   {progress}")
    if awaiting_promotion(status):
        lines.append("Action:     kubectl samp promote " + str(meta.get("name")))
    lines += [f"Plan:       {plan_line(status.get('plan'))}",
              f"Accuracy:   {accuracy_line(status.get('accuracy'))}",
              f"Artifact:   {status.get('artifactUri') or '-'}"]
    if canary:
        lines.append(
            f"Canary:     weight {canary.get('weight', 0)}%, analyses "
            f"{canary.get('analyses', 0)} (last {canary.get('lastVerdict') or '-'}), failures "
            f"{canary.get('failures', 0)}, inconclusive {canary.get('inconclusives', 0)}, "
            f"errors in a row {canary.get('consecutiveErrors', 0)}")
    steps = _steps(spec, canary, phase)
    if steps:
        lines += ["Steps:", *steps]
    gates = _gates(status.get("gates") or [])
    if gates:
        lines += ["Gates (last analysis):", *gates]
    history = status.get("history") or []
    if history:
        lines.append("Attempts:")
        for a in history:
            bits = (a.get("plan") or {}).get("effectiveBits")
            lines.append(f"  #{a.get('attempt')} {a.get('outcome', ''):<10} "
                         f"{num(bits)} bits  {(a.get('reason') or '')[:160]}")
    return "\n".join(lines)


COLUMNS = ("NAMESPACE", "NAME", "PHASE", "STEP", "WEIGHT", "BITS", "SAVED", "PPL+%",
           "P99-RATIO", "ATTEMPT", "AGE")


def table(objs: Sequence[Mapping[str, Any]], all_namespaces: bool) -> str:
    """``kubectl get``-style table; NAMESPACE only across namespaces."""
    rows = []
    for obj in objs:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        steps = len(((obj.get("spec") or {}).get("rollout") or {}).get("steps") or [])
        canary = status.get("canary") or {}
        plan, acc = status.get("plan") or {}, status.get("accuracy") or {}
        rows.append((
            meta.get("namespace", ""), meta.get("name", ""), status.get("phase", "Pending"),
            f"{canary['step'] + 1}/{steps}" if "step" in canary else "-",
            f"{canary.get('weight', 0)}%" if canary else "-",
            num(plan.get("effectiveBits")), num(plan.get("memorySavedPercent"), "%"),
            num(acc.get("perplexityIncreasePercent")), num(canary.get("p99Ratio")),
            str(status.get("attempt", 1)), age(meta.get("creationTimestamp"))))
    columns = COLUMNS if all_namespaces else COLUMNS[1:]
    body = [r if all_namespaces else r[1:] for r in rows]
    widths = [max(len(c), *(len(str(r[i])) for r in body)) if body else len(c)
              for i, c in enumerate(columns)]
    out = ["   ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    out += ["   ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            for r in body]
    return "\n".join(out)
