"""The demo's servers: vLLM for the stable and the canary, and Prometheus scraping both."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from samp_core.canary import canary_model_name, stable_model_name
from samp_core.spec import QuantizedModelSpec
from samp_local.console import Console, Progress
from samp_local.processes import PrometheusProcess, ScrapeTarget, VllmProcess, http_ok, pinned


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

    def start(self, console: Console) -> float:
        """Start all three; one progress display until both vLLM servers answer."""
        with console.progress("serve", "starting vLLM (stable: 16-bit model, canary: "
                                       "quantized checkpoint) and Prometheus") as bar:
            self.stable.start()
            self.canary.start()
            self.prometheus.start()
            bar.update(f"Prometheus on {self.prometheus.url}; vLLM loading both models")
            _wait_ready(bar, [self.stable, self.canary])
            bar.result = (f"stable {self.stable.url}, canary {self.canary.url}, "
                          f"Prometheus {self.prometheus.url}")
            return bar.seconds

    def restart_canary(self, console: Console, artifact: Path) -> None:
        """The next attempt's checkpoint, on the same port (Prometheus scrapes it there)."""
        with console.progress("serve", "restarting the canary vLLM on the new checkpoint"
                              ) as bar:
            self.canary.stop()
            c = self.canary
            self.canary = VllmProcess(artifact, c.served_model_name, c.logdir, port=c.port,
                                      env=pinned(self.canary_core[0]),
                                      cpus=self.canary_core[1])
            self.canary.start()
            _wait_ready(bar, [self.canary])

    def stop(self) -> None:
        self.prometheus.stop()
        self.canary.stop()
        self.stable.stop()


def _wait_ready(bar: Progress, servers: list[VllmProcess], timeout: float = 300.0) -> None:
    """Poll /health of each server, saying which ones are still loading."""
    deadline = time.monotonic() + timeout
    waiting = list(servers)
    while waiting:
        for server in list(waiting):
            if server.proc is not None and server.proc.poll() is not None:
                server.wait_ready(timeout=1)  # raises with the log's tail
            if http_ok(f"{server.url}/health"):
                waiting.remove(server)
        if waiting:
            bar.update("loading " + ", ".join(s.served_model_name for s in waiting))
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM not ready after {timeout:.0f} s: "
                                   + ", ".join(str(s.log_path) for s in waiting))
            time.sleep(1.0)
