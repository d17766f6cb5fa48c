"""``samp rollout status|promote|abort|pause|resume NAME [-n NAMESPACE]``.

Manual control that works with GitOps: the commands only write annotations on the
QuantizedModel's metadata (never its spec), which Argo CD does not diff unless they
are in Git. ``promote`` and ``abort`` write the current time, so a request left
from an earlier rollout is ignored by the next one (samp_core.canary); ``pause``
sets ``samp.dev/pause: "true"`` and ``resume`` removes it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from samp_core.api import GROUP, PLURAL, VERSION
from samp_core.canary import ANNOTATION_ABORT, ANNOTATION_PAUSE, ANNOTATION_PROMOTE
from samp_core.canary.model import ANNOTATION_RETRY


def _load_api(kubeconfig: str | None, context: str | None) -> Any:
    import kubernetes

    try:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context
        )
    except kubernetes.config.ConfigException:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.CustomObjectsApi()


def annotation_patch(action: str, now: datetime | None = None) -> dict[str, Any]:
    """The merge patch each command sends (metadata.annotations only)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    value: dict[str, str | None]
    if action == "promote":
        value = {ANNOTATION_PROMOTE: stamp}
    elif action == "abort":
        value = {ANNOTATION_ABORT: stamp}
    elif action == "retry":
        value = {ANNOTATION_RETRY: stamp}
    elif action == "pause":
        value = {ANNOTATION_PAUSE: "true"}
    elif action == "resume":
        value = {ANNOTATION_PAUSE: None}
    else:
        raise ValueError(f"unknown action {action!r}")
    return {"metadata": {"annotations": value}}


def _n(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def format_status(obj: Mapping[str, Any]) -> str:
    """Human summary of a QuantizedModel's rollout: phase, step, gates, conditions, history."""
    meta = obj.get("metadata", {})
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    steps = (spec.get("rollout") or {}).get("steps") or []
    lines = [
        f"{meta.get('namespace', 'default')}/{meta.get('name')}: "
        f"{status.get('phase', 'Pending')} (attempt {status.get('attempt', 1)})"
    ]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    c = status.get("canary")
    if c:
        lines.append(
            f"  canary: step {c.get('step', 0) + 1}/{len(steps) or '?'}, weight "
            f"{c.get('weight', 0)}%, analyses {c.get('analyses', 0)} (last "
            f"{c.get('lastVerdict') or '-'}), failures {c.get('failures', 0)}, "
            f"inconclusive {c.get('inconclusives', 0)}, consecutive errors "
            f"{c.get('consecutiveErrors', 0)}, P99 ratio {_n(c.get('p99Ratio'))}"
        )
        if c.get("pausedAt"):
            lines.append(f"  paused since {c['pausedAt']}")
    gates = status.get("gates") or []
    if gates:
        lines.append("  gates:")
        width = max(len(g.get("gate", "")) for g in gates)
        for g in gates:
            lines.append(
                f"    {g.get('gate', ''):<{width}}  {g.get('verdict', ''):<12} value "
                f"{_n(g.get('value')):<8} stable {_n(g.get('baseline')):<8} "
                f"threshold {g.get('threshold', '')}"
            )
    conds = status.get("conditions") or []
    if conds:
        lines.append("  conditions:")
        for cnd in conds:
            lines.append(
                f"    {cnd.get('type')}={cnd.get('status')} {cnd.get('reason')}: "
                f"{(cnd.get('message') or '')[:200]}"
            )
    hist = status.get("history") or []
    if hist:
        lines.append("  attempts:")
        for a in hist:
            lines.append(
                f"    #{a.get('attempt')} {a.get('outcome')} {a.get('startedAt')} -> "
                f"{a.get('finishedAt') or '…'} {(a.get('reason') or '')[:160]}"
            )
    ann = meta.get("annotations") or {}
    mine = {k: v for k, v in ann.items() if k.startswith("samp.dev/")}
    if mine:
        lines.append("  annotations: " + ", ".join(f"{k}={v}" for k, v in sorted(mine.items())))
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "rollout", help="show or steer a canary rollout (status, promote, abort, pause, resume)"
    )
    p.add_argument("action", choices=["status", "promote", "abort", "pause", "resume"])
    p.add_argument("name", help="QuantizedModel name")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--context", default=None)


def run(args: argparse.Namespace, api: Any | None = None) -> int:
    api = api or _load_api(args.kubeconfig, args.context)
    ns, name = args.namespace, args.name
    if args.action != "status":
        api.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            PLURAL,
            name,
            annotation_patch(args.action),
            _content_type="application/merge-patch+json",
        )
        print(f"{ns}/{name}: {args.action} requested")
    obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    print(format_status(obj))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="samp")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as err:
        print(f"samp rollout {args.action}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
