"""The whole product on a real node: what ``make e2e`` runs and tests/e2e/test_e2e.py checks.

From nothing: the node (tests/e2e/node.py), cluster DNS, Prometheus and the artifact
volume in the cluster, the operator from its own chart and image, the stable vLLM serving
the tiny model, then ``kubectl apply -f examples/tiny-cpu.yaml``. The stages run as real
pods of the jobs image, the canary as a real vLLM pod, a load generator pod sends the
public model name to the public Service, Prometheus scrapes the pods, and the operator
promotes or rolls back. Nothing is faked; every figure printed is measured.

    python tests/e2e/e2e.py [--manifest examples/tiny-cpu.yaml] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from node import CLUSTER_DNS, NODE_NAME, RealNode  # noqa: E402

NAMESPACE = "default"
OPERATOR_NS = "samp-system"
CHART = ROOT / "charts" / "samp-operator"
VLLM_PUBLIC_TAG = "localhost/samp/vllm-cpu:0.32.0"  # what examples/tiny-cpu.yaml names
TERMINAL = {"Promoted", "RolledBack", "Failed"}


def ensure_images() -> None:
    """Build the e2e images unless every one is current (tests/e2e/images.sh, cached)."""
    script = HERE / "images.sh"
    check = subprocess.run(["bash", str(script), "--check"], check=False, capture_output=True)
    if check.returncode == 0:
        return
    log("building the e2e images (tests/e2e/images.sh; cached by content hash) ...")
    p = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"tests/e2e/images.sh failed:\n{(p.stdout + p.stderr)[-3000:]}")


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class MemorySampler:
    """Peak of the machine's used memory (MemTotal - MemAvailable) while the node runs."""

    def __init__(self, period: float = 2.0) -> None:
        self.period, self.peak_kib, self.base_kib = period, 0, self._used()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _used() -> int:
        info = {
            ln.split(":")[0]: int(ln.split()[1])
            for ln in Path("/proc/meminfo").read_text().splitlines()
        }
        return info["MemTotal"] - info["MemAvailable"]

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak_kib = max(self.peak_kib, self._used())

    def __enter__(self) -> MemorySampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)


