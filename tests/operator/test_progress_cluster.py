"""status.progress on the real control plane, by the real path: the stage code's own
progress records (samp_jobs.runlog.progress) become the Job pod's log, the operator
reads its tail through the API server (pods/log, served by KWOK as a kubelet serves it),
and writes the figure into status at a bounded rate; it goes when the stage ends.
Also ``kubectl samp retry`` of a Failed stage with the real operator."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OPERATOR_RULES, Api, JobRuntime, Operator, qm_manifest, wait_for
from test_operator_cluster import hold

from samp_jobs.runlog import progress
from samp_operator import plugin_cli

pytestmark = pytest.mark.cluster

INTERVAL = 2.0  # --progress-seconds: short, so the test sees several refreshes


def stage_log(cluster: Any, done: int, total: int = 80, seconds_per_layer: float = 3.0) -> None:
    """What the sensitivity stage prints after ``done`` of ``total`` layers (its stderr is
    the container log), written where KWOK serves every pod's log from."""
    times = iter([1000.0 + seconds_per_layer * i for i in range(total + 1)])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        for _ in progress(range(done), "sensitivity", "forward layers", total=total,
                          every=0.0, clock=lambda: next(times)):
            pass
    cluster.write_pod_log("loading model ...", *err.getvalue().splitlines())


def status_patches(cluster: Any, name: str, offset: int) -> list[float]:
    """Times (audit stage timestamps, seconds) of the operator's status writes of ``name``."""
    stamps = []
    with Path(cluster.audit_log).open("rb") as f:
        f.seek(offset)
        for line in f:
            ev = json.loads(line)
            ref = ev.get("objectRef") or {}
            if ev.get("user", {}).get("username") == cluster.operator_username \
                    and ev.get("verb") == "patch" and ref.get("subresource") == "status" \
                    and ref.get("name") == name:
                stamps.append(ev["stageTimestamp"])
    return stamps


@pytest.fixture
def progress_env(cluster: Any, samp_crds: Any, cluster_namespace: str, operator_rbac: Any,
                 tmp_path: Path) -> Any:
    operator_rbac(OPERATOR_RULES)
    ns = cluster_namespace
    op = Operator(cluster, [ns], tmp_path / "operator.log",
                  extra_args=["--progress-seconds", str(INTERVAL)])
    runtime = JobRuntime(cluster, ns).start()
    api = Api(cluster, ns)
    cluster.pod_log_file.write_text("")
    try:
        api.make_claims("artifacts", "prompts")
        op.start()
        yield op, runtime, api
    finally:
        cluster.pod_log_file.write_text("")  # no later test's pod shows these records
        api.cleanup()
        runtime.stop()
        op.stop()
    assert "Traceback" not in op.logs(), op.logs()[-4000:]
    assert not runtime.errors, runtime.errors[:5]


def test_stage_progress_reaches_status_at_a_bounded_rate(progress_env: Any, cluster: Any,
                                                         capsys: Any) -> None:
    _op, runtime, api = progress_env
    release = hold("sensitivity", runtime)
    offset = Path(cluster.audit_log).stat().st_size
    api.create_qm(qm_manifest("prog", api.ns))
    api.wait_phase("prog", "Scoring", timeout=60)

    stage_log(cluster, 20)  # 20 of 80 layers, 3 s each: 180 s left
    qm = wait_for(lambda: (q := api.qm("prog")) and (q["status"].get("progress") or {})
                  .get("done") == 20 and q, 30, "progress 20/80 in status")
    p = qm["status"]["progress"]
    assert (p["stage"], p["total"], p["unit"], p["percent"], p["etaSeconds"]) == (
        "sensitivity", 80, "forward layers", 25.0, 180)
    assert p["job"] == "prog-g1-sens" and p["updatedAt"].endswith("Z")

    # A stage logging a layer every 0.1 s for 6 s: status moves at most once per INTERVAL.
    before = len(status_patches(cluster, "prog", offset))
    t0 = time.monotonic()
    done = 20
    while time.monotonic() - t0 < 6.0:
        done = min(done + 1, 79)
        stage_log(cluster, done)
        time.sleep(0.1)
    time.sleep(INTERVAL + 1)
    during = len(status_patches(cluster, "prog", offset)) - before
    assert 1 <= during <= 6.0 / INTERVAL + 2, during
    last = wait_for(lambda: (api.qm("prog") or {}).get("status", {}).get("progress"), 10,
                    "progress")
    assert last["done"] == done  # the newest record wins once the interval passed

    code = plugin_cli.main(["get", "qm", "prog", "-n", api.ns, "--kubeconfig",
                            str(cluster.admin_kubeconfig)], prog="kubectl samp")
    out = capsys.readouterr().out
    assert code == 0 and f"Progress:   sensitivity: {done}/80 forward layers" in out, out

    release[0] = True
    qm = api.wait_phase("prog", "Evaluated", timeout=60)
    assert "progress" not in qm["status"]  # cleared when its stage ended
    total = len(status_patches(cluster, "prog", offset))
    print(f"{done - 20} progress records in 6 s -> {during} status writes; "
          f"status writes for the whole run (create to Evaluated): {total}")
    assert total <= 30, total


def test_retry_reruns_a_failed_stage(progress_env: Any, cluster: Any, capsys: Any) -> None:
    _op, runtime, api = progress_env
    failures = {"left": 1}

    def fail_once(pod: dict[str, Any]) -> Any:
        if pod["metadata"]["labels"].get("samp.dev/stage") == "calibrate" and failures["left"]:
            failures["left"] -= 1
            return ("fail", "CUDA out of memory")
        return JobRuntime.succeed_all(pod)

    runtime.policy = fail_once
    api.create_qm(qm_manifest("again", api.ns))
    qm = api.wait_phase("again", "Failed", timeout=60)
    assert "CUDA out of memory" in qm["status"]["message"]
    time.sleep(INTERVAL)
    assert api.phase("again") == "Failed"  # sticky until asked

    args = ["retry", "again", "-n", api.ns, "--kubeconfig", str(cluster.admin_kubeconfig)]
    assert plugin_cli.main(args, prog="kubectl samp") == 0
    assert "retry requested (phase Failed: the failed stage runs again)" in \
        capsys.readouterr().out
    qm = api.wait_phase("again", "Evaluated", timeout=90)
    assert qm["metadata"]["generation"] == 1  # no spec change
    assert "RetryRequested" in api.reasons("again")
    assert qm["status"]["handledRequests"]["retry"] == \
        qm["metadata"]["annotations"]["samp.dev/retry"]
    # Evaluated: retry is refused, and nothing is written.
    assert plugin_cli.main(args, prog="kubectl samp") == 2
    assert "is Evaluated: retry starts over a RolledBack or Failed rollout only" in \
        capsys.readouterr().err
