"""``make demo``: the whole flow on one machine (``python -m samp_local.demo``).

Quantize and evaluate with the job CLI (``samp quantize``), serve the 16-bit stable and
the quantized canary with vLLM on the CPU, scrape them with Prometheus, step traffic with
a bounded load generator, and decide through the operator's canary driver. Two rollouts
of the same checkpoint show both outcomes (``--scenario``):

1. ``promote``: an absolute P99 ceiling (``--p99-ceiling``) that a CPU can meet: every
   step passes and the canary is promoted;
2. ``replan``: the manifest's own gates (P99 at most 1.5 x the stable's). This CPU's
   W8A8 canary meets them (P99 x1.01 the stable's, measured), so the first canary gets an
   injected fault (``--inject-regression-tokens``, default 128: long generations, as a
   model that stopped emitting EOS would): its gate fails, the canary rolls back, and with
   re-plan allowed (``--replan-attempts``, default 2) the next attempt raises the most
   sensitive groups toward 16-bit, re-exports, re-evaluates and tries again without the
   fault; the demo says what it changed and how that ended.

Text for a person on a terminal, JSON lines otherwise (``--output``). Everything lands in
``--out``; ``status.json`` holds each rollout's final status. Exit 0 when the rollouts
ended as their gates decided and the ``promote`` one (when run) was promoted, 3 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from samp_core.api import API_VERSION, KIND, parse
from samp_core.results import PlanResult
from samp_core.spec import QuantizedModelSpec
from samp_core.status import Phase, QuantizedModelStatus
from samp_local.console import Console
from samp_local.rollouts import Rollout, canary, evaluated, plan_refused, replan
from samp_local.servers import Servers
from samp_local.stages import run_stages
from samp_operator.plan_view import plan_table


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m samp_local.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=Path("examples/tiny-cpu.yaml"))
    ap.add_argument("--model", type=Path, default=Path("examples/tiny/model"))
    ap.add_argument("--prompts", default="examples/tiny/prompts.jsonl")
    ap.add_argument("--eval-set", default="examples/tiny/eval.jsonl")
    ap.add_argument("--out", type=Path, default=Path("out/flow"))
    ap.add_argument("--scenario", choices=["both", "promote", "replan"], default="both")
    ap.add_argument("--p99-ceiling", type=float, default=2.0,
                    help="the promote rollout's absolute P99 gate in seconds (default 2.0)")
    ap.add_argument("--output", choices=["auto", "text", "json"], default="auto",
                    help="text for a person, JSON lines for a machine (auto: text on a "
                    "terminal)")
    ap.add_argument("--reuse", action="store_true", help="reuse a finished attempt-1 workdir")
    ap.add_argument("--inject-regression-tokens", type=int, default=128,
                    help="fault injection: ask the replan rollout's first canary for N-token "
                    "generations (the stable gets 16), as a model that stopped emitting EOS "
                    "would, so its gate fails and the re-plan shows; 0 = none (this CPU's "
                    "W8A8 canary then meets the gate, measured at P99 x1.01 the stable's)")
    ap.add_argument("--replan-attempts", type=int, default=0,
                    help="attempts in total for the replan rollout (0: 2 with --scenario "
                    "both or replan, else as the manifest)")
    ap.add_argument("--load-threads", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0)
    return ap


def _effective_manifest(args: argparse.Namespace, out: Path,
                        spec: QuantizedModelSpec | None = None
                        ) -> tuple[QuantizedModelSpec, str, Path]:
    """(spec, name, manifest the plan Job reads): the manifest with ``--replan-attempts``
    (or ``spec`` when given), written to ``out/manifest.json``."""
    qm = parse(yaml.safe_load(args.manifest.read_text()))
    spec = spec or qm.spec
    if args.replan_attempts:
        rp = spec.rollout.replan.model_copy(
            update={"enabled": True, "max_attempts": args.replan_attempts})
        spec = spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"replan": rp})})
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND,
                           "metadata": {"name": qm.name, "namespace": qm.namespace},
                           "spec": spec.to_wire()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    return spec, qm.name, path


def fair_steps(spec: QuantizedModelSpec) -> QuantizedModelSpec:
    """The spec with every partial step at 50%: the demo serves one stable and one canary
    process, and only an even split gives both the same load per replica.

    At the example's 25% the canary gets a third of the stable's requests per replica, so
    the fairness check (``gates.maxLoadImbalance``, 1.5x) rightly keeps every comparison
    Inconclusive: measured on this machine, both rollouts rolled back on
    ``inconclusiveLimit`` with the canary at 0.27-0.33x the stable's per-replica rate. In a
    cluster the replica-ratio router (or a canary with fewer replicas behind an HTTPRoute)
    keeps per-replica loads level at any weight. The steps' durations are the manifest's.
    """
    partial = [s for s in spec.rollout.steps if s.weight < 100]
    full = [s for s in spec.rollout.steps if s.weight == 100]
    steps = [s.model_copy(update={"weight": 50}) for s in partial[-1:]] + full
    return spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"steps": steps})})


def _ceiling_spec(spec: QuantizedModelSpec, ceiling: float) -> QuantizedModelSpec:
    """The manifest's spec judged by an absolute P99 ceiling alone, without re-plan."""
    latency = spec.gates.latency.model_copy(update={
        "p99_max_seconds": ceiling, "p99_max_ratio_to_stable": None,
        "ttft_p99_max_ratio_to_stable": None})
    rp = spec.rollout.replan.model_copy(update={"enabled": False})
    return spec.model_copy(update={
        "gates": spec.gates.model_copy(update={"latency": latency}),
        "rollout": spec.rollout.model_copy(update={"replan": rp})})


