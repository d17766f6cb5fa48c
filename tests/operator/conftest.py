"""The ``operator_env`` fixture; the harness itself is in operator_harness.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OPERATOR_RULES, Api, JobRuntime, Operator


@pytest.fixture
def operator_env(cluster: Any, samp_crds: Any, cluster_namespace: str,
                 operator_rbac: Any, tmp_path: Path) -> Iterator[tuple[Operator, JobRuntime, Api]]:
    """The operator (started, watching the test's namespace), the job runtime, helpers."""
    operator_rbac(OPERATOR_RULES)
    op = Operator(cluster, [cluster_namespace], tmp_path / "operator.log")
    runtime = JobRuntime(cluster, cluster_namespace).start()
    api = Api(cluster, cluster_namespace)
    try:
        api.make_claims("artifacts", "prompts")
        op.start()
        yield op, runtime, api
    finally:
        api.cleanup()
        runtime.stop()
        op.stop()
        log = op.logs()
        if "Traceback" in log:
            print(log[-6000:])  # shown on failure
    assert not runtime.errors, runtime.errors[:5]
