"""``make demo``: the whole flow on one machine (``python -m samp_local.demo``).

Quantize and evaluate with the job CLI (``samp quantize``), serve stable and canary with
vLLM on the CPU, scrape them with Prometheus, step traffic with a bounded load
generator, and promote or roll back through the operator's canary driver
(samp_local.canary_loop). A failed gate with re-plan allowed goes the operator's way
too: ``samp plan --attempt n --previous-plan ...`` (the plan Job's command, with its
checks), then ``samp export`` and ``samp evaluate``, and the canary restarts on the new
checkpoint. Everything lands in ``--out``; ``status.json`` holds the final status.
Exit 0 when promoted, 3 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from samp_core import history
from samp_core.api import API_VERSION, KIND, parse
from samp_core.canary import Event, canary_model_name, stable_model_name
from samp_core.gates import evaluate_accuracy
from samp_core.results import EvaluationResult, PlanResult
from samp_core.spec import QuantizedModelSpec
from samp_core.status import Phase, PlanSummary, QuantizedModelStatus
from samp_local.canary_loop import CanaryLoop
from samp_local.load import Backend, LoadGenerator, LocalWeights
from samp_local.processes import PrometheusProcess, ScrapeTarget, VllmProcess, http_ok, pinned
from samp_operator.prometheus import PrometheusProvider

PLAN_REFUSED = 2  # the jobs CLI's exit status for bad input (a re-plan that cannot raise)


def _say(text: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {text}", flush=True)


def _samp_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("samp")
    cmd = [str(exe) if exe.exists() else "samp", *args]
    _say("$ " + " ".join(cmd))
    return cmd


def _samp(*args: str) -> None:
    """Run a `samp` job stage in a child process (the operator never imports torch)."""
    subprocess.run(_samp_cmd(*args), check=True)


def _plan_summary(p: PlanResult) -> PlanSummary:
    return PlanSummary(
        profile=p.profile,
        bytes16_bit=p.bytes_16bit,
        bytes_quantized=p.total_bytes,
        effective_bits=round(p.effective_bits, 4),
        memory_saved_percent=round(100 * (1 - p.fraction_of_16bit), 2),
        predicted_loss=p.predicted_loss,
        groups_per_format=p.groups_per_format(),
    )


def _evaluated(
    spec: QuantizedModelSpec, workdir: Path, base: QuantizedModelStatus | None, attempt: int
) -> QuantizedModelStatus:
    p = PlanResult.model_validate_json((workdir / "plan.json").read_text())
    ev = EvaluationResult.model_validate_json((workdir / "evaluation.json").read_text())
    verdict = evaluate_accuracy(spec.gates.accuracy, ev)
    _say(
        f"attempt {attempt}: plan {p.effective_bits:.2f} effective bits "
        f"({100 * (1 - p.fraction_of_16bit):.1f}% saved), accuracy "
        f"{'passed' if verdict.passed else 'FAILED'}: "
        + "; ".join(r.message for r in verdict.results)
    )
    history_ = list(base.history) if base is not None else []
    return QuantizedModelStatus(
        phase=Phase.EVALUATED,
        attempt=attempt,
        plan=_plan_summary(p),
        accuracy=verdict.summary,
        artifact_uri=str(workdir / "artifact"),
        history=history_,
    )


@dataclass(frozen=True)
class Replan:
    """Where the re-plan's inputs are: the effective manifest, the model, the eval set."""

    manifest: Path
    model: Path
    eval_set: str | None


