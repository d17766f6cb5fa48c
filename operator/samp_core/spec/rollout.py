"""``spec.rollout``: canary steps, traffic route, analysis limits and closed-loop re-plan."""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from pydantic import Field

from samp_core.schema_base import ApiModel, Rule
from samp_core.spec.common import DNS_LABEL_PATTERN, Duration
from samp_core.units import parse_duration


class CanaryStep(ApiModel):
    """One traffic step of the canary."""

    weight: int = Field(ge=1, le=100, description="Percent of traffic sent to the canary.")
    duration: Duration = Field(
        default="5m", description="Minimum time at this weight, e.g. 5m; gates run throughout."
    )


class HTTPRouteRef(ApiModel):
    """A Gateway API HTTPRoute whose backend weights the operator manages."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="HTTPRoute name.")
    stable_backend: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="Service of the stable backend."
    )
    canary_backend: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Service of the canary backend; defaults to <name>-canary.",
    )


class ReplanSpec(ApiModel):
    """Closed-loop re-planning after a failed canary."""

    enabled: bool = Field(
        default=False,
        description="On a failed gate, raise the most sensitive groups toward 16-bit and "
        "try again.",
    )
    max_attempts: int = Field(default=3, ge=1, le=10, description="Attempts in total.")
    max_budget_increase_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="How far a re-plan may exceed the budget, as a fraction of it.",
    )


class RolloutSpec(ApiModel):
    """Canary steps and the limits of the analysis."""

    rules = (
        Rule(
            cel="self.steps.map(s, s.weight).isSorted() && "
            "self.steps.all(s, self.steps.exists_one(t, t.weight == s.weight))",
            message="rollout.steps weights must strictly increase (e.g. 10, 50, 100)",
            holds=lambda r: all(a.weight < b.weight for a, b in pairwise(r.steps)),
            field_path=".steps",
        ),
        Rule(
            cel="self.steps.all(s, duration(s.duration) >= duration(self.analysisInterval))",
            message="every rollout step must last at least one analysisInterval, or no "
            "measurement can finish inside it",
            holds=lambda r: all(
                parse_duration(s.duration) >= parse_duration(r.analysis_interval)
                for s in r.steps
            ),
            field_path=".steps",
        ),
        Rule(
            cel="duration(self.progressDeadline) >= duration('1m')",
            message="rollout.progressDeadline must be at least 1m",
            holds=lambda r: parse_duration(r.progress_deadline) >= 60,
            field_path=".progressDeadline",
        ),
        Rule(
            cel="duration(self.analysisInterval) >= duration('1s')",
            message="rollout.analysisInterval must be at least 1s (a measurement needs a "
            "window of time); e.g. 1m",
            holds=lambda r: parse_duration(r.analysis_interval) >= 1,
            field_path=".analysisInterval",
        ),
    )

    steps: list[CanaryStep] = Field(
        default=[
            CanaryStep(weight=10, duration="5m"),
            CanaryStep(weight=50, duration="10m"),
            CanaryStep(weight=100, duration="5m"),
        ],
        min_length=1,
        max_length=20,
        description="Traffic steps; weights strictly increase and end at or below 100.",
    )
    http_route: HTTPRouteRef | None = Field(
        default=None,
        description="Gateway API route to shift. Without one, traffic follows the replica "
        "ratio of canary and stable pods behind the stable Service.",
    )
    analysis_interval: Duration = Field(
        default="1m", description="How often gates are measured."
    )
    failure_limit: int = Field(
        default=0, ge=0, le=100, description="Failed measurements tolerated before rollback."
    )
    inconclusive_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Inconclusive measurements (too few requests, no data) tolerated before "
        "rollback. Inconclusive never counts as a pass.",
    )
    consecutive_error_limit: int = Field(
        default=4,
        ge=0,
        le=100,
        description="Consecutive measurement errors (Prometheus unreachable) tolerated "
        "before rollback; counted apart from failures.",
    )
    progress_deadline: Duration = Field(
        default="2h", description="Roll back when the canary has not finished by then."
    )
    promotion: Literal["automatic", "manual"] = Field(
        default="automatic",
        description="automatic: promote when the last step passes; manual: wait for the "
        "samp.dev/promote annotation.",
    )
    promotion_strategy: Literal["UpdateStable", "ShiftRoute"] = Field(
        default="UpdateStable",
        description="UpdateStable: the stable Deployment switches to the artifact; "
        "ShiftRoute: the route sends all traffic to the canary backend.",
    )
    replan: ReplanSpec = Field(default_factory=ReplanSpec, description="Closed-loop re-plan.")
