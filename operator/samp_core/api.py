"""The QuantizedModel resource (samp.dev/v1alpha1) as one typed object.

Entry points for the other layers:
- ``QuantizedModel.model_validate(manifest_dict)`` parses a manifest (raises
  pydantic.ValidationError; samp_core.validation turns it into readable problems).
- ``resource.spec.quantization`` is the SAMP policy; ``samp_core.planner.request_from_spec``
  turns it into the planner's request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from samp_core.spec import QuantizedModelSpec
from samp_core.status import QuantizedModelStatus

GROUP = "samp.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "QuantizedModel"
PLURAL = "quantizedmodels"
SINGULAR = "quantizedmodel"
SHORT_NAMES = ["qm"]
CATEGORIES = ["samp"]
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Child objects are named <name>-g<generation>-<stage>; 40 characters leave room for that
# inside the 63-character limit of Job and Service names.
MAX_NAME_LENGTH = 40


class ObjectMeta(BaseModel):
    """The parts of metadata the project reads; the API server owns the rest."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH)
    namespace: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=63)
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class QuantizedModel(BaseModel):
    """A whole QuantizedModel object as found in a manifest or returned by the API server."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["samp.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["QuantizedModel"]
    metadata: ObjectMeta
    spec: QuantizedModelSpec
    status: QuantizedModelStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def generation(self) -> int:
        return self.metadata.generation or 1


def parse(manifest: dict[str, Any]) -> QuantizedModel:
    """Parse a manifest; raises pydantic.ValidationError listing every problem."""
    return QuantizedModel.model_validate(manifest)
