"""Export: compressed-tensors configs per profile, reload parity, bitsandbytes NF4,
module-by-module (device) path, phase timings, parallel hashing."""

from __future__ import annotations

import gc
import hashlib
import json
import random
import threading
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from torch import nn

from samp_core.formats import ExportFormat, Format
from samp_core.hardware import get_profile
from samp_core.planner import Budget, PlanRequest, plan
from samp_core.results import SUMMARY_MAX_BYTES, ExportResult, PlanResult
from samp_jobs import export_files
from samp_jobs.evaluate import load_quantized
from samp_jobs.export import (
    ExportError,
    QuietGC,
    bnb_skip_modules,
    build_quantization_config,
    export,
    export_compressed_tensors,
    exported_files,
    move_own_tensors,
    sha256_file,
)
from samp_jobs.modeling import decoder_parts, discover_groups, load_model
from samp_jobs.sensitivity import ScoringOptions, make_quantizer, perturbed


def recipe(model_dir: Path, profile: str, mlp: Format, attn: Format) -> PlanResult:
    """The fixed recipe through the planner: MLP → mlp, attention → attn, head 16-bit."""
    model, _ = load_model(model_dir)
    groups = discover_groups(decoder_parts(model))
    scores = {g.name: {f: 1.0 for f in Format if not f.is_unquantized} for g in groups}
    return plan(
        PlanRequest(
            groups=groups,
            scores=scores,
            profile=get_profile(profile),
            budget=Budget(fraction_of_16bit=1.0),
            allowed_formats=[mlp, attn, Format.BF16],
            overrides=[(r"\.mlp\.", mlp), (r"\.self_attn\.", attn)],
            allow_non_native=True,
            group_size=64,
        )
    )


def nf4_mlp_plan(model_dir: Path) -> PlanResult:
    """bitsandbytes NF4 for the MLPs, attention 16-bit (sm80, the bnb export family)."""
    model, _ = load_model(model_dir)
    groups = discover_groups(decoder_parts(model))
    return plan(
        PlanRequest(
            groups=groups,
            scores={g.name: {Format.NF4: 1.0} for g in groups},
            profile=get_profile("sm80"),
            budget=Budget(fraction_of_16bit=1.0),
            allowed_formats=[Format.NF4, Format.BF16],
            overrides=[(r"\.mlp\.", Format.NF4), (r"\.self_attn\.", Format.BF16)],
            allow_non_native=True,
            export_format=ExportFormat.BITSANDBYTES_NF4,
        )
    )


def qconfig(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "config.json").read_text())["quantization_config"]


def test_cpu_profile_w4a8_mlp_w8a8_attention(tiny_llama: Path, tmp_path: Path):
    p = recipe(tiny_llama, "cpu", Format.INT4_W4A8, Format.INT8_W8A8)
    res = export(tiny_llama, p, tmp_path / "cpu")
    cfg = qconfig(tmp_path / "cpu")
    assert cfg["quant_method"] == "compressed-tensors"
    assert cfg["ignore"] == ["lm_head"]
    by_bits = {g["weights"]["num_bits"]: g for g in cfg["config_groups"].values()}
    w4, w8 = by_bits[4], by_bits[8]
    assert w4["weights"]["group_size"] == 64 and w4["weights"]["strategy"] == "group"
    assert w4["input_activations"]["type"] == "int" and w4["input_activations"]["dynamic"]
    assert all(".mlp." in t for t in w4["targets"]) and len(w4["targets"]) == 6
    assert all(".self_attn." in t for t in w8["targets"]) and len(w8["targets"]) == 8
    assert res.bytes_on_disk > 0 and {g.format for g in res.config_groups} == {
        Format.INT4_W4A8,
        Format.INT8_W8A8,
    }
    assert (tmp_path / "cpu" / "samp_plan.md").read_text().count("| model.layers.") == 8


