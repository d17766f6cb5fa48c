"""One rollout of the demo: the canary under load, and on a failed gate the re-plan.

The canary runs through samp_local.canary_loop (the operator's canary driver and pure
canary machine). A failed gate with re-plan allowed goes the operator's way: the plan
Job's command (``samp plan --attempt n --previous-plan``, with its refusals) in a copy
of the scored work directory, then ``samp export`` and ``samp evaluate``, and the canary
restarts on the new checkpoint. The console says what each step did.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from samp_core import history
from samp_core.canary import Event
from samp_core.gates import evaluate_accuracy
from samp_core.results import EvaluationResult, PlanResult
from samp_core.spec import QuantizedModelSpec
from samp_core.status import Phase, PlanSummary, QuantizedModelStatus
from samp_local.canary_loop import CanaryLoop
from samp_local.console import Console, Progress
from samp_local.load import Backend, LoadGenerator, LocalWeights
from samp_local.processes import http_ok
from samp_local.servers import Servers
from samp_local.stages import plan_changes, run_stages
from samp_operator.plugin_view import accuracy_line, plan_line
from samp_operator.prometheus import PrometheusProvider

PLAN_REFUSED = 2  # the jobs CLI's exit status for bad input (a re-plan that cannot raise)
# The messages say what happened ("promoted: ...", "rolled back: ..."); the mark says how.
ICONS = {"StepStarted": "→", "AnalysisSuccessful": "✔", "AnalysisFailed": "✖",
         "AnalysisInconclusive": "…", "AnalysisError": "!", "Promoted": "✔", "RolledBack": "✖",
         "Replanning": "↻ re-plan:", "Paused": "॥", "Resumed": "▶"}


@dataclass
class Rollout:
    """One QuantizedModel's rollout in the demo: its spec, where its files go."""

    title: str
    spec: QuantizedModelSpec
    name: str
    manifest: Path  # what its plan Job reads (the spec above, as a manifest)
    out: Path
    model: Path  # the 16-bit model the re-plan's export and evaluate read
    eval_set: str | None
    inject_tokens: int = 0
    events: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def plan_summary(p: PlanResult) -> PlanSummary:
    return PlanSummary(
        profile=p.profile,
        bytes16_bit=p.bytes_16bit,
        bytes_quantized=p.total_bytes,
        effective_bits=round(p.effective_bits, 4),
        memory_saved_percent=round(100 * (1 - p.fraction_of_16bit), 2),
        predicted_loss=p.predicted_loss,
        groups_per_format=p.groups_per_format(),
    )


def evaluated(console: Console, spec: QuantizedModelSpec, workdir: Path,
              base: QuantizedModelStatus | None, attempt: int) -> QuantizedModelStatus:
    """The Evaluated status of an attempt's work directory, with its accuracy verdict."""
    p = PlanResult.model_validate_json((workdir / "plan.json").read_text())
    ev = EvaluationResult.model_validate_json((workdir / "evaluation.json").read_text())
    verdict = evaluate_accuracy(spec.gates.accuracy, ev)
    summary = plan_summary(p)
    acc = verdict.summary.model_dump(by_alias=True)
    console.say("evaluated",
                f"attempt {attempt}: {plan_line(summary.model_dump(by_alias=True))}",
                attempt=attempt, plan=summary.model_dump(by_alias=True))
    failed = "; ".join(verdict.summary.failed_checks)
    console.say("accuracy", f"attempt {attempt}: accuracy gate "
                + ("passed" if verdict.passed else f"FAILED: {failed}")
                + f" ({accuracy_line(acc)})", attempt=attempt, accuracy=acc)
    return QuantizedModelStatus(
        phase=Phase.EVALUATED, attempt=attempt, plan=summary, accuracy=verdict.summary,
        artifact_uri=str(workdir / "artifact"),
        history=list(base.history) if base is not None else [],
    )


