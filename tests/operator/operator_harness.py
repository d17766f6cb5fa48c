"""Harness for running the real operator against the real control plane (tests/cluster).

* The operator runs as a subprocess, ``samp operator run``, exactly as in its image, with
  ``KUBECONFIG`` set to the control plane's RBAC-limited operator identity (the
  ServiceAccount samp-system/samp-operator, given :data:`OPERATOR_RULES`). Killing it is
  a real SIGKILL.
* Containers never run (KWOK plays the kubelet), so the test plays the stage processes:
  :class:`JobRuntime` watches the Job pods and does what a stage does at its end. The
  operator is started with ``--job-pod-annotation samp.dev/kwok-run-duration=1h``, so
  KWOK keeps each Job pod Running until the test decides. To **succeed**, the test
  annotates the pod with ``samp.dev/kwok-message: <result summary JSON>`` and
  ``samp.dev/kwok-run-duration: 0s``; KWOK's pod-complete stage then terminates the
  container with exit code 0 and that termination message (tests/cluster/kwok-stages.yaml),
  which is exactly where a real stage's ``--termination-log`` ends up. To **fail**, it
  adds the label ``samp.dev/kwok-fail: "true"`` (KWOK's samp-pod-fail stage) with the
  message. The summaries are built with the real result classes (samp_core.results)
  and their ``summary_json()``, the production transport format.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from samp_core.formats import ExportFormat, SensitivityMethod
from samp_core.results import (
    CalibrationResult,
    EvaluationResult,
    ExportResult,
    LengthStats,
    PlanResult,
    SensitivityResult,
)

REPO = Path(__file__).resolve().parents[2]
SAMP = str(Path(sys.executable).with_name("samp"))
QM_API = "/apis/samp.dev/v1alpha1/namespaces/{ns}/quantizedmodels"
HOLD = "samp.dev/kwok-run-duration=1h"

# What the operator needs, nothing more (the Helm chart's ClusterRole should match).
OPERATOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["samp.dev"], "resources": ["quantizedmodels"],
     "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["samp.dev"], "resources": ["quantizedmodels/status"],
     "verbs": ["get", "patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"],
     "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["configmaps"],
     "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Operator:
    """`samp operator run` in a subprocess under the operator identity."""

    def __init__(self, cluster: Any, namespaces: list[str], log_path: Path,
                 extra_args: list[str] | None = None) -> None:
        self.cluster = cluster
        self.namespaces = namespaces
        self.log_path = log_path
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    def start(self, timeout: float = 60) -> Operator:
        self.port = free_port()
        env = {**os.environ, "KUBECONFIG": str(self.cluster.operator_kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        args = [SAMP, "operator", "run", "--metrics-address", "127.0.0.1",
                "--metrics-port", str(self.port), "--job-image", "samp-jobs:test",
                "--job-pod-annotation", HOLD, "--resync-seconds", "60",
                "--finalizer-timeout-seconds", "30", "--no-canary", *self.extra_args]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts}: {' '.join(args)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=REPO)
        wait_for(lambda: self.get("/readyz") == 200 or self._dead(), timeout,
                 "the operator to become ready")
        if self._dead():
            raise AssertionError(f"operator exited: {self.logs()[-3000:]}")
        return self

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status)
        except OSError:
            return 0

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def summary_for(stage: str, name: str = "m") -> str:
    """The termination message a real stage writes (summary_json of its result)."""
    if stage == "calibrate":
        doc: Any = CalibrationResult(source="pvc://prompts/prod.jsonl", num_samples=64,
                                     num_tokens=8192, lengths=LengthStats(p50=100, p90=200,
                                                                          max=256))
    elif stage == "sensitivity":
        doc = SensitivityResult(method=SensitivityMethod.FISHER, num_tokens=8192, groups=[],
                                scores={}, wall_seconds=12.5)
    elif stage == "plan":
        doc = PlanResult(profile="sm90", group_size=128, assignments=[], total_bytes=40_000,
                         bytes_16bit=100_000, num_params=50_000, effective_bits=6.4,
                         predicted_loss=0.0123, budget_bytes=40_000, min_feasible_bytes=30_000)
    elif stage == "export":
        doc = ExportResult(artifact_uri=f"pvc://artifacts/samp/{name}/artifact",
                           export_format=ExportFormat.COMPRESSED_TENSORS, bytes_on_disk=40_000)
    elif stage == "evaluate":
        doc = EvaluationResult(num_prompts=32, perplexity_base=10.0, perplexity_quant=10.05,
                               mean_kl=0.01, top1_agreement=0.97)
    else:
        raise ValueError(stage)
    return str(doc.summary_json())


PodVerdict = tuple[str, str] | None  # ("succeed", message) | ("fail", message) | None: hold


class JobRuntime:
    """Plays the stage containers of every Job pod in a namespace (see module docstring)."""

    def __init__(self, cluster: Any, namespace: str, run_seconds: float = 0) -> None:
        self.cluster = cluster
        self.namespace = namespace
        # How long each stage pod keeps running once decided: 0 ends it at once; the chart
        # tests give it seconds so that the operator's pods/log read for status.progress
        # (made only while a stage pod runs) surely happens and shows in the audit log.
        self.run_seconds = run_seconds
        self.policy: Callable[[dict[str, Any]], PodVerdict] = self.succeed_all
        self.handled: dict[str, str] = {}  # pod name -> what we did
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="job-runtime")
        self.errors: list[str] = []

    @staticmethod
    def succeed_all(pod: dict[str, Any]) -> PodVerdict:
        labels = pod["metadata"].get("labels", {})
        stage = labels.get("samp.dev/stage", "")
        if stage == "cleanup":
            return ("succeed", "")
        return ("succeed", summary_for(stage, labels.get("samp.dev/quantizedmodel", "m")))

    def start(self) -> JobRuntime:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        path = (f"/api/v1/namespaces/{self.namespace}/pods"
                "?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dsamp-operator")
        while not self._stop.wait(0.2):
            try:
                status, doc = self.cluster.request("GET", path)
                if status != 200:
                    continue
                for pod in doc.get("items", []):
                    self._handle(pod)
            except Exception as err:  # keep playing; report at the end
                self.errors.append(repr(err))

    def _handle(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if name in self.handled or pod.get("status", {}).get("phase") != "Running":
            return
        if pod["metadata"].get("deletionTimestamp"):
            return
        decision = self.policy(pod)
        if decision is None:
            return
        action, message = decision
        meta: dict[str, Any] = {"annotations": {
            "samp.dev/kwok-run-duration": f"{self.run_seconds:g}s",
            "samp.dev/kwok-message": message}}
        if action == "fail":
            meta["labels"] = {"samp.dev/kwok-fail": "true"}
        status, body = self.cluster.request(
            "PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{name}", {"metadata": meta},
            headers={"Content-Type": "application/merge-patch+json"})
        if status == 200:
            self.handled[name] = action
        elif status != 404:
            self.errors.append(f"patch {name}: {status} {body}")


def qm_manifest(name: str, namespace: str, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B@main",
                  "secretRef": {"name": "hf-token"}},
        "calibration": {"source": "pvc://prompts/prod.jsonl", "samples": 128},
        "quantization": {"budget": {"fractionOf16Bit": 0.4}},
        "hardware": {"target": "h100", "gpusPerJob": 1, "retries": 0},
        "artifacts": {"uri": "pvc://artifacts/samp"},
        "gates": {"latency": {"p99MaxSeconds": 5}},  # no serving.stable: a ceiling is required
    }
    for path, value in changes.items():
        node = spec
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return {"apiVersion": "samp.dev/v1alpha1", "kind": "QuantizedModel",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


class Api:
    """Small admin-side helpers over cluster.request."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.volumes: list[str] = []

    def make_claims(self, *claims: str) -> None:
        """PVCs pre-bound to hostPath PVs (the scheduler needs bound claims)."""
        for claim in claims:
            pv = f"{self.ns}-{claim}"[:63]
            status, body = self.cluster.request("POST", "/api/v1/persistentvolumes", {
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                         "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                         "hostPath": {"path": f"/tmp/{pv}"},
                         "claimRef": {"namespace": self.ns, "name": claim}}})
            assert status == 201, body
            self.volumes.append(pv)
            status, body = self.cluster.request(
                "POST", f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims", {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim},
                    "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                             "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}}})
            assert status == 201, body

    def cleanup(self) -> None:
        for pv in self.volumes:
            self.cluster.request("DELETE", f"/api/v1/persistentvolumes/{pv}")

    def create_qm(self, manifest: dict[str, Any]) -> dict[str, Any]:
        status, body = self.cluster.request("POST", QM_API.format(ns=self.ns), manifest)
        assert status == 201, body
        return dict(body)

    def qm(self, name: str) -> dict[str, Any] | None:
        status, body = self.cluster.request("GET", QM_API.format(ns=self.ns) + f"/{name}")
        return dict(body) if status == 200 else None

    def patch_spec(self, name: str, spec_patch: dict[str, Any]) -> dict[str, Any]:
        status, body = self.cluster.request(
            "PATCH", QM_API.format(ns=self.ns) + f"/{name}", {"spec": spec_patch},
            headers={"Content-Type": "application/merge-patch+json"})
        assert status == 200, body
        return dict(body)

    def delete_qm(self, name: str) -> None:
        status, body = self.cluster.request("DELETE", QM_API.format(ns=self.ns) + f"/{name}")
        assert status in (200, 202), body

    def phase(self, name: str) -> str | None:
        qm = self.qm(name)
        return (qm or {}).get("status", {}).get("phase")

    def wait_phase(self, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
        def check() -> Any:
            qm = self.qm(name)
            st = (qm or {}).get("status", {})
            return qm if st.get("phase") == phase else False

        return dict(wait_for(check, timeout, f"{name} to reach {phase} "
                                             f"(now {self.phase(name)})"))

    def items(self, path: str) -> list[dict[str, Any]]:
        status, body = self.cluster.request("GET", path)
        assert status == 200, body
        return list(body.get("items", []))

    def jobs(self, name: str | None = None) -> list[dict[str, Any]]:
        sel = "app.kubernetes.io%2Fmanaged-by%3Dsamp-operator"
        if name:
            sel += f"%2Csamp.dev%2Fquantizedmodel%3D{name}"
        return self.items(f"/apis/batch/v1/namespaces/{self.ns}/jobs?labelSelector={sel}")

    def pods(self, job: str) -> list[dict[str, Any]]:
        return self.items(f"/api/v1/namespaces/{self.ns}/pods?labelSelector="
                          f"batch.kubernetes.io%2Fjob-name%3D{job}")

    def config_maps(self, name: str) -> list[dict[str, Any]]:
        return self.items(f"/api/v1/namespaces/{self.ns}/configmaps?labelSelector="
                          f"samp.dev%2Fquantizedmodel%3D{name}")

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.items(f"/api/v1/namespaces/{self.ns}/events?fieldSelector="
                          f"involvedObject.name%3D{name}")

    def reasons(self, name: str) -> list[str]:
        evs = sorted(self.events(name), key=lambda e: e.get("metadata", {}).get(
            "creationTimestamp", ""))
        return [e["reason"] for e in evs]


def condition(qm: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in qm["status"]["conditions"] if c["type"] == ctype)
