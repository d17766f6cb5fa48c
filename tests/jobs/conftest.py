"""Fixtures for the job-stage tests: tiny decoder models built here, prompt files.

Models are random-initialised (seeded) with a BPE tokenizer trained on a few
stdlib docstrings, so the tests need no download and run in seconds. Tests that
need a model that *knows* something use the committed examples/tiny model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for sub in ("operator", "jobs"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

TINY_EXAMPLE = ROOT / "examples" / "tiny"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobhelpers import build_model, write_jsonl  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model("llama", tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    def make(kind: str) -> Path:
        return build_model(kind, tmp_path_factory.mktemp(kind) / "model")

    return make


@pytest.fixture
def chat_prompts(tmp_path: Path) -> Path:
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    recs = [
        {"messages": [{"role": "user", "content": f"explain {a} and {b} please, number {i}"}]}
        for i, (a, b) in enumerate(zip(words * 4, words[3:] * 4 + words[:3] * 4, strict=False))
    ]
    return write_jsonl(tmp_path / "prompts.jsonl", recs)


@pytest.fixture
def text_prompts(tmp_path: Path) -> Path:
    recs = [
        {"text": f"the quick brown fox number {i} jumps over the lazy dog {i * 7}"}
        for i in range(40)
    ]
    return write_jsonl(tmp_path / "text.jsonl", recs)
