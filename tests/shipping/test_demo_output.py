"""What `make demo` prints (samp_local.console, samp_local.stages, the demo's rollouts):
text for a person, JSON lines for a machine, one progress display per long step, no
progress bars or library warnings from the job stages, humanised sizes. The stage test
runs the real `samp calibrate` on the tiny example."""

from __future__ import annotations

import io
import json
import re
from argparse import Namespace
from pathlib import Path

import yaml

from samp_core.api import API_VERSION, KIND
from samp_core.validation import validate_manifest
from samp_local.console import Console
from samp_local.demo import _parser, _rollouts
from samp_local.stages import describe, run_stages

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    console = Console("auto", stream)
    console.say("demo", "hello", figure=1.5)
    with console.progress("serve", "starting vLLM") as bar:
        bar.update("loading tiny-llama")
        bar.result = "ready"
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["demo", "serve.start", "serve.progress",
                                            "serve.end"]
    assert records[0]["figure"] == 1.5 and records[-1]["ok"] is True


def test_text_mode_has_one_start_and_one_end_line_per_step() -> None:
    stream = io.StringIO()
    console = Console("text", stream)
    with console.progress("stages", "quantize") as bar:
        bar.update("sensitivity ...")  # no line of its own off a terminal
        console.say("stage", "  plan: 7.16 effective bits")
        bar.result = "done"
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("quantize ...") and "plan: 7.16" in lines[1]
    assert re.search(r"✔ quantize \(\d+\.\d s\): done$", lines[2])
    assert not any(line.lstrip().startswith("{") for line in lines)


def test_terminal_redraws_one_line_and_keeps_messages_above_it() -> None:
    stream = Terminal()
    console = Console("auto", stream)
    with console.progress("serve", "starting vLLM") as bar:
        bar.update("loading tiny-llama")
        import time

        time.sleep(0.5)
        console.say("note", "Prometheus up")
    text = stream.getvalue()
    assert "\r\x1b[2K" in text and "loading tiny-llama" in text
    final = text.split("\r\x1b[2K")[-1]
    assert "✔ starting vLLM" in final and final.endswith("\n")
    assert "Prometheus up\n" in text


def test_stage_lines_humanise_sizes() -> None:
    line = describe("plan", {"effectiveBits": 7.157, "totalBytes": 2579840,
                             "fractionOf16Bit": 0.4473, "rounding": "gptq",
                             "byFormat": {"int4-w4a8": 13, "int8-w8a8": 3, "bf16": 1}})
    assert line == ("plan: 7.16 effective bits, 2.5Mi = 44.7% of the 16-bit weights "
                    "(13 int4-w4a8, 3 int8-w8a8, 1 bf16; gptq rounding)")
    assert "2579840" not in line


def test_a_real_stage_reads_as_text_and_logs_json(tmp_path: Path) -> None:
    stream = io.StringIO()
    log = tmp_path / "logs" / "calibrate.log"
    run = run_stages(Console("text", stream), "calibrate",
                     ["calibrate", "--manifest", str(ROOT / "examples" / "tiny-cpu.yaml"),
                      "--model", str(TINY / "model"), "--prompts",
                      str(TINY / "prompts.jsonl"), "--workdir", str(tmp_path / "w")], log)
    assert run.returncode == 0, run.tail
    shown = stream.getvalue()
    assert re.search(r"calibrate: \d+ prompts, \d+ tokens", shown), shown
    assert '"event"' not in shown and "it/s" not in shown
    logged = log.read_text()
    assert '"event": "result"' in logged and "it/s" not in logged


def test_the_promote_rollout_is_a_valid_resource_with_an_absolute_ceiling(
    tmp_path: Path,
) -> None:
    args = _parser().parse_args(["--manifest", str(ROOT / "examples" / "tiny-cpu.yaml"),
                                 "--out", str(tmp_path), "--p99-ceiling", "2.5"])
    promote, replan = _rollouts(args, tmp_path)
    latency = promote.spec.gates.latency
    assert latency.p99_max_seconds == 2.5 and latency.p99_max_ratio_to_stable is None
    assert not promote.spec.rollout.replan.enabled
    assert replan.spec.gates.latency.p99_max_ratio_to_stable == 1.5
    assert replan.spec.rollout.replan.enabled and replan.spec.rollout.replan.max_attempts == 2
    for r in (promote, replan):
        doc = yaml.safe_load(r.manifest.read_text())
        assert doc["apiVersion"] == API_VERSION and doc["kind"] == KIND
        resource, problems = validate_manifest(doc)
        assert resource is not None, problems


def test_legacy_flags_still_shape_the_replan_rollout(tmp_path: Path) -> None:
    args = Namespace(**{**vars(_parser().parse_args([])), "manifest":
                        ROOT / "examples" / "tiny-cpu.yaml", "scenario": "replan",
                        "replan_attempts": 3, "inject_regression_tokens": 64})
    (only,) = _rollouts(args, tmp_path)
    assert only.spec.rollout.replan.max_attempts == 3 and only.inject_tokens == 64
