"""The quantization state machine: observation in, decision out. No I/O.

``reconcile(body, jobs, config_maps, now, settings)`` takes the QuantizedModel as the API
server returned it, the stage Jobs (and their ConfigMaps) that exist for it, and returns a
:class:`~samp_core.decision.Decision`: the complete new ``status``, the children to create
and to delete (CreateChild and DeleteChild actions), the Events to post, when to look
again, and the facts the canary hand-over and the metrics read (``decision.facts``). The
Kopf handlers (samp_operator.handlers) only gather the observation and hand the decision
to the adapters; every transition is tested here without a cluster
(tests/core/test_reconcile.py).

Phases: Pending → Calibrating → Scoring → Planning → Exporting → Evaluating → Evaluated,
or Failed (a stage Job failed after its retries, or the spec is invalid), or Suspended.

The machine is level-triggered and idempotent: it derives everything from the spec, the
observed Jobs and ``status.stages`` (the memory of finished stages, whose Jobs may be gone
after their TTL). Calling it twice with the same observation yields the same decision, and
Events are emitted only for transitions (a stage record that changed), so a reconcile
repeated after a conflict or a restart does not duplicate Jobs or Events.

Per stage, in order:

1. Its inputs hash (samp_core.stage_contract.stage_hashes) chains the previous stage's
   hash with the spec fields the stage reads. A ``status.stages`` record with the same
   hash that Succeeded (in any generation) is reused: the stage is skipped ("Reused"),
   its artifact kept.
2. Otherwise a Job labelled with that stage and hash is adopted if it exists (also one
   created for an earlier generation, when only unrelated fields changed): Running waits
   for the next Job event; Succeeded reads the result summary the pod left in its
   termination message into status; Failed fails the QuantizedModel with the reason.
3. Otherwise its ConfigMap and Job are created, named ``<name>-g<generation>-<stage>``.

Every other Job or ConfigMap of the QuantizedModel (another hash: an obsolete spec) is
deleted. A spec change mid-stage therefore deletes the obsolete running Job and restarts
from the first stage whose inputs changed.

Hand-over to the canary: once every stage is done the decision has ``facts.quantized``
and phase Evaluated with condition Evaluated=True. The engine (samp_operator.engine) then
runs the canary driver (samp_operator.canary_driver → ``samp_core.canary.decide``), whose
decision follows this one (``Decision.then``): the canary's status replaces it, its actions
and Events come after. While the canary
owns the phase (CanaryProgressing, Paused, Promoted, RolledBack) this machine leaves
phase, Ready and the canary conditions untouched unless a spec change makes a stage
rerun. ``status.history`` is written through samp_core.history by both machines.

Modules: ``draft`` (ObservedJob, the Draft the Decision is built in, status helpers),
``machine`` (``reconcile``), ``stages`` (the walk: one small transition per case),
``summaries`` (typed result summaries into status), ``phase`` (conditions, phase, Ready) and
``invalid`` (specs refused up front).
"""

from samp_core.decision import Decision
from samp_core.events import Event
from samp_core.reconcile.draft import (
    MESSAGE_MAX,
    JobState,
    ObservedJob,
    condition,
    parse_status,
)
from samp_core.reconcile.invalid import unsupported_stores
from samp_core.reconcile.machine import reconcile
from samp_core.reconcile.phase import CANARY_PHASES
from samp_core.reconcile.stages import RESULT_GRACE_SECONDS, RESULT_RETRY_SECONDS
from samp_core.results.summaries import ResultError, parse_summary

__all__ = [
    "CANARY_PHASES",
    "MESSAGE_MAX",
    "RESULT_GRACE_SECONDS",
    "RESULT_RETRY_SECONDS",
    "Decision",
    "Event",
    "JobState",
    "ObservedJob",
    "ResultError",
    "condition",
    "parse_status",
    "parse_summary",
    "reconcile",
    "unsupported_stores",
]