def _replan(r: Replan, prev: Path, nxt: Path, attempt: int) -> str | None:
    """Attempt ``attempt`` as the operator runs it: its plan Job's command (``samp plan
    --attempt n --previous-plan``, with the same refusals) in a copy of the scored work
    directory, then export and evaluate. None when done, else why the plan was refused."""
    nxt.mkdir(parents=True, exist_ok=True)
    for f in prev.iterdir():
        if f.is_file() and f.name not in ("plan.json", "export.json", "evaluation.json"):
            shutil.copy2(f, nxt / f.name)
    common = ("--workdir", str(nxt), "--manifest", str(r.manifest), "--model", str(r.model),
              "--no-progress")
    planned = subprocess.run(
        _samp_cmd("plan", *common, "--attempt", str(attempt),
                  "--previous-plan", str(prev / "plan.json")),
        stderr=subprocess.PIPE, text=True, check=False,
    )
    sys.stderr.write(planned.stderr)
    if planned.returncode == PLAN_REFUSED:
        lines = [ln for ln in planned.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else f"samp plan exited {planned.returncode}"
    planned.check_returncode()
    for w in PlanResult.model_validate_json((nxt / "plan.json").read_text()).warnings:
        _say(f"re-plan: {w}")
    _samp("export", *common)
    _samp("evaluate", *common, *(["--eval-set", r.eval_set] if r.eval_set else []))
    return None


def _plan_refused(status: QuantizedModelStatus, why: str) -> QuantizedModelStatus:
    """The plan Job failed: the attempt ends Failed, as the quantization machine ends it."""
    _say(f"re-plan for attempt {status.attempt} refused: {why}")
    failed = status.model_copy(
        update={"phase": Phase.FAILED, "message": f"plan failed: {why}"[:4096]}
    )
    return history.record(failed, datetime.now(UTC), None, outcome="Failed",
                          reason=f"plan failed: {why}")


# ------------------------------------------------------------------ the servers


@dataclass
class Servers:
    """The stable and canary vLLM servers (one core each when there are two) and the
    Prometheus scraping them."""

    stable: VllmProcess
    canary: VllmProcess
    prometheus: PrometheusProcess
    canary_core: tuple[str, str | None]  # (VLLM_CPU_OMP_THREADS_BIND, taskset list)

    @classmethod
    def create(cls, spec: QuantizedModelSpec, name: str, model: Path, artifact: Path,
               out: Path) -> Servers:
        stable_name = stable_model_name(spec, name) or name
        canary_name = canary_model_name(spec, name)
        two = (os.cpu_count() or 1) >= 2
        bind = ("0", "1") if two else ("auto", "auto")
        cpus: tuple[str | None, str | None] = ("0", "1") if two else (None, None)
        stable = VllmProcess(model, stable_name, out / "logs", env=pinned(bind[0]),
                             cpus=cpus[0])
        canary = VllmProcess(artifact, canary_name, out / "logs", env=pinned(bind[1]),
                             cpus=cpus[1])
        prom = PrometheusProcess(
            out / "prometheus",
            [ScrapeTarget(stable.port, stable_name, "stable"),
             ScrapeTarget(canary.port, canary_name, "canary")],
        )
        return cls(stable, canary, prom, (bind[1], cpus[1]))

    def start(self) -> float:
        t0 = time.monotonic()
        self.stable.start()
        self.canary.start()
        self.prometheus.start()
        _say(f"Prometheus on {self.prometheus.url}; waiting for vLLM "
             f"{self.stable.served_model_name} and {self.canary.served_model_name}")
        self.stable.wait_ready()
        self.canary.wait_ready()
        return round(time.monotonic() - t0, 1)

    def restart_canary(self, artifact: Path) -> None:
        """The next attempt's checkpoint, on the same port (Prometheus scrapes it there)."""
        self.canary.stop()
        c = self.canary
        self.canary = VllmProcess(artifact, c.served_model_name, c.logdir, port=c.port,
                                  env=pinned(self.canary_core[0]), cpus=self.canary_core[1])
        self.canary.start()
        self.canary.wait_ready()

    def stop(self) -> None:
        self.prometheus.stop()
        self.canary.stop()
        self.stable.stop()


# ------------------------------------------------------------------ the main job


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m samp_local.demo",
        description="The whole flow on one machine: quantize + evaluate (samp quantize), "
        "serve stable and canary with vLLM on the CPU, scrape them with Prometheus, step "
        "traffic with a bounded load generator, and promote or roll back through the same "
        "canary driver and pure canary machine the operator runs.",
    )
    ap.add_argument("--manifest", type=Path, default=Path("examples/tiny-cpu.yaml"))
    ap.add_argument("--model", type=Path, default=Path("examples/tiny/model"))
    ap.add_argument("--prompts", default="examples/tiny/prompts.jsonl")
    ap.add_argument("--eval-set", default="examples/tiny/eval.jsonl")
    ap.add_argument("--out", type=Path, default=Path("out/flow"))
    ap.add_argument("--reuse", action="store_true", help="reuse a finished attempt-1 workdir")
    ap.add_argument(
        "--inject-regression-tokens",
        type=int,
        default=0,
        help="fault injection: ask attempt 1's canary for N-token generations (the stable "
        "gets 16), as a model that stopped emitting EOS would; 0 = none",
    )
    ap.add_argument(
        "--replan-attempts",
        type=int,
        default=0,
        help="enable spec.rollout.replan with this many attempts in total (0: as the manifest)",
    )
    ap.add_argument("--load-threads", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0)
    return ap


def _effective_manifest(
    args: argparse.Namespace, out: Path
) -> tuple[QuantizedModelSpec, str, Path]:
    """(spec, name, manifest the plan Job reads): the manifest with ``--replan-attempts``."""
    qm = parse(yaml.safe_load(args.manifest.read_text()))
    spec = qm.spec
    if args.replan_attempts:
        replan = spec.rollout.replan.model_copy(
            update={"enabled": True, "max_attempts": args.replan_attempts}
        )
        spec = spec.model_copy(
            update={"rollout": spec.rollout.model_copy(update={"replan": replan})}
        )
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": qm.name, "namespace": qm.namespace},
        "spec": spec.to_wire(),
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    return spec, qm.name, path


