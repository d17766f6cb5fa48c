"""Latency histograms of each side over the analysis window, for the P99 intervals and
the judge (samp_core.stats): per metric of ``samp_core.gates.HISTOGRAM_METRICS``, the
exact change of ``<metric>_bucket`` by ``le`` and of ``<metric>_sum``, and the serving
replicas, so that the two sides' loads compare per replica. Queries are scoped and
deadlined like the rest of the measurement (samp_operator.prometheus)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from samp_core.canary import AnalysisRequest
from samp_core.gates import HISTOGRAM_METRICS, Measurement, SideFigures
from samp_core.stats.histogram import Histogram
from samp_operator.prometheus_queries import (
    QueryError,
    SeriesScope,
    bucket_query,
    prom_duration,
    replicas_query,
    sum_query,
)


class HistogramSource(Protocol):
    """What the histogram reads need of samp_operator.prometheus.PrometheusProvider."""

    url: str
    scope: SeriesScope
    queries: list[tuple[str, str]]

    def selector(self, model: str, pods: str | None = None) -> str:
        """The side's series selector, scoped like every other query."""

    def query(
        self, promql: str, at: datetime | None = None, deadline: float | None = None
    ) -> float | None:
        """One query's scalar (None when it has no series)."""

    def query_result(self, promql: str, at: datetime | None, deadline: float) -> Any:
        """One query's raw ``result`` (QueryError when it failed)."""

log = logging.getLogger("samp.prometheus")



def query_vector(
    provider: HistogramSource, promql: str, at: datetime | None, deadline: float
) -> list[tuple[Mapping[str, str], float]]:
    """One instant query → (labels, value) per series; QueryError when it failed."""
    result = provider.query_result(promql, at, deadline)
    try:
        return [(dict(r["metric"]), float(r["value"][1])) for r in result]
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise QueryError(
            f"malformed answer (not a vector): {str(result)[:100]}", unreachable=False
        ) from err

def side_histogram(  # noqa: PLR0917
    provider: HistogramSource, model: str, metric: str, window: str,
    at: datetime | None, deadline: float, pods: str | None = None,
) -> Histogram | None:
    """One metric's bucket counts over the window, scoped like the side's other
    figures (namespace, ``pods``); None when it has no series."""
    sel = provider.selector(model, pods)
    buckets_q, sum_q = bucket_query(metric, sel, window), sum_query(metric, sel, window)
    provider.queries += [(f"{model}.{metric}.buckets", buckets_q), (f"{model}.{metric}.sum", sum_q)]
    rows = query_vector(provider, buckets_q, at, deadline)
    if not rows:
        return None
    try:
        buckets = [(float(labels["le"]), value) for labels, value in rows]
    except (KeyError, ValueError) as err:
        raise QueryError(f"bucket series without a numeric le: {rows[:2]}"[:300],
                         unreachable=False) from err
    total = provider.query(sum_q, at=at, deadline=deadline)
    return Histogram.from_cumulative(buckets, total)

def add_histograms(
    provider: HistogramSource, request: AnalysisRequest, m: Measurement, deadline: float
) -> Measurement:
    """``m`` with each side's latency histograms and replica count.

    A failing histogram query is that figure's error (``canary.hist.e2e``...); an
    unreachable Prometheus makes the whole measurement an Error, as in measure()."""
    if m.error is not None:
        return m
    window = prom_duration(request.window_seconds)
    errors = dict(m.query_errors)
    sides: dict[str, SideFigures | None] = {"canary": m.canary, "stable": m.stable}
    models = {"canary": (request.canary_model, provider.scope.canary_pods),
              "stable": (request.stable_model, provider.scope.stable_pods)}
    for prefix, (model, pods) in models.items():
        figures = sides[prefix]
        if model is None or figures is None:
            continue
        hists: dict[str, Histogram] = {}
        replicas: float | None = None
        try:
            for key, metric in HISTOGRAM_METRICS.items():
                try:
                    h = side_histogram(provider, model, metric, window, request.end, deadline,
                                            pods)
                except QueryError as err:
                    if err.unreachable:
                        raise
                    errors[f"{prefix}.hist.{key}"] = str(err)
                    continue
                if h is not None:
                    hists[key] = h
            replicas = provider.query(replicas_query(provider.selector(model, pods)),
                                      at=request.end, deadline=deadline)
        except QueryError as err:
            # As in measure(): the detail goes to the operator's log, status the reason.
            log.warning("prometheus histogram query for %s failed: %s (%s)", model,
                        err.detail or err, provider.url)
            if err.unreachable:
                return Measurement(window_seconds=m.window_seconds, taken_at=m.taken_at,
                                   error=f"Prometheus: {err}")
            errors[f"{prefix}.replicas"] = str(err)
        sides[prefix] = replace(figures, histograms=hists, replicas=replicas)
    return replace(m, canary=sides["canary"] or m.canary, stable=sides["stable"],
                   query_errors=errors)
