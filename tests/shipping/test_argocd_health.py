"""The Argo CD health script, run by a real Lua 5.1 interpreter (lupa.lua51) on fixtures.

Argo CD evaluates health scripts with gopher-lua (Lua 5.1 semantics); lupa embeds the
reference Lua 5.1, so these fixtures exercise the same language the script meets in Argo CD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from samp_core.status import Phase

lua51 = pytest.importorskip("lupa.lua51")

ARGOCD = Path(__file__).resolve().parents[2] / "charts" / "argocd"
SCRIPT = (ARGOCD / "quantizedmodel-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    to_lua = runtime.eval("function(f) return f end")

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return runtime.table_from({k: convert(v) for k, v in value.items()})
        if isinstance(value, list):
            return runtime.table_from([convert(v) for v in value])
        return value

    runtime.globals().obj = convert(obj)
    result = to_lua(runtime.execute(SCRIPT))
    return str(result["status"]), str(result["message"])


def qm(phase: str | None, generation: int = 2, observed: int | None = 2,
       conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase is not None:
        status = {"phase": phase, "conditions": conditions or []}
        if observed is not None:
            status["observedGeneration"] = observed
    return {"metadata": {"name": "m", "generation": generation},
            **({"status": status} if status else {})}


EXPECTED = {
    Phase.PENDING: "Progressing", Phase.CALIBRATING: "Progressing",
    Phase.SCORING: "Progressing", Phase.PLANNING: "Progressing",
    Phase.EXPORTING: "Progressing", Phase.EVALUATING: "Progressing",
    Phase.EVALUATED: "Progressing", Phase.CANARY: "Progressing",
    Phase.PAUSED: "Suspended", Phase.SUSPENDED: "Suspended",
    Phase.PROMOTED: "Healthy", Phase.ROLLED_BACK: "Degraded", Phase.FAILED: "Degraded",
}


def test_every_phase_is_mapped() -> None:
    assert set(EXPECTED) == set(Phase), "a new Phase needs a mapping in the health script"


@pytest.mark.parametrize("phase", list(Phase), ids=str)
def test_phase_maps_to_health(phase: Phase) -> None:
    status, _ = health(qm(phase.value))
    assert status == EXPECTED[phase]


def test_no_status_yet_is_progressing() -> None:
    assert health(qm(None))[0] == "Progressing"


def test_stale_observed_generation_is_progressing_even_when_promoted() -> None:
    status, message = health(qm("Promoted", generation=3, observed=2))
    assert status == "Progressing" and "generation 3" in message


def test_rollback_message_names_the_gate() -> None:
    rolled = {"type": "RolledBack", "status": "True", "reason": "GateFailed",
              "message": "p99 1.84s > 1.1 x stable 1.20s at step 1 (25%)"}
    status, message = health(qm("RolledBack", conditions=[rolled]))
    assert status == "Degraded" and "p99 1.84s" in message


def test_ready_message_is_shown() -> None:
    ready = {"type": "Ready", "status": "False", "reason": "Exporting",
             "message": "Exporting attempt 1: job tiny-g2-export running"}
    assert health(qm("Exporting", conditions=[ready]))[1].startswith("Exporting attempt 1")


def test_unknown_phase_is_unknown_not_a_guess() -> None:
    assert health(qm("Teleporting"))[0] == "Unknown"


def test_argocd_cm_snippet_embeds_the_script_verbatim() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["data"]["resource.customizations.health.samp.dev_QuantizedModel"] == SCRIPT


def test_application_ignores_only_route_backends() -> None:
    """What the operator changes in a Git object is the route's backendRefs (the canary's
    ref and the weights; tests/rollout/test_gitops_cluster.py), kept by syncs too."""
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    (rule,) = app["spec"]["ignoreDifferences"]
    assert rule["kind"] == "HTTPRoute"
    assert rule["jqPathExpressions"] == [".spec.rules[].backendRefs"]
    assert "RespectIgnoreDifferences=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_waiting_for_manual_promotion_is_suspended() -> None:
    """As Argo Rollouts shows a rollout paused for promotion: a person must act."""
    awaiting = {"type": "Promoted", "status": "False", "reason": "AwaitingPromotion",
                "message": "all 3 steps passed; waiting for the samp.dev/promote annotation"}
    status, message = health(qm("CanaryProgressing", conditions=[awaiting]))
    assert status == "Suspended" and "samp.dev/promote" in message
    stepping = {"type": "Promoted", "status": "False", "reason": "Stepping", "message": "x"}
    assert health(qm("CanaryProgressing", conditions=[stepping]))[0] == "Progressing"


def test_evaluated_and_ready_without_canary_is_healthy() -> None:
    """Under --no-canary the resource rests at Evaluated with Ready=True."""
    ready = {"type": "Ready", "status": "True", "reason": "Evaluated",
             "message": "quantized and evaluated: perplexity +0.03%; checkpoint at pvc://a/b"}
    status, message = health(qm("Evaluated", conditions=[ready]))
    assert status == "Healthy" and message.startswith("quantized and evaluated")
