"""The one canary driver (samp_operator.canary_driver) over fake serving, router and
provider: what it observes, what it measures, which implementation each action reaches.
Fast, pure: the fakes record calls; the real implementations are exercised by
test_rollout_real.py (local processes) and test_rollout_cluster.py (Kubernetes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from latency_sim import steady_side
from samp_core import canary as cn
from samp_core import gates as g
from samp_core.api import parse
from samp_core.decision import Decision, EnsureCanary, Facts, PromoteStable, RemoveCanary, SetWeight
from samp_core.events import Event
from samp_core.spec import GatesSpec, QuantizedModelSpec
from samp_core.status import AccuracySummary, Phase, QuantizedModelStatus
from samp_operator.canary_driver import CanaryDriver, NoPrometheus
from samp_operator.canary_kube import KubeCanary, KubeServing
from spec_fixtures import make_spec

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAME = "tiny-llama"



def evaluated() -> QuantizedModelStatus:
    return QuantizedModelStatus(
        phase=Phase.EVALUATED,
        accuracy=AccuracySummary(perplexity_base=10.0, perplexity_quantized=10.2, passed=True),
        artifact_uri="pvc://models/tiny/attempt-1",
    )


@dataclass
class FakeServing:
    ready: bool = True
    exists: bool = True
    calls: list[Any] = field(default_factory=list)
    fail_promote: int = 0  # the next n promotions raise (an API error)

    def canary_ready(self) -> bool:
        return self.ready

    def canary_exists(self) -> bool:
        return self.exists

    def ensure_canary(self, action: EnsureCanary) -> None:
        self.calls.append(action)
        self.exists = True

    def promote(self, action: PromoteStable) -> None:
        if self.fail_promote:
            self.fail_promote -= 1
            raise ApiError(500)
        self.calls.append(action)

    def remove_canary(self) -> None:
        self.calls.append("remove")
        self.exists = False


@dataclass
class FakeRouter:
    weight: int = 0
    takes: bool = True  # False: the weight never takes (a route that is not accepted)
    sets: list[int] = field(default_factory=list)
    verified: list[int] = field(default_factory=list)

    def set_weight(self, weight: int) -> None:
        self.sets.append(weight)
        if self.takes:
            self.weight = weight

    def verify_weight(self, weight: int) -> bool:
        self.verified.append(weight)
        return self.weight == weight

    def stable_serving(self) -> bool:
        return self.weight == 0


@dataclass
class FakeProvider:
    p99: float = 0.3
    requests: list[cn.AnalysisRequest] = field(default_factory=list)

    def measure(self, request: cn.AnalysisRequest, gates: GatesSpec) -> g.Measurement:
        self.requests.append(request)
        return g.Measurement(
            window_seconds=request.window_seconds,
            taken_at=request.end,
            canary=steady_side(2000, self.p99),  # enough requests to judge a P99
            stable=steady_side(2000, 0.3),
        )


@dataclass
class Run:
    spec: QuantizedModelSpec
    driver: CanaryDriver
    status: QuantizedModelStatus = field(default_factory=evaluated)
    now: datetime = T0
    annotations: dict[str, str] = field(default_factory=dict)

    def turn(self, seconds: float = 5, generation: int | None = 3) -> Decision:
        self.now += timedelta(seconds=seconds)
        t = self.driver.step(self.spec, self.status, NAME, self.annotations, generation,
                             self.now)
        self.status = t.decision.status
        return t.decision

    def until_done(self, limit: int = 200) -> None:
        for _ in range(limit):
            self.turn()
            if self.status.phase not in (Phase.CANARY, Phase.PAUSED, Phase.EVALUATED):
                return
        raise AssertionError(f"still {self.status.phase}")


def fakes(**router: Any) -> tuple[FakeServing, FakeRouter, FakeProvider, CanaryDriver]:
    s, r, p = FakeServing(), FakeRouter(**router), FakeProvider()
    return s, r, p, CanaryDriver(s, r, p)


def test_healthy_canary_reaches_each_implementation_in_order() -> None:
    serving, router, provider, driver = fakes()
    run = Run(make_spec(), driver)
    run.until_done()
    assert run.status.phase is Phase.PROMOTED
    assert router.sets == [25, 100, 0]
    ensure = serving.calls[0]
    assert ensure == EnsureCanary(
        "tiny-llama-canary", "pvc://models/tiny/attempt-1", 1, aliases=("tiny-llama",)
    )
    assert serving.calls[1:] == [PromoteStable("UpdateStable", run.status.artifact_uri),
                                 "remove"]
    # Every analysis window is one interval, names the canary and the stable series.
    assert provider.requests
    assert {(r.canary_model, r.stable_model, r.window_seconds) for r in provider.requests} == {
        ("tiny-llama-canary", "tiny-llama", 10.0)
    }
    assert provider.requests[0].weight == 25
    assert run.status.canary is not None
    assert run.status.canary.analyses == len(provider.requests)


def test_the_driver_adds_nothing_to_the_machine() -> None:
    """Its decision is samp_core.canary.decide's over what it observed."""
    _s, _r, provider, driver = fakes()
    run = Run(make_spec(), driver)
    for _ in range(8):
        before, at = run.status, run.now + timedelta(seconds=5)
        d = run.turn()
        m = provider.requests and provider.requests[-1].end == at
        expected = cn.decide(run.spec, before, cn.Observation(
            name=NAME, annotations={}, canary_ready=True,
            weight_verified=True if before.canary and before.canary.weight
            and before.phase is Phase.CANARY else None,
            measurement=provider.measure(provider.requests[-1], run.spec.gates) if m else None,
            generation=3), at)
        assert d == expected


