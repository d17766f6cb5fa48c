"""A real Kubernetes control plane for tests: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and KWOK (fake nodes and pods).

Every binary is built from Go modules by ``tests/cluster/build.sh`` (versions
pinned in ``tests/cluster/versions.env``); nothing here is a mock. The API
server validates OpenAPI schemas and CEL rules, the real Job, ReplicaSet,
Deployment, namespace and garbage-collector controllers run, the real
scheduler binds pods to fake nodes, and KWOK plays the kubelet's part by
moving pods through the stages in ``kwok-stages.yaml``.

This module has no pytest dependency; ``cluster_fixtures.py`` wraps it in
fixtures, and ``python tests/cluster/controlplane.py up`` starts one by hand
(prints the kubeconfig paths, stops on Ctrl-C).

Conventions tests rely on (see README.md):

* pod label ``samp.dev/kwok-fail: "true"``: KWOK makes the pod *fail*
  (phase Failed, container terminated with exit code 1) instead of running /
  completing. Annotations ``samp.dev/kwok-exit-code``, ``samp.dev/kwok-reason``
  and ``samp.dev/kwok-message`` shape the termination.
* pod annotation ``samp.dev/kwok-run-duration`` (Go duration, e.g. ``"5s"``):
  how long a Job pod stays Running before it completes or fails (default:
  immediately).
* a fake GPU node ``samp-gpu-h100-0`` advertising ``nvidia.com/gpu: 8`` and a
  fake CPU node ``samp-cpu-0``; more with :meth:`ControlPlane.add_node`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"
VERSIONS_ENV = HERE / "versions.env"
KWOK_STAGES = HERE / "kwok-stages.yaml"

# Pod label/annotations understood by the KWOK stages in kwok-stages.yaml.
FAIL_LABEL = "samp.dev/kwok-fail"
EXIT_CODE_ANNOTATION = "samp.dev/kwok-exit-code"
REASON_ANNOTATION = "samp.dev/kwok-reason"
MESSAGE_ANNOTATION = "samp.dev/kwok-message"
RUN_DURATION_ANNOTATION = "samp.dev/kwok-run-duration"

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
    "helm",
)

OPERATOR_NAMESPACE = "samp-system"
OPERATOR_SERVICE_ACCOUNT = "samp-operator"
OPERATOR_CLUSTERROLE = "samp-operator-under-test"

GPU_NODE = "samp-gpu-h100-0"
CPU_NODE = "samp-cpu-0"


class ControlPlaneError(RuntimeError):
    """Raised when the control plane cannot be built, started or used."""


def read_versions() -> dict[str, str]:
    """KEY=VALUE pairs of versions.env (comments ignored)."""
    out: dict[str, str] = {}
    for raw in VERSIONS_ENV.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def bin_dir() -> Path:
    """Where build.sh puts (and finds) the binaries for the pinned release."""
    root = os.environ.get("SAMP_CLUSTER_BIN_DIR") or str(
        Path.home() / ".cache/samp-operator/cluster-bin"
    )
    return Path(root) / read_versions()["K8S_VERSION"]


def third_party_dir(name: str) -> Path:
    """CRD YAMLs build.sh copied from a Go module ("gateway-api", "prometheus-operator")."""
    key = {
        "gateway-api": "GATEWAY_API_VERSION",
        "prometheus-operator": "PROMETHEUS_OPERATOR_VERSION",
    }[name]
    return bin_dir() / "crds" / f"{name}-{read_versions()[key]}"


def binaries_current() -> bool:
    """True when build.sh --check says every binary is built and up to date."""
    r = subprocess.run(
        ["bash", str(BUILD_SH), "--check"], capture_output=True, text=True, check=False
    )
    return r.returncode == 0


def ensure_binaries(log_path: Path | None = None) -> Path:
    """Run build.sh unless every binary is current; raise with the log tail on failure."""
    if binaries_current():
        return bin_dir()
    log_path = log_path or Path(tempfile.gettempdir()) / "samp-cluster-build.log"
    print(
        f"[samp-cluster] building control-plane binaries (log: {log_path}); "
        "cold builds take tens of minutes",
        file=sys.stderr,
        flush=True,
    )
    with open(log_path, "wb") as log:
        r = subprocess.run(
            ["bash", str(BUILD_SH)], stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if r.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise ControlPlaneError(
            f"tests/cluster/build.sh failed (exit {r.returncode}); log {log_path}:\n{tail}"
        )
    return bin_dir()


# --- small utilities -------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Children die with the test process, even if it is SIGKILLed."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll predicate until it returns a truthy value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ControlPlaneError:  # a component died: no point in waiting
            raise
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    health_url: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


@dataclass
class Certs:
    dir: Path
    ca_crt: Path = field(init=False)
    ca_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_crt, self.ca_key = self.dir / "ca.crt", self.dir / "ca.key"

    def make_ca(self) -> None:
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=samp-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            cwd=self.dir,
        )

    def issue(
        self, name: str, subject: str, *, server_sans: Sequence[str] = (), client: bool = False
    ) -> tuple[Path, Path]:
        """Issue a leaf certificate signed by the test CA; returns (crt, key)."""
        ext = self.dir / f"{name}.ext"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
        ]
        lines.append("extendedKeyUsage=" + ("clientAuth" if client else "serverAuth"))
        if server_sans:
            lines.append("subjectAltName=" + ",".join(server_sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
            cwd=self.dir,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            ext.name,
            "-out",
            f"{name}.crt",
            cwd=self.dir,
        )
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def service_account_keys(self) -> tuple[Path, Path]:
        _openssl(
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "sa.key",
            cwd=self.dir,
        )
        _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=self.dir)
        return self.dir / "sa.key", self.dir / "sa.pub"


def write_kubeconfig(path: Path, server: str, ca: Path, user: dict[str, str], name: str) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "samp-test", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": "samp-test", "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


# --- the control plane -----------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + KWOK.

    Usage::

        cp = ControlPlane(workdir)
        cp.start()
        try:
            api = cp.api_client          # admin kubernetes.client.ApiClient
            ...
        finally:
            cp.stop()
    """

    def __init__(
        self,
        workdir: Path | str,
        binaries: Path | None = None,
        *,
        bind_address: str = "127.0.0.1",
        fake_nodes: bool = True,
    ) -> None:
        """``bind_address``: where kube-apiserver listens and what it advertises (the
        real node of tests/e2e passes its bridge address so pods reach it through the
        ``kubernetes`` Service). ``fake_nodes``: start KWOK with its GPU and CPU nodes."""
        self.workdir = Path(workdir)
        self.bind_address = bind_address
        self.fake_nodes = fake_nodes
        self.bin = Path(binaries) if binaries else bin_dir()
        self.versions = read_versions()
        self.components: list[Component] = []
        self.server = ""
        self.admin_kubeconfig = self.workdir / "admin.kubeconfig"
        self.operator_kubeconfig = self.workdir / "operator.kubeconfig"
        self.operator_namespace = OPERATOR_NAMESPACE
        self.operator_service_account = OPERATOR_SERVICE_ACCOUNT
        self.operator_username = (
            f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
        )
        self.certs = Certs(self.workdir / "pki")
        self.operator_token = ""
        self.audit_log = self.workdir / "logs" / "audit-operator.log"  # set at start
        self.timings: dict[str, float] = {}
        self._api_client: Any = None
        self._ssl: ssl.SSLContext | None = None

    # -- paths and processes -------------------------------------------------

    def binary(self, name: str) -> Path:
        p = self.bin / name
        if not os.access(p, os.X_OK):
            raise ControlPlaneError(f"missing binary {p}; run tests/cluster/build.sh")
        return p

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_crt

    def pids(self) -> dict[str, int]:
        return {c.name: c.proc.pid for c in self.components if c.proc and c.proc.poll() is None}

    def rss(self) -> dict[str, int | None]:
        """RSS in KiB of every running component."""
        return {name: rss_kib(pid) for name, pid in self.pids().items()}

    def _spawn(self, comp: Component) -> None:
        comp.log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(comp.log, "ab")  # noqa: SIM115 - lives as long as the process
        comp.proc = subprocess.Popen(
            comp.argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - only prctl, async-signal-safe enough
        )
        logf.close()
        self.components.append(comp)

    def _check_alive(self) -> None:
        for c in self.components:
            if c.proc and c.proc.poll() is not None:
                raise ControlPlaneError(
                    f"{c.name} exited with {c.proc.returncode}; log {c.log}:\n{c.log_tail()}"
                )

    def _wait_healthy(self, comp: Component, timeout: float = 60) -> None:
        assert comp.health_url
        ctx = self.ssl_context(client_cert=comp.name == "kube-apiserver")
        url = comp.health_url

        def ok() -> bool:
            self._check_alive()
            try:
                with urllib.request.urlopen(
                    url, context=ctx if url.startswith("https") else None, timeout=2
                ) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        t0 = time.monotonic()
        try:
            wait_for(ok, timeout, f"{comp.name} {url}")
        except TimeoutError as exc:
            raise ControlPlaneError(f"{exc}; log {comp.log}:\n{comp.log_tail()}") from None
        self.timings[comp.name] = time.monotonic() - t0

    def ssl_context(self, client_cert: bool = True) -> ssl.SSLContext:
        """TLS context trusting the test CA (and presenting the admin cert)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client_cert:
            ctx.load_cert_chain(
                str(self.certs.dir / "admin.crt"), str(self.certs.dir / "admin.key")
            )
        else:  # component health endpoints serve self-signed certificates
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = 120) -> ControlPlane:
        t_start = time.monotonic()
        for name in BINARIES:
            if name != "kwok" or self.fake_nodes:
                self.binary(name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        logs = self.workdir / "logs"
        self._make_pki()
        for attempt in range(1, 4):
            try:
                self._start_etcd(logs)
                self._start_apiserver(logs, timeout)
                self._write_admin_kubeconfig()
                self._start_controllers(logs, timeout)
                self._bootstrap(timeout)
                break
            except ControlPlaneError as exc:
                self.stop()
                # free_port() can race with other processes: start over on new ports
                if "address already in use" not in str(exc) or attempt == 3:
                    raise
                self.components.clear()
                shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
                logs.rename(self.workdir / f"logs.failed-{attempt}")
            except BaseException:
                self.stop()
                raise
        self.timings["total"] = time.monotonic() - t_start
        return self

    def _make_pki(self) -> None:
        t0 = time.monotonic()
        c = self.certs
        c.make_ca()
        c.issue(
            "apiserver",
            "/CN=kube-apiserver",
            server_sans=[
                "IP:127.0.0.1",
                *([f"IP:{self.bind_address}"] if self.bind_address != "127.0.0.1" else []),
                "IP:10.0.0.1",
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ],
        )
        c.issue("admin", "/O=system:masters/CN=samp-test-admin", client=True)
        self.sa_key, self.sa_pub = c.service_account_keys()
        self.timings["pki"] = time.monotonic() - t0

    def _start_etcd(self, logs: Path) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        comp = Component(
            "etcd",
            [
                str(self.binary("etcd")),
                "--name",
                "samp-test",
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                self.etcd_url,
                "--advertise-client-urls",
                self.etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"samp-test=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # test data: durability is irrelevant, speed is not
                "--quota-backend-bytes",
                str(2 * 1024**3),
                "--log-level",
                "warn",
            ],
            logs / "etcd.log",
            health_url=f"{self.etcd_url}/health",
        )
        self._spawn(comp)
        self._wait_healthy(comp, 30)

    def _start_apiserver(self, logs: Path, timeout: float) -> None:
        port = free_port()
        self.server = f"https://{self.bind_address}:{port}"
        d = self.certs.dir
        # Audit only the operator identity's requests (metadata level): tests read which
        # API calls the operator really makes (tests/shipping/test_chart_rbac_cluster.py).
        self.audit_log = logs / "audit-operator.log"
        policy = logs / "audit-policy.yaml"
        policy.write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
            f"rules:\n- level: Metadata\n  users: [{self.operator_username!r}]\n"
            "- level: None\n"
        )
        comp = Component(
            "kube-apiserver",
            [
                str(self.binary("kube-apiserver")),
                "--etcd-servers",
                self.etcd_url,
                "--bind-address",
                self.bind_address,
                "--advertise-address",
                self.bind_address,
                "--secure-port",
                str(port),
                # logs/exec/port-forward to a real kubelet: present the admin certificate
                "--kubelet-client-certificate",
                str(d / "admin.crt"),
                "--kubelet-client-key",
                str(d / "admin.key"),
                "--kubelet-preferred-address-types",
                "InternalIP",
                "--tls-cert-file",
                str(d / "apiserver.crt"),
                "--tls-private-key-file",
                str(d / "apiserver.key"),
                "--client-ca-file",
                str(self.ca_file),
                "--authorization-mode",
                "Node,RBAC",
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                str(self.sa_pub),
                "--service-account-signing-key-file",
                str(self.sa_key),
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--allow-privileged=true",
                "--profiling=false",
                "--audit-policy-file",
                str(policy),
                "--audit-log-path",
                str(self.audit_log),
                "--audit-log-format",
                "json",
                "--audit-log-mode",
                "blocking",
                "--v",
                "1",
            ],
            logs / "kube-apiserver.log",
            health_url=f"{self.server}/readyz",
        )
        self._spawn(comp)
        self._wait_healthy(comp, timeout)

    def _write_admin_kubeconfig(self) -> None:
        d = self.certs.dir
        write_kubeconfig(
            self.admin_kubeconfig,
            self.server,
            self.ca_file,
            {"client-certificate": str(d / "admin.crt"), "client-key": str(d / "admin.key")},
            "samp-test-admin",
        )

    def _start_controllers(self, logs: Path, timeout: float) -> None:
        kcm_port, sched_port, kwok_port = free_port(), free_port(), free_port()
        kc = str(self.admin_kubeconfig)
        kcm = Component(
            "kube-controller-manager",
            [
                str(self.binary("kube-controller-manager")),
                "--kubeconfig",
                kc,
                "--authentication-kubeconfig",
                kc,
                "--authorization-kubeconfig",
                kc,
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                str(kcm_port),
                "--leader-elect=false",
                # no requestheader CA in this cluster: don't poll for one
                "--authentication-skip-lookup=true",
                "--controllers",
                "*",
                "--service-account-private-key-file",
                str(self.sa_key),
                "--root-ca-file",
                str(self.ca_file),
                "--use-service-account-credentials=false",
                "--cluster-name",
                "samp-test",
                "--profiling=false",
                "--v",
                "1",
            ],
            logs / "kube-controller-manager.log",
            health_url=f"https://127.0.0.1:{kcm_port}/healthz",
        )
        sched = Component(
            "kube-scheduler",
            [
                str(self.binary("kube-scheduler")),
                "--kubeconfig",
                kc,
                "--authentication-kubeconfig",
                kc,
                "--authorization-kubeconfig",
                kc,
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                str(sched_port),
                "--leader-elect=false",
                # no requestheader CA in this cluster: don't poll for one
                "--authentication-skip-lookup=true",
                "--profiling=false",
                "--v",
                "1",
            ],
            logs / "kube-scheduler.log",
            health_url=f"https://127.0.0.1:{sched_port}/healthz",
        )
        d = self.certs.dir
        # KWOK plays the kubelet's API too: the API server reaches it at the node's address
        # and port (HTTPS; it does not verify kubelet certificates here), and it serves
        # every pod's log from one file (ClusterLogs), so `kubectl logs` and the
        # operator's pods/log reads see what a test writes there (pod_log_file).
        kwok = Component(
            "kwok",
            [
                str(self.binary("kwok")),
                "--config",
                str(KWOK_STAGES),
                "--config",
                str(self._kwok_logs_config()),
                "--kubeconfig",
                kc,
                "--manage-all-nodes=true",
                "--cidr",
                "10.244.0.0/16",
                "--node-ip",
                "127.0.0.1",
                "--node-port",
                str(kwok_port),
                "--node-lease-duration-seconds",
                "40",
                "--server-address",
                f"127.0.0.1:{kwok_port}",
                "--tls-cert-file",
                str(d / "apiserver.crt"),
                "--tls-private-key-file",
                str(d / "apiserver.key"),
            ],
            logs / "kwok.log",
            health_url=f"https://127.0.0.1:{kwok_port}/healthz",
        )
        comps = (kcm, sched, kwok) if self.fake_nodes else (kcm, sched)
        for comp in comps:
            self._spawn(comp)
        for comp in comps:
            self._wait_healthy(comp, timeout)

    @property
    def pod_log_file(self) -> Path:
        """The log every KWOK pod shows (CRI log format: ``<RFC 3339> stderr F <line>``)."""
        return self.workdir / "pod-logs" / "containers.log"

    def write_pod_log(self, *lines: str) -> None:
        """Append lines to the log every KWOK pod shows, as containerd writes them."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        with self.pod_log_file.open("a") as f:
            f.writelines(f"{stamp} stderr F {line}\n" for line in lines)

    def _kwok_logs_config(self) -> Path:
        self.pod_log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pod_log_file.touch()
        path = self.workdir / "kwok-logs.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterLogs",
            "metadata": {"name": "samp-pod-logs"},
            "spec": {"selector": {}, "logs": [{"logsFile": str(self.pod_log_file),
                                               "follow": False}]}}))
        return path

    def _bootstrap(self, timeout: float) -> None:
        from kubernetes import client

        t0 = time.monotonic()
        core = client.CoreV1Api(self.api_client)
        if self.fake_nodes:
            self._add_fake_nodes(timeout)
        self._make_operator_identity(core, timeout)
        self.timings["bootstrap"] = time.monotonic() - t0

    def _add_fake_nodes(self, timeout: float) -> None:
        self.add_node(
            GPU_NODE,
            gpus=8,
            labels={
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "nvidia.com/gpu.count": "8",
                "nvidia.com/gpu.memory": "81559",
                "nvidia.com/cuda.driver.major": "570",
                "samp.dev/test-node": "gpu",
            },
            wait=False,
        )
        self.add_node(CPU_NODE, labels={"samp.dev/test-node": "cpu"}, wait=False)
        for n in (GPU_NODE, CPU_NODE):
            self.wait_node_ready(n, timeout)

    def _make_operator_identity(self, core: Any, timeout: float) -> None:
        from kubernetes import client

        # The operator identity: a real ServiceAccount whose token the operator
        # kubeconfig carries, so RBAC decides exactly as it would in-cluster.
        self.ensure_namespace(self.operator_namespace)
        with contextlib.suppress(client.ApiException):
            core.create_namespaced_service_account(
                self.operator_namespace,
                client.V1ServiceAccount(
                    metadata=client.V1ObjectMeta(name=self.operator_service_account)
                ),
            )
        tr = core.create_namespaced_service_account_token(
            self.operator_service_account,
            self.operator_namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=48 * 3600)
            ),
        )
        self.operator_token = tr.status.token
        write_kubeconfig(
            self.operator_kubeconfig,
            self.server,
            self.ca_file,
            {"token": self.operator_token},
            "samp-operator",
        )
        self.set_operator_rules([])  # no permissions until a test grants them
        self.wait_default_service_account("default", timeout)

    def stop(self, grace: float = 10) -> dict[str, int | None]:
        """Terminate every component (reverse start order), kill after `grace` seconds.

        Returns the exit codes; afterwards no component process is left running.
        """
        codes: dict[str, int | None] = {}
        for comp in reversed(self.components):
            if comp.proc and comp.proc.poll() is None:
                comp.proc.terminate()
                try:
                    comp.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    comp.proc.kill()
                    comp.proc.wait(10)
            codes[comp.name] = comp.proc.returncode if comp.proc else None
        if self._api_client is not None:
            with contextlib.suppress(Exception):
                self._api_client.close()
            self._api_client = None
        return codes

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients -------------------------------------------------------------

    @property
    def api_client(self) -> Any:
        """A ready admin ``kubernetes.client.ApiClient`` (cached)."""
        if self._api_client is None:
            self._api_client = self.new_api_client(self.admin_kubeconfig)
        return self._api_client

    def new_api_client(self, kubeconfig: Path | str | None = None) -> Any:
        """A fresh ``kubernetes.client.ApiClient`` for a kubeconfig (default: admin)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.admin_kubeconfig))

    def operator_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for running the operator as a subprocess under its own identity."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.operator_kubeconfig)
        return env

    def dynamic(self, api_client: Any = None) -> Any:
        """A fresh ``kubernetes.dynamic.DynamicClient`` (fresh discovery: sees new CRDs)."""
        from kubernetes.dynamic import DynamicClient

        return DynamicClient(api_client or self.api_client)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> tuple[int, Any]:
        """Raw HTTPS request (admin client cert, or a bearer `token`); returns
        (status, decoded JSON or text). Never raises for HTTP error statuses."""
        data = None
        hdrs = {"Accept": "application/json"}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=hdrs)
        if token is None:
            ctx = self.ssl_context(client_cert=True)
        else:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | str | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster (admin unless `kubeconfig`)."""
        cmd = [
            str(self.binary("kubectl")),
            "--kubeconfig",
            str(kubeconfig or self.admin_kubeconfig),
            *args,
        ]
        r = subprocess.run(
            cmd, capture_output=True, text=True, input=input, timeout=timeout, check=False
        )
        if check and r.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}"
            )
        return r

    def helm(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run the built helm (admin kubeconfig, caches under the work dir)."""
        env = dict(
            os.environ,
            KUBECONFIG=str(self.admin_kubeconfig),
            HELM_CACHE_HOME=str(self.workdir / "helm/cache"),
            HELM_CONFIG_HOME=str(self.workdir / "helm/config"),
            HELM_DATA_HOME=str(self.workdir / "helm/data"),
        )
        r = subprocess.run(
            [str(self.binary("helm")), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if check and r.returncode != 0:
            raise ControlPlaneError(
                f"helm {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}"
            )
        return r

    # -- objects -------------------------------------------------------------

    def apply(
        self,
        obj: dict[str, Any],
        *,
        namespace: str | None = None,
        dry_run: bool = False,
        field_manager: str = "samp-tests",
        api_client: Any = None,
    ) -> Any:
        """Server-side apply one object (force conflicts); returns the ResourceInstance."""
        dyn = self.dynamic(api_client)
        res = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        kw: dict[str, Any] = {"field_manager": field_manager, "force_conflicts": True}
        if dry_run:
            kw["dry_run"] = "All"
        if res.namespaced:
            kw["namespace"] = namespace or obj.get("metadata", {}).get("namespace") or "default"
        return dyn.server_side_apply(res, body=obj, **kw)

    def apply_yaml(self, text_or_path: str | Path, **kw: Any) -> list[Any]:
        """Server-side apply every document of a YAML string or file."""
        text = Path(text_or_path).read_text() if isinstance(text_or_path, Path) else text_or_path
        return [self.apply(doc, **kw) for doc in yaml.safe_load_all(text) if doc]

    def install_crds(self, paths: Iterable[Path | str], timeout: float = 60) -> list[str]:
        """Server-side apply CRD YAML files, wait until Established; returns CRD names."""
        names: list[str] = []
        for p in paths:
            for doc in yaml.safe_load_all(Path(p).read_text()):
                if not doc:
                    continue
                if doc.get("kind") != "CustomResourceDefinition":
                    raise ControlPlaneError(
                        f"{p}: not a CustomResourceDefinition: {doc.get('kind')}"
                    )
                self.apply(doc)
                names.append(doc["metadata"]["name"])
        for n in names:
            self.wait_crd_established(n, timeout)
        return names

    def install_gateway_api(self, timeout: float = 60) -> list[str]:
        """Gateway API standard channel (GATEWAY_API_VERSION): its CRDs and the
        ValidatingAdmissionPolicy it ships, as `kubectl apply -f standard-install.yaml` would."""
        return self._install_third_party(
            sorted(third_party_dir("gateway-api").glob("*.yaml")), timeout
        )

    def install_prometheus_operator_crds(
        self,
        plurals: Iterable[str] = ("servicemonitors", "podmonitors", "prometheusrules"),
        timeout: float = 60,
    ) -> list[str]:
        """prometheus-operator CRDs (PROMETHEUS_OPERATOR_VERSION), by plural; no operator runs."""
        d = third_party_dir("prometheus-operator")
        return self._install_third_party(
            [d / f"monitoring.coreos.com_{p}.yaml" for p in plurals], timeout
        )

    def _install_third_party(self, files: list[Path], timeout: float) -> list[str]:
        if not files or not all(f.is_file() for f in files):
            raise ControlPlaneError(f"missing CRD files {files}; run tests/cluster/build.sh")
        names = []
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if not doc:
                    continue
                if doc["kind"] == "CustomResourceDefinition":
                    self.apply(doc, field_manager="samp-tests-third-party")
                    names.append(doc["metadata"]["name"])
        for f in files:  # policies and the like after their types exist
            for doc in yaml.safe_load_all(f.read_text()):
                if doc and doc["kind"] != "CustomResourceDefinition":
                    self.apply(doc, field_manager="samp-tests-third-party")
        for n in names:
            self.wait_crd_established(n, timeout)
        return names

    def wait_crd_established(self, name: str, timeout: float = 60) -> dict[str, Any]:
        def established() -> dict[str, Any] | None:
            status, crd = self.request(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
            )
            if status != 200:
                return None
            conds = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
            if conds.get("Established") == "True" and conds.get("NamesAccepted") == "True":
                return crd
            return None

        crd = wait_for(established, timeout, f"CRD {name} Established")
        # Discovery catches up a moment after Established.
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        versions = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]

        def discovered() -> bool:
            for v in versions:
                status, doc = self.request("GET", f"/apis/{group}/{v}")
                if status != 200 or plural not in {r["name"] for r in doc.get("resources", [])}:
                    return False
            return True

        wait_for(discovered, timeout, f"CRD {name} in discovery")
        return crd

    def delete_crds(self, names: Iterable[str], timeout: float = 60) -> None:
        for n in names:
            self.request("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}")
        for n in names:
            wait_for(
                lambda n=n: (
                    self.request(
                        "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}"
                    )[0]
                    == 404
                ),
                timeout,
                f"CRD {n} deleted",
            )

    def ensure_namespace(self, name: str) -> None:
        status, body = self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        if status not in (201, 409):
            raise ControlPlaneError(f"creating namespace {name}: {status} {body}")

    def wait_default_service_account(self, namespace: str, timeout: float = 60) -> None:
        """Pods are refused until the serviceaccount controller made `default` here."""
        wait_for(
            lambda: (
                self.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default")[0]
                == 200
            ),
            timeout,
            f"ServiceAccount {namespace}/default",
        )

    def add_node(
        self,
        name: str,
        *,
        gpus: int = 0,
        cpu: str = "64",
        memory: str = "512Gi",
        labels: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        wait: bool = True,
        timeout: float = 60,
    ) -> None:
        """Create a KWOK-managed fake node (kubelet-free: KWOK makes it Ready)."""
        capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "1Ti"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **(labels or {}),
                },
            },
            "spec": {"taints": taints or []},
            "status": {"capacity": capacity, "allocatable": dict(capacity)},
        }
        status, body = self.request("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise ControlPlaneError(f"creating node {name}: {status} {body}")
        if wait:
            self.wait_node_ready(name, timeout)

    def wait_node_ready(self, name: str, timeout: float = 60) -> None:
        def ready() -> bool:
            status, node = self.request("GET", f"/api/v1/nodes/{name}")
            conds = (
                {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
                if status == 200
                else {}
            )
            return conds.get("Ready") == "True"

        wait_for(ready, timeout, f"node {name} Ready")

    # -- the operator identity ------------------------------------------------

    def set_operator_rules(
        self, rules: list[dict[str, Any]], *, clusterrole: str = OPERATOR_CLUSTERROLE
    ) -> None:
        """Create/replace the ClusterRole bound to the operator identity (the
        ServiceAccount samp-system/samp-operator of ``operator_kubeconfig``).

        Pass e.g. the ``rules`` of the Helm chart's ClusterRole to run the
        operator with exactly the chart's permissions. RBAC changes take effect
        within about a second (the authorizer's informers)."""
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": clusterrole},
            "rules": rules,
        }
        # apply replaces the rules this manager owns: removing a rule removes it.
        self.apply(role, field_manager="samp-tests-operator-rbac")
        self.bind_operator_clusterrole(clusterrole)
        self._wait_rbac_synced(rules)

    def chart_rbac_rules(self, chart: Path | str, *helm_args: str) -> list[dict[str, Any]]:
        """All rules of every ClusterRole and Role `helm template` renders for a chart
        (e.g. ``--set watchNamespaces={a,b}``), merged: feed them to set_operator_rules()."""
        out = self.helm(
            "template",
            "samp",
            str(chart),
            "--namespace",
            self.operator_namespace,
            "--kube-version",
            self.versions["K8S_VERSION"],
            *helm_args,
        ).stdout
        rules: list[dict[str, Any]] = []
        for doc in yaml.safe_load_all(out):
            if doc and doc.get("kind") in ("ClusterRole", "Role") and not _aggregated(doc):
                rules += doc.get("rules") or []
        if not rules:
            raise ControlPlaneError(f"helm template {chart} rendered no RBAC rules")
        return rules

    def bind_operator_clusterrole(self, clusterrole: str) -> None:
        """Bind an existing ClusterRole (e.g. the chart's) to the operator identity."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{clusterrole}-samp-operator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": clusterrole,
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": self.operator_service_account,
                    "namespace": self.operator_namespace,
                }
            ],
        }
        self.apply(binding, field_manager="samp-tests-operator-rbac")

    def operator_can(
        self,
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str | None = None,
        subresource: str = "",
    ) -> bool:
        """SubjectAccessReview for the operator identity (what RBAC really decides)."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": self.operator_username,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{self.operator_namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "verb": verb,
                    "resource": resource,
                    "group": group,
                    "namespace": namespace or "",
                    "subresource": subresource,
                },
            },
        }
        status, body = self.request(
            "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review
        )
        if status != 201:
            raise ControlPlaneError(f"SubjectAccessReview: {status} {body}")
        return bool(body["status"].get("allowed"))

    def _wait_rbac_synced(self, rules: list[dict[str, Any]], timeout: float = 30) -> None:
        probe = next(
            (
                r
                for r in rules
                if r.get("resources")
                and r.get("verbs")
                and "*" not in r["resources"][0]
                and not r.get("resourceNames")
            ),
            None,
        )
        if probe is None:
            return
        resource = probe["resources"][0].split("/")
        verb = probe["verbs"][0] if probe["verbs"][0] != "*" else "get"
        group = (probe.get("apiGroups") or [""])[0]
        group = "" if group == "*" else group
        wait_for(
            lambda: self.operator_can(
                verb, resource[0], group=group, subresource=resource[1] if len(resource) > 1 else ""
            ),
            timeout,
            "operator RBAC to take effect",
        )