@dataclass
class E2ECluster:
    """The node plus everything a user's cluster would already have."""

    workdir: Path
    node: RealNode = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)
    pv_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.node = RealNode(self.workdir / "node")
        self.pv_path = self.workdir / "pv-examples"

    # ------------------------------------------------------------- plumbing

    @property
    def cp(self) -> Any:
        return self.node.cp

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, check=check, input=input, timeout=timeout)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply_template(self, name: str, **extra: str) -> None:
        tags = self.node.tags
        text = string.Template((HERE / "manifests" / name).read_text()).substitute(
            COREDNS_IMAGE=tags["coredns"],
            PROMETHEUS_IMAGE=tags["prometheus"],
            VLLM_IMAGE=VLLM_PUBLIC_TAG,
            CLUSTER_DNS=CLUSTER_DNS,
            NAMESPACE=NAMESPACE,
            PV_PATH=str(self.pv_path),
            NODE_NAME=NODE_NAME,
            **extra,
        )
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)

    def rollout_status(self, kind_name: str, ns: str, timeout: float = 600) -> None:
        self.kubectl(
            "rollout",
            "status",
            kind_name,
            "-n",
            ns,
            f"--timeout={int(timeout)}s",
            timeout=timeout + 30,
        )

    # ------------------------------------------------------------- bring-up

    def up(self) -> E2ECluster:
        t0 = time.monotonic()
        self.node.start()
        # Manifests name the vLLM image by a stable tag (users write tags, not hashes).
        self.node.ctr("images", "tag", "--force", self.node.tags["vllm"], VLLM_PUBLIC_TAG)
        self._stage_examples()
        for name in ("coredns.yaml", "prometheus.yaml", "storage.yaml"):
            self.apply_template(name)
        t = time.monotonic()
        self.rollout_status("deployment/coredns", "kube-system", 180)
        self.rollout_status("deployment/prometheus", "monitoring", 180)
        self.timings["addons"] = round(time.monotonic() - t, 1)
        self.timings["up"] = round(time.monotonic() - t0, 1)
        return self

    def _stage_examples(self) -> None:
        """The artifact volume holds what the example's pvc:// URIs name."""
        tiny = self.pv_path / "tiny"
        if tiny.exists():
            shutil.rmtree(tiny)
        tiny.mkdir(parents=True)
        src = ROOT / "examples" / "tiny"
        shutil.copytree(src / "model", tiny / "model")
        for f in ("prompts.jsonl", "prompts_chat.jsonl", "eval.jsonl"):
            shutil.copy2(src / f, tiny / f)
        # Jobs and vLLM run as 65532: the volume is theirs, as a provisioner would make it.
        for p in [self.pv_path, *self.pv_path.rglob("*")]:
            os.chown(p, 65532, 65532)

    def install_operator(self, replicas: int = 1) -> None:
        tags = self.node.tags
        repo, tag = tags["operator"].rsplit(":", 1)
        t = time.monotonic()
        self.cp.helm(
            "install",
            "samp",
            str(CHART),
            "-n",
            OPERATOR_NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
            "--set",
            f"image.repository={repo}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            f"replicas={replicas}",
            "--set",
            f"jobImage={tags['jobs']}",
            "--set",
            "prometheusUrl=http://prometheus.monitoring.svc:9090",
            "--set",
            "logLevel=DEBUG",
            timeout=400,
        )
        self.timings["helm_install"] = round(time.monotonic() - t, 1)

    def deploy_stable(self) -> None:
        t = time.monotonic()
        self.apply_template("stable.yaml")
        self.rollout_status("deployment/tiny-llama-stable", NAMESPACE, 600)
        self.timings["stable_ready"] = round(time.monotonic() - t, 1)

    def down(self) -> None:
        self.node.stop()

    # ------------------------------------------------------------- load

    def start_loadgen(self, name: str, rate: float, duration: float) -> None:
        cm = self.kubectl(
            "create",
            "configmap",
            "loadgen",
            "-n",
            NAMESPACE,
            f"--from-file=loadgen.py={HERE / 'loadgen.py'}",
            "--dry-run=client",
            "-o",
            "yaml",
        ).stdout
        self.kubectl("apply", "-f", "-", input=cm)
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                        "containers": [
                            {
                                "name": "loadgen",
                                "image": self.node.tags["operator"],
                                "imagePullPolicy": "Never",
                                "command": [
                                    "python",
                                    "/app/loadgen.py",
                                    "--url",
                                    f"http://tiny-llama.{NAMESPACE}.svc:8000",
                                    "--model",
                                    "tiny-llama",
                                    "--rate",
                                    str(rate),
                                    "--duration",
                                    str(duration),
                                ],
                                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                                "volumeMounts": [{"name": "app", "mountPath": "/app"}],
                            }
                        ],
                        "volumes": [{"name": "app", "configMap": {"name": "loadgen"}}],
                    }
                },
            },
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(job))

    def loadgen_report(self, name: str) -> dict[str, Any] | None:
        out = self.kubectl("logs", f"job/{name}", "-n", NAMESPACE, check=False).stdout
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else None

    def stop_loadgen(self, name: str) -> dict[str, Any] | None:
        report = self.loadgen_report(name)
        self.kubectl("delete", "job", name, "-n", NAMESPACE, "--wait=false", check=False)
        return report

    # ------------------------------------------------------------- the resource

    def apply_manifest(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def qm(self, name: str) -> dict[str, Any]:
        return self.get("qm", name, "-n", NAMESPACE)

    def wait_phase(
        self,
        name: str,
        done: Callable[[dict[str, Any]], bool],
        timeout: float,
        on_tick: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while True:
            obj = self.qm(name)
            phase = obj.get("status", {}).get("phase")
            if phase != last:
                log(f"{name}: phase {phase}")
                last = phase
            if on_tick:
                on_tick(obj)
            if done(obj):
                return obj
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name} still {phase} after {timeout:.0f}s:\n" + self.describe(name)
                )
            time.sleep(2)

    def describe(self, name: str) -> str:
        return self.kubectl("describe", "qm", name, "-n", NAMESPACE, check=False).stdout

    def jobs_of(self, name: str) -> list[dict[str, Any]]:
        items = self.get("jobs", "-n", NAMESPACE, "-l", f"samp.dev/quantizedmodel={name}")
        return list(items["items"])

    def stage_seconds(self, name: str) -> dict[str, float]:
        """Wall time of each stage Job (start to completion), as the API server saw it."""
        from datetime import datetime

        out = {}
        for job in self.jobs_of(name):
            st = job.get("status", {})
            if st.get("startTime") and st.get("completionTime"):
                t0 = datetime.fromisoformat(st["startTime"].replace("Z", "+00:00"))
                t1 = datetime.fromisoformat(st["completionTime"].replace("Z", "+00:00"))
                out[job["metadata"]["name"]] = (t1 - t0).total_seconds()
        return out

    def events_of(self, name: str) -> list[str]:
        ev = self.get(
            "events",
            "-n",
            NAMESPACE,
            "--field-selector",
            f"involvedObject.name={name},involvedObject.kind=QuantizedModel",
        )
        return [f"{e.get('reason')}: {e.get('message')}" for e in ev["items"]]

    @contextlib.contextmanager
    def watch_qm(self, path: Path) -> Iterator[Path]:
        """``kubectl get qm -w`` into ``path``, as an SRE would watch the rollout."""
        with path.open("w") as out:
            p = subprocess.Popen(
                [
                    str(self.cp.binary("kubectl")),
                    "--kubeconfig",
                    str(self.cp.admin_kubeconfig),
                    "get",
                    "qm",
                    "-n",
                    NAMESPACE,
                    "-w",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                yield path
            finally:
                p.terminate()
                p.wait(10)


def example(
    name: str | None = None,
    *,
    interval: str | None = None,
    step_seconds: int | None = None,
    **latency: Any,
) -> dict[str, Any]:
    """examples/tiny-cpu.yaml as a dict, optionally renamed, with a longer analysis window
    and steps (``interval``, ``step_seconds``) and latency-gate overrides."""
    doc = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    spec = doc["spec"]
    if name:
        doc["metadata"]["name"] = name
        spec["artifacts"]["uri"] = f"pvc://examples/tiny/out-{name}"
    if interval:
        spec["rollout"]["analysisInterval"] = interval
    if step_seconds:
        for step in spec["rollout"]["steps"]:
            step["duration"] = f"{step_seconds}s"
    spec["gates"].setdefault("latency", {}).update(latency)
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default=str(ROOT / "examples" / "tiny-cpu.yaml"))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running (Ctrl-C stops)")
    ap.add_argument("--rate", type=float, default=4.0, help="client requests per second")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="samp-e2e-"))
    manifest = yaml.safe_load(Path(args.manifest).read_text())
    name = manifest["metadata"]["name"]
    ensure_images()
    cl = E2ECluster(workdir)
    figures: dict[str, Any] = {}
    with MemorySampler() as mem:
        try:
            cl.up()
            cl.install_operator()
            cl.deploy_stable()
            cl.start_loadgen("loadgen", args.rate, 1500)
            with cl.watch_qm(workdir / "qm-watch.txt"):
                t0 = time.monotonic()
                cl.kubectl("apply", "-f", args.manifest)
                log(f"applied {args.manifest}")
                first_job: list[float] = []

                def tick(obj: dict[str, Any]) -> None:
                    if not first_job and cl.jobs_of(name):
                        first_job.append(time.monotonic() - t0)

                obj = cl.wait_phase(
                    name, lambda o: o.get("status", {}).get("phase") in TERMINAL, 1800, tick
                )
                figures["apply_to_first_job_s"] = round(first_job[0], 1) if first_job else None
                figures["apply_to_end_s"] = round(time.monotonic() - t0, 1)
            figures["phase"] = obj["status"]["phase"]
            figures["stage_seconds"] = cl.stage_seconds(name)
            figures["clients"] = cl.stop_loadgen("loadgen")
            figures["canary"] = obj["status"].get("canary")
            figures["events"] = cl.events_of(name)
            print((workdir / "qm-watch.txt").read_text())
            print(cl.describe(name))
        finally:
            figures["timings"] = {**cl.node.timings, **cl.timings}
            figures["peak_memory_gib"] = round(mem.peak_kib / 2**20, 2)
            figures["memory_before_gib"] = round(mem.base_kib / 2**20, 2)
            print(json.dumps(figures, indent=1, default=str))
            if args.keep:
                with contextlib.suppress(KeyboardInterrupt):
                    log(f"cluster kept: KUBECONFIG={cl.cp.admin_kubeconfig}; Ctrl-C stops")
                    while True:
                        time.sleep(60)
            cl.down()
    return 0 if figures.get("phase") in ("Promoted", "RolledBack") else 1


if __name__ == "__main__":
    sys.exit(main())
