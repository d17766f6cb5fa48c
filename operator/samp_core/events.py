"""The Kubernetes Event a pure machine asks the operator to post (both machines use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Event"]


@dataclass(frozen=True)
class Event:
    """An Event to post on the QuantizedModel: ``type`` Normal or Warning, a CamelCase
    ``reason`` and a human ``message``."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
