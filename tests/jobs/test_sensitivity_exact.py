"""The fast scorer computes exactly the textbook estimators.

The reference here is the obvious, slow computation: one ordinary forward and
backward of the whole model in float64, every Linear's input X and output
gradient ∂L/∂Y recorded, and ΔY = Q_a(X)·Q(W)ᵀ − X·Wᵀ formed directly per
module (``FormatQuantizer.output_delta``). The scorer instead runs layer by
layer, rewrites ΔY so one GEMM per format suffices, takes the input gradient
from autograd and may split the tokens into chunks; all of that must change
nothing but rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from samp_core.formats import Format, SensitivityMethod
from samp_jobs.modeling import decoder_parts, discover_groups, load_model
from samp_jobs.sensitivity import ScoringOptions, candidate_formats, make_quantizer, score

FORMATS = [Format.INT4_W4A16, Format.INT8_W8A8, Format.FP8_W8A8, Format.NVFP4, Format.INT4_W4A8]
METHODS = [SensitivityMethod.ACTIVATION, SensitivityMethod.FISHER]


@pytest.fixture(scope="module")
def setup(tiny_llama: Path) -> Any:
    model, _ = load_model(tiny_llama)
    model.double()
    parts = decoder_parts(model)
    groups = discover_groups(parts)
    ids = torch.randint(3, 300, (6, 24), generator=torch.Generator().manual_seed(1))
    opts = ScoringOptions(formats=FORMATS, group_size=64, micro_batch=2, progress=False)
    return model, parts, groups, ids, opts


def reference(model: nn.Module, groups: Any, ids: torch.Tensor, opts: ScoringOptions) -> Any:
    """Activation and fisher scores the slow, obvious way (whole-model autograd, float64)."""
    mods = dict(model.named_modules())
    xs: dict[str, torch.Tensor] = {}
    gys: dict[str, torch.Tensor] = {}
    handles = []
    for g in groups:
        for n in g.modules:

            def fwd(_m: nn.Module, args: Any, out: torch.Tensor, n: str = n) -> None:
                xs[n] = args[0].detach()
                out.register_hook(lambda gr, n=n: gys.__setitem__(n, gr.detach()))

            handles.append(mods[n].register_forward_hook(fwd))
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb, use_cache=False).logits
    loss = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
    )
    loss.backward()
    for h in handles:
        h.remove()
    tokens = ids.numel()
    act: dict[str, dict[Format, float]] = {}
    fis: dict[str, dict[Format, float]] = {}
    for g in groups:
        for f in candidate_formats(g, opts.formats, opts.group_size):
            fq = make_quantizer(f, opts)
            sq, dot = 0.0, torch.zeros(ids.shape, dtype=torch.float64)
            for n in g.modules:
                d = fq.output_delta(xs[n], mods[n].weight)
                sq += float((d**2).sum())
                dot = dot + (gys[n] * d).sum(-1)
            act.setdefault(g.name, {})[f] = sq / tokens
            fis.setdefault(g.name, {})[f] = 0.5 * float((dot**2).sum()) / tokens
    return act, fis


def _close(a: dict[str, dict[Format, float]], b: dict[str, dict[Format, float]]) -> None:
    assert {g: set(v) for g, v in a.items() if v} == {g: set(v) for g, v in b.items() if v}
    for g, per in b.items():
        for f, want in per.items():
            assert a[g][f] == pytest.approx(want, rel=1e-7), (g, f)


def test_layerwise_one_gemm_scores_equal_the_textbook_ones(setup: Any) -> None:
    model, parts, groups, ids, opts = setup
    # One micro-batch as big as the reference's batch: NVFP4's activation global scale is
    # taken per batch (dynamic), so only then is it the same number on both sides.
    whole_batch = ScoringOptions(**{**opts.__dict__, "micro_batch": ids.shape[0]})
    got = score(parts, groups, ids, whole_batch, METHODS)
    want_act, want_fis = reference(model, groups, ids, opts)
    assert any(len(v) == len(FORMATS) for v in want_fis.values())  # every format exercised
    _close(got.scores[SensitivityMethod.ACTIVATION], want_act)
    _close(got.scores[SensitivityMethod.FISHER], want_fis)


def test_chunking_the_tokens_changes_nothing(setup: Any) -> None:
    _model, parts, groups, ids, opts = setup
    whole = score(parts, groups, ids, opts, METHODS)
    one = ScoringOptions(**{**opts.__dict__, "max_micro_batches_per_chunk": 1})
    split = score(parts, groups, ids, one, METHODS)
    assert whole.memory is not None and whole.memory.num_chunks == 1
    assert split.memory is not None and split.memory.num_chunks == 3
    for m in METHODS:
        _close(split.scores[m], whole.scores[m])
