"""A real vLLM CPU server on a loopback port for the jobs' serving tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SERVED_NAME = "samp-tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return bytes(r.read())


@contextmanager
def serve_vllm(model_dir: Path, log_path: Path, ready_seconds: float = 300) -> Iterator[int]:
    """Serve ``model_dir`` as ``samp-tiny``; yields the port once /v1/models answers, and
    stops the whole process group afterwards. The test fails with the log's tail if vLLM
    exits or is not ready in time."""
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
         "--model", str(model_dir), "--served-model-name", SERVED_NAME,
         "--host", "127.0.0.1", "--port", str(port),
         "--enforce-eager", "--max-model-len", "256"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + ready_seconds
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                http_get(f"http://127.0.0.1:{port}/v1/models")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vLLM not ready in {ready_seconds:g} s")
                time.sleep(2)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
