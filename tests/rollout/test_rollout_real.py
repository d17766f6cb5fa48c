"""Canary rollouts against real vLLM CPU servers and a real Prometheus.

Every decision goes through the operator's canary driver (samp_operator.canary_driver) and
the pure ``samp_core.canary.decide``, with figures the real ``PrometheusProvider`` read
from the real Prometheus scraping the real vLLM /metrics; the router is the in-process
``LocalWeights`` that the bounded load generator follows (it plays the gateway). What is
injected, and how (see README.md):

* latency regression — the load generator asks the canary for 256-token generations
  (``ignore_eos``) and the stable for 16, the way a badly quantized model that no
  longer emits EOS rambles; vLLM really serves them, its histogram really shows it;
* no traffic — the load generator is not started;
* Prometheus down — the real Prometheus process is stopped, then started again on the
  same TSDB.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from samp_core import replan as rp
from samp_core.api import parse
from samp_core.formats import Format
from samp_core.groups import build_groups
from samp_core.hardware import get_profile
from samp_core.planner import Budget, PlanRequest, plan
from samp_core.results import SensitivityResult
from samp_core.spec import QuantizedModelSpec
from samp_core.status import AccuracySummary, Phase, QuantizedModelStatus
from samp_local.canary_loop import CanaryLoop
from samp_local.load import Backend, LoadGenerator, LocalWeights
from samp_local.processes import http_ok
from samp_operator.prometheus import PrometheusProvider

pytestmark = [pytest.mark.vllm, pytest.mark.prometheus, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny-llama"
REPORT: list[dict[str, Any]] = []
# Tolerant thresholds: the test machine has 2 cores shared by two vLLM servers, the load
# generator and whatever else runs; with other work on it a healthy 10 s window's P99
# ratio was seen between 0.2 and 1.8 (once 5), and single 16-token requests stalled for
# up to 4.6 s. The injected regression is therefore large: each canary request asks for
# 8 sequences (n=8) of 256 tokens (about 30x the work of a 16-token stable request), and
# the regression scenarios also set an absolute ceiling of 3 s, which a loaded machine's
# canary exceeds even when its stable is slow too.
RATIO = 3.0
REGRESSION_TOKENS = 256
REGRESSION_PARALLEL = 8
REGRESSION_GATES = {
    "latency": {"p99MaxRatioToStable": RATIO, "p99MaxSeconds": 3},
    "minRequests": 3,
    # The injected regression is more work per request (n=8 sequences), which vLLM counts
    # as 8 finished requests: the fairness check would rightly call the canary the busier
    # side (3.2x, seen) and not trust its failure. Here the extra work is the regression.
    "maxLoadImbalance": 100,
}


def make_spec(gates: dict[str, Any] | None = None, **rollout: Any) -> QuantizedModelSpec:
    doc = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    doc["spec"]["rollout"] = {
        "steps": [{"weight": 50, "duration": "30s"}, {"weight": 100, "duration": "20s"}],
        "analysisInterval": "10s",
        # the P99 gates need 500 requests a side (issue 17): at a few requests per second on a
        # loaded 2-core machine, minutes per step
        "progressDeadline": "10m",
        "failureLimit": 1,
        "inconclusiveLimit": 3,
        "consecutiveErrorLimit": 4,
        **rollout,
    }
    doc["spec"]["gates"].update(
        {
            # 80%: on a loaded machine 600 requests a side bounded a healthy ratio of 0.93
            # only within 0.40-3.67 at 95% (a P99 there is heavy-tailed)
            "latency": {"p99MaxRatioToStable": RATIO, "p99MaxSeconds": 30, "confidence": 0.8},
            "minRequests": 5,
            "maxErrorRate": 0.01,
            **(gates or {}),
        }
    )
    return parse(doc).spec


def evaluated(attempt: int = 1, history: list[Any] | None = None) -> QuantizedModelStatus:
    return QuantizedModelStatus(
        phase=Phase.EVALUATED,
        attempt=attempt,
        accuracy=AccuracySummary(perplexity_base=10.0, perplexity_quantized=10.3),
        artifact_uri=f"pvc://examples/tiny/out/attempt-{attempt}",
        history=history or [],
    )


def rollout(
    servers: Any,
    spec: QuantizedModelSpec,
    status: QuantizedModelStatus,
    *,
    canary_tokens: int = 16,
    canary_parallel: int = 1,
    load: bool = True,
    on_step: Callable[[QuantizedModelStatus], None] | None = None,
    timeout: float = 600,
) -> tuple[QuantizedModelStatus, CanaryLoop, LoadGenerator]:
    router = LocalWeights()
    loop = CanaryLoop(
        spec=spec,
        name=NAME,
        provider=PrometheusProvider(servers.prometheus.url),
        router=router,
        canary_ready=lambda: http_ok(f"{servers.canary.url}/health"),
    )
    gen = LoadGenerator(
        Backend(servers.stable.url, "tiny-llama", 16),
        Backend(servers.canary.url, "tiny-llama-canary", canary_tokens, canary_parallel),
        router,
        threads=4,
        max_requests=40_000,
    )
    t0 = time.monotonic()
    if load:
        gen.start()
    try:
        final = loop.run(status, timeout=timeout, on_step=on_step)
    finally:
        gen.stop()
    REPORT.append(
        {
            "phase": final.phase.value,
            "seconds": round(time.monotonic() - t0, 1),
            "requests": dict(gen.stats.per_model),
            "failed": gen.stats.failed,
            "gates": [r.to_wire() for r in final.gates],
            "message": final.message,
            "analyses": [e for a in loop.log for e in a.events if e.startswith("Analysis")],
        }
    )
    print(json.dumps(REPORT[-1], indent=1))
    return final, loop, gen


def weights(loop: CanaryLoop) -> list[int]:
    return list(loop.router.history)


def gate(status: QuantizedModelStatus, name: str) -> Any:
    return next(r for r in status.gates if r.gate == name)


def cond(status: QuantizedModelStatus, kind: str) -> Any:
    return next(c for c in status.conditions if c.type == kind)


def _wait_scraped(servers: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = servers.prometheus.targets_up()
        if up.get("tiny-llama") and up.get("tiny-llama-canary"):
            return
        time.sleep(1)


def test_servers_are_scraped(servers: Any) -> None:
    _wait_scraped(servers)
    assert servers.prometheus.targets_up() == {"tiny-llama": True, "tiny-llama-canary": True}
    print("vLLM ready after", servers.ready_seconds)


def test_healthy_canary_promotes(servers: Any) -> None:
    final, loop, gen = rollout(servers, make_spec(), evaluated())
    assert final.phase is Phase.PROMOTED, final.message
    assert weights(loop) == [50, 100, 0]
    assert cond(final, "Promoted").status == "True"
    assert final.canary is not None and final.canary.p99_ratio is not None
    assert final.canary.p99_ratio <= RATIO
    req = gate(final, "requests")
    assert req.verdict == "Successful" and req.value >= 10
    assert gen.stats.per_model["tiny-llama-canary"] > 0 and gen.stats.failed == 0
    assert final.history[-1].outcome == "Promoted"


def test_latency_regression_rolls_back_with_p99_figures(servers: Any) -> None:
    final, loop, _gen = rollout(
        servers,
        make_spec(gates=REGRESSION_GATES),
        evaluated(),
        canary_tokens=REGRESSION_TOKENS,
        canary_parallel=REGRESSION_PARALLEL,
    )
    assert final.phase is Phase.ROLLED_BACK, final.message
    rb = cond(final, "RolledBack")
    assert rb.reason == "GateFailed"
    failed = [r for r in final.gates if r.verdict == "Failed"]
    # the P99 gates once they have evidence, the judge (rank test) already before
    assert failed and {r.gate for r in failed} <= {"p99", "p99RatioToStable", "judge"}
    first = failed[0]
    # The condition names the gate, its measured value and its threshold.
    assert f"gate {first.gate} failed" in rb.message and first.threshold in rb.message
    p99 = gate(final, "p99")  # canary P99 seconds (value) and stable P99 seconds (baseline)
    assert p99.value is not None and p99.baseline is not None
    ratio = gate(final, "p99RatioToStable")
    assert ratio.value is not None
    assert p99.value > 3 or ratio.value > RATIO
    assert 100 not in weights(loop)  # never got all traffic
    assert not any("PromoteStable" in x for a in loop.log for x in a.actions)
    assert final.history[-1].outcome == "RolledBack"


def test_no_traffic_never_promotes(servers: Any) -> None:
    time.sleep(11)  # let the previous test's last window age out
    final, loop, _ = rollout(servers, make_spec(), evaluated(), load=False)
    assert final.phase is Phase.ROLLED_BACK, final.message
    assert cond(final, "RolledBack").reason == "InconclusiveLimitExceeded"
    assert final.canary is not None and final.canary.inconclusives == 4
    assert all(a.phase != "Promoted" for a in loop.log)
    assert gate(final, "requests").verdict == "Inconclusive"


def test_prometheus_down_is_error_and_the_rollout_continues(servers: Any) -> None:
    seen: dict[str, Any] = {"stopped_at": None, "errors": 0, "phases_while_down": set()}
    prom = servers.prometheus

    def chaos(status: QuantizedModelStatus) -> None:
        c = status.canary
        if c is None:
            return
        if seen["stopped_at"] is None and c.analyses >= 1 and c.last_verdict == "Successful":
            prom.stop()
            seen["stopped_at"] = time.monotonic()
        elif seen["stopped_at"] is not None and prom.proc is None:
            seen["phases_while_down"].add(status.phase.value)
            seen["errors"] = max(seen["errors"], c.consecutive_errors)
            if time.monotonic() - seen["stopped_at"] > 25:
                prom.start()

    try:
        final, loop, _ = rollout(servers, make_spec(), evaluated(), on_step=chaos, timeout=660)
    finally:
        prom.start()
    assert seen["stopped_at"] is not None
    assert seen["errors"] >= 2  # two or more analyses answered Error while it was down
    assert seen["phases_while_down"] <= {"CanaryProgressing"}  # never promoted meanwhile
    assert final.phase is Phase.PROMOTED, final.message
    error_events = [e for a in loop.log for e in a.events if e.startswith("AnalysisError")]
    assert error_events and "unreachable" in error_events[0]


def _plan_and_sensitivity(model_dir: Path) -> tuple[Any, SensitivityResult]:
    """Groups from the served model's real shapes; sensitivity scores synthetic (MLP down
    most sensitive), since the torch stage is tested in tests/jobs."""
    cfg = json.loads((model_dir / "config.json").read_text())
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", 1)
    hd = cfg.get("head_dim") or h // heads
    shapes: dict[str, tuple[int, int]] = {}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes[f"{p}.self_attn.q_proj"] = (h, heads * hd)
        shapes[f"{p}.self_attn.k_proj"] = (h, kv * hd)
        shapes[f"{p}.self_attn.v_proj"] = (h, kv * hd)
        shapes[f"{p}.self_attn.o_proj"] = (heads * hd, h)
        shapes[f"{p}.mlp.gate_proj"] = (h, inter)
        shapes[f"{p}.mlp.up_proj"] = (h, inter)
        shapes[f"{p}.mlp.down_proj"] = (inter, h)
    shapes["lm_head"] = (h, cfg["vocab_size"])
    groups = build_groups(shapes)
    scores = {
        g.name: {
            Format.INT4_W4A8: (4.0 if "down" in g.name else 1.0) + 0.1 * i,
            # on cpu every group is stored at least in int8 (W4A8 saves nothing over W8A8),
            # so the W8A8 scores decide which groups the re-plan raises first
            Format.INT8_W8A8: (0.4 if "down" in g.name else 0.1) + 0.01 * i,
        }
        for i, g in enumerate(groups)
        if g.name != "lm_head"
    }
    sens = SensitivityResult(
        method="fisher",
        num_tokens=4096,
        groups=groups,
        scores=scores,
        wall_seconds=0.0,
        group_size=32,
    )
    first = plan(
        PlanRequest(
            groups=groups,
            scores=scores,
            profile=get_profile("cpu"),
            # above the cpu floor of stored bytes (0.594 of 16-bit with the 16-bit lm_head)
            budget=Budget(fraction_of_16bit=0.65),
            allowed_formats=[Format.INT4_W4A8, Format.INT8_W8A8, Format.BF16],
            group_size=32,
        )
    )
    return first, sens


def test_failing_canary_replans_then_promotes(servers: Any, model_dirs: Any) -> None:
    # One spec for both attempts, so no 3 s ceiling: CI's loaded machine measured the healthy
    # attempt-2 canary (16 tokens) at P99 4.2 s (3.75-4.77 s over 989 requests). The judge
    # and the ratio to the stable catch attempt 1's regression.
    spec = make_spec(
        gates={"minRequests": 3, "maxLoadImbalance": 100},
        replan={"enabled": True, "maxAttempts": 2, "maxBudgetIncreaseFraction": 0.2},
    )
    # Attempt 1: the canary rambles (256-token generations): P99 regression.
    s1, loop1, _ = rollout(
        servers,
        spec,
        evaluated(),
        canary_tokens=REGRESSION_TOKENS,
        canary_parallel=REGRESSION_PARALLEL,
    )
    assert s1.phase is Phase.PLANNING and s1.attempt == 2, s1.message
    replans = [a for a in loop1.log if any(x.startswith("StartReplan") for x in a.actions)]
    assert replans
    # The operator's re-plan: the real planner with the raise of the most sensitive groups.
    first, sens = _plan_and_sensitivity(model_dirs[1])
    second = rp.conservative_plan(
        first, sens, get_profile("cpu"), spec.quantization, spec.rollout.replan, 2
    )
    assert second is not None and second.total_bytes > first.total_bytes
    raised = [a.group for a in second.assignments if (a.pinned_by or "").startswith("replan")]
    # the most sensitive group the first plan quantized is raised (the synthetic scores
    # make it an MLP down group)
    most = max((a for a in first.assignments if not a.format.is_unquantized),
               key=lambda a: a.score)
    assert "down" in most.group and most.group in raised, (most.group, raised)
    # Export + evaluate of attempt 2 are the torch stages (tests/jobs); here the attempt
    # comes back Evaluated, and its canary no longer rambles. A new artifact is a new canary
    # pod in production, so the canary server restarts: twice in CI the reused server,
    # after serving attempt 1's n=8 x 256-token requests, answered 16-token requests with
    # a P99 4-5x its idle stable's (4.2 s and 3.7 s over 844-989 requests each side).
    print("canary restarted for attempt 2, ready after", round(servers.canary.restart(), 1), "s")
    _wait_scraped(servers)
    s2_in = evaluated(attempt=2, history=list(s1.history))
    s2, _loop2, _ = rollout(servers, spec, s2_in, canary_tokens=16)
    assert s2.phase is Phase.PROMOTED, s2.message
    assert [a.attempt for a in s2.history] == [1, 2]
    assert [a.outcome for a in s2.history] == ["RolledBack", "Promoted"]
    reason = s2.history[0].reason  # the failing gate is in the history
    assert "gate p99" in reason or "gate judge" in reason, reason
