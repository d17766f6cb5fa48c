"""Shared pieces of the spec: URI and name patterns, quantity/duration field types and
Secret references, used by several parts of a QuantizedModel's ``spec``."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

from samp_core.schema_base import ApiModel, Rule
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
# The name vLLM serves and Prometheus labels its series with: it reaches vLLM's command line
# and PromQL label matchers, so no spaces, quotes, backslashes or newlines.
SERVED_MODEL_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._:/-]*[A-Za-z0-9])?$"
# An OCI image reference as Docker's distribution/reference grammar reads it:
# [registry[:port]/]path[:tag][@digest].
_IMAGE_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_IMAGE_DOMAIN = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*"
IMAGE_PATTERN = (
    rf"^({_IMAGE_DOMAIN}(:[0-9]+)?/)?{_IMAGE_COMPONENT}(/{_IMAGE_COMPONENT})*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@[a-z0-9]+([+._-][a-z0-9]+)*:[a-fA-F0-9]{32,})?$"
)
# A Kubernetes label key (qualified name: optional DNS-subdomain prefix, '/', name of at
# most 63 characters) and label value; node selectors and toleration keys use them.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
# A path segment starting with '..' climbs out of the volume, bucket prefix or ConfigMap
# (whose '..data' is the kubelet's own link); segments end at '/' and, for hf://, '@'.
PATH_ESCAPE_PATTERN = r"(^|[/@])[.][.]"

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


def no_path_escape(wire_name: str, attribute: str, manifest_path: str) -> Rule:
    """Refuse a '..' segment in the URI field ``wire_name`` (CEL) / ``attribute`` (Python)."""
    return Rule(
        cel=f"!has(self.{wire_name}) || !self.{wire_name}.matches('{PATH_ESCAPE_PATTERN}')",
        message=f"{manifest_path} has a '..' path segment, which would climb out of its "
        "volume, bucket prefix or ConfigMap; write the path inside it, without '..'",
        holds=lambda obj: getattr(obj, attribute) is None
        or re.search(PATH_ESCAPE_PATTERN, getattr(obj, attribute)) is None,
        field_path=f".{wire_name}",
    )