def _rollouts(args: argparse.Namespace, out: Path) -> list[Rollout]:
    base = fair_steps(parse(yaml.safe_load(args.manifest.read_text())).spec)
    model = args.model.resolve()
    chosen: list[Rollout] = []
    if args.scenario in ("both", "promote"):
        ns = argparse.Namespace(manifest=args.manifest, replan_attempts=0)
        spec, name, path = _effective_manifest(ns, out / "promote",
                                               _ceiling_spec(base, args.p99_ceiling))
        chosen.append(Rollout(f"absolute gate P99 <= {args.p99_ceiling:g} s, which this CPU "
                              "can meet", spec, name, path, out / "promote", model,
                              args.eval_set))
    if args.scenario in ("both", "replan"):
        ns = argparse.Namespace(manifest=args.manifest,
                                replan_attempts=args.replan_attempts or 2)
        spec, name, path = _effective_manifest(ns, out / "replan", base)
        ratio = spec.gates.latency.p99_max_ratio_to_stable
        fault = (f", a fault injected in attempt 1 ({args.inject_regression_tokens}-token "
                 "answers)" if args.inject_regression_tokens else "")
        chosen.append(Rollout(
            f"the manifest's gate P99 <= {ratio:g} x the 16-bit stable's, re-plan allowed "
            f"({spec.rollout.replan.max_attempts} attempts){fault}", spec, name, path,
            out / "replan", model, args.eval_set,
            inject_tokens=args.inject_regression_tokens))
    return chosen


def _run_rollout(args: argparse.Namespace, console: Console, r: Rollout, servers: Servers,
                 status: QuantizedModelStatus, *, first: Path) -> QuantizedModelStatus:
    """Canary; on a failed gate with re-plan allowed, the next attempt; until it ends."""
    work = first
    while True:
        attempt, t0 = status.attempt, time.monotonic()
        status = canary(console, r, servers, status, threads=args.load_threads,
                        timeout=args.timeout)
        r.seconds[f"canary_attempt_{attempt}"] = round(time.monotonic() - t0, 1)
        if status.phase is not Phase.PLANNING:
            return status
        nxt, t0 = r.out / f"attempt-{status.attempt}", time.monotonic()
        refused = replan(console, r, work, nxt, status.attempt)
        if refused is not None:
            console.say("replan", f"re-plan for attempt {status.attempt} refused: {refused}")
            return plan_refused(status, refused)
        r.seconds[f"replan_attempt_{status.attempt}"] = round(time.monotonic() - t0, 1)
        work = nxt
        status = evaluated(console, r.spec, work, status, status.attempt)
        servers.restart_canary(console, work / "artifact")


