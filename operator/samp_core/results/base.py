"""What every stage document and summary shares: the stage names, the model base, hashing.

Each stage (calibrate, sensitivity, plan, export, evaluate) is a separate Job; the only
thing that crosses from a Job back to the operator is its result document (full JSON in
the work directory) and that document's typed summary in the pod's termination message,
which Kubernetes caps at 4096 bytes, so summaries stay under :data:`SUMMARY_MAX_BYTES`.
JSON uses camelCase aliases because the same fields surface in ``QuantizedModel.status``.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

API_VERSION: Final = "samp.dev/v1alpha1"
SUMMARY_MAX_BYTES = 3000


class Stage(StrEnum):
    CALIBRATE = "calibrate"
    SENSITIVITY = "sensitivity"
    PLAN = "plan"
    EXPORT = "export"
    EVALUATE = "evaluate"


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("non-finite floats cannot be hashed canonically")
    return value


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, enums and models flattened."""
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def inputs_hash(**inputs: Any) -> str:
    """``sha256:<hex>`` over the canonical JSON of the named inputs.

    Pass what determines a stage's output, e.g.
    ``inputs_hash(model_revision=..., calibration_digest=..., policy=spec.quantization,
    profile=profile.name)``. Key order and dict order do not matter; values may be
    pydantic models, enums, lists, sets, dicts and JSON scalars.
    """
    digest = hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest()
    return f"sha256:{digest}"


class _Model(BaseModel):
    # inf/NaN are real outcomes (a broken quantization has infinite perplexity) and
    # must survive the JSON round trip instead of silently becoming null.
    model_config = ConfigDict(
        populate_by_name=True,
        alias_generator=to_camel,
        extra="forbid",
        ser_json_inf_nan="strings",
    )


class ResultBase(_Model):
    """Fields every stage document carries."""

    STAGE: ClassVar[Stage]
    kind: str

    api_version: Literal["samp.dev/v1alpha1"] = API_VERSION
    inputs_hash: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    stage: Stage | None = None

    @model_validator(mode="after")
    def _stage_default(self) -> ResultBase:
        if self.stage is None:
            self.stage = self.STAGE
        elif self.stage != self.STAGE:
            raise ValueError(f"{type(self).__name__} must have stage {self.STAGE}")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    def summary(self) -> SummaryBase:
        """The small typed summary (< SUMMARY_MAX_BYTES as JSON) for a termination message."""
        raise NotImplementedError

    def summary_json(self) -> str:
        """Compact JSON of summary(), guaranteed to fit the termination-message budget."""
        return self.summary().to_json()

    def _summary_header(self) -> dict[str, Any]:
        return {"stage": self.stage, "inputs_hash": self.inputs_hash}


class SummaryBase(_Model):
    """What a stage leaves in its pod's termination message; the operator reads it back.

    Each stage's summary type names its document's ``kind``. Fields listed in ``DROPPABLE``
    are optional extras: when the JSON would not fit, the largest of them is dropped and
    ``truncated`` set, so a summary always arrives with the figures the operator uses.
    """

    DROPPABLE: ClassVar[tuple[str, ...]] = ()
    kind: str
    stage: Stage
    inputs_hash: str = ""
    truncated: bool | None = None

    def to_json(self) -> str:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        droppable = [type(self).model_fields[n].alias or n for n in self.DROPPABLE]
        text = _compact(data)
        while len(text.encode()) > SUMMARY_MAX_BYTES:
            present = [k for k in droppable if k in data]
            if not present:
                break
            del data[max(present, key=lambda k: len(_compact({k: data[k]})))]
            data["truncated"] = True
            text = _compact(data)
        return text

    def describe(self) -> str:
        """One line for the stage's record in status and its Event."""
        raise NotImplementedError


def _compact(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)
