"""Operator benchmark on the real control plane (not a test; numbers go to operator_results.md).

    .venv/bin/python tests/benchmarks/operator_bench.py [--out tests/benchmarks/operator_results.md]

What it measures, with `samp operator run` under the RBAC-limited operator identity:

1. **create → first Job**: 50 QuantizedModels created one every 0.5 s ("trickle"), then
   50 more created back to back ("burst"); for each, the time from the API server's
   answer to the POST until the watch (a raw watch on Jobs started beforehand) sees its
   first Job. p50 / p99 / max per series.
2. **API requests per resource per minute while nothing changes**: with all 100 resources
   Calibrating (their Job pods held Running by KWOK), the change of the API server's
   ``apiserver_request_total`` over 60 s, non-WATCH verbs, for the resources the operator
   touches (quantizedmodels, jobs, pods, configmaps, events), divided by 100. Other
   components (Job controller, scheduler, KWOK) also count; nothing changes, so they add
   little, and the figure is an upper bound for the operator.
3. **Operator RSS**: VmRSS of the operator process at ready (no resources), and with the
   100 QuantizedModels plus their 100 Jobs, Pods and ConfigMaps indexed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "cluster"))
sys.path.insert(0, str(REPO / "tests" / "operator"))

import controlplane  # noqa: E402
from operator_harness import OPERATOR_RULES, Api, Operator, qm_manifest, wait_for  # noqa: E402

RESOURCES = ("quantizedmodels", "jobs", "pods", "configmaps", "events")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class JobWatch(threading.Thread):
    """Records when each QuantizedModel's first Job is seen (raw watch on Jobs)."""

    def __init__(self, cp: Any, ns: str) -> None:
        super().__init__(daemon=True)
        self.cp, self.ns = cp, ns
        self.first: dict[str, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        url = (
            f"{self.cp.server}/apis/batch/v1/namespaces/{self.ns}/jobs?watch=1"
            "&allowWatchBookmarks=false&timeoutSeconds=3600"
        )
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, context=self.cp.ssl_context(client_cert=True)) as r:
            self.ready.set()
            for line in r:
                now = time.monotonic()
                ev = json.loads(line)
                owner = ev["object"]["metadata"].get("labels", {}).get("samp.dev/quantizedmodel")
                if owner and owner not in self.first:
                    self.first[owner] = now


def request_counts(cp: Any) -> dict[tuple[str, str], float]:
    status, text = cp.request("GET", "/metrics")
    assert status == 200
    out: dict[tuple[str, str], float] = {}
    for line in str(text).splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(
            kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")].split(",")
        )
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("resource") in RESOURCES and labels.get("verb") != "WATCH":
            key = (labels["resource"], labels["verb"])
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "tests/benchmarks/operator_results.md"))
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    args = ap.parse_args()
    controlplane.ensure_binaries()
    work = Path(tempfile.mkdtemp(prefix="samp-bench-"))
    cp = controlplane.ControlPlane(work)
    cp.start()
    op: Operator | None = None
    try:
        cp.install_crds(sorted((REPO / "crds").glob("*.yaml")))
        ns = "bench"
        cp.ensure_namespace(ns)
        cp.wait_default_service_account(ns)
        cp.set_operator_rules(OPERATOR_RULES)
        api = Api(cp, ns)
        api.make_claims("artifacts", "prompts")
        # The production resync (300 s), not the tests' 60 s.
        op = Operator(
            cp, [ns], work / "operator.log", extra_args=["--resync-seconds", "300"]
        ).start()
        time.sleep(3)
        rss_start = rss_kib(op.pid)
        watch = JobWatch(cp, ns)
        watch.start()
        watch.ready.wait(10)

        created: dict[str, float] = {}
        series: dict[str, list[str]] = {"trickle": [], "burst": []}
        for i in range(50):
            name = f"t-{i:02d}"
            api.create_qm(qm_manifest(name, ns))
            created[name] = time.monotonic()
            series["trickle"].append(name)
            time.sleep(0.5)
        wait_for(
            lambda: all(n in watch.first for n in series["trickle"]),
            120,
            "first Jobs of the trickle",
        )
        for i in range(50):
            name = f"b-{i:02d}"
            api.create_qm(qm_manifest(name, ns))
            created[name] = time.monotonic()
            series["burst"].append(name)
        wait_for(lambda: len(watch.first) >= 100, 180, "first Jobs of the burst")
        latency = {k: [watch.first[n] - created[n] for n in v] for k, v in series.items()}
        slowest = sorted(created, key=lambda n: watch.first[n] - created[n])[-3:]
        slow_text = ", ".join(f"{n} {watch.first[n] - created[n]:.2f} s" for n in slowest)

        # Settle: every resource Calibrating, pods Running (held), indexes filled.
        def settled() -> bool:
            items = api.items(f"/apis/samp.dev/v1alpha1/namespaces/{ns}/quantizedmodels")
            pods = api.items(f"/api/v1/namespaces/{ns}/pods")
            return (
                sum(1 for i in items if i.get("status", {}).get("phase") == "Calibrating") == 100
                and sum(1 for p in pods if p["status"].get("phase") == "Running") == 100
            )

        wait_for(settled, 300, "100 resources Calibrating with running pods", interval=1)
        time.sleep(10)
        rss_100 = rss_kib(op.pid)
        before = request_counts(cp)
        time.sleep(args.idle_seconds)
        after = request_counts(cp)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta = {k: v for k, v in delta.items() if v}
        total = sum(delta.values())
        per_resource_per_min = total / 100 / (args.idle_seconds / 60)
        rss_end = rss_kib(op.pid)
        metrics = op.metrics()
        reconciles = [ln for ln in metrics.splitlines() if ln.startswith("samp_reconciles_total")]
    finally:
        if op is not None:
            op.stop()
        cp.stop()

    lines = [
        "# Operator benchmark",
        "",
        "Command: `.venv/bin/python tests/benchmarks/operator_bench.py` "
        f"(idle window {args.idle_seconds:.0f} s). Real control plane from tests/cluster "
        "(etcd, kube-apiserver, controller-manager, scheduler, KWOK) and `samp operator run` "
        "under the RBAC-limited operator identity, on this 2-core shared machine, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "## Create → first Job exists (seconds)",
        "",
        "| series | n | p50 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    for k, v in latency.items():
        lines.append(
            f"| {k} | {len(v)} | {statistics.median(v):.3f} | {pct(v, 0.99):.3f} | {max(v):.3f} |"
        )
    lines += [
        "",
        "trickle: one create every 0.5 s; burst: 50 creates back to back (with 50 samples "
        f"p99 is the largest). Slowest: {slow_text}.",
        "",
        "## API requests while nothing changes",
        "",
        f"{total:.0f} non-WATCH requests in {args.idle_seconds:.0f} s for "
        f"{', '.join(RESOURCES)} with 100 resources idle: **{per_resource_per_min:.3f} "
        "requests per resource per minute** (all clients, an upper bound for the operator).",
        "",
        "| resource | verb | requests |",
        "|---|---|---|",
        *[f"| {r} | {v} | {n:.0f} |" for (r, v), n in sorted(delta.items())],
        "",
        "## Operator memory (VmRSS)",
        "",
        f"- ready, no resources: {rss_start / 1024:.1f} MiB",
        f"- 100 QuantizedModels + 100 Jobs/Pods/ConfigMaps indexed: {rss_100 / 1024:.1f} MiB",
        f"- after the idle window: {rss_end / 1024:.1f} MiB",
        "",
        "Operator reconcile counters at the end:",
        "",
        *[f"    {ln}" for ln in reconciles],
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