def replan(console: Console, r: Rollout, prev: Path, nxt: Path, attempt: int) -> str | None:
    """Attempt ``attempt`` as the operator runs it; None when done, else why refused."""
    nxt.mkdir(parents=True, exist_ok=True)
    for f in prev.iterdir():
        if f.is_file() and f.name not in ("plan.json", "export.json", "evaluation.json"):
            shutil.copy2(f, nxt / f.name)
    common = ["--workdir", str(nxt), "--manifest", str(r.manifest), "--model", str(r.model)]
    log = r.out / "logs" / f"attempt-{attempt}.log"
    planned = run_stages(console, f"re-plan attempt {attempt}: samp plan --attempt "
                         f"{attempt} --previous-plan", ["plan", *common, "--attempt",
                         str(attempt), "--previous-plan", str(prev / "plan.json")], log)
    if planned.returncode == PLAN_REFUSED:
        return planned.tail[-1] if planned.tail else f"samp plan exited {PLAN_REFUSED}"
    if planned.returncode != 0:
        raise RuntimeError(f"samp plan failed; see {log}")
    before = PlanResult.model_validate_json((prev / "plan.json").read_text())
    after = PlanResult.model_validate_json((nxt / "plan.json").read_text())
    changed = plan_changes(before, after)
    console.say("replan", f"re-plan raised {len(changed)} group(s) toward 16-bit: "
                + "; ".join(changed) + f" ({before.effective_bits:.2f} -> "
                f"{after.effective_bits:.2f} effective bits)", changes=changed)
    for step in ("export", "evaluate"):
        extra = ["--eval-set", r.eval_set] if step == "evaluate" and r.eval_set else []
        if run_stages(console, f"{step} attempt {attempt}", [step, *common, *extra],
                      log).returncode != 0:
            raise RuntimeError(f"samp {step} failed; see {log}")
    return None


def plan_refused(status: QuantizedModelStatus, why: str) -> QuantizedModelStatus:
    """The plan Job failed: the attempt ends Failed, as the quantization machine ends it."""
    failed = status.model_copy(
        update={"phase": Phase.FAILED, "message": f"plan failed: {why}"[:4096]}
    )
    return history.record(failed, datetime.now(UTC), None, outcome="Failed",
                          reason=f"plan failed: {why}")


def _on_event(console: Console, r: Rollout, e: Event) -> None:
    r.events.append(f"{e.type} {e.reason}: {e.message}")
    console.say("canary", f"{ICONS.get(e.reason, e.reason + ':')} {e.message}",
                type=e.type, reason=e.reason)


def _show_progress(bar: Progress, steps: int, status: QuantizedModelStatus) -> None:
    c = status.canary
    if c is not None:
        bar.update(f"step {c.step + 1}/{steps} at {c.weight}%: {c.analyses} analyses, "
                   f"last {c.last_verdict or '-'}")


def canary(console: Console, r: Rollout, servers: Servers, status: QuantizedModelStatus, *,
           threads: int, timeout: float) -> QuantizedModelStatus:
    """One attempt's canary, under load, until it ends."""
    tokens = r.inject_tokens if status.attempt == 1 else 0
    if tokens:
        console.say("fault", f"fault injection: this canary gets {tokens}-token requests")
    router = LocalWeights()
    loop = CanaryLoop(
        spec=r.spec, name=r.name, provider=PrometheusProvider(servers.prometheus.url),
        router=router, canary_ready=partial(http_ok, f"{servers.canary.url}/health"),
        on_event=partial(_on_event, console, r),
        on_remove=lambda: console.say("canary", "canary removed; all traffic on the stable"),
        on_promote=lambda a: console.say(
            "canary", f"promotion ({a.strategy}): in a cluster the stable would now serve "
            f"{a.artifact_uri}; the demo's stable stays 16-bit for the next rollout"),
    )
    stable, canary_ = servers.stable, servers.canary
    gen = LoadGenerator(Backend(stable.url, stable.served_model_name, 16),
                        Backend(canary_.url, canary_.served_model_name, tokens or 16),
                        router, threads=threads)
    steps = len(r.spec.rollout.steps)
    with console.progress("canary", f"canary attempt {status.attempt} under load") as bar, gen:
        status = loop.run(status, timeout=timeout,
                          on_step=partial(_show_progress, bar, steps))
        bar.result = ("rolled back, re-planning" if status.phase is Phase.PLANNING
                      else status.phase.value)
        bar.failed = status.phase is not Phase.PROMOTED
    sent = gen.stats.per_model
    console.say("load", f"load: {sent.get(stable.served_model_name, 0)} requests to the "
                f"stable, {sent.get(canary_.served_model_name, 0)} to the canary, "
                f"{gen.stats.failed} failed", per_model=sent, failed=gen.stats.failed)
    return status