def test_weight_is_verified_only_while_traffic_moves_and_set_again_when_not_in_effect() -> None:
    serving, router, _p, driver = fakes()
    run = Run(make_spec(), driver)
    serving.ready = False
    run.turn(0)
    run.turn()
    assert router.verified == [] and router.sets == []  # weight 0: nothing to verify
    serving.ready = True
    run.turn()
    assert router.sets == [25]
    router.weight = 0  # someone reset the route
    d = run.turn()
    assert router.verified[-1] == 25
    assert d.actions == (SetWeight(25),) and router.sets == [25, 25]


def test_annotations_and_generation_reach_the_machine() -> None:
    _s, router, _p, driver = fakes()
    run = Run(make_spec(), driver)
    run.turn(0)
    run.turn()
    run.annotations[cn.ANNOTATION_ABORT] = "true"
    run.turn(generation=7)
    assert run.status.phase is Phase.ROLLED_BACK
    rolled = next(c for c in run.status.conditions if c.type == "RolledBack")
    assert rolled.reason == "Aborted" and rolled.observed_generation == 7
    assert router.sets[-1] == 0


def test_without_prometheus_every_analysis_is_an_error_and_never_promotes() -> None:
    serving, router, _p, _d = fakes()
    driver = CanaryDriver(serving, router, NoPrometheus())
    run = Run(make_spec(consecutiveErrorLimit=2), driver)
    run.until_done()
    assert run.status.phase is Phase.ROLLED_BACK
    assert next(c for c in run.status.conditions if c.type == "RolledBack").reason == (
        "MeasurementErrorLimitExceeded"
    )
    assert "no Prometheus configured" in run.status.gates[0].message
    assert not any(isinstance(c, PromoteStable) for c in serving.calls)


def test_replan_touches_only_traffic_and_the_canary() -> None:
    serving, router, provider, driver = fakes()
    provider.p99 = 0.9  # 3x the stable: the ratio gate fails
    run = Run(make_spec(replan={"enabled": True, "maxAttempts": 2}), driver)
    run.until_done()
    assert run.status.phase is Phase.PLANNING and run.status.attempt == 2
    assert router.sets == [25, 0] and serving.calls[-1] == "remove"


