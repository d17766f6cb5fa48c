"""Servers started by the local flow die with the process that started them, even when that
process is killed with SIGKILL (a test run cut short must not leave Prometheus or vLLM up)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.prometheus

STARTER = """
import sys, tempfile, time
from pathlib import Path
from samp_local.processes import PrometheusProcess
p = PrometheusProcess(Path(tempfile.mkdtemp()), [])
p.start()
print(p.proc.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_prometheus_dies_when_its_starter_is_killed() -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: run .ci/system-packages")
    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE,
                               text=True)
    assert starter.stdout is not None
    child = int(starter.stdout.readline())
    assert _alive(child)
    starter.send_signal(signal.SIGKILL)
    starter.wait(timeout=10)
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child), f"prometheus {child} outlived its killed parent"
