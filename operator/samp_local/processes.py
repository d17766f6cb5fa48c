"""Real local processes for the demo and the rollout tests: Prometheus and vLLM CPU servers.

Nothing here is a stand-in: these start the real binaries on 127.0.0.1 and talk to them
over HTTP.

* :class:`PrometheusProcess` — Debian's ``prometheus`` with a generated config
  (``scrape_interval`` 1s, one static target per vLLM server with the labels
  ``served_model`` and ``role``), its own ``--storage.tsdb.path``, on a free loopback
  port; ``stop()``/``start()`` keep the TSDB so "Prometheus down, then back" is real.
* :class:`VllmProcess` — ``python -m vllm.entrypoints.openai.api_server`` with
  ``VLLM_CPU_KVCACHE_SPACE=1 --enforce-eager`` (about 40 s to ready, about 3 GB RSS).

Both die with the process that started them (``PR_SET_PDEATHSIG``), even when it is
killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PrometheusProcess",
    "ScrapeTarget",
    "VllmProcess",
    "free_port",
    "http_ok",
    "pinned",
]


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
    labels: dict[str, str] = field(default_factory=dict)  # e.g. namespace and pod


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
                            "labels": {
                                "served_model": t.served_model,
                                "role": t.role,
                                **t.labels,
                            },
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

    def retarget(self, targets: list[ScrapeTarget]) -> None:
        """Scrape ``targets`` from now on (config rewritten, then /-/reload)."""
        self.targets = targets
        (self.workdir / "prometheus.yml").write_text(self.config())
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

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

    def restart(self, timeout: float = 300.0) -> float:
        """A fresh server on the same port (a new artifact is a new pod in production):
        nothing a previous rollout queued or cached survives. Returns seconds to ready."""
        self.stop()
        self.start()
        return self.wait_ready(timeout)


def pinned(core: str) -> dict[str, str]:
    """Environment of a vLLM-CPU server that owns one core: its engine bound there and
    OpenMP waiting passively, so an idle engine does not spin."""
    return {"VLLM_CPU_OMP_THREADS_BIND": core, "OMP_WAIT_POLICY": "PASSIVE"}
