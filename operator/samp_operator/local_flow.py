"""Real local processes for the end-to-end flow and the rollout tests: Prometheus, vLLM
CPU servers and a bounded load generator. Nothing here is a stand-in: these start the
real binaries on 127.0.0.1 and talk to them over HTTP.

* :class:`PrometheusProcess` — Debian's ``prometheus`` with a generated config
  (``scrape_interval`` 1s, one static target per vLLM server with the labels
  ``served_model`` and ``role``), its own ``--storage.tsdb.path``, on a free loopback
  port; ``stop()``/``start()`` keep the TSDB so "Prometheus down, then back" is real.
* :class:`VllmProcess` — ``python -m vllm.entrypoints.openai.api_server`` with
  ``VLLM_CPU_KVCACHE_SPACE=1 --enforce-eager`` (about 40 s to ready, about 3 GB RSS).
* :class:`LoadGenerator` — a few threads sending ``/v1/completions`` to the stable or
  the canary by the router's weight (the part a gateway plays in a cluster), with a
  per-target ``max_tokens`` (``ignore_eos``), so a latency regression can be produced
  honestly by asking the canary for longer generations. Bounded by a request budget
  and by ``stop()``; loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Protocol

import yaml

from samp_core.api import parse
from samp_core.canary import (
    CanaryDecision,
    CanaryEvent,
    EnsureCanary,
    Observation,
    PromoteStable,
    RemoveCanary,
    SetWeight,
    StartReplan,
    analysis_due,
    canary_model_name,
    conservative_plan,
    decide,
    stable_model_name,
)
from samp_core.gates import Measurement, evaluate_accuracy
from samp_core.hardware import get_profile
from samp_core.results import EvaluationResult, PlanResult, SensitivityResult
from samp_core.spec import QuantizedModelSpec
from samp_core.status import Phase, PlanSummary, QuantizedModelStatus
from samp_operator.prometheus import PrometheusProvider
from samp_operator.traffic import LocalWeights


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return bool(200 <= r.status < 300)
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


# Resolved in the parent so the child, between fork and exec, only makes one C call
# (no imports or allocations that another thread could hold a lock on).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, SIGTERM it when its parent dies.

    A test run or demo killed with SIGKILL cannot stop its servers itself; this way the
    vLLM and Prometheus processes it started do not outlive it.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class ScrapeTarget:
    port: int
    served_model: str
    role: str


@dataclass
class PrometheusProcess:
    workdir: Path
    targets: list[ScrapeTarget]
    port: int = 0
    binary: str = "prometheus"
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        jobs = []
        for t in self.targets:
            jobs.append(
                {
                    "job_name": f"vllm-{t.role}",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{t.port}"],
                            "labels": {"served_model": t.served_model, "role": t.role},
                        }
                    ],
                }
            )
        return json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": jobs,
            },
            indent=1,
        )

    def start(self, timeout: float = 60.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(self.config())  # JSON is YAML
        log = (self.workdir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=2h",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (one C call, see _PRCTL)
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self.proc.returncode}; see "
                    f"{self.workdir / 'prometheus.log'}"
                )
            if http_ok(f"{self.url}/-/ready"):
                return
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout}s")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def is_up(self) -> bool:
        return http_ok(f"{self.url}/-/ready")

    def targets_up(self) -> dict[str, bool]:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=3) as r:
                data = json.load(r)
        except (urllib.error.URLError, OSError):
            return {}
        return {
            t["labels"].get("served_model", "?"): t["health"] == "up"
            for t in data["data"]["activeTargets"]
        }


@dataclass
class VllmProcess:
    model_dir: Path
    served_model_name: str
    logdir: Path
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cpus: str | None = None  # taskset CPU list for the whole server (frontend and engine)
    python: str = sys.executable
    proc: subprocess.Popen[bytes] | None = None
    started_seconds: float | None = None

    def __post_init__(self) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.logdir / f"vllm-{self.served_model_name}.log"

    def start(self) -> None:
        # VLLM_CPU_OMP_THREADS_BIND (e.g. "0" and "1" for two servers on two cores): by
        # default every vLLM-CPU engine binds to the same first core and they starve each
        # other unevenly, which would make the stable-vs-canary comparison meaningless.
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_LOGGING_LEVEL": "WARNING",
            **self.env,
        }
        pin = ["taskset", "-c", self.cpus] if self.cpus and shutil.which("taskset") else []
        cmd = [
            *pin,
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_model_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enforce-eager",
            "--max-model-len",
            "512",
            *self.extra_args,
        ]
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (one C call, see _PRCTL)
        )

    def wait_ready(self, timeout: float = 300.0) -> float:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="ignore")[-3000:]
                raise RuntimeError(f"vLLM {self.served_model_name} exited:\n{tail}")
            if http_ok(f"{self.url}/health"):
                self.started_seconds = time.monotonic() - self._t0
                return self.started_seconds
            time.sleep(1.0)
        raise TimeoutError(f"vLLM {self.served_model_name} not ready after {timeout}s")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


@dataclass
class Backend:
    """Where the load generator sends one side's requests, and what it asks for.

    ``parallel`` is the completion API's ``n`` (sequences per request): more decode work
    per request, which the fault injection uses to make a canary measurably slower."""

    url: str
    model: str
    max_tokens: int = 16
    parallel: int = 1


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    per_model: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)


class TrafficShare(Protocol):
    def canary_share(self) -> float:
        """Fraction of requests (0..1) to send to the canary now."""


class LoadGenerator:
    """Bounded load on 127.0.0.1: ``threads`` workers, at most ``max_requests`` in all.

    ``router`` says where each request goes: ``LocalWeights`` in one process, or an
    object reading the weights the operator wrote into an HTTPRoute (the cluster test).
    """

    def __init__(
        self,
        stable: Backend,
        canary: Backend,
        router: TrafficShare,
        *,
        threads: int = 2,
        max_requests: int = 20_000,
        seed: int = 0,
        prompt: str = "the quick brown fox jumps over the lazy dog",
    ) -> None:
        self.stable, self.canary, self.router = stable, canary, router
        self.threads, self.max_requests = threads, max_requests
        self.prompt = prompt
        self.stats = LoadStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _pick(self) -> Backend:
        with self._lock:
            return self.canary if self._rng.random() < self.router.canary_share() else self.stable

    def _one(self, b: Backend) -> None:
        body = json.dumps(
            {
                "model": b.model,
                "prompt": self.prompt,
                "max_tokens": b.max_tokens,
                "ignore_eos": True,
                "temperature": 0.0 if b.parallel == 1 else 1.0,
                "n": b.parallel,
            }
        ).encode()
        req = urllib.request.Request(
            f"{b.url}/v1/completions", data=body, headers={"content-type": "application/json"}
        )
        t0 = time.monotonic()
        ok = False
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
                ok = r.status == 200
        except (urllib.error.URLError, OSError, TimeoutError):
            ok = False
        dt = time.monotonic() - t0
        with self._lock:
            self.stats.ok += ok
            self.stats.failed += not ok
            self.stats.per_model[b.model] = self.stats.per_model.get(b.model, 0) + 1
            self.stats.latencies.setdefault(b.model, []).append(dt)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self.stats.sent >= self.max_requests:
                    return
                self.stats.sent += 1
            self._one(self._pick())

    def start(self) -> None:
        self._stop.clear()
        self._workers = [
            threading.Thread(target=self._run, daemon=True, name=f"load-{i}")
            for i in range(self.threads)
        ]
        for w in self._workers:
            w.start()

    def stop(self) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(timeout=90)
        self._workers = []

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ the decision loop


@dataclass
class Applied:
    """What the loop did, in order: for the printout and the tests."""

    at: datetime
    phase: str
    actions: list[str]
    events: list[str]


@dataclass
class CanaryLoop:
    """Drives ``samp_core.canary.decide`` with the real Prometheus provider and a router.

    The operator does the same through Kopf timers (no sleeping in handlers); this loop
    is the one-machine version for ``samp_operator.local_flow`` and the rollout tests.
    ``canary_ready`` answers whether the canary server is ready; ``annotations``
    returns the object's annotations now (pause/promote/abort); the ``on_*`` callbacks
    run the non-traffic actions (the local flow starts/stops processes, the tests
    record them). ``max_sleep`` caps each wait so a test stays responsive.
    """

    spec: QuantizedModelSpec
    name: str
    provider: PrometheusProvider
    router: LocalWeights
    canary_ready: Callable[[], bool]
    annotations: Callable[[], Mapping[str, str]] = dict
    on_ensure: Callable[[EnsureCanary], None] = lambda a: None
    on_remove: Callable[[], None] = lambda: None
    on_promote: Callable[[PromoteStable], None] = lambda a: None
    on_event: Callable[[CanaryEvent], None] = lambda e: None
    max_sleep: float = 1.0
    log: list[Applied] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)

    def step(self, status: QuantizedModelStatus, now: datetime) -> CanaryDecision:
        req = analysis_due(self.spec, status, self.name, now)
        m = self.provider.measure(req, self.spec.gates) if req is not None else None
        if m is not None:
            self.measurements.append(m)
        weight = status.canary.weight if status.canary else None
        verified = (
            self.router.verify_weight(weight) if weight and status.phase is Phase.CANARY else None
        )
        d = decide(
            self.spec,
            status,
            Observation(
                name=self.name,
                annotations=dict(self.annotations()),
                canary_ready=self.canary_ready(),
                weight_verified=verified,
                measurement=m,
            ),
            now,
        )
        for e in d.events:  # what was decided, then what is done about it
            self.on_event(e)
        names: list[str] = []
        for a in d.actions:
            names.append(repr(a) if not isinstance(a, StartReplan) else f"StartReplan({a.attempt})")
            if isinstance(a, SetWeight):
                self.router.set_weight(a.weight)
                if not self.router.verify_weight(a.weight):
                    raise RuntimeError(f"router did not take weight {a.weight}")
            elif isinstance(a, EnsureCanary):
                self.on_ensure(a)
            elif isinstance(a, RemoveCanary):
                self.on_remove()
            elif isinstance(a, PromoteStable):
                self.on_promote(a)
        self.log.append(
            Applied(
                now, d.status.phase.value, names, [f"{e.reason}: {e.message}" for e in d.events]
            )
        )
        return d

    def run(
        self,
        status: QuantizedModelStatus,
        timeout: float,
        on_step: Callable[[QuantizedModelStatus], None] | None = None,
    ) -> QuantizedModelStatus:
        """Until the canary ends (Promoted, RolledBack, Planning for a re-plan) or timeout.

        ``on_step`` sees the status after every decision (the tests use it to stop
        Prometheus mid-rollout, or to record what happened while it was down)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.step(status, datetime.now(UTC))
            status = d.status
            if on_step is not None:
                on_step(status)
            if status.phase not in (Phase.EVALUATED, Phase.CANARY, Phase.PAUSED):
                return status
            wait = d.requeue_after if d.requeue_after is not None else self.max_sleep
            time.sleep(max(0.05, min(wait, self.max_sleep)))
        raise TimeoutError(f"canary still {status.phase.value} after {timeout}s: {status.message}")


