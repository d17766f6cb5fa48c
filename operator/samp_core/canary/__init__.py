"""The canary: spec + status + observation + now in, decision out. Pure, no I/O.

Contract with the driver (samp_operator.canary_driver, the one both the operator and the
local demo run)::

    from samp_core import canary
    req = canary.analysis_due(spec, status, name, now)        # AnalysisRequest | None
    m = provider.measure(req, spec.gates) if req else None     # a MeasurementProvider
    d = canary.decide(spec, status, canary.Observation(name=name, annotations=...,
                      canary_ready=..., weight_verified=..., measurement=m), now)
    # d is a samp_core.decision.Decision: write d.status in one status write, then
    # run d.actions in order (EnsureCanary, SetWeight, PromoteStable, RemoveCanary,
    # StartReplan), post d.events, come back after d.requeue_after seconds (None: nothing
    # to wait for).

Where each part lives, as Argo Rollouts splits its canary and its analysis:

* ``model`` — names, annotations, ``Observation``, ``AnalysisRequest`` (the actions and
  the ``Decision`` they come in are samp_core.decision, shared with the quantization machine);
* ``analysis`` — when an analysis is due; judge, count and ``assess`` against the limits;
* ``start`` — phase Evaluated: the accuracy gate, then the canary starts;
* ``machine`` — ``decide``: requests, pause/resume, deadline, steps (a small function each);
* ``endings`` — promotion; rollback and the re-plan it may open; ``settle``: the actions
  that make the world match a written status the machine no longer drives.

``status.history`` is written by samp_core.history, the re-plan math is samp_core.replan.
"""

from samp_core.canary.analysis import analysis_due
from samp_core.canary.endings import settle
from samp_core.canary.machine import decide
from samp_core.canary.model import (
    ANNOTATION_ABORT,
    ANNOTATION_PAUSE,
    ANNOTATION_PROMOTE,
    AnalysisRequest,
    Observation,
    canary_model_name,
    client_model_names,
    served_model_name,
    stable_model_name,
)
from samp_core.events import Event

# samp_jobs.pipeline (the plan Job) still imports the re-plan from here; it lives in
# samp_core.replan. Drop these two once the jobs import it from there.
from samp_core.replan import conservative_plan, replan_ceiling

__all__ = [
    "ANNOTATION_ABORT",
    "ANNOTATION_PAUSE",
    "ANNOTATION_PROMOTE",
    "AnalysisRequest",
    "Event",
    "Observation",
    "analysis_due",
    "canary_model_name",
    "client_model_names",
    "conservative_plan",
    "decide",
    "replan_ceiling",
    "served_model_name",
    "settle",
    "stable_model_name",
]
