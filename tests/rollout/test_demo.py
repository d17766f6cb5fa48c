"""The local demo's own logic (samp_local.demo), without starting anything."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import yaml

from samp_core.api import parse
from samp_core.status import Attempt, Phase, QuantizedModelStatus
from samp_local.demo import _effective_manifest, _parser, _rollouts
from samp_local.rollouts import plan_refused

ROOT = Path(__file__).resolve().parents[2]


def test_a_refused_replan_ends_the_attempt_failed_as_the_operator_does() -> None:
    status = QuantizedModelStatus(
        phase=Phase.PLANNING,
        attempt=2,
        history=[
            Attempt(attempt=1, generation=1, started_at="2026-01-01T00:00:00Z",
                    outcome="RolledBack"),
            Attempt(attempt=2, generation=1, started_at="2026-01-01T00:01:00Z"),
        ],
    )
    failed = plan_refused(status, "samp plan: re-plan attempt 2: no group can be raised")
    assert failed.phase is Phase.FAILED
    assert [(a.attempt, a.outcome) for a in failed.history] == [(1, "RolledBack"), (2, "Failed")]
    assert failed.history[1].reason.startswith("plan failed: samp plan: re-plan attempt 2")


def test_the_plan_job_reads_the_spec_the_demo_runs(tmp_path: Path) -> None:
    """--replan-attempts changes the spec; the plan Job must read that spec, not the file."""
    args = Namespace(manifest=ROOT / "examples" / "tiny-cpu.yaml", replan_attempts=3)
    spec, name, path = _effective_manifest(args, tmp_path)
    written = parse(json.loads(path.read_text()))
    assert name == "tiny-llama" and written.spec == spec
    assert spec.rollout.replan.enabled and spec.rollout.replan.max_attempts == 3


def test_the_demo_splits_traffic_evenly_between_its_two_processes(tmp_path: Path) -> None:
    """One stable and one canary process: a partial step must be 50%, or the fairness
    check keeps every comparison Inconclusive (the example's own first step is 25%)."""
    manifest = ROOT / "examples" / "tiny-cpu.yaml"
    assert parse(yaml.safe_load(manifest.read_text())).spec.rollout.steps[0].weight != 50
    args = _parser().parse_args(["--manifest", str(manifest), "--out", str(tmp_path)])
    rollouts = _rollouts(args, tmp_path)
    assert len(rollouts) == 2
    for r in rollouts:
        assert [s.weight for s in r.spec.rollout.steps] == [50, 100]
        written = parse(json.loads(r.manifest.read_text()))
        assert written.spec.rollout.steps == r.spec.rollout.steps  # what the plan Job reads
    # the re-plan rollout keeps the manifest's gate; the promote one judges by a ceiling
    assert rollouts[1].spec.gates.latency.p99_max_ratio_to_stable == 1.5
    assert rollouts[0].spec.gates.latency.p99_max_ratio_to_stable is None