def test_gpu_profile_is_mixed_precision_and_reloads_like_the_fake_quant_model(
    tiny_llama: Path, tmp_path: Path
):
    p = recipe(tiny_llama, "sm90", Format.INT4_W4A16, Format.FP8_W8A8)
    out = tmp_path / "sm90"
    export(tiny_llama, p, out)
    cfg = qconfig(out)
    assert cfg["format"] == "mixed-precision"
    assert {g["format"] for g in cfg["config_groups"].values()} == {
        "pack-quantized",
        "float-quantized",
    }
    for g in cfg["config_groups"].values():  # fused shards never split across schemes
        names = set(g["targets"])
        for t in g["targets"]:
            for a, b in (("q_proj", "k_proj"), ("q_proj", "v_proj"), ("gate_proj", "up_proj")):
                if t.endswith(a):
                    assert t.replace(a, b) in names

    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    loaded = load_quantized(out, dtype=torch.float32)
    fake, _ = load_model(tiny_llama)
    fake.float()
    opts = ScoringOptions(formats=[], profile="sm90", group_size=64)
    mods = dict(fake.named_modules())
    lm = dict(loaded.named_modules())
    with torch.no_grad(), ExitStack() as stack:
        base = fake(input_ids=ids).logits
        got = loaded(input_ids=ids).logits  # first forward decompresses the checkpoint
        for a in p.assignments:
            if not a.format.is_unquantized:
                qz = make_quantizer(a.format, opts)
                stack.enter_context(perturbed([mods[m] for m in a.modules], qz))
        want = fake(input_ids=ids).logits
        # Weights: the checkpoint decompresses to the fake-quant weights within one bf16
        # ulp (the fake quant rounds q*scale to bf16, the fp32 load keeps the product).
        for a in p.assignments:
            for m in a.modules:
                assert torch.allclose(lm[m].weight, mods[m].weight, rtol=2**-7, atol=1e-6), m
    # Logits: fp8 activation rounding amplifies those ulps a little, nothing more.
    effect = (want - base).abs().mean()
    assert effect > 1e-2  # quantization visibly changes the logits ...
    assert (got - want).abs().mean() < 0.2 * effect  # ... and the checkpoint reproduces it
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean()
    assert agree > 0.95


def test_nvfp4_uses_its_own_compressor(tiny_llama: Path, tmp_path: Path):
    p = recipe(tiny_llama, "sm100", Format.NVFP4, Format.FP8_W8A8)
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    export(tiny_llama, p, tmp_path / "b200", input_ids=ids)
    formats = {g["format"] for g in qconfig(tmp_path / "b200")["config_groups"].values()}
    assert formats == {"nvfp4-pack-quantized", "float-quantized"}
    with pytest.raises(ExportError, match="calibration data"):
        export(tiny_llama, p, tmp_path / "b200-nocal")


def test_bitsandbytes_nf4_mlp_only(tiny_llama: Path, tmp_path: Path):
    p = nf4_mlp_plan(tiny_llama)
    assert bnb_skip_modules(p) == ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"]
    res = export(tiny_llama, p, tmp_path / "nf4")
    cfg = json.loads((tmp_path / "nf4" / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "bitsandbytes" and cfg["bnb_4bit_quant_type"] == "nf4"
    assert res.export_format is ExportFormat.BITSANDBYTES_NF4
    loaded = load_quantized(tmp_path / "nf4")
    ids = torch.randint(3, 300, (1, 8))
    with torch.no_grad():
        assert torch.isfinite(loaded(input_ids=ids).logits).all()
    with pytest.raises(ExportError, match="NF4 groups cannot"):
        build_quantization_config(p, ["model.layers.0.mlp.up_proj"])


# ------------------------------------------------------ device path, timings, hashing

RECIPES = [
    ("cpu", Format.INT4_W4A8, Format.INT8_W8A8),
    ("sm90", Format.INT4_W4A16, Format.FP8_W8A8),
    ("sm100", Format.NVFP4, Format.FP8_W8A8),
]
CAL_IDS = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))


def digests(res: ExportResult) -> dict[str, str]:
    return {f.path: f.sha256 for f in res.files}


