"""Operator settings, from environment variables and ``samp operator run`` flags.

A flag wins over its variable; the variable wins over the default.

flag (variable) = default: meaning

--namespace NS, repeatable (SAMP_NAMESPACES, comma list) = all namespaces:
    namespaces to watch; none means cluster-wide.
--job-image IMAGE (SAMP_JOB_IMAGE) = ghcr.io/samp-dev/samp-jobs:0.1.0:
    image of the stage Jobs when spec.hardware.jobImage is unset.
--job-image-pull-policy (SAMP_JOB_IMAGE_PULL_POLICY) = IfNotPresent.
--job-service-account SA (SAMP_JOB_SERVICE_ACCOUNT) = the namespace's default:
    ServiceAccount of the Job pods (its token is never mounted).
--job-ttl-seconds N (SAMP_JOB_TTL_SECONDS) = 86400:
    ttlSecondsAfterFinished of the Jobs; their results are in status by then.
--job-scratch-size Q (SAMP_JOB_SCRATCH_SIZE) = 100Gi:
    sizeLimit of the Jobs' writable emptyDir at /scratch (the root filesystem is read-only).
--job-pod-annotation K=V, repeatable (SAMP_JOB_POD_ANNOTATIONS, k=v,k=v) = none:
    extra annotations on Job pods, e.g. sidecar.istio.io/inject=false.
--job-pod-label K=V, repeatable (SAMP_JOB_POD_LABELS, k=v,k=v) = none:
    extra labels on Job pods.
--prometheus-url URL (SAMP_PROMETHEUS_URL) = none:
    default Prometheus of the canary gates; spec.gates.prometheusUrl wins. Credentials
    never go in the URL (refused): they come from a Secret, as the variables below.
--prometheus-ca-file PATH (SAMP_PROMETHEUS_CA_FILE) = the system CAs:
    CA bundle that verifies the default Prometheus's TLS certificate.
--prometheus-insecure-skip-verify (SAMP_PROMETHEUS_INSECURE_SKIP_VERIFY=true) = off:
    do not verify its TLS certificate (opt-in, as Flagger's insecureSkipVerify).
(no flag) (SAMP_PROMETHEUS_TOKEN, or SAMP_PROMETHEUS_USERNAME and
    SAMP_PROMETHEUS_PASSWORD) = none: credentials of the default Prometheus (the chart
    sets them from a Secret); never sent to a Prometheus a spec names.
--prometheus-namespace-label NAME (SAMP_PROMETHEUS_NAMESPACE_LABEL) = namespace,
--prometheus-pod-label NAME (SAMP_PROMETHEUS_POD_LABEL) = pod:
    the series labels holding a pod's namespace and name (as Kubernetes service
    discovery relabelling or a PodMonitor attaches them); every gate query matches the
    resource's namespace and the side's pods by them, so tenants never read each
    other's series. Empty: not matched (only where one tenant owns the Prometheus).
    default Prometheus of the canary gates; spec.gates.prometheusUrl wins.
--prometheus-allowed-host HOST, repeatable (SAMP_PROMETHEUS_ALLOWED_HOSTS, a,b) = any:
    hosts (name, name:port, *.domain) the gates may query; others are an analysis Error.
--metrics-address ADDR (SAMP_METRICS_ADDRESS) = 0.0.0.0:
    bind address of /metrics, /healthz and /readyz.
--metrics-port N (SAMP_METRICS_PORT) = 8080: their port; 0 turns the endpoint off.
--resync-seconds N (SAMP_RESYNC_SECONDS) = 300:
    safety re-reconcile of a resource nothing happened to (Job events drive progress).
--progress-seconds N (SAMP_PROGRESS_SECONDS) = 20: while a stage Job runs, read the tail
    of its pod's log and refresh status.progress at most this often (0: never).
--finalizer-timeout-seconds N (SAMP_FINALIZER_TIMEOUT_SECONDS) = 300:
    after this long, deletion stops waiting on cleanup, posts a Warning Event, and
    releases the finalizer (owner references still garbage-collect the Jobs).
--workers N (SAMP_WORKERS) = 8: threads running reconciles (API calls block).
--leader-election-namespace NS (SAMP_LEADER_ELECTION_NAMESPACE) = none: namespace of the
    coordination.k8s.io Lease the replicas elect their leader with; only the holder
    reconciles. None: no election, run exactly one replica. The chart sets its release
    namespace.
--leader-election-lease NAME (SAMP_LEADER_ELECTION_LEASE) = samp-operator: the Lease's name.
--leader-election-identity ID (POD_NAME) = <hostname>-<pid>: this replica's holderIdentity.
--leader-election-lease-duration-seconds N (SAMP_LEADER_ELECTION_LEASE_DURATION) = 15,
--leader-election-renew-deadline-seconds N (SAMP_LEADER_ELECTION_RENEW_DEADLINE) = 10,
--leader-election-retry-period-seconds N (SAMP_LEADER_ELECTION_RETRY_PERIOD) = 2:
    a silent leader is replaced after the lease duration; a leader that cannot renew for
    the renew deadline stops acting and exits (client-go's defaults and rules).
--log-level LEVEL (SAMP_LOG_LEVEL) = INFO: DEBUG, INFO, WARNING or ERROR.
--no-canary (SAMP_CANARY=false) = canary on: quantize and evaluate only; every resource
    rests at Evaluated (for clusters where another tool rolls models out).
(no flag) (KUBECONFIG) = in-cluster config when in a pod: kubeconfig used otherwise.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samp_core.lease import LeaseTiming
from samp_core.stage_jobs import JobSettings
from samp_operator.prometheus import Credentials


@dataclass(frozen=True)
class PrometheusDefaults:
    """The operator-wide Prometheus: its URL, trust, credentials and scoping labels."""

    url: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    credentials: Credentials = field(default_factory=Credentials)
    namespace_label: str | None = "namespace"
    pod_label: str | None = "pod"
    allowed_hosts: tuple[str, ...] = ()  # hosts a spec's prometheusUrl may name; empty: any

    @property
    def verify(self) -> bool | str:
        """The CA file when there is one (the chart mounts ``ca.crt`` of its Secret only
        when the key exists), else the system CAs; False only on the explicit opt-out."""
        if self.insecure_skip_verify:
            return False
        return self.ca_file if self.ca_file and Path(self.ca_file).is_file() else True


def _no_userinfo(url: str | None, where: str) -> str | None:
    """``url`` unless it carries credentials (they would land in logs and status)."""
    if url and "@" in url.split("://", 1)[-1].split("/", 1)[0]:
        raise ValueError(f"{where}: credentials in the URL are refused; put them in a Secret "
                         "(SAMP_PROMETHEUS_TOKEN or SAMP_PROMETHEUS_USERNAME/PASSWORD)")
    return url


def _flag_on(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def _pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    job_image: str = "ghcr.io/samp-dev/samp-jobs:0.1.0"
    job_image_pull_policy: str = "IfNotPresent"
    job_service_account: str | None = None
    job_ttl_seconds: int = 86_400
    job_scratch_size: str = "100Gi"
    job_pod_annotations: Mapping[str, str] = field(default_factory=dict)
    job_pod_labels: Mapping[str, str] = field(default_factory=dict)
    prometheus: PrometheusDefaults = field(default_factory=PrometheusDefaults)
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8080
    resync_seconds: float = 300.0
    progress_seconds: float = 20.0
    finalizer_timeout_seconds: float = 300.0
    workers: int = 8
    leader_election_namespace: str | None = None
    leader_election_lease: str = "samp-operator"
    leader_election_identity: str = ""
    lease_timing: LeaseTiming = field(default_factory=LeaseTiming)
    log_level: str = "INFO"
    canary: bool = True

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def job_settings(self) -> JobSettings:
        return JobSettings(
            default_image=self.job_image,
            image_pull_policy=self.job_image_pull_policy,
            ttl_seconds_after_finished=self.job_ttl_seconds,
            service_account=self.job_service_account,
            scratch_size=self.job_scratch_size,
            pod_labels=dict(self.job_pod_labels),
            pod_annotations=dict(self.job_pod_annotations),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--namespace", action="append", dest="namespaces", metavar="NS",
      help="namespace to watch (repeatable); none: cluster-wide [SAMP_NAMESPACES]")
    a("--job-image", help="default image of the stage Jobs [SAMP_JOB_IMAGE]")
    a("--job-image-pull-policy", choices=["Always", "IfNotPresent", "Never"])
    a("--job-service-account", help="ServiceAccount of Job pods [SAMP_JOB_SERVICE_ACCOUNT]")
    a("--job-ttl-seconds", type=int, help="ttlSecondsAfterFinished [SAMP_JOB_TTL_SECONDS]")
    a("--job-scratch-size", help="sizeLimit of /scratch [SAMP_JOB_SCRATCH_SIZE]")
    a("--job-pod-annotation", action="append", metavar="K=V",
      help="extra Job pod annotation (repeatable) [SAMP_JOB_POD_ANNOTATIONS]")
    a("--job-pod-label", action="append", metavar="K=V",
      help="extra Job pod label (repeatable) [SAMP_JOB_POD_LABELS]")
    a("--prometheus-url", help="default Prometheus for canary gates [SAMP_PROMETHEUS_URL]")
    a("--prometheus-ca-file", help="CA bundle for its TLS [SAMP_PROMETHEUS_CA_FILE]")
    a("--prometheus-insecure-skip-verify", action="store_const", const=True,
      help="do not verify its TLS certificate [SAMP_PROMETHEUS_INSECURE_SKIP_VERIFY]")
    a("--prometheus-namespace-label", metavar="NAME",
      help="series label of the namespace; '' off [SAMP_PROMETHEUS_NAMESPACE_LABEL]")
    a("--prometheus-pod-label", metavar="NAME",
      help="series label of the pod name; '' off [SAMP_PROMETHEUS_POD_LABEL]")
    a("--prometheus-allowed-host", action="append", dest="prometheus_allowed_hosts",
      metavar="HOST", help="host (name, name:port or *.domain) the gates may query; "
      "repeatable; none: any [SAMP_PROMETHEUS_ALLOWED_HOSTS]")
    a("--metrics-address", help="bind address of /metrics and /healthz")
    a("--metrics-port", type=int, help="port of /metrics and /healthz; 0 disables")
    a("--resync-seconds", type=float, help="safety resync interval [SAMP_RESYNC_SECONDS]")
    a("--progress-seconds", type=float,
      help="refresh status.progress from the stage pod's log at most this often; 0: never "
      "[SAMP_PROGRESS_SECONDS]")
    a("--finalizer-timeout-seconds", type=float,
      help="give up waiting on cleanup after this [SAMP_FINALIZER_TIMEOUT_SECONDS]")
    a("--workers", type=int, help="reconcile threads [SAMP_WORKERS]")
    a("--leader-election-namespace", metavar="NS",
      help="namespace of the leader-election Lease; unset: no election, one replica only "
           "[SAMP_LEADER_ELECTION_NAMESPACE]")
    a("--leader-election-lease", metavar="NAME",
      help="name of the Lease [SAMP_LEADER_ELECTION_LEASE]")
    a("--leader-election-identity", metavar="ID",
      help="this replica's holderIdentity [POD_NAME]; default <hostname>-<pid>")
    a("--leader-election-lease-duration-seconds", type=float,
      help="replace a silent leader after this [SAMP_LEADER_ELECTION_LEASE_DURATION]")
    a("--leader-election-renew-deadline-seconds", type=float,
      help="stop leading when no renewal succeeded for this "
           "[SAMP_LEADER_ELECTION_RENEW_DEADLINE]")
    a("--leader-election-retry-period-seconds", type=float,
      help="renew / try to acquire this often [SAMP_LEADER_ELECTION_RETRY_PERIOD]")
    a("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    a("--no-canary", dest="canary", action="store_const", const=False,
      help="stop at Evaluated; never start canaries [SAMP_CANARY=false]")


@dataclass(frozen=True)
class _Source:
    """Where each setting comes from: the flag when given, else the variable, else the
    default; errors name both, so the fix is obvious whichever way it was set."""

    args: Mapping[str, Any]
    env: Mapping[str, str]

    def pick(self, flag: str, var: str, default: object) -> object:
        value = self.args.get(flag)
        if value is not None:
            return value
        return self.env.get(var) or default

    def text(self, flag: str, var: str) -> str | None:
        """An optional string: empty means unset."""
        return str(self.pick(flag, var, "")) or None

    def number(self, flag: str, var: str, default: float, kind: type) -> float:
        raw = self.pick(flag, var, default)
        try:
            value = kind(raw)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{var} / --{flag.replace('_', '-')}: not a number: {raw!r}") \
                from err
        if value < 0:
            raise ValueError(f"{var} / --{flag.replace('_', '-')}: must not be negative")
        return float(value)

    def pairs(self, flag: str, var: str) -> dict[str, str]:
        items: Sequence[str] | None = self.args.get(flag)
        try:
            if items:
                return _pairs(",".join(items))
            return _pairs(self.env.get(var, ""))
        except ValueError as err:
            raise ValueError(f"{var} / --{flag.replace('_', '-')}: {err}") from err

    def label(self, flag: str, var: str, default: str) -> str | None:
        value = self.args.get(flag)
        if value is None:
            value = self.env.get(var, default)
        return str(value).strip() or None

    def items(self, flag: str, var: str) -> tuple[str, ...]:
        """A repeatable flag, else a comma-separated variable."""
        return tuple(self.args.get(flag) or [
            item.strip() for item in self.env.get(var, "").split(",") if item.strip()])


def _job_settings(src: _Source, d: OperatorSettings) -> dict[str, Any]:
    return {
        "job_image": str(src.pick("job_image", "SAMP_JOB_IMAGE", d.job_image)),
        "job_image_pull_policy": str(src.pick(
            "job_image_pull_policy", "SAMP_JOB_IMAGE_PULL_POLICY", d.job_image_pull_policy)),
        "job_service_account": src.text("job_service_account", "SAMP_JOB_SERVICE_ACCOUNT"),
        "job_ttl_seconds": int(src.number("job_ttl_seconds", "SAMP_JOB_TTL_SECONDS",
                                          d.job_ttl_seconds, int)),
        "job_scratch_size": str(src.pick("job_scratch_size", "SAMP_JOB_SCRATCH_SIZE",
                                         d.job_scratch_size)),
        "job_pod_annotations": src.pairs("job_pod_annotation", "SAMP_JOB_POD_ANNOTATIONS"),
        "job_pod_labels": src.pairs("job_pod_label", "SAMP_JOB_POD_LABELS"),
    }


def _prometheus_settings(src: _Source) -> PrometheusDefaults:
    return PrometheusDefaults(
        url=_no_userinfo(src.text("prometheus_url", "SAMP_PROMETHEUS_URL"),
                         "SAMP_PROMETHEUS_URL / --prometheus-url"),
        ca_file=src.text("prometheus_ca_file", "SAMP_PROMETHEUS_CA_FILE"),
        insecure_skip_verify=_flag_on(src.pick(
            "prometheus_insecure_skip_verify", "SAMP_PROMETHEUS_INSECURE_SKIP_VERIFY", "")),
        credentials=Credentials(
            token=src.env.get("SAMP_PROMETHEUS_TOKEN") or None,
            username=src.env.get("SAMP_PROMETHEUS_USERNAME") or None,
            password=src.env.get("SAMP_PROMETHEUS_PASSWORD") or None,
        ),
        namespace_label=src.label(
            "prometheus_namespace_label", "SAMP_PROMETHEUS_NAMESPACE_LABEL", "namespace"),
        pod_label=src.label("prometheus_pod_label", "SAMP_PROMETHEUS_POD_LABEL", "pod"),
        allowed_hosts=src.items("prometheus_allowed_hosts", "SAMP_PROMETHEUS_ALLOWED_HOSTS"),
    )


def _leader_settings(src: _Source, d: OperatorSettings) -> dict[str, Any]:
    timing = LeaseTiming()
    return {
        "leader_election_namespace": src.text("leader_election_namespace",
                                              "SAMP_LEADER_ELECTION_NAMESPACE"),
        "leader_election_lease": str(src.pick("leader_election_lease",
                                              "SAMP_LEADER_ELECTION_LEASE",
                                              d.leader_election_lease)),
        "leader_election_identity": str(src.pick("leader_election_identity", "POD_NAME", "")
                                        or f"{socket.gethostname()}-{os.getpid()}"),
        "lease_timing": LeaseTiming(
            lease_duration=src.number("leader_election_lease_duration_seconds",
                                      "SAMP_LEADER_ELECTION_LEASE_DURATION",
                                      timing.lease_duration, float),
            renew_deadline=src.number("leader_election_renew_deadline_seconds",
                                      "SAMP_LEADER_ELECTION_RENEW_DEADLINE",
                                      timing.renew_deadline, float),
            retry_period=src.number("leader_election_retry_period_seconds",
                                    "SAMP_LEADER_ELECTION_RETRY_PERIOD",
                                    timing.retry_period, float),
        ),
    }


def _runtime_settings(src: _Source, d: OperatorSettings) -> dict[str, Any]:
    canary = src.args.get("canary")
    return {
        "metrics_address": str(src.pick("metrics_address", "SAMP_METRICS_ADDRESS",
                                        d.metrics_address)),
        "metrics_port": int(src.number("metrics_port", "SAMP_METRICS_PORT", d.metrics_port,
                                       int)),
        "resync_seconds": src.number("resync_seconds", "SAMP_RESYNC_SECONDS",
                                     d.resync_seconds, float),
        "progress_seconds": max(0.0, src.number("progress_seconds", "SAMP_PROGRESS_SECONDS",
                                                d.progress_seconds, float)),
        "finalizer_timeout_seconds": src.number(
            "finalizer_timeout_seconds", "SAMP_FINALIZER_TIMEOUT_SECONDS",
            d.finalizer_timeout_seconds, float),
        "workers": max(1, int(src.number("workers", "SAMP_WORKERS", d.workers, int))),
        "log_level": str(src.pick("log_level", "SAMP_LOG_LEVEL", d.log_level)).upper(),
        "canary": canary if canary is not None else src.env.get(
            "SAMP_CANARY", "true").strip().lower() not in ("false", "0", "no", "off"),
    }


def from_env_and_args(
    ns: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> OperatorSettings:
    """Build settings; raises ValueError naming the bad variable or flag."""
    src = _Source(vars(ns) if ns is not None else {}, os.environ if env is None else env)
    d = OperatorSettings()
    return OperatorSettings(
        namespaces=src.items("namespaces", "SAMP_NAMESPACES"),
        **_job_settings(src, d),
        prometheus=_prometheus_settings(src),
        **_leader_settings(src, d),
        **_runtime_settings(src, d),
    )
