"""Leader-election settings and the write fence (samp_operator.leader); the election itself
runs on the real control plane in test_leader_cluster.py."""

from __future__ import annotations

import asyncio

import kubernetes
import pytest
import urllib3

from samp_core.lease import LeaseTiming
from samp_operator.engine import Engine
from samp_operator.kube import Kube
from samp_operator.leader import NotLeaderError, fence
from samp_operator.main import build_parser
from samp_operator.metrics import Metrics
from samp_operator.settings import OperatorSettings, from_env_and_args


def test_election_settings_from_flags_and_env() -> None:
    ns = build_parser().parse_args(["--leader-election-namespace", "samp-system",
                                    "--leader-election-lease-duration-seconds", "20"])
    s = from_env_and_args(ns, env={"POD_NAME": "samp-7c9-abc",
                                   "SAMP_LEADER_ELECTION_LEASE": "samp-samp-operator"})
    assert (s.leader_election_namespace, s.leader_election_lease,
            s.leader_election_identity) == ("samp-system", "samp-samp-operator", "samp-7c9-abc")
    assert s.lease_timing == LeaseTiming(lease_duration=20, renew_deadline=10, retry_period=2)
    plain = from_env_and_args(build_parser().parse_args([]), env={})
    assert plain.leader_election_namespace is None  # no election: one replica
    assert plain.leader_election_identity  # hostname-pid, never empty


def test_unsafe_election_timing_is_refused_naming_the_flag() -> None:
    ns = build_parser().parse_args(["--leader-election-renew-deadline-seconds", "15"])
    with pytest.raises(ValueError, match="--leader-election-lease-duration-seconds"):
        from_env_and_args(ns, env={})


def test_fence_refuses_writes_but_not_reads_once_leadership_is_gone() -> None:
    cfg = kubernetes.client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # discard port: nothing listens
    cfg.retries = False
    client = kubernetes.client.ApiClient(cfg)
    leader = [True]
    fence(client, lambda: leader[0])
    api = kubernetes.client.CoreV1Api(client)
    cm = kubernetes.client.V1ConfigMap(metadata=kubernetes.client.V1ObjectMeta(name="x"))
    with pytest.raises(urllib3.exceptions.HTTPError):  # sent: the leader may write
        api.create_namespaced_config_map("default", cm, _request_timeout=1)
    leader[0] = False
    with pytest.raises(NotLeaderError, match=r"POST \S+/namespaces/default/configmaps: not the"):
        api.create_namespaced_config_map("default", cm, _request_timeout=1)
    with pytest.raises(NotLeaderError):
        api.delete_namespaced_config_map("x", "default", _request_timeout=1)
    with pytest.raises(urllib3.exceptions.HTTPError):  # reads still go out
        api.read_namespaced_config_map("x", "default", _request_timeout=1)


def _engine() -> Engine:
    cfg = kubernetes.client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # a reconcile would fail here, and count an error
    cfg.retries = False
    return Engine(OperatorSettings(), Kube(kubernetes.client.ApiClient(cfg)), Metrics())


def _reconciles(engine: Engine) -> float:
    return sum(s.value for m in engine.metrics.reconciles.collect() for s in m.samples
               if s.name.endswith("_total"))


def test_a_follower_engine_neither_reconciles_nor_fires_its_timers() -> None:
    engine = _engine()
    leader = [False]
    engine.may_act = lambda: leader[0]

    async def scenario() -> None:
        engine.loop = asyncio.get_running_loop()
        await engine.trigger("ns", "m")  # not the leader: nothing runs
        leader[0] = True
        engine._schedule(("ns", "m"), 0.05)  # a retry the engine had scheduled as leader
        leader[0] = False
        engine.stand_down()
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert _reconciles(engine) == 0
    engine.may_act = lambda: True

    async def as_leader() -> None:
        engine.loop = asyncio.get_running_loop()
        await engine.trigger("ns", "m")  # the leader's reconcile runs (and fails here)
        engine.stand_down()  # and its error retry is cancelled again

    asyncio.run(as_leader())
    assert _reconciles(engine) == 1
    engine.executor.shutdown(wait=False)