@pytest.mark.parametrize(("profile", "mlp", "attn"), RECIPES, ids=[r[0] for r in RECIPES])
def test_module_by_module_path_writes_the_same_bytes(
    tiny_llama: Path, tmp_path: Path, profile: str, mlp: Format, attn: Format
):
    """The path a GPU takes (qparams + compress_module per Linear), run on the CPU, writes
    exactly the checkpoint of the whole-model compress_model path."""
    p = recipe(tiny_llama, profile, mlp, attn)
    whole = export_compressed_tensors(
        tiny_llama, p, tmp_path / "whole", input_ids=CAL_IDS, per_module=False
    )
    per = export_compressed_tensors(
        tiny_llama, p, tmp_path / "per", input_ids=CAL_IDS, per_module=True
    )
    assert any(f.path.endswith(".safetensors") for f in per.files)
    assert digests(per) == digests(whole)
    assert per.phase_seconds is not None and per.phase_seconds["compress"] >= 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_cuda_export_is_byte_identical_to_cpu(tiny_llama: Path, tmp_path: Path, dtype: str):
    """The module-by-module CUDA path writes the CPU path's bytes, for every weight dtype.

    NVFP4's static activation scale comes from a calibration forward pass on the export
    device, whose matmuls differ between devices; everything else must match exactly."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tmp_path / dtype
    AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=getattr(torch, dtype)).save_pretrained(
        src
    )
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(src)
    for profile, mlp, attn in RECIPES:
        p = recipe(src, profile, mlp, attn)
        cpu_dir, gpu_dir = tmp_path / f"{profile}-cpu", tmp_path / f"{profile}-gpu"
        on_cpu = export(src, p, cpu_dir, input_ids=CAL_IDS)
        on_gpu = export(src, p, gpu_dir, input_ids=CAL_IDS, device=torch.device("cuda"))
        assert on_gpu.device is not None and on_gpu.device.startswith("cuda")
        assert on_gpu.phase_seconds is not None and "transfer" in on_gpu.phase_seconds
        if mlp is not Format.NVFP4:
            assert digests(on_gpu) == digests(on_cpu), (dtype, profile)
            continue
        a, b = load_file(cpu_dir / "model.safetensors"), load_file(gpu_dir / "model.safetensors")
        assert sorted(a) == sorted(b)
        for k in a:
            if not k.endswith("input_global_scale"):
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (dtype, k)
                bits = [t.contiguous().flatten().view(torch.uint8) for t in (a[k], b[k])]
                assert torch.equal(*bits), (dtype, k)


def test_export_reports_phase_timings(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    p = recipe(tiny_llama, "sm90", Format.INT4_W4A16, Format.FP8_W8A8)
    capsys.readouterr()
    res = export(tiny_llama, p, tmp_path / "t")
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the collector is as it was
    phases = res.phase_seconds
    assert phases is not None and res.wall_seconds is not None
    assert list(phases) == ["import", "load", "quantize", "compress", "save", "hash"]
    assert all(v >= 0 for v in phases.values())
    # The phases cover the export: what is left is bookkeeping between them.
    assert sum(phases.values()) <= res.wall_seconds + 1e-3
    # (generous: a full garbage collection between two phases on a loaded CI box takes 0.1 s)
    assert res.wall_seconds - sum(phases.values()) < 0.2 + 0.1 * res.wall_seconds
    assert res.device == "cpu"

    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    logged = [e for e in events if e["event"] == "export.phase"]
    assert [e["phase"] for e in logged] == list(phases)
    assert all(e["seconds"] == pytest.approx(phases[e["phase"]], abs=1e-3) for e in logged)
    (timings,) = [e for e in events if e["event"] == "export.timings"]
    assert timings["phaseSeconds"] == phases and timings["wallSeconds"] == res.wall_seconds
    assert timings["bytesOnDisk"] == res.bytes_on_disk

    summary = json.loads(res.summary_json())
    assert len(res.summary_json()) < SUMMARY_MAX_BYTES and "truncated" not in summary
    assert set(summary["phaseSeconds"]) == set(phases) and summary["wallSeconds"] >= 0
    assert ExportResult.model_validate_json(res.to_json()) == res
    # Documents written before timings existed still parse.
    old = json.loads(res.to_json())
    for k in ("wallSeconds", "phaseSeconds", "device"):
        del old[k]
    assert ExportResult.model_validate(old).phase_seconds is None


def test_bitsandbytes_export_reports_phase_timings(tiny_llama: Path, tmp_path: Path):
    p = nf4_mlp_plan(tiny_llama)
    res = export(tiny_llama, p, tmp_path / "nf4")
    assert res.phase_seconds is not None and res.wall_seconds is not None
    assert list(res.phase_seconds) == ["import", "load", "save", "hash"]
    assert 0 <= sum(res.phase_seconds.values()) <= res.wall_seconds + 1e-3


def test_sha256_file_streams_in_chunks_and_matches_hashlib(tmp_path: Path):
    data = random.Random(0).randbytes(100_003)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    want = "sha256:" + hashlib.sha256(data).hexdigest()
    for chunk in (1, 4096, 65_536, 100_003, 1 << 24):
        assert sha256_file(path, chunk_bytes=chunk) == want
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_exported_files_hashes_in_parallel_and_lists_in_path_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    rng = random.Random(1)
    sizes = {"z.safetensors": 300_000, "a.json": 10, "sub/m.bin": 70_000, "empty.txt": 0}
    for name, n in sizes.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(rng.randbytes(n))
    # Two files must be in flight at once: a serial loop would time out on the barrier.
    barrier = threading.Barrier(2, timeout=10)
    real = export_files.sha256_file
    started: list[str] = []

    def hashing(path: Path, chunk_bytes: int = export_files.HASH_CHUNK_BYTES) -> str:
        started.append(path.name)
        if len(started) <= 2:
            barrier.wait()
        return real(path, chunk_bytes)

    monkeypatch.setattr(export_files, "sha256_file", hashing)
    files = exported_files(tmp_path, workers=2)
    # largest first: the two files in flight together are the two biggest (which of the two
    # threads records its start first is up to the scheduler)
    assert set(started[:2]) == {"z.safetensors", "m.bin"}
    assert [f.path for f in files] == sorted(sizes)
    for f in files:
        raw = (tmp_path / f.path).read_bytes()
        assert f.bytes == sizes[f.path] == len(raw)
        assert f.sha256 == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_moving_one_module_leaves_a_tied_parameter_where_it_was():
    emb, head = nn.Linear(4, 4), nn.Linear(4, 4)
    head.weight = emb.weight  # tied, like lm_head and embed_tokens
    move_own_tensors(head, torch.device("meta"))
    assert head.weight.device.type == "meta" and isinstance(head.weight, nn.Parameter)
    assert head.bias.device.type == "meta"
    assert emb.weight.device.type == "cpu"


def test_quiet_gc_holds_the_collector_and_gives_back_what_it_froze():
    assert gc.isenabled() and gc.get_freeze_count() == 0
    quiet = QuietGC()
    with quiet.held(freeze=True):
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() > 0
    quiet.thaw()
    assert gc.get_freeze_count() == 0
    gc.freeze()  # someone else's frozen objects stay frozen
    try:
        frozen = gc.get_freeze_count()
        other = QuietGC()
        with other.held(freeze=True):
            pass
        other.thaw()
        # it neither froze nor thawed; a few of the frozen objects may have died meanwhile
        assert not other.froze
        assert 0.99 * frozen <= gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
    gc.disable()  # a collector that was off stays off
    try:
        with QuietGC().held():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_large_checkpoints_are_sharded_and_every_shard_is_hashed(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards (2 GB in production, shrunk here) reload as one model and all get a digest."""
    p = recipe(tiny_llama, "sm90", Format.INT4_W4A16, Format.FP8_W8A8)
    whole = export(tiny_llama, p, tmp_path / "whole")
    monkeypatch.setattr(export_files, "SHARD_SIZE", "200KB")
    res = export(tiny_llama, p, tmp_path / "sharded")
    shards = [f for f in res.files if f.path.endswith(".safetensors")]
    assert len(shards) > 1 and any(f.path.endswith(".index.json") for f in res.files)
    for f in res.files:
        assert (
            f.sha256
            == "sha256:" + hashlib.sha256((tmp_path / "sharded" / f.path).read_bytes()).hexdigest()
        )
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = load_quantized(tmp_path / "whole", dtype=torch.float32)(input_ids=ids).logits
        b = load_quantized(tmp_path / "sharded", dtype=torch.float32)(input_ids=ids).logits
    assert torch.equal(a, b)
    assert sum(f.bytes for f in shards) == pytest.approx(
        sum(f.bytes for f in whole.files if f.path.endswith(".safetensors")), rel=0.01
    )
