"""A stage Job whose pod completed and was garbage-collected while the operator was down,
on the real control plane: the operator reads the result the stage stored in the artifact
store (samp_core.stored_result) instead of failing the stage.

KWOK runs no containers, so the test plays them (operator_harness.JobRuntime), with the
real code on a local directory standing in for the artifact PVC (``/mnt/pvc`` in the
pods): the stage stores its summary with the jobs' own ``store_for_operator``, where and
under the hash its StageInvocation (in the Job's ConfigMap) says, and the
reader Job's pod runs its real command, ``samp read-result ...``; its exit code and
termination message become the pod's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from operator_harness import SAMP, Api, JobRuntime, Operator, qm_manifest, summary_for, wait_for

from samp_core.stage_contract import INVOCATION_FILE
from samp_core.stage_layout import PVC_ROOT

STORE = ("import sys; from samp_jobs.runlog import store_for_operator;"
         " store_for_operator(*sys.argv[1:])")


def arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


class Stages:
    """Plays stage and reader containers over ``root`` (the artifact PVC)."""

    def __init__(self, cluster: Any, root: Path, store_for: set[str]) -> None:
        self.cluster = cluster
        self.root = root
        self.store_for = store_for  # QuantizedModels whose calibrate stores its result
        self.hold_calibrate = True
        self.readers: list[tuple[str, int]] = []

    def local(self, path: str) -> str:
        return str(self.root / path.removeprefix(f"{PVC_ROOT}/"))

    def policy(self, pod: dict[str, Any]) -> Any:
        labels = pod["metadata"]["labels"]
        stage, qm = labels["samp.dev/stage"], labels["samp.dev/quantizedmodel"]
        command = pod["spec"]["containers"][0]["command"]
        if command[1] == "read-result":
            return self.read(pod, command)
        if stage == "calibrate" and self.hold_calibrate:
            return None
        summary = summary_for(stage, qm)
        if qm in self.store_for:
            inv = self.invocation(pod)
            subprocess.run([sys.executable, "-c", STORE, stage, inv["inputsHash"], summary,
                            self.local(inv["paths"]["storedResult"])], check=True)
        return ("succeed", summary)

    def invocation(self, pod: dict[str, Any]) -> Any:
        """The StageInvocation the stage's container reads (its Job's ConfigMap)."""
        meta = pod["metadata"]
        (owner,) = meta["ownerReferences"]
        status, body = self.cluster.request(
            "GET", f"/api/v1/namespaces/{meta['namespace']}/configmaps/{owner['name']}")
        assert status == 200, body
        return json.loads(body["data"][INVOCATION_FILE])

    def read(self, pod: dict[str, Any], command: list[str]) -> Any:
        out = self.root / "reader-termination-log"
        args = [SAMP, *command[1:]]
        args[args.index("--file") + 1] = self.local(arg(command, "--file"))
        args[args.index("--termination-log") + 1] = str(out)
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        self.readers.append((arg(command, "--stage-job"), done.returncode))
        if done.returncode:  # KWOK ends the container with this exit code
            meta = pod["metadata"]
            status, body = self.cluster.request(
                "PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"metadata": {"annotations": {"samp.dev/kwok-exit-code": str(done.returncode)}}},
                headers={"Content-Type": "application/merge-patch+json"})
            assert status == 200, body
        return ("succeed" if done.returncode == 0 else "fail", out.read_text())


def test_result_of_a_garbage_collected_pod_comes_from_the_artifact_store(
        operator_env: tuple[Operator, JobRuntime, Api], tmp_path: Path) -> None:
    op, runtime, api = operator_env
    stages = Stages(api.cluster, tmp_path / "pvc", store_for={"kept"})
    runtime.policy = stages.policy
    for name in ("kept", "lost"):
        api.create_qm(qm_manifest(name, api.ns))
    for name in ("kept", "lost"):
        wait_for(lambda n=name: api.pods(f"{n}-g1-cal"), 30, f"the {name} calibrate pod")
    op.kill()
    stages.hold_calibrate = False  # the stages finish while the operator is down ...

    def completed(job: str) -> bool:
        (j,) = [j for j in api.jobs() if j["metadata"]["name"] == job]
        return any(c["type"] == "Complete" and c["status"] == "True"
                   for c in j.get("status", {}).get("conditions") or [])

    for name in ("kept", "lost"):
        wait_for(lambda n=name: completed(f"{n}-g1-cal"), 30, f"{name} calibrate to complete")
        for pod in api.pods(f"{name}-g1-cal"):  # ... and their pods are garbage-collected
            status, body = api.cluster.request(
                "DELETE", f"/api/v1/namespaces/{api.ns}/pods/{pod['metadata']['name']}",
                {"gracePeriodSeconds": 0})
            assert status in (200, 202), body
        wait_for(lambda n=name: not api.pods(f"{n}-g1-cal"), 30, f"{name} pod gone")
    op.start()

    qm = api.wait_phase("kept", "Evaluated", timeout=150)
    cal = qm["status"]["stages"][0]
    assert (cal["stage"], cal["state"], cal["job"]) == ("calibrate", "Succeeded",
                                                       "kept-g1-cal-read")
    assert "ResultFromStore" in api.reasons("kept")
    assert "ResultMissing" not in api.reasons("kept")

    lost = api.wait_phase("lost", "Failed", timeout=60)
    ready = next(c for c in lost["status"]["conditions"] if c["type"] == "Ready")
    assert "lost-g1-cal completed, but its pod" in ready["message"], ready
    assert "does not exist" in ready["message"], ready
    assert sorted(stages.readers) == [("kept-g1-cal", 0), ("lost-g1-cal", 2)]
    print(f"\n{qm['status']['stages'][0]['message']}\n{ready['message']}")
