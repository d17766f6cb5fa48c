"""`samp operator run`: start the operator (Kopf) with the settings of samp_operator.settings."""

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
from samp_operator.kube import Kube
from samp_operator.metrics import Metrics

HEARTBEAT_SECONDS = 5.0


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
    """This process's name among Kopf peers: the pod name (hostname), pid and start time.

    Kopf's default asks ``getpass.getuser()``, which raises for a uid without a passwd
    entry: the chart runs the operator as 65532, which no slim Python image lists, so the
    pod crash-looped on its first real node (found by tests/e2e).
    """
    return Identity(f"{socket.gethostname()}/{os.getpid()}/{int(time.time())}")


async def _operator(engine: Engine, metrics: Metrics) -> None:
    loop = asyncio.get_running_loop()

    def beat() -> None:
        metrics.heartbeat = time.monotonic()
        loop.call_later(HEARTBEAT_SECONDS, beat)

    beat()
    registry = kopf.OperatorRegistry()
    register(engine, registry)
    ready = asyncio.Event()

    async def mark_ready() -> None:
        await ready.wait()
        metrics.ready = True
        logging.getLogger("samp").info("operator ready")

    ready_task = loop.create_task(mark_ready())
    s = engine.settings
    try:
        await kopf.operator(
            registry=registry,
            standalone=s.peering is None,
            peering_name=s.peering,
            clusterwide=s.clusterwide,
            namespaces=list(s.namespaces),
            ready_flag=ready,
            identity=peering_identity(),
        )
    finally:
        ready_task.cancel()


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
    # The canary: the one driver (samp_operator.canary_driver) with the Kubernetes
    # serving and routers and the Prometheus provider.
    canary = (
        KubeCanary(kube.client, settings.prometheus_url, settings.prometheus_allowed_hosts)
        if settings.canary else None
    )
    engine = Engine(settings, kube, metrics, canary=canary)
    try:
        asyncio.run(_operator(engine, metrics))
    except KeyboardInterrupt:
        pass
    finally:
        engine.executor.shutdown(wait=False, cancel_futures=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
