"""The tiny example's spec with a short rollout: the one the canary, re-plan and driver tests
share (it used to be copied into each of them)."""

from __future__ import annotations

from pathlib import Path

import yaml

from samp_core.api import parse
from samp_core.spec import QuantizedModelSpec

ROOT = Path(__file__).resolve().parents[1]


def make_spec(**rollout: object) -> QuantizedModelSpec:
    """examples/tiny-cpu.yaml with two 30 s steps and 10 s analyses, plus ``rollout`` keys."""
    doc = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    doc["spec"]["rollout"] = {
        "steps": [{"weight": 25, "duration": "30s"}, {"weight": 100, "duration": "30s"}],
        "analysisInterval": "10s",
        "progressDeadline": "10m",
        **rollout,
    }
    return parse(doc).spec
