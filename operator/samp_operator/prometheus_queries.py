"""The PromQL the gates run, as text: vLLM's metric names, the window's duration, and
the selectors' quoting. No I/O; samp_operator.prometheus sends them (its docstring says
what each figure means)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

E2E = "vllm:e2e_request_latency_seconds_bucket"
TTFT = "vllm:time_to_first_token_seconds_bucket"
E2E_COUNT = "vllm:e2e_request_latency_seconds_count"
SUCCESS = "vllm:request_success_total"
HTTP = "http_requests_total"

class QueryError(Exception):
    """One query failed; ``unreachable`` when Prometheus itself did not answer.

    The message is what status may show (no URL, no answer body); ``detail`` is what
    only the operator's log gets."""

    def __init__(self, message: str, *, unreachable: bool, detail: str = "") -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.detail = detail


def prom_duration(seconds: float) -> str:
    """A PromQL range duration: whole seconds, at least 1s."""
    return f"{max(1, math.ceil(seconds))}s"


def p99_query(bucket: str, selector: str, window: str) -> str:
    return f"histogram_quantile(0.99, sum by (le) (rate({bucket}{selector}[{window}])))"


def _window_change(series: str, by: str, window: str) -> str:
    """The exact change of counters over the window: now minus ``offset`` the window,
    or now alone for series born inside it. Not ``increase()``: it extrapolates to the
    window's edges (1500 requests read as 1746 in tests/rollout/test_histogram_reads.py),
    which would overstate the evidence the intervals rest on."""
    now = f"sum{by} ({series})"
    return f"{now} - sum{by} ({series} offset {window}) or {now}"


def bucket_query(metric: str, selector: str, window: str) -> str:
    """Per-bucket observations of a histogram in the window, one series per ``le``."""
    return _window_change(f"{metric}_bucket{selector}", " by (le)", window)


def sum_query(metric: str, selector: str, window: str) -> str:
    return _window_change(f"{metric}_sum{selector}", "", window)


def replicas_query(selector: str) -> str:
    """Serving instances (scrape targets) that report the end-to-end histogram."""
    return f"count(group by (instance) ({E2E_COUNT}{selector}))"


def escape(value: str) -> str:
    """A value as the inside of a PromQL double-quoted string: it cannot end the string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def quote(value: str) -> str:
    return f'"{escape(value)}"'


def pods_of(deployment: str) -> str:
    """RE2 matching the names of a Deployment's pods (``<name>-<rs hash>-<pod hash>``)."""
    return re.escape(deployment).replace("\\-", "-") + "-[a-z0-9]+-[a-z0-9]+"


@dataclass(frozen=True)
class SeriesScope:
    """Which series are this resource's: its namespace, and each side's pods.

    ``canary_pods``/``stable_pods``: Deployment names whose pods serve that side; None
    leaves that side unscoped by pod. The label names are the provider's."""

    namespace: str | None = None
    canary_pods: str | None = None
    stable_pods: str | None = None