# ------------------------------------------------- the Kubernetes implementations


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@dataclass
class FakeApi:
    """AppsV1Api and CoreV1Api in one: what exists, and every call made."""

    exists: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    annotations: dict[str, dict[str, str] | None] = field(default_factory=dict)

    def create_namespaced_deployment(self, ns: str, body: dict[str, Any]) -> None:
        self._create("Deployment", body["metadata"]["name"])
        self.annotations[body["metadata"]["name"]] = body["metadata"].get("annotations")

    def create_namespaced_service(self, ns: str, body: dict[str, Any]) -> None:
        self._create("Service", body["metadata"]["name"])

    def _create(self, kind: str, name: str) -> None:
        self.calls.append(("create", f"{kind}/{name}"))
        if f"{kind}/{name}" in self.exists:
            raise ApiError(409)
        self.exists.add(f"{kind}/{name}")

    def delete_namespaced_deployment(self, name: str, ns: str) -> None:
        self._delete("Deployment", name)

    def delete_namespaced_service(self, name: str, ns: str) -> None:
        self._delete("Service", name)

    def _delete(self, kind: str, name: str) -> None:
        self.calls.append(("delete", f"{kind}/{name}"))
        if f"{kind}/{name}" not in self.exists:
            raise ApiError(404)
        self.exists.discard(f"{kind}/{name}")

    def read_namespaced_deployment(self, name: str, ns: str) -> Any:
        from types import SimpleNamespace

        self.calls.append(("read", f"Deployment/{name}"))
        meta = SimpleNamespace(annotations=self.annotations.get(name), resource_version="7")
        return SimpleNamespace(metadata=meta)

    def patch_namespaced_deployment(self, name: str, ns: str, body: dict[str, Any],
                                    **kw: Any) -> None:
        self.calls.append(("replace", f"Deployment/{name}"))
        assert body["metadata"]["resourceVersion"] == "7" and "template" in body["spec"]
        self.annotations[name] = body["metadata"]["annotations"]

    def read_namespaced_deployment_status(self, name: str, ns: str) -> Any:
        if f"Deployment/{name}" not in self.exists:
            raise ApiError(404)
        raise ApiError(500)


def test_kube_serving_is_idempotent() -> None:
    api = FakeApi()
    spec = make_spec(httpRoute={"name": "r", "stableBackend": "tiny-llama"})
    serving = KubeServing(api, api, spec, NAME, "ml", "uid-1")
    ensure = EnsureCanary("tiny-llama-canary", "pvc://models/x", 1)
    serving.ensure_canary(ensure)
    serving.ensure_canary(ensure)  # exists, serving this template: kept
    assert api.exists == {"Deployment/tiny-llama-canary", "Service/tiny-llama-canary"}
    assert ("replace", "Deployment/tiny-llama-canary") not in api.calls
    serving.remove_canary()
    serving.remove_canary()  # gone: 404 is what we wanted
    assert api.exists == set()
    assert not serving.canary_ready()  # no Deployment: not ready
    api.exists.add("Deployment/tiny-llama-canary")
    try:
        serving.canary_ready()
    except ApiError as err:  # any other error is the reconcile's to back off on
        assert err.status == 500
    else:
        raise AssertionError("a 500 must not read as not-ready")


class FakeKubeCanary(KubeCanary):
    def __init__(self, driver: CanaryDriver) -> None:
        self._driver = driver

    def driver(self, spec: QuantizedModelSpec, meta: Any) -> CanaryDriver:
        return self._driver


