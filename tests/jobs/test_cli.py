"""The stage CLI end to end on a tiny model: documents, termination message, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jobhelpers import write_jsonl

from samp_core.progress import last_record
from samp_core.results import Stage, parse_result
from samp_core.stage_contract import stage_hashes
from samp_jobs.cli import _parser, main
from samp_jobs.invocation import from_args


def _eval_set(tmp_path: Path) -> Path:
    recs = [
        {
            "messages": [{"role": "user", "content": "give json"}],
            "expected": '{"a": 1}',
            "kind": "json",
        },
        {"messages": [{"role": "user", "content": "say fox"}], "expected": "fox"},
        {"text": "the lazy dog sleeps while the quick brown fox jumps over it again"},
    ]
    return write_jsonl(tmp_path / "eval.jsonl", recs)


def test_quantize_runs_every_stage(
    tiny_llama: Path, chat_prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    work, term = tmp_path / "work", tmp_path / "termination-log"
    # The whole pipeline's flags: every stage's inputs hash chains all of them.
    flags = [
        "--workdir", str(work), "--model", str(tiny_llama), "--prompts", str(chat_prompts),
        "--format", "chat", "--max-seq-len", "64", "--profile", "cpu",
        "--formats", "int4-w4a8,int8-w8a8,bf16", "--group-size", "64",
        "--fraction-of-16bit", "0.65", "--eval-set", str(_eval_set(tmp_path)),
        "--max-new-tokens", "4", "--no-progress",
    ]
    rc = main(["quantize", *flags, "--termination-log", str(term)])
    assert rc == 0, capsys.readouterr().err
    docs = {
        n: parse_result(json.loads((work / f"{n}.json").read_text()))
        for n in ("calibration", "sensitivity", "plan", "export", "evaluation")
    }
    hashes = [d.inputs_hash for d in docs.values()]
    assert all(h.startswith("sha256:") for h in hashes) and len(set(hashes)) == 5
    plan = docs["plan"]
    assert plan.total_bytes <= plan.budget_bytes and plan.profile == "cpu"  # type: ignore[union-attr]
    ev = docs["evaluation"]
    assert ev.num_prompts >= 3 and 0 <= ev.top1_agreement <= 1  # type: ignore[union-attr]
    assert ev.task_exact_match_base is not None  # type: ignore[union-attr]
    assert (work / "artifact" / "samp_plan.json").is_file()
    captured = capsys.readouterr()
    report = captured.out  # the human report on stdout: plan table + accuracy
    assert "| group | kind | format | bytes | score |" in report
    assert "# Accuracy against the 16-bit model" in report
    assert f"calibration: {docs['calibration'].num_samples} prompts" in report  # type: ignore[union-attr]
    assert f"{ev.perplexity_quant:.3f}" in report  # type: ignore[union-attr]
    per_format = plan.groups_per_format()  # type: ignore[union-attr]
    assert sum(per_format.values()) == len(plan.assignments)  # type: ignore[union-attr]
    assert "groups per format: " + ", ".join(
        f"{fmt} {n}" for fmt, n in sorted(per_format.items())) in report
    summary = json.loads(term.read_text())  # the last stage's summary
    assert summary["kind"] == "EvaluationResult" and len(term.read_bytes()) < 4096
    assert summary["inputsHash"] == docs["evaluation"].inputs_hash
    logs = [
        json.loads(line) for line in captured.err.splitlines() if line.startswith("{")
    ]
    assert [r["stage"] for r in logs if r["event"] == "result"] == [
        "calibrate",
        "sensitivity",
        "plan",
        "export",
        "evaluate",
    ]
    # The progress records the operator reads from the pod's log (samp_core.progress): the
    # last of each pass says it is complete, and --no-progress silences only the bars.
    for stage in ("sensitivity", "evaluate"):
        last = last_record(captured.err, stage)
        assert last is not None and last.done == last.total > 0, stage
    assert sum(r["event"] == "progress" for r in logs) < 40  # bounded, not one per unit
    # GPTQ is the default rounding: sensitivity stored the Hessians, export rounded from them
    hessians = work / "hessians.safetensors"
    assert hessians.is_file()
    if plan.gptq_modules():  # type: ignore[union-attr]
        gptq = [r for r in logs if r["event"] == "export.gptq"]
        assert [r.get("hessians") for r in gptq] == [str(hessians)]

    # A stage rerun on the same inputs reproduces its inputs hash and its numbers.
    first = json.loads((work / "sensitivity.json").read_text())
    assert main(["sensitivity", *flags]) == 0
    again = json.loads((work / "sensitivity.json").read_text())
    assert again["inputsHash"] == first["inputsHash"] and again["scores"] == first["scores"]
    # The hash is the stage contract's chain: the one the operator computes too.
    inv = from_args(_parser("quantize").parse_args(flags), Stage.CALIBRATE)
    assert [d.inputs_hash for d in docs.values()] == [
        stage_hashes(inv.inputs)[s] for s in Stage]
    # A changed scoring input is a new sensitivity hash but the same calibration hash.
    assert main(["sensitivity", *flags, "--group-size", "32"]) == 0
    third = json.loads((work / "sensitivity.json").read_text())
    assert third["inputsHash"] != first["inputsHash"]


def test_bad_prompts_exit_2_naming_the_line(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{broken"] * 3)
    rc = main(
        [
            "calibrate",
            "--workdir",
            str(tmp_path / "w"),
            "--model",
            str(tiny_llama),
            "--prompts",
            str(bad),
            "--no-progress",
        ]
    )
    assert rc == 2
    assert "bad.jsonl:1: not valid JSON" in capsys.readouterr().err


def test_infeasible_budget_names_the_smallest_feasible(
    tiny_llama: Path, text_prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    work = tmp_path / "w"
    common = ["--workdir", str(work), "--no-progress"]
    assert (
        main(
            [
                "calibrate",
                *common,
                "--model",
                str(tiny_llama),
                "--prompts",
                str(text_prompts),
                "--max-seq-len",
                "32",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sensitivity",
                *common,
                "--model",
                str(tiny_llama),
                "--method",
                "activation",
                "--profile",
                "sm90",
                "--formats",
                "int4-w4a16,bf16",
                "--group-size",
                "64",
            ]
        )
        == 0
    )
    rc = main(
        [
            "plan",
            *common,
            "--profile",
            "sm90",
            "--formats",
            "int4-w4a16,bf16",
            "--group-size",
            "64",
            "--fraction-of-16bit",
            "0.05",
        ]
    )
    assert rc == 2
    assert "below the smallest feasible plan" in capsys.readouterr().err


def test_manifest_supplies_policy_and_target(
    tiny_llama: Path, text_prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    mnt = tmp_path / "mnt"  # what the operator mounts: pvc://<claim>/<path> -> root/claim/path
    (mnt / "models").mkdir(parents=True)
    (mnt / "models" / "tiny").symlink_to(tiny_llama)
    (mnt / "data").mkdir()
    (mnt / "data" / "text.jsonl").write_text(text_prompts.read_text())
    monkeypatch.setenv("SAMP_MODEL_ROOT", str(mnt))
    monkeypatch.setenv("SAMP_DATA_ROOT", str(mnt))
    manifest = {
        "apiVersion": "samp.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "tiny"},
        "spec": {
            "model": {"source": "pvc://models/tiny", "dtype": "float32"},
            "calibration": {
                "source": "pvc://data/text.jsonl",
                "format": "text",
                "samples": 32,
                "maxSequenceLength": 32,
            },
            "quantization": {
                "budget": {"fractionOf16Bit": 0.8},
                "allowedFormats": ["int4-w4a16", "fp8-w8a8", "bf16"],
                "sensitivity": {"method": "activation", "maxTokens": 1024},
                "overrides": [{"match": r"layers\.0\.", "keepUnquantized": True}],
                "groupSize": 64,
            },
            "hardware": {"target": "h100"},
            "serving": {"stable": {"deployment": "d", "service": "s"}},
            "rollout": {"steps": [{"weight": 100, "duration": "1m"}]},
            "artifacts": {"uri": "pvc://data/out"},
        },
    }
    path = tmp_path / "qm.yaml"
    path.write_text(yaml.safe_dump(manifest))
    work = tmp_path / "w"
    for stage in ("calibrate", "sensitivity", "plan"):
        rc = main([stage, "--workdir", str(work), "--manifest", str(path), "--no-progress"])
        assert rc == 0, stage
    plan = json.loads((work / "plan.json").read_text())
    assert plan["profile"] == "sm90" and plan["groupSize"] == 64
    layer0 = [a for a in plan["assignments"] if a["group"].startswith("model.layers.0.")]
    assert layer0 and all(a["format"] == "bf16" for a in layer0)
    assert {a["format"] for a in plan["assignments"]} - {"bf16"}  # something got quantized


@pytest.mark.parametrize("flags", [
    ["--effective-bits", "5"], ["--method", "kl"], ["--max-tokens", "2048"],
])
def test_manifest_refuses_flags_it_would_ignore(
    tmp_path: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--manifest supplies the policy: a flag for the same setting is refused, naming the
    spec field, before anything runs (exit 2, bad input)."""
    example = Path(__file__).resolve().parents[2] / "examples" / "tiny-cpu.yaml"
    rc = main(["plan", "--workdir", str(tmp_path / "w"), "--manifest", str(example), *flags])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{flags[0]} (spec." in err and "would be ignored" in err
    assert not (tmp_path / "w").exists()


def test_manifest_builds_the_operators_invocation(tmp_path: Path) -> None:
    """`samp <stage> --manifest` and the operator's Job build the same StageInvocation
    inputs and hash for the same QuantizedModel (no torch run needed)."""
    from samp_core.api import parse
    from samp_core.stage_jobs import stage_hashes_for, stage_invocation

    manifest = {
        "apiVersion": "samp.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "tiny", "namespace": "ml"},
        "spec": {
            "model": {"source": "pvc://models/tiny", "dtype": "float32"},
            "calibration": {"source": "pvc://data/text.jsonl", "samples": 32},
            "quantization": {"budget": {"maxWeightBytes": "2Mi"},
                             "overrides": [{"match": "lm_head", "keepUnquantized": True}]},
            "hardware": {"target": "h100"},
            "gates": {"accuracy": {"evalSet": "configmap://evals/eval.jsonl"},
                      "latency": {"p99MaxSeconds": 2.0}},
            "artifacts": {"uri": "pvc://data/out"},
        },
    }
    path = tmp_path / "qm.yaml"
    path.write_text(yaml.safe_dump(manifest))
    ns = _parser("export").parse_args(["--workdir", str(tmp_path), "--manifest", str(path)])
    local = from_args(ns, Stage.EXPORT)
    resource = parse(manifest)
    ours = stage_invocation(resource, Stage.EXPORT, stage_hashes_for(resource))
    assert local.inputs == ours.inputs and local.inputs_hash == ours.inputs_hash
    assert local.inputs.quantization.budget is not None
    assert local.inputs.quantization.budget.max_weight_bytes == 2 * 2**20
    assert ours.paths.eval_set == "/mnt/configmap/evals/eval.jsonl"
    assert ours.paths.plan is not None and ours.paths.plan.startswith(ours.paths.workdir)


def test_invocation_document_is_checked(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A document whose hash does not match its inputs, or of another stage, is refused
    with exit 2 (bad input: the Job fails at once instead of retrying)."""
    from samp_core.formats import Format
    from samp_core.stage_contract import (
        ModelInputs,
        QuantizationInputs,
        StageInputs,
        StageInvocation,
        StagePaths,
    )

    inv = StageInvocation(
        stage=Stage.PLAN,
        inputs=StageInputs(model=ModelInputs(source="pvc://m/x"), profile="cpu",
                           quantization=QuantizationInputs(formats=[Format.BF16])),
        paths=StagePaths(workdir=str(tmp_path / "w"), artifact=str(tmp_path / "a")),
    )
    doc = tmp_path / "invocation.json"
    doc.write_text(inv.to_json())
    assert main(["export", "--invocation", str(doc)]) == 2
    assert "is a plan invocation, not export" in capsys.readouterr().err
    tampered = json.loads(inv.to_json())
    tampered["inputs"]["profile"] = "sm90"
    doc.write_text(json.dumps(tampered))
    assert main(["plan", "--invocation", str(doc)]) == 2
    assert "does not match the plan inputs" in capsys.readouterr().err
