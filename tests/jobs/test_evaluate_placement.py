"""The evaluate stage takes each model's inputs where its embeddings live.

On GPUs both models are spread with accelerate's device map (a 70B pair does not
fit one GPU); the figures must not depend on where the layers landed. The CUDA
test forces a split of the base model across the GPU and host memory and
compares with the model whole on the GPU (compressed-tensors cannot decompress
host-offloaded layers, so the quantized model stays on GPUs, and a budget that
cannot hold it is refused up front). On the CPU, the same code runs with
everything in one place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_export import recipe

from samp_core.formats import Format
from samp_jobs.evaluate import (
    TaskItem,
    evaluate,
    input_device,
    load_quantized,
    quantized_gpu_budget,
)
from samp_jobs.export import export
from samp_jobs.modeling import ModelLoadError, load_model

TEXTS = ["the quick brown fox jumps over the lazy dog " * 3, "import os\nimport sys\n" * 4]
TASKS = [TaskItem(prompt="def add(a, b):", expected="return", kind="exact")]


@pytest.fixture(scope="module")
def artifact(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "sm90"
    export(tiny_llama, recipe(tiny_llama, "sm90", Format.INT4_W4A16, Format.FP8_W8A8), out)
    return out


def test_cpu_models_take_inputs_on_the_cpu(tiny_llama: Path, artifact: Path) -> None:
    base, tok = load_model(tiny_llama)
    base.float()
    quant = load_quantized(artifact, dtype=torch.float32)
    assert input_device(base).type == input_device(quant).type == "cpu"
    res = evaluate(base, quant, tok, texts=TEXTS, tasks=TASKS, max_new_tokens=4, progress=False)
    assert res.num_tokens > 0 and res.perplexity_quant > 0 and 0 <= res.top1_agreement <= 1


def test_quantized_budget_scales_to_the_stored_size_and_refuses_what_cannot_fit() -> None:
    gib = 2**30
    free: dict[int | str, int] = {0: 60 * gib, 1: 60 * gib, "cpu": 500 * gib}
    b = quantized_gpu_budget(free, dense_bytes=100 * gib, stored_bytes=35 * gib)
    assert b == {0: 21 * gib, 1: 21 * gib}  # no host spill; 35 % of each GPU's room
    with pytest.raises(ModelLoadError, match=r"raise spec\.hardware\.gpusPerJob"):
        quantized_gpu_budget(free, dense_bytes=141 * gib, stored_bytes=45 * gib)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_base_model_split_over_gpu_and_host_scores_like_a_whole_one(
    tiny_llama: Path, artifact: Path
) -> None:
    """A 70B base spills to host memory when the GPUs are full; that must not change a figure."""
    from accelerate import infer_auto_device_map
    from transformers import AutoModelForCausalLM

    whole, tok = load_model(tiny_llama)
    whole.float().to("cuda")
    quant = load_quantized(artifact, dtype=torch.float32, max_memory={0: 2**34})
    # a GPU budget that holds part of the model, found with accelerate's own planner
    # (it also reserves room for the largest layer, so a plain fraction can miss)
    size = sum(p.numel() * p.element_size() for p in whole.parameters())
    keep = whole._no_split_modules  # as from_pretrained plans it
    budget = next(
        b
        for b in (int(size * f / 10) for f in range(3, 20))
        if {0, "cpu"} <= set(infer_auto_device_map(whole, {0: b, "cpu": 2**34}, keep).values())
    )
    split = AutoModelForCausalLM.from_pretrained(
        tiny_llama, dtype=torch.float32, device_map="auto", max_memory={0: budget, "cpu": 2**34}
    )
    # host-offloaded weights show as "meta": accelerate brings them in layer by layer
    places = {p.device.type for p in split.parameters()}
    assert places == {"cuda", "meta"}, places  # the split really happened
    a = evaluate(whole, quant, tok, texts=TEXTS, tasks=TASKS, max_new_tokens=4, progress=False)
    b = evaluate(split, quant, tok, texts=TEXTS, tasks=TASKS, max_new_tokens=4, progress=False)
    assert b.num_tokens == a.num_tokens
    assert b.perplexity_base == pytest.approx(a.perplexity_base, rel=1e-4)
    assert b.mean_kl == pytest.approx(a.mean_kl, rel=1e-3, abs=1e-7)
    assert b.task_exact_match_base == a.task_exact_match_base


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_stage_on_the_gpu_places_both_models_there(
    tiny_llama: Path, text_prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from samp_jobs.cli import main

    work = tmp_path / "work"
    rc = main(["quantize", "--workdir", str(work), "--model", str(tiny_llama),
               "--prompts", str(text_prompts), "--max-seq-len", "64", "--profile", "sm90",
               "--formats", "int4-w4a16,fp8-w8a8,bf16", "--group-size", "64",
               "--fraction-of-16bit", "0.6", "--device", "cuda", "--no-progress"])  # fmt: skip
    assert rc == 0
    logs = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    placed = next(r for r in logs if r["event"] == "evaluate.placement")
    assert placed["base"] == ["cuda:0"] and placed["quant"] == ["cuda:0"]
    ev = json.loads((work / "evaluation.json").read_text())
    assert ev["numTokens"] > 0 and ev["top1Agreement"] > 0.5
