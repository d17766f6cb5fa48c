"""GPTQ's Hessians from the sensitivity pass: what the scorer collects is each group's
X Xᵀ / n, export rounds from the stored file without calibration tokens, and the
pipeline writes the file only when the plan will use GPTQ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_export import recipe
from test_gptq import _tokens

from samp_core.formats import Format, RoundingMethod, SensitivityMethod
from samp_core.results import Rounding
from samp_jobs.evaluate import load_quantized
from samp_jobs.export import ExportError, build_quantization_config, export, gptq_group_codes
from samp_jobs.gptq import HessianAccumulator
from samp_jobs.hessian_file import StreamingHessianWriter, read_ahead
from samp_jobs.hessians import (
    HESSIANS_FILE,
    HessianCollector,
    StoredHessians,
    collector_for,
    gptq_from_hessians,
)
from samp_jobs.modeling import decoder_parts, discover_groups, load_model
from samp_jobs.sensitivity import ScoringOptions, candidate_formats, score

CPU = torch.device("cpu")
FORMATS = [Format.INT4_W4A8, Format.INT8_W8A8, Format.BF16]


def _plan(model_dir: Path):  # type: ignore[no-untyped-def]
    p = recipe(model_dir, "cpu", Format.INT4_W4A8, Format.INT8_W8A8)
    return p.model_copy(update={"rounding": Rounding(formats=[Format.INT4_W4A8])})


@pytest.fixture(scope="module")
def collected(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Score the tiny model with fisher while collecting Hessians; save them."""
    model, _ = load_model(tiny_llama)
    model.float()
    parts = decoder_parts(model)
    groups = discover_groups(parts)
    ids = _tokens(tiny_llama, 4, 32, seed=0)
    opts = ScoringOptions(formats=FORMATS, group_size=64, micro_batch=2, progress=False)
    cands = {g.name: candidate_formats(g, FORMATS, 64) for g in groups}
    path = tmp_path_factory.mktemp("hess") / HESSIANS_FILE
    col = collector_for(groups, cands, Rounding(formats=[Format.INT4_W4A8]), model, CPU,
                        path=path)  # written by the streaming writer, as the stage does
    assert isinstance(col, HessianCollector)
    opts.hessians = col
    score(parts, groups, ids, opts, [SensitivityMethod.FISHER])
    col.save(path)
    return model, parts, groups, ids, path


def test_collected_hessians_are_each_groups_mean_input_outer_product(collected):  # type: ignore[no-untyped-def]
    model, _parts, groups, ids, path = collected
    # Reference: a plain forward of the whole model, hooks on each group's first module.
    ref: dict[str, HessianAccumulator] = {}
    handles = []
    for g in groups:
        m = model.get_submodule(g.modules[0])
        acc = ref[g.modules[0]] = HessianAccumulator(g.in_features, CPU)
        handles.append(m.register_forward_pre_hook(lambda _m, a, acc=acc: acc.add(a[0])))
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    stored = load_file(str(path))
    assert set(stored) == {g.modules[0] for g in groups}  # every group can take int4-w4a8
    for name, h in stored.items():
        assert h.dtype == torch.float32
        torch.testing.assert_close(h, ref[name].h, rtol=1e-4, atol=1e-5)
    meta = StoredHessians(path).meta
    assert all(m["tokens"] == ids.numel() for m in meta.values())


def test_chunked_scoring_reads_parked_hessians_back_from_the_file(
    collected, tiny_llama: Path, tmp_path: Path
):  # type: ignore[no-untyped-def]
    """Tokens scored in one-micro-batch chunks: every chunk after the first reads each
    group's Hessian back from the file being written, and the result is bit for bit the
    single-chunk one (same additions, same order)."""
    _model, _parts, _groups, ids, path = collected
    model, _ = load_model(tiny_llama)
    model.float()
    parts = decoder_parts(model)
    groups = discover_groups(parts)
    opts = ScoringOptions(formats=FORMATS, group_size=64, micro_batch=2, progress=False,
                          max_micro_batches_per_chunk=1)
    cands = {g.name: candidate_formats(g, FORMATS, 64) for g in groups}
    chunked = tmp_path / HESSIANS_FILE
    col = collector_for(groups, cands, Rounding(formats=[Format.INT4_W4A8]), model, CPU,
                        path=chunked)
    assert col is not None
    opts.hessians = col
    run = score(parts, groups, ids, opts, [SensitivityMethod.FISHER])
    assert run.memory is not None and run.memory.num_chunks == 2
    with pytest.raises(ValueError, match="being written to"):
        col.save(tmp_path / "elsewhere.safetensors")
    col.save(chunked)
    got, want = load_file(str(chunked)), load_file(str(path))
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name])
    assert StoredHessians(chunked).meta == StoredHessians(path).meta


def test_no_collector_when_the_plan_will_not_use_gptq(collected):  # type: ignore[no-untyped-def]
    model, _parts, groups, _ids, _path = collected
    cands = {g.name: candidate_formats(g, FORMATS, 64) for g in groups}
    rtn = Rounding(method=RoundingMethod.RTN)
    assert collector_for(groups, cands, rtn, model, CPU) is None
    fp8_only = {g: [Format.FP8_W8A8] for g in cands}
    assert collector_for(groups, fp8_only, Rounding(), model, CPU) is None


