"""``spec.artifacts``: where checkpoints and reports are written."""

from __future__ import annotations

from pydantic import Field

from samp_core.schema_base import ApiModel
from samp_core.spec.common import ARTIFACT_URI_PATTERN, SecretRef, no_path_escape


class ArtifactsSpec(ApiModel):
    """Where checkpoints and reports are written."""

    rules = (no_path_escape("uri", "uri", "spec.artifacts.uri"),)

    uri: str = Field(
        pattern=ARTIFACT_URI_PATTERN,
        max_length=1024,
        description="pvc://claim/path, s3://bucket/prefix or gs://bucket/prefix; each "
        "attempt writes under <uri>/<namespace>/<name>/<inputs-hash>/.",
    )
    cleanup_on_delete: bool = Field(
        default=False, description="Delete the artifacts when the QuantizedModel is deleted."
    )
    secret_ref: SecretRef | None = Field(
        default=None, description="Object-store credentials, if different from the model's."
    )