def test_kube_canary_merges_into_the_quantization_decision() -> None:
    _s, _r, _p, driver = fakes()
    spec_doc = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    body = {**spec_doc, "metadata": {**spec_doc["metadata"], "generation": 2, "uid": "u"}}
    resource = parse(body)
    quantized = Decision(status=evaluated(), events=(Event("Normal", "Evaluated", "quantized"),),
                         requeue_after=60.0, facts=Facts(resource=resource, quantized=True))
    merged, plan = FakeKubeCanary(driver).decide(body, quantized)
    assert merged.status.phase is Phase.CANARY
    assert [e.reason for e in merged.events] == ["Evaluated", "CanaryStarted"]
    assert merged.requeue_after == 5.0  # the sooner of the two
    assert [type(a) for a in merged.actions] == [EnsureCanary] and merged.facts.quantized
    assert plan is not None and plan.turn  # runs the turn's actions, read from `merged`
    assert [type(a) for a in merged.canary_actions()] == [EnsureCanary]
    failed = Decision(status=QuantizedModelStatus(phase=Phase.FAILED),
                      facts=Facts(resource=resource))
    merged, plan = FakeKubeCanary(driver).decide(body, failed)
    assert merged is failed and plan is not None and not plan.turn  # settle it
    assert FakeKubeCanary(driver).decide(body, failed, settled=True) == (failed, None)


class RaisingProvider:
    def measure(self, request: cn.AnalysisRequest, gates: GatesSpec) -> g.Measurement:
        raise KeyError("data")  # what a malformed answer did inside PrometheusProvider


def test_a_provider_that_raises_is_an_error_the_limits_count() -> None:
    """The turn goes on: the error is counted, and the consecutive-error limit rolls back."""
    serving, router, _p, _d = fakes()
    run = Run(make_spec(consecutiveErrorLimit=2), CanaryDriver(serving, router,
                                                               RaisingProvider()))
    run.until_done()
    assert run.status.phase is Phase.ROLLED_BACK
    rolled = next(c for c in run.status.conditions if c.type == "RolledBack")
    assert rolled.reason == "MeasurementErrorLimitExceeded"
    assert "KeyError" in rolled.message


# ------------------------------------------- decide, write the status, then act