def _quantize(args: argparse.Namespace, work: Path) -> None:
    if args.reuse and (work / "evaluation.json").exists():
        return
    _samp(
        "quantize", "--manifest", str(args.manifest), "--model", str(args.model),
        "--prompts", args.prompts, "--eval-set", args.eval_set, "--workdir", str(work),
        "--no-progress",
    )


def _on_event(events: list[str], e: Event) -> None:
    events.append(f"{e.type} {e.reason}: {e.message}")
    _say(f"{e.type:<7} {e.reason}: {e.message}")


def _canary(  # noqa: PLR0917
    args: argparse.Namespace, spec: QuantizedModelSpec, name: str, servers: Servers,
    status: QuantizedModelStatus, events: list[str],
) -> QuantizedModelStatus:
    """One attempt's canary, under load, until it ends."""
    tokens = args.inject_regression_tokens if status.attempt == 1 else 0
    if tokens:
        _say(f"fault injection: attempt {status.attempt}'s canary gets {tokens}-token requests")
    router = LocalWeights()
    loop = CanaryLoop(
        spec=spec,
        name=name,
        provider=PrometheusProvider(servers.prometheus.url),
        router=router,
        canary_ready=partial(http_ok, f"{servers.canary.url}/health"),
        on_event=partial(_on_event, events),
        on_remove=lambda: _say("canary removed (traffic back to stable)"),
        on_promote=lambda a: _say(f"promotion: {a.strategy} to {a.artifact_uri}"),
    )
    gen = LoadGenerator(
        Backend(servers.stable.url, servers.stable.served_model_name, 16),
        Backend(servers.canary.url, servers.canary.served_model_name, tokens or 16),
        router,
        threads=args.load_threads,
    )
    with gen:
        status = loop.run(status, timeout=args.timeout)
    _say(f"load: {gen.stats.per_model} requests, {gen.stats.failed} failed")
    return status


def _report(name: str, status: QuantizedModelStatus, out: Path, timings: dict[str, float],
            events: list[str]) -> None:
    (out / "status.json").write_text(
        json.dumps({"status": status.to_wire(), "timings": timings, "events": events}, indent=1)
    )
    print()
    print(f"== {name}: {status.phase.value} after {len(status.history)} attempt(s)")
    print(f"   {status.message}")
    for r in status.gates:
        print(f"   {r.gate:<18} {r.verdict:<12} {r.message}")
    for a in status.history:
        print(f"   attempt {a.attempt}: {a.outcome} {a.reason[:200]}")
    print(f"   timings: {json.dumps(timings)}")
    print(f"   status written to {out / 'status.json'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t_start = time.monotonic()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec, name, manifest = _effective_manifest(args, out)
    replan = Replan(manifest, args.model.resolve(), args.eval_set)

    work = out / "attempt-1"  # 1. quantize + evaluate (attempt 1)
    t0 = time.monotonic()
    _quantize(args, work)
    timings = {"quantize_seconds": round(time.monotonic() - t0, 1)}
    status = _evaluated(spec, work, None, 1)

    servers = Servers.create(spec, name, args.model.resolve(), work / "artifact", out)
    spec = spec.model_copy(  # 2. serve stable + canary, scrape with Prometheus
        update={"gates": spec.gates.model_copy(update={"prometheus_url": servers.prometheus.url})}
    )
    events: list[str] = []
    try:
        timings["serve_ready_seconds"] = servers.start()
        _say(f"vLLM ready after {timings['serve_ready_seconds']} s")
        while True:  # 3. canary; on a failed gate with re-plan allowed, the next attempt
            attempt, t0 = status.attempt, time.monotonic()
            status = _canary(args, spec, name, servers, status, events)
            timings[f"canary_attempt_{attempt}_seconds"] = round(time.monotonic() - t0, 1)
            if status.phase is not Phase.PLANNING:
                break
            nxt, t0 = out / f"attempt-{status.attempt}", time.monotonic()
            refused = _replan(replan, work, nxt, status.attempt)
            if refused is not None:
                status = _plan_refused(status, refused)
                break
            timings[f"replan_attempt_{status.attempt}_seconds"] = round(time.monotonic() - t0, 1)
            work = nxt
            status = _evaluated(spec, work, status, status.attempt)
            servers.restart_canary(work / "artifact")
    finally:
        servers.stop()
    timings["total_seconds"] = round(time.monotonic() - t_start, 1)
    _report(name, status, out, timings, events)
    return 0 if status.phase is Phase.PROMOTED else 3


if __name__ == "__main__":
    sys.exit(main())
