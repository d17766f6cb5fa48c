"""Model sources: pvc:// paths, and hf:// through huggingface_hub's real snapshot code
(offline, against a hub cache laid out as huggingface_hub writes it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from samp_jobs.modeling import ModelLoadError, load_model
from samp_jobs.sources import parse_hub_uri, resolve_model, resolve_prompts

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny" / "model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_parse_hub_uri() -> None:
    assert parse_hub_uri("hf://acme/tiny@v1.2") == ("acme/tiny", "v1.2")
    assert parse_hub_uri("hf://acme/tiny") == ("acme/tiny", None)
    with pytest.raises(ModelLoadError, match="hf://org/name"):
        parse_hub_uri("hf://tiny")


def test_pvc_source_resolves_under_the_model_root(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("SAMP_MODEL_ROOT", "/mnt/pvc")
    assert resolve_model("pvc://models/llama", tmp_path / "w") == "/mnt/pvc/models/llama"


def test_pvc_path_cannot_leave_its_volume(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """Checked again where the Job resolves it (the spec refuses '..' first)."""
    root = tmp_path / "models"
    monkeypatch.setenv("SAMP_MODEL_ROOT", str(root))
    monkeypatch.setenv("SAMP_DATA_ROOT", str(root))
    for uri in ("pvc://claim/../../etc", "pvc://claim/a/../../../proc/self/environ"):
        with pytest.raises(ModelLoadError, match="outside its volume"):
            resolve_model(uri, tmp_path / "w")
        with pytest.raises(ModelLoadError, match="outside its volume"):
            resolve_prompts(uri)
    assert resolve_prompts("pvc://claim/p.jsonl") == str(root / "claim" / "p.jsonl")


def test_hub_source_is_loaded_from_the_shared_cache(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    workdir = tmp_path / "artifacts" / "ns" / "m" / "w-abc"
    repo = workdir.parent / "hf-cache" / "models--acme--tiny"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(TINY, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SAMP_HF_CACHE", raising=False)
    path = resolve_model("hf://acme/tiny@v1", workdir)
    assert Path(path) == snapshot
    model, tokenizer = load_model(path)
    assert tokenizer("def dumps")["input_ids"] and sum(p.numel() for p in model.parameters())


def test_unreachable_hub_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    import huggingface_hub.constants

    # The variable is read when huggingface_hub is imported; set the constant too so the
    # test never reaches for the network, whatever imported the library first.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"(?s)cannot fetch hf://acme/absent@main.*pvc://"):
        resolve_model("hf://acme/absent@main", tmp_path / "w")
