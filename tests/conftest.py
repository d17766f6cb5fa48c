"""Shared pytest setup. Cluster fixtures live in tests/cluster (see its README)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "cluster"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # spec_fixtures

from cluster_fixtures import (  # noqa: F401  (fixtures are registered by import)
    build_if_needed,
    cluster,
    cluster_api,
    cluster_namespace,
    gateway_api_crds,
    mark_cluster_items,
    operator_rbac,
    pod_fails,
    prometheus_operator_crds,
    register_marker,
    samp_crds,
)


def pytest_configure(config):
    register_marker(config)


def pytest_collection_modifyitems(config, items):
    mark_cluster_items(items)


def pytest_collection_finish(session):
    build_if_needed(session)
