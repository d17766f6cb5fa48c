"""A real single-node Kubernetes cluster on this machine: the control plane of
tests/cluster plus a real kubelet, kube-proxy and containerd, so pods really run.

What runs where (all as root, all torn down by :meth:`RealNode.stop`):

* a Linux bridge ``samp0`` with ``10.244.0.1/24``: the pods' network (CNI ``bridge`` +
  ``host-local`` from Debian's containernetworking-plugins) and the address the
  apiserver and kubelet bind, so pods reach the API through the ``kubernetes`` Service;
* containerd (Debian's 1.6, runc, cgroupfs driver) with its own socket, state and
  config; its root (images, snapshots) is kept under ``~/.cache/samp-operator`` so a
  second run imports nothing;
* kubelet and kube-proxy built by tests/cluster/build.sh from the same k8s.io/kubernetes
  release as the control plane; kubelet gets ``failCgroupV1: false`` (this VM mounts
  cgroup v1) and its own client and serving certificates from the test CA;
* an iptables guard: nothing from the pod network leaves through any interface but the
  bridge (pods only ever talk to each other, the host and the apiserver).

Why containerd 1.6 (Debian) rather than 2.x from Go modules: Kubernetes 1.35 still
supports containerd 1.x (its last release to do so), Debian ships it ready with runc and
the CNI plugins, and building containerd 2.x here would add minutes to a cold CI run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "cluster"))

import controlplane as cpmod  # noqa: E402

BRIDGE = "samp0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
CLUSTER_DNS = "10.0.0.10"
NODE_NAME = "samp-node"
STATE = Path("/run/samp-e2e")
CONTAINERD_SOCK = STATE / "containerd.sock"
CACHE = Path(os.environ.get("SAMP_E2E_CACHE", Path.home() / ".cache" / "samp-operator"))
CONTAINERD_ROOT = CACHE / "containerd"
IMAGE_CACHE = Path(os.environ.get("SAMP_IMAGE_CACHE", CACHE / "images"))
GUARD_COMMENT = "samp-e2e: pods never leave the bridge"
# FORWARD rule: drop what the pod network would send out of any interface but the bridge
GUARD_RULE = ("FORWARD", "-s", POD_CIDR, "!", "-o", BRIDGE, "-j", "DROP",
              "-m", "comment", "--comment", GUARD_COMMENT)  # fmt: skip


class NodeError(RuntimeError):
    """The node could not start; the message says which part and where its log is."""


def run(*argv: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, check=False, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    if not quiet and p.returncode != 0:
        print(f"[node] {' '.join(argv)}: {p.stderr.strip()[-200:]}", file=sys.stderr)
    return p


def image_tags() -> dict[str, str]:
    """name -> tag and name_archive -> path, from tests/e2e/images.sh's tags.env."""
    env = IMAGE_CACHE / "tags.env"
    if not env.exists():
        raise NodeError(f"{env} missing: run tests/e2e/images.sh first")
    return dict(line.split("=", 1) for line in env.read_text().split() if "=" in line)


def preflight() -> list[str]:
    """What this machine lacks for a real node, each with the fix (empty: ready)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root: the node needs network namespaces, bridges and mounts")
    for tool, pkg in (
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("iptables", "iptables"),
        ("conntrack", "conntrack"),
        ("ip", "iproute2"),
        ("podman", "podman"),
        ("mmdebstrap", "mmdebstrap"),
    ):
        if shutil.which(tool) is None:
            problems.append(f"{tool} missing: apt-get install -y {pkg}")
    if not Path("/usr/lib/cni/bridge").exists():
        problems.append("CNI plugins missing: apt-get install -y containernetworking-plugins")
    if not Path("/proc/sys/net/bridge").exists():
        problems.append("bridge netfilter missing: modprobe br_netfilter")
    return problems


def kill_leftover_shims() -> None:
    """containerd-shim processes of our containerd (a killed run leaves them behind)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"containerd-shim-runc-v2")
            and str(STATE).encode() in b" ".join(argv)
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), 9)


