"""``kubectl samp`` (the kubectl plugin, also ``samp``): watch and steer QuantizedModels.

    kubectl samp get qm NAME [--watch]     one rollout: plan, accuracy, steps, gates, attempts
    kubectl samp list [-A]                 every rollout of the namespace (or of all)
    kubectl samp promote|abort|pause|resume NAME
    kubectl samp retry NAME                a RolledBack or Failed rollout starts over
    kubectl samp status NAME [--timeout 30m]   wait for the outcome; the exit code says it
    kubectl samp plan show NAME [--figure curve.svg]
    kubectl samp version

The namespace is -n, else the kubeconfig context's, as with kubectl. Steering writes only
annotations (never spec), so it works under GitOps. Exit codes: 0 promoted (or evaluated,
without canary), 1 rolled back or failed, 2 bad usage, 3 still progressing when the wait
ended, 4 paused, suspended or waiting for a manual promotion, 5 the API server could not
be used (kubeconfig, network, refusal, not found), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from samp_core import __version__
from samp_core.units import parse_duration
from samp_operator import plugin_kube as kube
from samp_operator import plugin_view as view
from samp_operator.plan_source import show_plan
from samp_operator.plugin_kube import CliError, Target
from samp_operator.rollout_cli import annotation_patch

KINDS = ("qm", "qms", "quantizedmodel", "quantizedmodels")
STEER = ("promote", "abort", "pause", "resume")
CLEAR = "\x1b[H\x1b[2J"


def parser(prog: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="default: the kubeconfig context's")
    common.add_argument("--kubeconfig", help="default: $KUBECONFIG, then ~/.kube/config")
    common.add_argument("--context", help="kubeconfig context")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"{prog} {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    get = sub.add_parser("get", parents=[common, out], help="show one rollout, or list them")
    get.add_argument("kind", choices=KINDS)
    get.add_argument("name", nargs="?")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-w", "--watch", action="store_true",
                     help="redraw on every change until promoted, rolled back or failed")
    get.add_argument("--timeout", default="0", help="stop watching after this (e.g. 30m)")
    lst = sub.add_parser("list", parents=[common, out], help="list rollouts")
    lst.add_argument("-A", "--all-namespaces", action="store_true")
    for action in STEER:
        s = sub.add_parser(action, parents=[common], help=f"{action} a rollout (annotation)")
        s.add_argument("name")
    retry = sub.add_parser("retry", parents=[common],
                           help="start a RolledBack or Failed rollout over (annotation)")
    retry.add_argument("name")
    st = sub.add_parser("status", parents=[common, out],
                        help="wait for the rollout's outcome; exit code by outcome")
    st.add_argument("name")
    st.add_argument("--timeout", default="0", help="give up after this (e.g. 30m; 0: never)")
    st.add_argument("--no-watch", action="store_true", help="report now, do not wait")
    plan = sub.add_parser("plan", help="the SAMP plan of a rollout")
    plan_sub = plan.add_subparsers(dest="plan_command", required=True)
    show = plan_sub.add_parser("show", parents=[common, out],
                               help="plan table and bytes-vs-loss curve")
    show.add_argument("name", nargs="?", help="QuantizedModel (omit with --file)")
    show.add_argument("--file", type=Path, help="a plan document (samp_plan.json) to show")
    show.add_argument("--pvc-root", type=Path,
                      help="where PVCs are mounted here: pvc://CLAIM/PATH is PVC_ROOT/CLAIM/PATH")
    show.add_argument("--figure", type=Path, help="also write the curve as .svg or .png")
    sub.add_parser("version", help="print the version")
    return p


def _dump(obj: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(obj, indent=2, sort_keys=False)
    return yaml.safe_dump(obj, sort_keys=False).rstrip()


def _seconds(text: str) -> float:
    try:
        return 0.0 if text in ("0", "") else parse_duration(text)
    except ValueError:
        raise CliError(f"--timeout {text!r}: use a duration such as 90s, 10m or 1h", 2) from None


def cmd_get(args: argparse.Namespace, target: Target, ns: str | None,
            out: Callable[[str], None]) -> int:
    if args.name is None or args.all_namespaces:
        return cmd_list(args, target, ns, out)
    assert ns is not None
    if not args.watch:
        obj = kube.get(target, ns, args.name)
        out(view.describe(obj) if args.output == "text" else _dump(obj, args.output))
        return 0
    outcome = _follow(target, ns, args.name, _seconds(args.timeout), args.output, out,
                      redraw=sys.stdout.isatty())
    return 0 if outcome is not view.Outcome.TIMED_OUT else int(outcome)


def cmd_list(args: argparse.Namespace, target: Target, ns: str | None,
             out: Callable[[str], None]) -> int:
    objs = kube.list_all(target, ns)
    if args.output != "text":
        out(_dump({"apiVersion": "v1", "kind": "List", "items": objs}, args.output))
    elif not objs:
        out("No QuantizedModels found" + (f" in namespace {ns}." if ns else "."))
    else:
        out(view.table(objs, all_namespaces=ns is None))
    return 0


def _follow(target: Target, ns: str, name: str, timeout: float, fmt: str,  # noqa: PLR0917
            out: Callable[[str], None], redraw: bool,
            stop: tuple[view.Outcome, ...] = view.FINAL) -> view.Outcome:
    """Print the rollout on each change until an outcome in ``stop`` (or the timeout)."""
    deadline = time.monotonic() + timeout if timeout else None
    last = ""
    while True:
        window = 300 if deadline is None else int(deadline - time.monotonic())
        if window <= 0:
            return view.Outcome.TIMED_OUT
        for obj in kube.watch(target, ns, name, window):
            text = view.describe(obj) if fmt == "text" else _dump(obj, fmt)
            if text != last:
                out((CLEAR if redraw else ("\n" if last else "")) + text)
                last = text
            state = view.outcome(obj)
            if state in stop:
                return state
            if deadline is not None and time.monotonic() >= deadline:
                return view.Outcome.TIMED_OUT


def cmd_status(args: argparse.Namespace, target: Target, ns: str,
               out: Callable[[str], None]) -> int:
    if args.no_watch:
        obj = kube.get(target, ns, args.name)
        out(view.describe(obj) if args.output == "text" else _dump(obj, args.output))
        state = view.outcome(obj)
        return int(view.Outcome.TIMED_OUT if state is view.Outcome.PROGRESSING else state)
    # A rollout waiting for a person ends the wait too: CI should not block on it.
    state = _follow(target, ns, args.name, _seconds(args.timeout), args.output, out,
                    redraw=False, stop=(*view.FINAL, view.Outcome.SUSPENDED))
    if args.output == "text":
        out({view.Outcome.SUCCEEDED: "outcome: succeeded", view.Outcome.FAILED:
             "outcome: failed", view.Outcome.TIMED_OUT: f"outcome: still progressing after "
             f"{args.timeout}", view.Outcome.SUSPENDED: "outcome: paused or waiting for a "
             "person (kubectl samp promote|resume)"}.get(state, str(state)))
    return int(state)


def cmd_steer(args: argparse.Namespace, target: Target, ns: str,
              out: Callable[[str], None]) -> int:
    obj = kube.patch_annotations(target, ns, args.name, annotation_patch(args.command))
    phase = (obj.get("status") or {}).get("phase", "Pending")
    out(f"quantizedmodel {ns}/{args.name}: {args.command} requested (phase {phase})")
    return 0


RETRY_PHASES = ("RolledBack", "Failed")


def cmd_retry(args: argparse.Namespace, target: Target, ns: str,
              out: Callable[[str], None]) -> int:
    """Like ``kubectl argo rollouts retry``: only a rollout that ended badly starts over
    (RolledBack: the canary from step 1; Failed: the failed stage), by annotation only."""
    status = kube.get(target, ns, args.name).get("status") or {}
    phase = status.get("phase", "Pending")
    ready: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    if phase not in RETRY_PHASES:
        raise CliError(f"quantizedmodel {ns}/{args.name} is {phase}: retry starts over a "
                       "RolledBack or Failed rollout only"
                       + (" (abort it first to stop it)" if phase in (
                           "CanaryProgressing", "Paused") else ""), 2)
    if ready.get("reason") == "InvalidSpec":
        raise CliError(f"quantizedmodel {ns}/{args.name} failed on its spec: fix the spec "
                       "(the message says which field); a retry would fail the same way", 2)
    kube.patch_annotations(target, ns, args.name, annotation_patch("retry"))
    what = "the canary starts over from step 1" if phase == "RolledBack" else \
        "the failed stage runs again"
    out(f"quantizedmodel {ns}/{args.name}: retry requested (phase {phase}: {what})")
    return 0


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    if args.command == "version":
        out(f"kubectl-samp {__version__} (samp.dev/v1alpha1)")
        return 0
    if args.command == "plan" and args.file is not None:
        return show_plan(None, args, out)
    _seconds(getattr(args, "timeout", "0"))  # a bad duration fails before any API call
    target = kube.connect(args.kubeconfig, args.context)
    all_ns = getattr(args, "all_namespaces", False)
    ns = None if all_ns else (args.namespace or target.namespace)
    if args.command == "get":
        return cmd_get(args, target, ns, out)
    if args.command == "list":
        return cmd_list(args, target, ns, out)
    assert ns is not None
    if args.command == "status":
        return cmd_status(args, target, ns, out)
    if args.command in STEER:
        return cmd_steer(args, target, ns, out)
    if args.command == "retry":
        return cmd_retry(args, target, ns, out)
    if args.name is None:
        raise CliError("plan show: name a QuantizedModel or pass --file", 2)
    return show_plan(kube.get(target, ns, args.name), args, out)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    name = prog or ("kubectl samp" if Path(sys.argv[0]).name == "kubectl-samp" else "samp")
    args = parser(name).parse_args(argv)
    try:
        return run(args)
    except CliError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
