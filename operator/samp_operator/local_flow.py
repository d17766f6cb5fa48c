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

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

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
    decide,
)
from samp_core.gates import Measurement
from samp_core.spec import QuantizedModelSpec
from samp_core.status import Phase, QuantizedModelStatus
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
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [
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
    url: str
    model: str
    max_tokens: int = 16


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    per_model: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)


class LoadGenerator:
    """Bounded load on 127.0.0.1: ``threads`` workers, at most ``max_requests`` in all."""

    def __init__(
        self,
        stable: Backend,
        canary: Backend,
        router: LocalWeights,
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
                "temperature": 0.0,
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
        for e in d.events:
            self.on_event(e)
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