@dataclass
class RealNode:
    """Control plane + containerd + kubelet + kube-proxy on this machine.

    ``workdir``: certificates, configs, logs (``logs/*.log``) and the kubelet root.
    """

    workdir: Path
    cp: cpmod.ControlPlane = field(init=False)
    procs: list[cpmod.Component] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.logs = self.workdir / "logs"
        self.cp = cpmod.ControlPlane(self.workdir / "cp", bind_address=NODE_IP, fake_nodes=False)

    # ------------------------------------------------------------------ start

    def start(self, timeout: float = 180) -> RealNode:
        problems = preflight()
        if problems:
            raise NodeError("this machine cannot run the node:\n  " + "\n  ".join(problems))
        self.tags = image_tags()
        t0 = time.monotonic()
        try:
            self._network()
            self._step("controlplane", lambda: self.cp.start(timeout))
            self._step("containerd", self._start_containerd)
            self._step("images", self._import_images)
            self._step("kubelet", self._start_kubelet)
            self._step("kube-proxy", self._start_kube_proxy)
            self._step("node-ready", lambda: self.wait_node_ready(timeout))
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _step(self, name: str, fn: Any) -> None:
        t = time.monotonic()
        print(f"[node] {name} ...", flush=True)
        fn()
        self.timings[name] = round(time.monotonic() - t, 1)
        print(f"[node] {name} ready in {self.timings[name]} s", flush=True)

    def _network(self) -> None:
        kill_leftover_shims()
        self._unmount_kubelet()
        self._cleanup_network()
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        for key, value in (
            ("net/ipv4/ip_forward", "1"),
            ("net/bridge/bridge-nf-call-iptables", "1"),
        ):
            Path("/proc/sys", key).write_text(value)
        run("iptables", "-I", *GUARD_RULE)
        cni = self.workdir / "cni"
        cni.mkdir(parents=True, exist_ok=True)
        (cni / "10-samp.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "samp",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,  # nothing leaves the node: no NAT towards eth0
                            "hairpinMode": True,  # a pod reaching its own Service
                            "ipam": {
                                "type": "host-local",
                                "ranges": [
                                    [
                                        {
                                            "subnet": POD_CIDR,
                                            "rangeStart": "10.244.0.10",
                                            "gateway": NODE_IP,
                                        }
                                    ]
                                ],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(STATE / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=1,
            )
        )

    def _cleanup_network(self) -> None:
        run("ip", "link", "del", BRIDGE, check=False, quiet=True)
        while run("iptables", "-D", *GUARD_RULE, check=False, quiet=True).returncode == 0:
            pass
        shutil.rmtree(STATE / "ipam", ignore_errors=True)

    def _spawn(self, name: str, argv: list[str], health: str | None = None) -> cpmod.Component:
        comp = cpmod.Component(name, argv, self.logs / f"{name}.log", health_url=health)
        self.cp._spawn(comp)  # same process handling (PDEATHSIG, logs) as the control plane
        self.procs.append(comp)
        return comp

    def _alive(self, comp: cpmod.Component) -> None:
        if comp.proc is not None and comp.proc.poll() is not None:
            raise NodeError(
                f"{comp.name} exited with {comp.proc.returncode}; log {comp.log}:\n"
                f"{comp.log_tail(40)}"
            )

    def _start_containerd(self) -> None:
        STATE.mkdir(parents=True, exist_ok=True)
        CONTAINERD_ROOT.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "containerd.toml"
        conf.write_text(f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{STATE / "containerd"}"
[grpc]
  address = "{CONTAINERD_SOCK}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.tags["pause"]}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.workdir / "cni"}"
""")
        # A socket file left by an earlier, killed run would pass an exists() check while
        # nothing listens on it (CI saw "connection refused"): remove it, then wait until
        # containerd answers.
        for stale in (CONTAINERD_SOCK, Path(f"{CONTAINERD_SOCK}.ttrpc")):
            stale.unlink(missing_ok=True)
        comp = self._spawn("containerd", ["containerd", "--config", str(conf)])
        cpmod.wait_for(lambda: self._alive(comp) or self._containerd_answers(), 30, "containerd")
        # Containers of an earlier, killed run: the fresh API server knows none of them.
        for kind in ("tasks", "containers"):
            ids = self.ctr(kind, "ls", "-q").stdout.split()
            for cid in ids:
                if kind == "tasks":
                    self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
                else:
                    self.ctr("containers", "rm", cid, check=False)

    def _containerd_answers(self) -> bool:
        return CONTAINERD_SOCK.exists() and self.ctr("version", check=False).returncode == 0

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            "ctr",
            "--address",
            str(CONTAINERD_SOCK),
            "-n",
            "k8s.io",
            *args,
            check=check,
            quiet=not check,
        )

    def _import_images(self) -> None:
        """Import each image's OCI archive unless containerd holds it complete and unpacked.

        An image record can outlive its content (an import killed half-way), so
        ``images check`` decides, not ``images ls``. Podman's archives carry the full
        reference in ``org.opencontainers.image.ref.name``, which ctr uses as the name.
        """
        complete = {
            ln.split()[0]
            for ln in self.ctr("images", "check").stdout.splitlines()[1:]
            if " complete " in ln and ln.rstrip().endswith("true")
        }
        for name in ("pause", "coredns", "prometheus", "operator", "jobs", "vllm"):
            tag = self.tags[name]
            if tag in complete:
                continue
            t = time.monotonic()
            self.ctr("images", "import", self.tags[f"{name}_archive"])
            print(f"[node]   imported {tag} in {time.monotonic() - t:.1f} s", flush=True)
        # Earlier builds of the same images: containerd's GC frees their layers.
        current = {
            self.tags[n] for n in ("pause", "coredns", "prometheus", "operator", "jobs", "vllm")
        }
        for ref in self.ctr("images", "ls", "-q").stdout.split():
            repo = ref.rsplit(":", 1)[0]
            if (
                ref.startswith("localhost/samp/")
                and ref not in current
                and not ref.endswith(":0.32.0")
                and any(t.rsplit(":", 1)[0] == repo for t in current)
            ):
                self.ctr("images", "rm", ref, check=False)

    def _issue_node_certs(self) -> None:
        c = self.cp.certs
        c.issue("kubelet-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}", client=True)
        c.issue(
            "kubelet-serving", f"/CN={NODE_NAME}", server_sans=[f"IP:{NODE_IP}", f"DNS:{NODE_NAME}"]
        )
        c.issue("kube-proxy", "/CN=system:kube-proxy", client=True)
        for who in ("kubelet-client", "kube-proxy"):
            cpmod.write_kubeconfig(
                self.workdir / f"{who}.kubeconfig",
                self.cp.server,
                self.cp.ca_file,
                {
                    "client-certificate": str(c.dir / f"{who}.crt"),
                    "client-key": str(c.dir / f"{who}.key"),
                },
                who,
            )

    def _start_kubelet(self) -> None:
        self._issue_node_certs()
        d = self.cp.certs.dir
        root = self.workdir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        resolv = self.workdir / "resolv.conf"
        # Pods resolve through CoreDNS only; no upstream: nothing outside the node.
        resolv.write_text(f"nameserver {CLUSTER_DNS}\n")
        healthz = cpmod.free_port()
        conf = self.workdir / "kubelet.yaml"
        conf.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    # this VM mounts cgroup v1; kubelet 1.35 refuses it otherwise
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
                    "address": NODE_IP,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": healthz,
                    "tlsCertFile": str(d / "kubelet-serving.crt"),
                    "tlsPrivateKeyFile": str(d / "kubelet-serving.key"),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(self.cp.ca_file)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "clusterDNS": [CLUSTER_DNS],
                    "clusterDomain": "cluster.local",
                    "resolvConf": str(resolv),
                    "failSwapOn": False,
                    "maxPods": 40,
                    # a CI machine's disk and memory are what they are: evict only at the edge
                    "evictionHard": {
                        "memory.available": "200Mi",
                        "nodefs.available": "2%",
                        "imagefs.available": "2%",
                        "nodefs.inodesFree": "2%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "serializeImagePulls": False,
                    "containerLogMaxSize": "20Mi",
                    "rotateCertificates": False,
                    "registerNode": True,
                },
                indent=1,
            )
        )
        comp = self._spawn(
            "kubelet",
            [
                str(self.cp.binary("kubelet")),
                "--config",
                str(conf),
                "--kubeconfig",
                str(self.workdir / "kubelet-client.kubeconfig"),
                "--root-dir",
                str(root),
                "--hostname-override",
                NODE_NAME,
                "--node-ip",
                NODE_IP,
                "--v",
                "1",
            ],
            health=f"http://127.0.0.1:{healthz}/healthz",
        )
        self.cp._wait_healthy(comp, 90)

    def _start_kube_proxy(self) -> None:
        healthz, metrics = cpmod.free_port(), cpmod.free_port()
        conf = self.workdir / "kube-proxy.yaml"
        conf.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(self.workdir / "kube-proxy.kubeconfig")},
                    "mode": "iptables",
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": NODE_NAME,
                    "healthzBindAddress": f"127.0.0.1:{healthz}",
                    "metricsBindAddress": f"127.0.0.1:{metrics}",
                    "conntrack": {"maxPerCore": 0},  # leave the VM's conntrack sysctls alone
                },
                indent=1,
            )
        )
        comp = self._spawn(
            "kube-proxy",
            [str(self.cp.binary("kube-proxy")), "--config", str(conf), "--v", "1"],
            health=f"http://127.0.0.1:{healthz}/healthz",
        )
        self.cp._wait_healthy(comp, 60)

    def wait_node_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            for c in self.procs:
                self._alive(c)
            code, node = self.cp.request("GET", f"/api/v1/nodes/{NODE_NAME}")
            if code != 200:
                return False
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            return conds.get("Ready") == "True"

        cpmod.wait_for(ready, timeout, f"node {NODE_NAME} Ready", interval=1)

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Delete every pod's containers, stop kubelet/kube-proxy/containerd and the
        control plane, undo the network. Safe to call twice."""
        kubelet = next((c for c in self.procs if c.name == "kubelet"), None)
        if kubelet and kubelet.proc and kubelet.proc.poll() is None:
            kubelet.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                kubelet.proc.wait(15)
        if any(c.name == "containerd" and c.proc and c.proc.poll() is None for c in self.procs):
            for cid in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            time.sleep(1)
            for cid in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "delete", "-f", cid, check=False)
        for comp in reversed(self.procs):
            if comp.proc and comp.proc.poll() is None:
                comp.proc.terminate()
                try:
                    comp.proc.wait(15)
                except subprocess.TimeoutExpired:
                    comp.proc.kill()
                    comp.proc.wait(10)
        self.procs.clear()
        kill_leftover_shims()
        self._remove_kube_chains()
        self._unmount_kubelet()
        self._cleanup_network()
        self.cp.stop()

    @staticmethod
    def _remove_kube_chains() -> None:
        """kube-proxy's and kubelet's iptables chains (KUBE-*), in every table, v4 and v6."""
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle"):
                dump = run(f"{tool}-save", "-t", table, check=False, quiet=True).stdout
                rules = [shlex.split(ln)[1:] for ln in dump.splitlines() if ln.startswith("-A ")]
                for rule in rules:
                    if not rule[0].startswith("KUBE-") and "KUBE-" in " ".join(rule):
                        run(tool, "-t", table, "-D", *rule, check=False, quiet=True)
                chains = [ln[1:].split()[0] for ln in dump.splitlines() if ln.startswith(":KUBE-")]
                for verb in ("-F", "-X"):
                    for chain in chains:
                        run(tool, "-t", table, verb, chain, check=False, quiet=True)

    def _unmount_kubelet(self) -> None:
        root = str(self.workdir / "kubelet")
        mounts = [
            ln.split()[1]
            for ln in Path("/proc/mounts").read_text().splitlines()
            if ln.split()[1].startswith((root, str(STATE)))
        ]
        for m in sorted(mounts, key=len, reverse=True):
            run("umount", "-l", m, check=False, quiet=True)

    def rss_kib(self) -> dict[str, int | None]:
        out = dict(self.cp.rss())
        for c in self.procs:
            if c.proc and c.proc.poll() is None:
                out[c.name] = cpmod.rss_kib(c.proc.pid)
        return out
