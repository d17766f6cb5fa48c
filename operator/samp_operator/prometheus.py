"""Measurement provider: PromQL over Prometheus' HTTP API → samp_core.gates.Measurement.

The provider only measures; samp_core.gates decides. Per side (canary, stable),
over the analysis window ``W`` ending at the request's ``end``:

* requests: ``sum(increase(vllm:request_success_total{model_name="N"}[W]))`` — every
  request the engine finished, whatever its ``finished_reason`` (stop, length,
  abort, error, repetition), plus HTTP 4xx and 5xx answers that never reached the engine;
* errors: engine requests finished as ``abort`` or ``error`` plus HTTP 4xx and 5xx from
  ``http_requests_total{status=~"[45].."}`` (vLLM's instrumentator groups codes as
  ``4xx``/``5xx``, which the regex also matches). A 4xx is an error too: a canary that
  answers the clients' model name with 404 is broken for them, whoever is to blame;
* P99 latency: ``histogram_quantile(0.99, sum by (le) (rate(
  vllm:e2e_request_latency_seconds_bucket{model_name="N"}[W])))``; TTFT the same over
  ``vllm:time_to_first_token_seconds_bucket`` when a TTFT gate is set;
* latency histograms (for the P99 intervals and the judge): per metric of
  ``samp_core.measurement.HISTOGRAM_METRICS``, the change of ``<metric>_bucket{..}`` by
  ``le`` and of ``<metric>_sum{..}`` over the window, exactly (the value now minus the
  value ``offset W``; not ``increase()``, which extrapolates); and the serving replicas,
  ``count(group by (instance) (vllm:e2e_request_latency_seconds_count{..}))``, so that
  the two sides' loads compare per replica (samp_operator.prometheus_histograms);
* custom queries: the user's PromQL with ``$canary``/``$stable`` replaced by the
  served model names, ``$namespace`` by the resource's namespace and ``$window`` by
  ``W``; the answer must be one number.

Tenants are kept apart by a :class:`SeriesScope`: in the operator every built-in
selector also matches the resource's namespace (``namespace="ns"``) and the side's pods
(``pod=~"<deployment>-[a-z0-9]+-[a-z0-9]+"``), the labels a Kubernetes service discovery
relabelling or a PodMonitor attaches (their names are settings; see
samp_operator.settings). Without them a same-named resource in another namespace read
the same series. Every value from the spec is escaped before it enters a matcher.

vLLM's own series carry ``model_name`` (= ``--served-model-name``), so canary
(``<name>-canary``) and stable are separable. The HTTP layer's
``http_requests_total`` has no ``model_name``; its series are told apart by a
target label the scrape configuration attaches (``served_model`` by default: the
canary pod template carries ``samp.dev/served-model``, which a
``labelmap``/``replace`` relabel rule turns into ``served_model``; the tests'
static config sets it directly). Without such a label set ``http_label=None`` and
only the engine's counters count.

What Prometheus answered (its URL, a non-200 body, a TLS failure's detail) goes to the
operator's log only; the measurement, and with it every tenant-visible status, carries
a short reason without them. TLS is verified by default (a CA bundle, or
``insecure_skip_verify``, are opt-in), and credentials come from a Secret as a bearer
token or basic auth, never from the URL.

Unreachable Prometheus (connection refused, timeout, HTTP 5xx, an answer that is not
JSON or not shaped as Prometheus's query API) gives ``Measurement.error``; a failing
single query (HTTP 4xx such as bad_data, more than one series, a result that is not a
number: a string, a range vector) gives ``query_errors[key]``; an empty answer gives
None (the evaluator makes these Error or Inconclusive, never a pass). NaN is passed
through as NaN.

Each query goes through prometheus-api-client's ``PrometheusConnect.custom_query``,
which builds the request (the ``query``/``time`` parameters, headers, basic auth, TLS
verification, the per-read timeout) and parses ``data.result``. It is given a session
(samp_operator.prometheus_session) that adds what the library lacks: each analysis has a
total deadline (``analysis_timeout_seconds``, every query together) and the answer is
read as it arrives, so an endpoint that trickles bytes cannot hold a reconcile worker past
it (a per-read timeout alone does not stop it); answers are capped in size; a redirect is
never followed (it could lead to a host not allowed); every answer but a 200 is refused
before the library sees it. The library's retries are off (``Retry(total=0)``): an
unreachable Prometheus is an Error now, not after a backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from samp_core.canary import AnalysisRequest
from samp_core.gates import Measurement, SideFigures
from samp_core.spec import GatesSpec
from samp_operator.prometheus_histograms import add_histograms
from samp_operator.prometheus_queries import (
    E2E,
    HTTP,
    SUCCESS,
    TTFT,
    QueryError,
    SeriesScope,
    escape,
    p99_query,
    pods_of,
    prom_duration,
    quote,
)
from samp_operator.prometheus_session import BoundedSession, late_reason

log = logging.getLogger("samp.prometheus")


@dataclass(frozen=True)
class Credentials:
    """How to authenticate to Prometheus: a bearer token, or basic auth."""

    token: str | None = None
    username: str | None = None
    password: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def basic(self) -> tuple[str, str] | None:
        if self.token or self.username is None:
            return None
        return (self.username, self.password or "")

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(token={'***' if self.token else None}, username={self.username!r})"


@dataclass
class PrometheusProvider:
    """Runs the gate queries against one Prometheus.

    ``http_label``: the target label that tells canary and stable apart on
    ``http_requests_total`` (None: ignore HTTP 4xx/5xx). ``extra_selector``: label
    matchers added to every selector. ``scope``: this resource's series (namespace and
    pods), matched by ``namespace_label`` and ``pod_label`` (None: not matched).
    ``verify``: True (system CAs), a CA bundle path, or False (``insecureSkipVerify``).
    """

    url: str
    timeout_seconds: float = 5.0  # connect, and each read
    http_label: str | None = "served_model"
    extra_selector: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    queries: list[tuple[str, str]] = field(default_factory=list)  # (key, promql) of last measure
    analysis_timeout_seconds: float = 15.0  # one whole measure(), every query together
    scope: SeriesScope = field(default_factory=SeriesScope)
    namespace_label: str | None = "namespace"
    pod_label: str | None = "pod"
    verify: bool | str = True
    credentials: Credentials = field(default_factory=Credentials)

    def __post_init__(self) -> None:
        self._session = BoundedSession(self.analysis_timeout_seconds)
        # The library sends verify=session.verify with each request, so a CA path or False
        # wins over REQUESTS_CA_BUNDLE (a session's own verify alone would lose to it).
        self._session.verify = self.verify
        self._session.headers.update(self.credentials.headers())
        self._client = PrometheusConnect(
            url=self.url.rstrip("/"),
            headers=dict(self.headers) or None,
            auth=self.credentials.basic(),
            session=self._session,
            # No retries: an unreachable Prometheus must surface as an Error now.
            retry=Retry(total=0, connect=0, read=0, status=0),
        )

    # ---------------------------------------------------------------- queries

    def _scoped(self, parts: list[str], pods: str | None) -> str:
        if self.namespace_label and self.scope.namespace is not None:
            parts.append(f"{self.namespace_label}={quote(self.scope.namespace)}")
        if self.pod_label and pods is not None:
            parts.append(f"{self.pod_label}=~{quote(pods_of(pods))}")
        if self.extra_selector:
            parts.append(self.extra_selector)
        return "{" + ",".join(parts) + "}"

    def selector(self, model: str, pods: str | None = None, **extra: str) -> str:
        parts = [f"model_name={quote(model)}"]
        parts += [f"{k}={v}" for k, v in extra.items()]
        return self._scoped(parts, pods)

    def _http_sel(self, model: str, pods: str | None = None) -> str | None:
        if self.http_label is None:
            return None
        return self._scoped([f"{self.http_label}={quote(model)}", 'status=~"[45].."'], pods)

    def side_queries(
        self, model: str, window: str, ttft: bool, pods: str | None = None
    ) -> dict[str, str]:
        """PromQL per figure for one served model name (served by ``pods``' pods)."""
        http = self._http_sel(model, pods)
        http5xx = f"sum(increase({HTTP}{http}[{window}]))" if http else None  # 4xx and 5xx
        engine = f"sum(increase({SUCCESS}{self.selector(model, pods)}[{window}]))"
        failed = self.selector(model, pods, finished_reason='~"abort|error"')
        engine_err = f"sum(increase({SUCCESS}{failed}[{window}]))"
        q = {
            "requests": engine if http5xx is None else f"{engine} + ({http5xx} or vector(0))",
            "errors": engine_err if http5xx is None else f"{engine_err} + ({http5xx} or vector(0))",
            "p99": p99_query(E2E, self.selector(model, pods), window),
        }
        if ttft:
            q["ttftP99"] = p99_query(TTFT, self.selector(model, pods), window)
        return q

    def query(
        self, promql: str, at: datetime | None = None, deadline: float | None = None
    ) -> float | None:
        """One instant query → a number, None when empty; QueryError when it failed.

        ``deadline`` (``time.monotonic()``) bounds the whole query, reading included;
        by default ``analysis_timeout_seconds`` from now."""
        if deadline is None:
            deadline = time.monotonic() + self.analysis_timeout_seconds
        result = self.query_result(promql, at, deadline)
        try:
            return _number(result)
        except (KeyError, TypeError, IndexError, ValueError) as err:
            raise QueryError("malformed answer (not one number)", unreachable=False,
                             detail=str(result)[:300]) from err

    def query_result(self, promql: str, at: datetime | None, deadline: float) -> Any:
        """One instant query's ``data.result``, through the library; QueryError when it
        failed (the session refuses late, oversized, redirected and non-200 answers)."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise QueryError(late_reason(self.analysis_timeout_seconds), unreachable=True)
        params = {} if at is None else {"time": f"{at.timestamp():.3f}"}
        try:
            with self._session.deadline(deadline):
                return self._client.custom_query(
                    promql, params=params, timeout=max(0.1, min(self.timeout_seconds, left)))
        except requests.exceptions.JSONDecodeError as err:  # a proxy page, not Prometheus
            raise QueryError("invalid answer (not JSON)", unreachable=True,
                             detail=f"{err}: {self._session.last_body[:300]!r}") from err
        except (KeyError, TypeError, IndexError) as err:  # from its ["data"]["result"]
            raise QueryError("malformed answer (no data.result)", unreachable=True,
                             detail=repr(self._session.last_body[:300])) from err
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as err:
            # The exception's text names the URL: only its kind goes to status.
            reason = type(err).__name__
            if isinstance(err, requests.exceptions.SSLError):
                reason += (" (TLS verification failed: give the CA bundle, or opt in to "
                           "insecureSkipVerify)")
            raise QueryError(reason, unreachable=True, detail=str(err)) from err

    # --------------------------------------------------------------- measure

    def _plan(self, request: AnalysisRequest, gates: GatesSpec) -> list[tuple[str, str]]:
        """(key, PromQL) of every figure this window needs: both sides, then custom."""
        window = prom_duration(request.window_seconds)
        ttft = (
            gates.latency.ttft_p99_max_seconds is not None
            or gates.latency.ttft_p99_max_ratio_to_stable is not None
        )
        scope = self.scope
        plan: list[tuple[str, str]] = [
            (f"canary.{k}", q)
            for k, q in self.side_queries(
                request.canary_model, window, ttft, scope.canary_pods
            ).items()
        ]
        if request.stable_model is not None:
            plan += [
                (f"stable.{k}", q)
                for k, q in self.side_queries(
                    request.stable_model, window, ttft, scope.stable_pods
                ).items()
            ]
        for cq in gates.custom_queries:
            text = (
                # Inside the user's quotes (model_name="$canary"): escaped, so a served
                # name from the spec cannot close the matcher and widen the query.
                cq.query.replace("$canary", escape(request.canary_model))
                .replace("$stable", escape(request.stable_model or ""))
                .replace("$namespace", escape(scope.namespace or ""))
                .replace("$window", window)
            )
            plan.append((f"query:{cq.name}", text))
        return plan

    def measure(self, request: AnalysisRequest, gates: GatesSpec) -> Measurement:
        """Every figure the gates need for this window."""
        plan = self.queries = self._plan(request, gates)

        values: dict[str, float | None] = {}
        errors: dict[str, str] = {}
        deadline = time.monotonic() + self.analysis_timeout_seconds
        for key, promql in plan:
            try:
                values[key] = self.query(promql, at=request.end, deadline=deadline)
            except QueryError as err:
                # The detail (URL, body) goes to the operator's log; status gets the reason.
                log.warning("prometheus query %s for %s failed: %s (%s)", key,
                            request.canary_model, err.detail or err, self.url)
                if err.unreachable:
                    return Measurement(
                        window_seconds=request.window_seconds,
                        taken_at=request.end,
                        error=f"Prometheus: {err}",
                    )
                errors[key] = str(err)
                values[key] = None

        def side(prefix: str) -> SideFigures:
            return SideFigures(
                requests=values.get(f"{prefix}.requests"),
                errors=values.get(f"{prefix}.errors"),
                p99_seconds=values.get(f"{prefix}.p99"),
                ttft_p99_seconds=values.get(f"{prefix}.ttftP99"),
            )

        return add_histograms(self, request, Measurement(
            window_seconds=request.window_seconds,
            taken_at=request.end,
            canary=side("canary"),
            stable=side("stable") if request.stable_model is not None else None,
            custom={cq.name: values.get(f"query:{cq.name}") for cq in gates.custom_queries},
            query_errors=errors,
        ), deadline)


def _number(data: Any) -> float | None:
    """An instant-query result as one float: scalar, or a vector of exactly one sample."""
    if data is None:
        return None
    if isinstance(data, list) and len(data) == 2 and not isinstance(data[0], dict):
        return float(data[1])  # resultType scalar: [ts, "value"]
    if isinstance(data, list):
        if not data:
            return None
        if len(data) > 1:
            raise QueryError(
                f"query returned {len(data)} series; aggregate it to one (sum, max, ...)",
                unreachable=False,
            )
        return float(data[0]["value"][1])
    raise QueryError("unexpected result (not a scalar or vector)", unreachable=False,
                     detail=str(data)[:300])


def now_utc() -> datetime:
    return datetime.now(UTC)
