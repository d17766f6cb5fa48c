"""Sensitivity estimators on a tiny model: shape, sanity, agreement with exact KL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samp_core.formats import Format, SensitivityMethod
from samp_core.groups import GroupKind
from samp_jobs.modeling import decoder_parts, discover_groups, load_model
from samp_jobs.sensitivity import (
    ScoringOptions,
    candidate_formats,
    make_quantizer,
    perturbed,
    score,
    spearman,
)

FORMATS = [Format.INT4_W4A16, Format.INT8_W8A8, Format.FP8_W8A8, Format.NVFP4, Format.BF16]
ALL = [SensitivityMethod.ACTIVATION, SensitivityMethod.FISHER, SensitivityMethod.KL]


@pytest.fixture(scope="module")
def scored(tiny_llama: Path):  # type: ignore[no-untyped-def]
    model, _ = load_model(tiny_llama)
    model.float()
    parts = decoder_parts(model)
    groups = discover_groups(parts)
    ids = torch.randint(3, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    opts = ScoringOptions(formats=FORMATS, group_size=64, micro_batch=2, progress=False)
    return parts, groups, ids, opts, score(parts, groups, ids, opts, ALL)


def test_every_group_and_candidate_is_scored(scored) -> None:  # type: ignore[no-untyped-def]
    _, groups, _, _, run = scored
    assert run.num_tokens == 128 and run.peak_memory_bytes > 0
    for method in ALL:
        s = run.scores[method]
        assert set(s) == {g.name for g in groups}
        for g in groups:
            assert set(s[g.name]) == set(candidate_formats(g, FORMATS, 64))
            assert all(v >= 0 for v in s[g.name].values())


def test_more_bits_means_less_damage(scored) -> None:  # type: ignore[no-untyped-def]
    _, groups, _, _, run = scored
    for method in ALL:
        s = run.scores[method]
        total = {
            f: sum(s[g.name][f] for g in groups) for f in (Format.INT8_W8A8, Format.INT4_W4A16)
        }
        assert total[Format.INT8_W8A8] < total[Format.INT4_W4A16], method


def test_fisher_ranks_like_exact_kl(scored) -> None:  # type: ignore[no-untyped-def]
    _, _, _, _, run = scored
    kl = run.scores[SensitivityMethod.KL]
    keys = [(g, f) for g in kl for f in kl[g]]
    fisher = run.scores[SensitivityMethod.FISHER]
    rho = spearman([fisher[g][f] for g, f in keys], [kl[g][f] for g, f in keys])
    assert rho > 0.7


def test_scores_are_deterministic(scored) -> None:  # type: ignore[no-untyped-def]
    parts, groups, ids, opts, run = scored
    again = score(parts, groups, ids, opts, [SensitivityMethod.FISHER])
    assert again.scores[SensitivityMethod.FISHER] == run.scores[SensitivityMethod.FISHER]


def test_perturbation_is_undone(scored) -> None:  # type: ignore[no-untyped-def]
    parts, groups, ids, opts, _ = scored
    g = next(g for g in groups if g.kind is GroupKind.MLP_DOWN)
    mods = [dict(parts.model.named_modules())[n] for n in g.modules]
    before = [m.weight.detach().clone() for m in mods]
    with torch.no_grad():
        base = parts.model(input_ids=ids).logits
        with perturbed(mods, make_quantizer(Format.INT8_W8A8, opts)):
            changed = parts.model(input_ids=ids).logits
        after = parts.model(input_ids=ids).logits
    assert not torch.equal(base, changed)
    assert torch.equal(base, after)
    assert all(torch.equal(a, m.weight) for a, m in zip(before, mods, strict=True))


def test_spearman() -> None:
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        spearman([1], [1])


def test_kl_cache_budget_limits_tokens_not_coverage(scored) -> None:  # type: ignore[no-untyped-def]
    parts, groups, ids, _opts, run = scored
    vocab = parts.head.out_features
    small = ScoringOptions(
        formats=FORMATS,
        group_size=64,
        micro_batch=2,
        progress=False,
        kl_cache_bytes=2 * 32 * vocab * 4,
    )  # one micro-batch of 2x32
    part = score(parts, groups, ids, small, [SensitivityMethod.KL])
    full, half = run.scores[SensitivityMethod.KL], part.scores[SensitivityMethod.KL]
    assert {g: set(v) for g, v in half.items()} == {g: set(v) for g, v in full.items()}
    keys = [(g, f) for g in full for f in full[g]]
    assert spearman([full[g][f] for g, f in keys], [half[g][f] for g, f in keys]) > 0.8
    assert half != full  # it really used fewer tokens