def _report(console: Console, out: Path, results: list[tuple[Rollout, QuantizedModelStatus]],
            timings: dict[str, float]) -> None:
    """The summary: each rollout's outcome and attempts (the reasons were said above)."""
    (out / "status.json").write_text(json.dumps({
        "rollouts": [{"title": r.title, "status": s.to_wire(), "events": r.events,
                      "seconds": r.seconds} for r, s in results],
        "timings": timings}, indent=1))
    lines = ["", "== Summary"]
    for i, (r, s) in enumerate(results, 1):
        lines.append(f"rollout {i} ({r.title}): {s.phase.value} after "
                     f"{len(s.history) or 1} attempt(s)")
        for a in s.history:
            bits = f", {a.plan.effective_bits:.2f} effective bits" if a.plan else ""
            lines.append(f"  attempt {a.attempt}: {a.outcome}{bits}")
    lines.append("timings: " + ", ".join(f"{k.removesuffix('_seconds')} {v:.0f} s"
                                         for k, v in timings.items()))
    lines.append(f"status of each rollout: {out / 'status.json'}; logs: {out / 'logs'}")
    console.block("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(args.output)
    t_start = time.monotonic()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rollouts = _rollouts(args, out)
    spec = rollouts[0].spec
    console.say("demo", f"SAMP demo: {rollouts[0].name} from {args.manifest}, on this "
                f"machine's CPU; everything lands in {out}")
    work = out / "attempt-1"
    if not (args.reuse and (work / "evaluation.json").exists()):
        run = run_stages(console, "quantize and evaluate (calibrate, sensitivity, plan, "
                         "export, evaluate)",
                         ["quantize", "--manifest", str(args.manifest), "--model",
                          str(args.model), "--prompts", args.prompts, "--eval-set",
                          args.eval_set, "--workdir", str(work)], out / "logs" / "quantize.log")
        if run.returncode != 0:
            console.block("\n".join(run.tail[-10:]))
            return run.returncode
    timings = {"quantize_seconds": round(time.monotonic() - t_start, 1)}
    console.block(plan_table(PlanResult.model_validate_json((work / "plan.json").read_text())))
    evaluated_1 = evaluated(console, spec, work, None, 1)
    servers = Servers.create(spec, rollouts[0].name, args.model.resolve(), work / "artifact",
                             out)
    results: list[tuple[Rollout, QuantizedModelStatus]] = []
    try:
        timings["serve_ready_seconds"] = servers.start(console)
        for i, r in enumerate(rollouts, 1):
            r.spec = r.spec.model_copy(update={"gates": r.spec.gates.model_copy(
                update={"prometheus_url": servers.prometheus.url})})
            console.block(f"\n== Rollout {i} of {len(rollouts)}: {r.title}")
            if i > 1 and servers.canary.model_dir != work / "artifact":
                servers.restart_canary(console, work / "artifact")
            t0 = time.monotonic()
            status = evaluated_1.model_copy(deep=True)
            results.append((r, _run_rollout(args, console, r, servers, status, first=work)))
            timings[f"rollout_{i}_seconds"] = round(time.monotonic() - t0, 1)
    finally:
        servers.stop()
    timings["total_seconds"] = round(time.monotonic() - t_start, 1)
    _report(console, out, results, timings)
    promote = [s for r, s in results if r.out.name == "promote"]
    return 0 if all(s.phase is Phase.PROMOTED for s in promote) else 3


if __name__ == "__main__":
    sys.exit(main())