# -------------------------------------------------------------------- the main job


def pinned(core: str) -> dict[str, str]:
    """Environment of a vLLM-CPU server that owns one core: its engine bound there and
    OpenMP waiting passively, so an idle engine does not spin."""
    return {"VLLM_CPU_OMP_THREADS_BIND": core, "OMP_WAIT_POLICY": "PASSIVE"}


def _say(text: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {text}", flush=True)


def _samp(*args: str) -> None:
    """Run a `samp` job stage in a child process (the operator never imports torch)."""
    exe = Path(sys.executable).with_name("samp")
    cmd = [str(exe) if exe.exists() else "samp", *args]
    _say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


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
    history = list(base.history) if base is not None else []
    return QuantizedModelStatus(
        phase=Phase.EVALUATED,
        attempt=attempt,
        plan=_plan_summary(p),
        accuracy=verdict.summary,
        artifact_uri=str(workdir / "artifact"),
        history=history,
    )


def _replan(
    spec: QuantizedModelSpec, prev: Path, nxt: Path, attempt: int, eval_set: str | None
) -> bool:
    """Write attempt ``attempt``'s conservative plan next to a copy of the scored workdir,
    then export and evaluate it. False when no group can be raised within the headroom."""
    p = PlanResult.model_validate_json((prev / "plan.json").read_text())
    sens = SensitivityResult.model_validate_json((prev / "sensitivity.json").read_text())
    new = conservative_plan(
        p,
        sens,
        get_profile(spec.hardware.target.profile),
        spec.quantization,
        spec.rollout.replan,
        attempt,
    )
    if new is None:
        _say(f"re-plan for attempt {attempt}: no group can be raised within the headroom")
        return False
    nxt.mkdir(parents=True, exist_ok=True)
    for f in prev.iterdir():
        if f.is_file() and f.name not in ("plan.json", "export.json", "evaluation.json"):
            shutil.copy2(f, nxt / f.name)
    (nxt / "plan.json").write_text(new.model_dump_json(by_alias=True, indent=1))
    for w in new.warnings:
        _say(f"re-plan: {w}")
    _samp("export", "--workdir", str(nxt), "--no-progress")
    _samp(
        "evaluate",
        "--workdir",
        str(nxt),
        "--no-progress",
        *(["--eval-set", eval_set] if eval_set else []),
    )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m samp_operator.local_flow",
        description="The whole flow on one machine: quantize + evaluate (samp quantize), "
        "serve stable and canary with vLLM on the CPU, scrape them with Prometheus, step "
        "traffic with a bounded load generator, and promote or roll back through the same "
        "pure canary machine the operator runs.",
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
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    qm = parse(yaml.safe_load(args.manifest.read_text()))
    spec, name = qm.spec, qm.name
    if args.replan_attempts:
        rollout = spec.rollout.model_copy(
            update={
                "replan": spec.rollout.replan.model_copy(
                    update={"enabled": True, "max_attempts": args.replan_attempts}
                )
            }
        )
        spec = spec.model_copy(update={"rollout": rollout})
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    # 1. quantize + evaluate (attempt 1)
    work = out / "attempt-1"
    t0 = time.monotonic()
    if not (args.reuse and (work / "evaluation.json").exists()):
        _samp(
            "quantize",
            "--manifest",
            str(args.manifest),
            "--model",
            str(args.model),
            "--prompts",
            args.prompts,
            "--eval-set",
            args.eval_set,
            "--workdir",
            str(work),
            "--no-progress",
        )
    timings = {"quantize_seconds": round(time.monotonic() - t0, 1)}
    status = _evaluated(spec, work, None, 1)

    # 2. serve stable + canary, scrape with Prometheus
    stable_name = stable_model_name(spec, name) or name
    canary_name = canary_model_name(spec, name)
    ncpu = os.cpu_count() or 1
    bind = ("0", "1") if ncpu >= 2 else ("auto", "auto")
    cpus: tuple[str | None, str | None] = ("0", "1") if ncpu >= 2 else (None, None)
    stable = VllmProcess(
        args.model.resolve(), stable_name, out / "logs", env=pinned(bind[0]), cpus=cpus[0]
    )
    canary = VllmProcess(
        work / "artifact", canary_name, out / "logs", env=pinned(bind[1]), cpus=cpus[1]
    )
    prom = PrometheusProcess(
        out / "prometheus",
        [
            ScrapeTarget(stable.port, stable_name, "stable"),
            ScrapeTarget(canary.port, canary_name, "canary"),
        ],
    )
    spec = spec.model_copy(
        update={"gates": spec.gates.model_copy(update={"prometheus_url": prom.url})}
    )
    router = LocalWeights()
    events: list[str] = []

    def on_event(e: CanaryEvent) -> None:
        events.append(f"{e.type} {e.reason}: {e.message}")
        _say(f"{e.type:<7} {e.reason}: {e.message}")

    try:
        t0 = time.monotonic()
        stable.start()
        canary.start()
        prom.start()
        _say(f"Prometheus on {prom.url}; waiting for vLLM {stable_name} and {canary_name}")
        stable.wait_ready()
        canary.wait_ready()
        timings["serve_ready_seconds"] = round(time.monotonic() - t0, 1)
        _say(f"vLLM ready after {timings['serve_ready_seconds']} s")
        while True:
            attempt = status.attempt
            tokens = args.inject_regression_tokens if attempt == 1 else 0
            if tokens:
                _say(f"fault injection: attempt {attempt}'s canary gets {tokens}-token requests")
            loop = CanaryLoop(
                spec=spec,
                name=name,
                provider=PrometheusProvider(prom.url),
                router=router,
                canary_ready=partial(http_ok, f"{canary.url}/health"),
                on_event=on_event,
                on_remove=lambda: _say("canary removed (traffic back to stable)"),
                on_promote=lambda a: _say(f"promotion: {a.strategy} to {a.artifact_uri}"),
            )
            gen = LoadGenerator(
                Backend(stable.url, stable_name, 16),
                Backend(canary.url, canary_name, tokens or 16),
                router,
                threads=args.load_threads,
            )
            t0 = time.monotonic()
            with gen:
                status = loop.run(status, timeout=args.timeout)
            timings[f"canary_attempt_{attempt}_seconds"] = round(time.monotonic() - t0, 1)
            _say(f"load: {gen.stats.per_model} requests, {gen.stats.failed} failed")
            if status.phase is not Phase.PLANNING:
                break
            nxt = out / f"attempt-{status.attempt}"
            t0 = time.monotonic()
            if not _replan(spec, work, nxt, status.attempt, args.eval_set):
                status = status.model_copy(update={"phase": Phase.ROLLED_BACK})
                break
            timings[f"replan_attempt_{status.attempt}_seconds"] = round(time.monotonic() - t0, 1)
            work = nxt
            status = _evaluated(spec, work, status, status.attempt)
            canary.stop()
            canary = VllmProcess(
                work / "artifact",
                canary_name,
                out / "logs",
                port=canary.port,
                env=pinned(bind[1]),
                cpus=cpus[1],
            )
            canary.start()
            canary.wait_ready()
    finally:
        prom.stop()
        canary.stop()
        stable.stop()

    timings["total_seconds"] = round(time.monotonic() - t_start, 1)
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
    return 0 if status.phase is Phase.PROMOTED else 3


if __name__ == "__main__":
    sys.exit(main())