def test_no_collector_when_the_hessians_would_not_fit_the_work_volume(
    collected, tmp_path: Path
):  # type: ignore[no-untyped-def]
    """A 70B's Hessians (330 GB) on a smaller volume: none are collected, so export
    computes them in its own pass, instead of the stage failing with a full disk."""
    model, _parts, groups, _ids, _path = collected
    cands = {g.name: candidate_formats(g, FORMATS, 64) for g in groups}
    need = sum(4 * g.in_features**2 for g in groups)
    four_bit = Rounding(formats=[Format.INT4_W4A8])
    path = tmp_path / HESSIANS_FILE
    assert collector_for(groups, cands, four_bit, model, CPU, path=path, free_bytes=need) is None
    assert not path.exists()
    col = collector_for(groups, cands, four_bit, model, CPU, path=path, free_bytes=2 * need)
    assert col is not None and col.nbytes == need


def test_export_rounds_from_stored_hessians_without_calibration_tokens(
    collected, tiny_llama: Path, tmp_path: Path
):  # type: ignore[no-untyped-def]
    _model, _parts, _groups, _ids, path = collected
    p = _plan(tiny_llama)
    res = export(tiny_llama, p, tmp_path / "ckpt", hessians=path)  # no input_ids
    assert "gptq" in (res.phase_seconds or {})

    # The checkpoint holds exactly the codes GPTQ computes from those Hessians.
    model, _ = load_model(tiny_llama)
    parts = decoder_parts(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    qcfg = build_quantization_config(p, linears)
    codes = gptq_from_hessians(parts, p, qcfg, StoredHessians(path), CPU)
    assert set(codes) == set(p.gptq_modules())
    stored = load_file(str(path))
    a = next(a for a in p.assignments if a.format is Format.INT4_W4A8)
    again, _ = gptq_group_codes(
        tuple(a.modules),
        [model.get_submodule(n).weight.data for n in a.modules],
        stored[a.modules[0]],
        qcfg,
        plan=p,
        device=CPU,
    )
    for n in a.modules:
        assert torch.equal(again[n], codes[n])
    q = load_quantized(tmp_path / "ckpt", dtype=torch.float32)
    assert q is not None


def test_export_falls_back_when_the_hessians_do_not_cover_the_plan(
    collected, tiny_llama: Path, tmp_path: Path
):  # type: ignore[no-untyped-def]
    _model, _parts, _groups, _ids, path = collected
    # A file lacking a group the plan GPTQ-rounds is not used: export then needs its own
    # calibration pass (and so the tokens).
    p = _plan(tiny_llama)
    both = p.model_copy(update={"rounding": Rounding(formats=[Format.INT4_W4A8, Format.INT8_W8A8])})
    assert StoredHessians(path).missing(both) == []  # every group could take int4: stored
    partial = tmp_path / HESSIANS_FILE
    tensors = load_file(str(path))
    first = next(a.modules[0] for a in both.assignments if a.format is Format.INT8_W8A8)
    del tensors[first]
    meta = StoredHessians(path).meta
    del meta[first]
    save_file(tensors, str(partial), metadata={"groups": json.dumps(meta)})
    assert StoredHessians(partial).missing(both) != []
    with pytest.raises(ExportError, match="calibration tokens"):
        export(tiny_llama, both, tmp_path / "x", hessians=partial)


def test_streaming_writer_writes_what_save_file_writes(tmp_path: Path):
    """Tensors handed over in any order, one of them twice (the last version wins): the
    file loads with safetensors to exactly the tensors and metadata save_file writes."""
    g = torch.Generator().manual_seed(7)
    tensors = {f"m{i}": torch.randn(n, n, generator=g) for i, n in enumerate((8, 24, 16))}
    meta = {name: {"group": name, "modules": [name], "tokens": 12345678901} for name in tensors}
    draft = {name: dict(m, tokens=0) for name, m in meta.items()}
    w = StreamingHessianWriter(tmp_path / "s.safetensors",
                               {k: tuple(v.shape) for k, v in tensors.items()}, draft)
    stale = torch.zeros(24, 24)
    w.put("m1", stale)
    for name in ("m2", "m0", "m1"):
        w.put(name, tensors[name])
    with pytest.raises(ValueError, match="reserved"):
        w.put("m0", torch.zeros(3, 3))
    size = w.finish(meta)
    assert not (tmp_path / "s.safetensors.tmp").exists()
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"groups": json.dumps(meta)})
    got = load_file(str(tmp_path / "s.safetensors"))
    ref = load_file(str(tmp_path / "ref.safetensors"))
    assert set(got) == set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k])
    assert StoredHessians(tmp_path / "s.safetensors").meta == meta
    assert size == (tmp_path / "s.safetensors").stat().st_size


def test_read_ahead_yields_the_stored_tensors_in_order(collected):  # type: ignore[no-untyped-def]
    _model, _parts, _groups, _ids, path = collected
    stored = load_file(str(path))
    names = sorted(stored)[::-1] + sorted(stored)[:1]  # any order, a name twice
    got = list(read_ahead(path, names, CPU))
    assert len(got) == len(names)
    for name, h in zip(names, got, strict=True):
        assert torch.equal(h, stored[name])
