"""`samp operator run`: start the operator (Kopf) with the settings of samp_operator.settings.

With a leader-election namespace (the chart's default), the replica first wins the Lease
(samp_operator.leader) and only then starts Kopf; Kopf itself always runs standalone (its
peering paused every replica that shared a priority). A replica that loses the Lease stands
down at once and exits with :data:`EXIT_LEASE_LOST`, so Kubernetes restarts it as a
follower (what kube-controller-manager and Flagger do). On SIGTERM the leader releases the
Lease and a follower takes over at its next try.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence

import kopf
from kopf._core.engines.peering import Identity  # kopf exports the type only here

from samp_operator import settings as settings_module
from samp_operator.canary_kube import KubeCanary
from samp_operator.engine import Engine
from samp_operator.handlers import register
from samp_operator.kube import Kube, api_client
from samp_operator.leader import ElectionSettings, LeaderElector, fence
from samp_operator.metrics import Metrics

HEARTBEAT_SECONDS = 5.0
EXIT_LEASE_LOST = 3
log = logging.getLogger("samp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samp operator run",
        description="Run the samp-operator. Settings (flags override variables):\n"
        + (settings_module.__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    settings_module.add_arguments(parser)
    return parser


def peering_identity() -> Identity:
    """The identity Kopf asks for even standalone: the pod name (hostname), pid and start time.

    Kopf's default asks ``getpass.getuser()``, which raises for a uid without a passwd
    entry: the chart runs the operator as 65532, which no slim Python image lists, so the
    pod crash-looped on its first real node (found by tests/e2e).
    """
    return Identity(f"{socket.gethostname()}/{os.getpid()}/{int(time.time())}")


async def _operator(engine: Engine, metrics: Metrics,
                    elector: LeaderElector | None = None) -> int:
    loop = asyncio.get_running_loop()

    def beat() -> None:
        metrics.heartbeat = time.monotonic()
        loop.call_later(HEARTBEAT_SECONDS, beat)

    beat()
    if elector is None:
        await _kopf(engine, metrics)
        return 0
    engine.may_act = elector.is_leader
    observed = loop.create_task(elector.observed.wait())
    observed.add_done_callback(lambda _t: setattr(metrics, "ready", True))  # followers too
    await elector.acquire()
    kopf_task = loop.create_task(_kopf(engine, metrics))
    lost_task = loop.create_task(elector.hold())
    await asyncio.wait({kopf_task, lost_task}, return_when=asyncio.FIRST_COMPLETED)
    engine.stand_down()
    if lost_task.done():
        log.error("lost the leader lease (%s): stopped acting; exiting", lost_task.result())
        kopf_task.cancel()
        await asyncio.gather(kopf_task, return_exceptions=True)
        return EXIT_LEASE_LOST
    lost_task.cancel()  # Kopf stopped (a signal): hand the Lease over
    await elector.release()
    kopf_task.result()  # re-raise what stopped Kopf, if anything did
    return 0


async def _kopf(engine: Engine, metrics: Metrics) -> None:
    registry = kopf.OperatorRegistry()
    register(engine, registry)
    ready = asyncio.Event()

    async def mark_ready() -> None:
        await ready.wait()
        metrics.ready = True
        log.info("operator ready")

    ready_task = asyncio.get_running_loop().create_task(mark_ready())
    s = engine.settings
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=s.clusterwide,
            namespaces=list(s.namespaces),
            ready_flag=ready,
            identity=peering_identity(),
        )
    finally:
        ready_task.cancel()


def _elector(settings: settings_module.OperatorSettings, metrics: Metrics
             ) -> LeaderElector | None:
    if settings.leader_election_namespace is None:
        return None
    return LeaderElector(ElectionSettings(namespace=settings.leader_election_namespace,
                                          lease_name=settings.leader_election_lease,
                                          identity=settings.leader_election_identity,
                                          timing=settings.lease_timing),
                         api_client(), registry=metrics.registry)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"]:
        args = args[1:]
    elif args and args[0] not in ("-h", "--help") and not args[0].startswith("--"):
        print("usage: samp operator run [flags]  (samp operator run --help)", file=sys.stderr)
        return 2
    ns = build_parser().parse_args(args)
    try:
        settings = settings_module.from_env_and_args(ns)
    except ValueError as err:
        print(f"samp operator: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kubernetes", "urllib3", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if settings.log_level != "DEBUG":  # Kopf logs every handler call at INFO
        logging.getLogger("kopf").setLevel(logging.WARNING)
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_address, settings.metrics_port)
    kube = Kube()
    elector = _elector(settings, metrics)
    if elector is not None:  # no write of a reconcile gets out once the Lease is lost
        fence(kube.client, elector.is_leader)
    # The canary: the one driver (samp_operator.canary_driver) with the Kubernetes
    # serving and routers and the Prometheus provider.
    canary = KubeCanary(kube.client, settings.prometheus) if settings.canary else None
    engine = Engine(settings, kube, metrics, canary=canary)
    code = 0
    try:
        code = asyncio.run(_operator(engine, metrics, elector))
    except KeyboardInterrupt:
        pass
    finally:
        engine.executor.shutdown(wait=False, cancel_futures=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
