"""A spec the machine cannot act on: refused with the fields named, and every child of an
earlier spec deleted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from samp_core.api import QuantizedModel
from samp_core.decision import Decision
from samp_core.events import Event
from samp_core.reconcile.draft import Draft, ObservedJob, clip, condition, put_condition
from samp_core.status import ConditionType, Phase, QuantizedModelStatus
from samp_core.validation import Problem

_OBJECT_STORES = ("s3://", "gs://")


def unsupported_stores(resource: QuantizedModel) -> list[Problem]:
    """Object-store URIs the API accepts but this release's Jobs cannot use yet.

    Stages run in separate pods and hand their work directory on through the artifact
    volume, and the jobs read model and prompts from mounted paths or the Hugging Face
    hub; nothing in the job image talks to S3 or GCS. Refusing up front with the field
    named beats a Job that fails (or silently loses its output) hours later.
    """
    spec = resource.spec
    fields = {
        "spec.model.source": spec.model.source,
        "spec.calibration.source": spec.calibration.source,
        "spec.gates.accuracy.evalSet": spec.gates.accuracy.eval_set,
        "spec.artifacts.uri": spec.artifacts.uri,
    }
    return [
        Problem(path, f"{uri.split('://')[0]}:// is not supported by this release's Jobs yet",
                "copy the data to a PersistentVolumeClaim and use pvc://claim/path")
        for path, uri in fields.items()
        if uri and uri.startswith(_OBJECT_STORES)
    ]


def invalid_spec(  # noqa: PLR0917
    body: Mapping[str, Any], old: QuantizedModelStatus, problems: Sequence[Any],
    jobs: Sequence[ObservedJob], config_maps: Sequence[str], now: datetime,
) -> Decision:
    generation = int((body.get("metadata") or {}).get("generation") or 1)
    message = "; ".join(str(p) for p in problems) or "the spec could not be read"
    status = old.model_copy(deep=True)
    prior = condition(old, ConditionType.READY)
    status.phase = Phase.FAILED
    status.progress = None  # its Jobs are deleted below
    status.observed_generation = generation
    status.message = clip(f"invalid spec: {message}", 4000)
    put_condition(status.conditions, ConditionType.READY, "False", "InvalidSpec", message,
                  now, generation)
    draft = Draft(status=status)
    if not (prior and prior.reason == "InvalidSpec" and prior.observed_generation == generation
            and prior.message == clip(message)):
        draft.events.append(Event("Warning", "InvalidSpec", clip(message)))
    # Nothing of an earlier spec is wanted any more.
    for job in jobs:
        if not job.deleting:
            draft.delete("Job", job.name)
    for name in config_maps:
        draft.delete("ConfigMap", name)
    return draft.decision()