class FakeKube:
    """The engine's Kube: status writes with a resourceVersion precondition."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.conflict = False
        self.events: list[str] = []

    def write_status(self, body: Any, status: Any) -> dict[str, Any]:
        from samp_operator.kube import ConflictError

        if self.conflict:
            raise ConflictError("the object has been modified")
        rv = int(self.body["metadata"]["resourceVersion"]) + 1
        self.body = {**self.body, "status": status,
                     "metadata": {**self.body["metadata"], "resourceVersion": str(rv)}}
        return self.body

    def create(self, obj: Any) -> bool:
        return True

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        return True

    def post_event(self, body: Any, type_: str, reason: str, message: str) -> None:
        self.events.append(reason)


def _engine(monkeypatch: Any, status: QuantizedModelStatus,
            annotations: dict[str, str]) -> tuple[Any, FakeKube, FakeServing, FakeRouter]:
    from samp_core.reconcile import parse_status
    from samp_operator import engine as engine_module
    from samp_operator.metrics import Metrics
    from samp_operator.settings import OperatorSettings

    doc = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    doc["metadata"].update(generation=1, uid="u", resourceVersion="1",
                           annotations=annotations)
    body = {**doc, "status": status.to_wire()}

    def quantization_machine(body: Any, *args: Any) -> Decision:  # every stage done
        st = parse_status(body.get("status"))
        return Decision(status=st, facts=Facts(resource=parse(body), quantized=st.phase in (
            Phase.EVALUATED, Phase.CANARY, Phase.PAUSED, Phase.PROMOTED, Phase.ROLLED_BACK)))

    monkeypatch.setattr(engine_module, "reconcile", quantization_machine)
    serving, router, _p, driver = fakes(weight=25)
    kube = FakeKube(body)
    engine = engine_module.Engine(OperatorSettings(metrics_port=0), kube,  # type: ignore[arg-type]
                                  Metrics(), canary=FakeKubeCanary(driver))
    engine.remember(body)
    return engine, kube, serving, router


def _running(weight: int = 25) -> QuantizedModelStatus:
    from samp_core.status import CanaryStatus

    start = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return evaluated().model_copy(update={
        "phase": Phase.CANARY,
        "canary": CanaryStatus(step=0, weight=weight, started_at=start, step_started_at=start),
    })


def test_a_decision_whose_status_write_conflicts_is_never_acted_on(monkeypatch: Any) -> None:
    """Issue 15: abort/promote acted before the status write was checked; a conflicting
    write (a stale body) must leave traffic, canary and stable untouched."""
    engine, kube, serving, router = _engine(monkeypatch, _running(),
                                            {cn.ANNOTATION_PROMOTE: "true"})
    kube.conflict = True
    assert engine.reconcile_once(("default", "tiny-llama"), [], []) == -1.0  # again, fresh
    assert serving.calls == [] and router.sets == []
    kube.conflict = False
    engine.remember(kube.body)
    engine.reconcile_once(("default", "tiny-llama"), [], [])
    assert kube.body["status"]["phase"] == "Promoted"
    assert serving.calls[0] == PromoteStable("UpdateStable", "pvc://models/tiny/attempt-1")
    assert serving.calls[-1] == "remove" and router.sets == [0]


def test_actions_cut_short_after_the_write_are_finished_from_the_written_status(
    monkeypatch: Any,
) -> None:
    """The status says Promoted but the stable patch failed: the next reconcile settles
    the written status (promote, weight 0, canary gone) instead of leaving it half done."""
    engine, kube, serving, router = _engine(monkeypatch, _running(),
                                            {cn.ANNOTATION_PROMOTE: "true"})
    serving.fail_promote = 1
    key = ("default", "tiny-llama")
    assert engine.reconcile_once(key, [], []) is not None  # the error backs off
    assert kube.body["status"]["phase"] == "Promoted" and serving.calls == []
    engine.remember(kube.body)
    engine.reconcile_once(key, [], [])
    assert serving.calls == [PromoteStable("UpdateStable", "pvc://models/tiny/attempt-1"),
                             "remove"]
    assert router.weight == 0 and not serving.exists
    engine.reconcile_once(key, [], [])  # settled: nothing more, not even a look
    assert serving.calls[-1] == "remove" and len(serving.calls) == 2


def test_a_rolled_back_status_is_settled_once_after_a_restart(monkeypatch: Any) -> None:
    rolled = _running().model_copy(update={"phase": Phase.ROLLED_BACK})
    engine, _kube, serving, router = _engine(monkeypatch, rolled, {})
    engine.reconcile_once(("default", "tiny-llama"), [], [])
    assert router.sets == [0] and serving.calls == ["remove"]


def test_an_earlier_canary_is_replaced_never_adopted() -> None:
    """Issue 15: after a spec edit the next attempt hit 409 and adopted the old canary
    Deployment, which then was promoted with the old artifact."""
    api = FakeApi()
    spec = make_spec(httpRoute={"name": "r", "stableBackend": "tiny-llama"})
    serving = KubeServing(api, api, spec, NAME, "ml", "uid-1")
    serving.ensure_canary(EnsureCanary("tiny-llama-canary", "pvc://models/g1", 1))
    serving.ensure_canary(EnsureCanary("tiny-llama-canary", "pvc://models/g2", 1))
    assert ("replace", "Deployment/tiny-llama-canary") in api.calls
    api.calls.clear()
    serving.ensure_canary(EnsureCanary("tiny-llama-canary", "pvc://models/g2", 1))
    assert ("replace", "Deployment/tiny-llama-canary") not in api.calls


def test_a_spec_change_under_a_running_canary_takes_its_traffic_away(monkeypatch: Any) -> None:
    """Issue 15: stages re-running for a new generation left the old canary with its
    traffic, unanalysed; now the weight goes to 0 and the canary is removed, so the next
    attempt starts afresh."""
    rerun = _running().model_copy(update={"phase": Phase.CALIBRATING})
    engine, _kube, serving, router = _engine(monkeypatch, rerun, {})
    engine.reconcile_once(("default", "tiny-llama"), [], [])
    assert router.sets == [0] and serving.calls == ["remove"]


# --------------------------------------------- replica ratio: make before break


@dataclass
class FakeScaleApi:
    """Deployments' scale and readiness: pods become ready only on ``tick``."""

    replicas: dict[str, int]
    ready: dict[str, int] = field(default_factory=dict)
    patches: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ready = self.ready or dict(self.replicas)

    def patch_namespaced_deployment_scale(self, name: str, ns: str, body: Any, **kw: Any) -> None:
        self.replicas[name] = body["spec"]["replicas"]
        self.patches.append((name, body["spec"]["replicas"]))
        # Scaling down takes pods out of the Service at once; new pods need a tick.
        self.ready[name] = min(self.ready[name], self.replicas[name])

    def read_namespaced_deployment_status(self, name: str, ns: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(status=SimpleNamespace(ready_replicas=self.ready[name]))

    def tick(self) -> None:
        self.ready = dict(self.replicas)

    @property
    def serving(self) -> int:
        return sum(self.ready.values())


def test_replica_ratio_never_leaves_nothing_serving() -> None:
    """Issue 15: at the 100% step the stable is at 0; rollback scaled the canary to 0 and
    removed it in the same pass while the stable started from 0 — nothing served."""
    from samp_operator.traffic import ReplicaRatioRouter

    api = FakeScaleApi({"c": 2, "s": 0})  # the 100% step: only the canary serves
    router = ReplicaRatioRouter(api, "ml", "s", "c", 2)
    serving = FakeServing()
    driver = CanaryDriver(serving, router, FakeProvider())
    rollback = (SetWeight(0), RemoveCanary())  # the actions of a rollback from the 100% step
    assert driver.apply(rollback) is False  # the stable is not serving yet: the canary stays
    assert api.replicas == {"c": 2, "s": 2} and "remove" not in serving.calls
    assert api.serving == 2
    spec = make_spec()
    rolled = _running(100).model_copy(update={"phase": Phase.ROLLED_BACK})
    for _ in range(4):
        api.tick()
        assert api.serving >= 2
        if driver.settle(spec, rolled):
            break
        assert api.serving >= 2
    assert api.replicas == {"c": 0, "s": 2} and serving.calls == ["remove"]


def test_a_canary_waiting_for_the_stable_brings_the_engine_back_soon(monkeypatch: Any) -> None:
    rolled = _running().model_copy(update={"phase": Phase.ROLLED_BACK})
    engine, _kube, serving, router = _engine(monkeypatch, rolled, {})
    router.takes = False  # weight 0 does not hold yet
    assert engine.reconcile_once(("default", "tiny-llama"), [], []) == 5.0
    assert serving.calls == []
    router.takes = True
    engine.reconcile_once(("default", "tiny-llama"), [], [])
    assert serving.calls == ["remove"]


def test_deletion_gives_the_traffic_back_to_the_stable_before_the_canary_goes(
    monkeypatch: Any,
) -> None:
    """Issue 15: deleting the resource at 100% left nothing serving: the canary went with
    the QuantizedModel while the stable stayed at 0. The finalizer now waits."""
    import kopf

    engine, kube, serving, router = _engine(monkeypatch, _running(100), {})
    kube.list_names = lambda *a: []  # type: ignore[attr-defined]
    router.weight, router.takes = 100, False  # the stable is not back yet
    with pytest.raises(kopf.TemporaryError, match="stable"):
        engine.finalize(kube.body, elapsed=1.0, first_attempt=True)
    assert "remove" not in serving.calls and router.sets == [0]
    router.takes = True
    engine.finalize(kube.body, elapsed=6.0, first_attempt=False)
    assert router.weight == 0 and serving.calls == ["remove"]