def pod_fails(
    template: dict[str, Any],
    *,
    exit_code: int = 1,
    reason: str = "Error",
    message: str = "",
    run_duration: str | None = None,
) -> dict[str, Any]:
    """Mark a pod (or pod template) dict so KWOK makes it fail; returns it.

    Works on a Pod, a pod ``template`` (``{"metadata":..., "spec":...}``) or a
    Job (its ``spec.template``)."""
    target = template
    if template.get("kind") == "Job" or (
        "spec" in template and "template" in template.get("spec", {})
    ):
        target = template["spec"]["template"]
    meta = target.setdefault("metadata", {})
    meta.setdefault("labels", {})[FAIL_LABEL] = "true"
    ann = meta.setdefault("annotations", {})
    ann[EXIT_CODE_ANNOTATION] = str(exit_code)
    ann[REASON_ANNOTATION] = reason
    if message:
        ann[MESSAGE_ANNOTATION] = message
    if run_duration:
        ann[RUN_DURATION_ANNOTATION] = run_duration
    return template


# --- manual use --------------------------------------------------------------


def _main(argv: list[str]) -> int:
    if argv[1:2] != ["up"]:
        print("usage: python tests/cluster/controlplane.py up  # Ctrl-C stops it")
        return 2
    ensure_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="samp-cluster-"))
    cp = ControlPlane(workdir)
    cp.start()
    try:
        print(f"server:              {cp.server}")
        print(f"admin kubeconfig:    {cp.admin_kubeconfig}")
        print(f"operator kubeconfig: {cp.operator_kubeconfig}")
        print(f"logs:                {workdir / 'logs'}")
        print(f"timings (s):         { {k: round(v, 2) for k, v in cp.timings.items()} }")
        print(f"rss (KiB):           {cp.rss()}")
        print("Ctrl-C to stop", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cp.stop()
        if os.environ.get("SAMP_CLUSTER_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))


def _aggregated(role: dict[str, Any]) -> bool:
    """A ClusterRole the chart aggregates into view/edit for users, not the operator's."""
    labels = (role.get("metadata") or {}).get("labels") or {}
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels)
