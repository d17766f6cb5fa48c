"""One analysis window as a metric provider measured it. Pure data, no I/O.

A provider (``samp_operator.prometheus``) fills these; the gates (samp_core.gates)
judge them. Per side: counts and point quantiles as PromQL computed them, plus the
bucket counts of vLLM's latency histograms (:class:`~samp_core.stats.histogram.Histogram`)
from which the gates estimate intervals and run the rank test, and the number of serving
replicas, so that canary and stable can be compared per replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from samp_core.stats.histogram import Histogram

__all__ = ["HISTOGRAM_METRICS", "Measurement", "SideFigures"]

# Latency histograms the gates read, by short key: end-to-end request latency, time to
# first token, time per output token (vLLM's inter-token latency).
HISTOGRAM_METRICS: Mapping[str, str] = MappingProxyType({
    "e2e": "vllm:e2e_request_latency_seconds",
    "ttft": "vllm:time_to_first_token_seconds",
    "itl": "vllm:inter_token_latency_seconds",
})


@dataclass(frozen=True)
class SideFigures:
    """What one side (canary or stable) did during the window. None = no data."""

    requests: float | None = None  # requests finished in the window (every finished_reason)
    errors: float | None = None  # of which failed: engine abort/error + HTTP 4xx/5xx
    p99_seconds: float | None = None  # P99 end-to-end latency
    ttft_p99_seconds: float | None = None  # P99 time to first token
    # Bucket counts over the window, by HISTOGRAM_METRICS key; absent = not measured.
    histograms: Mapping[str, Histogram] = field(default_factory=dict)
    replicas: float | None = None  # serving instances that reported in the window


@dataclass(frozen=True)
class Measurement:
    """One analysis window as the metric provider saw it.

    ``error`` set means the backend did not answer at all; ``query_errors`` maps a
    figure key (``canary.p99``, ``stable.requests``, ``canary.hist.e2e``,
    ``query:<name>``...) to the error of that one query. ``custom`` holds custom-query
    values by gate name.
    """

    window_seconds: float
    taken_at: datetime
    canary: SideFigures = field(default_factory=SideFigures)
    stable: SideFigures | None = None
    custom: Mapping[str, float | None] = field(default_factory=dict)
    error: str | None = None
    query_errors: Mapping[str, str] = field(default_factory=dict)
