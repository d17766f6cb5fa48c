"""Shared pieces of the spec: URI and name patterns, quantity/duration field types and
Secret references, used by several parts of a QuantizedModel's ``spec``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from samp_core.schema_base import ApiModel
from samp_core.units import DURATION_PATTERN, QUANTITY_PATTERN, RESOURCE_QUANTITY_PATTERN

# URI forms. The model may come from a hub, an object store or a PVC; calibration prompts
# additionally from a ConfigMap; "synthetic://" names generated data and is refused unless
# spec.calibration.allowSynthetic is true (DESIGN.md: calibrate on production traffic).
MODEL_URI_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?"
    r"|s3://[a-z0-9][a-z0-9.-]{1,62}(/[^\s]*)?"
    r"|gs://[a-z0-9][a-z0-9._-]{1,62}(/[^\s]*)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?)$"
)
CALIBRATION_URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,62}/[^\s]+"
    r"|gs://[a-z0-9][a-z0-9._-]{1,62}/[^\s]+"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^\s]+"
    r"|configmap://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[-._a-zA-Z0-9]+"
    r"|synthetic://[a-z0-9-]+)$"
)
ARTIFACT_URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,62}(/[^\s]*)?"
    r"|gs://[a-z0-9][a-z0-9._-]{1,62}(/[^\s]*)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?)$"
)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
PROMETHEUS_URL_PATTERN = r"^https?://[^\s/]+(/[^\s]*)?$"
# The largest weight budget accepted: more than any model served today (a 1T-parameter
# model is 2 TiB at 16 bits); a bigger figure is a typo such as "38Pi" for "38Gi".
MAX_WEIGHT_BYTES = 64 * 2**40

Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)]
ResourceQuantity = Annotated[str, Field(pattern=RESOURCE_QUANTITY_PATTERN, max_length=32)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]


class SecretRef(ApiModel):
    """A Secret in the QuantizedModel's namespace."""

    name: str = Field(
        description="Name of the Secret; its keys become environment variables of the Jobs "
        "(for example HF_TOKEN, AWS_ACCESS_KEY_ID). Never copied into status, events or logs.",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )
