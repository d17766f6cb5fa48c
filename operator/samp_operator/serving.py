"""Manifests of the canary vLLM Deployment and Service, and the stable patch on promotion.

The canary serves the attempt's artifact under ``--served-model-name <name>-canary
<public name>...``: vLLM labels its metrics with the first name, so ``model_name``
separates canary series from the stable's, and it also answers the names clients of the
shared Service or HTTPRoute send (with only ``<name>-canary`` every such request got
404 "model does not exist" from the canary's share of the traffic). Pods carry the
``prometheus.io/scrape|port|path`` annotations and the label ``samp.dev/served-model``
(relabel it to ``served_model`` so the HTTP layer's ``http_requests_total`` is
separable too, see samp_operator.prometheus); readiness and liveness probe
``/health``. Where the model comes from:

* ``pvc://claim/path`` — the claim is mounted read-only at ``/artifacts`` and vLLM
  loads ``/artifacts/path``;
* ``s3://`` / ``gs://`` — vLLM streams it with ``--load-format runai_streamer``
  (object-store credentials from ``spec.artifacts.secretRef`` as environment).

The pods pass Pod Security "restricted": the container runs as non-root, cannot
escalate privileges, drops every capability and uses the runtime's default seccomp
profile, and the pod mounts no service-account token (vLLM never calls the API). Each
setting can be turned off on its own (``spec.serving.securityContext``,
``spec.serving.automountServiceAccountToken``) where an image needs it (the
vllm/vllm-openai image runs as root: give it ``runAsUser``, or opt out of
``runAsNonRoot``).

Quantization arguments come from the plan's export format: compressed-tensors
checkpoints are detected by vLLM from ``config.json`` and get
``--quantization compressed-tensors`` explicitly so a mismatch fails loudly;
bitsandbytes NF4 checkpoints get ``--quantization bitsandbytes``.
"""

from __future__ import annotations

import re
from typing import Any

from samp_core.formats import ExportFormat
from samp_core.spec import QuantizedModelSpec, VllmSecurityContext

ROLE_LABEL = "samp.dev/role"
OWNER_LABEL = "samp.dev/quantizedmodel"
SERVED_LABEL = "samp.dev/served-model"
ATTEMPT_LABEL = "samp.dev/attempt"
MOUNT = "/artifacts"
# Longer than a request takes on a saturated server (P99 near 5 s on the e2e node), so the
# requests queued when the endpoint is removed still finish before SIGTERM aborts them.
PRESTOP_SECONDS = 20
GRACE_SECONDS = 60
SHM = "1Gi"  # memory-backed /dev/shm of each vLLM pod; counts against its memory limit


def label_value(text: str) -> str:
    """A valid label value (63 chars, alphanumerics, '-', '_', '.') from any string."""
    v = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.")
    return v or "x"


def canary_names(name: str) -> tuple[str, str]:
    """(Deployment, Service) names of the canary."""
    return f"{name}-canary", f"{name}-canary"


def model_location(
    artifact_uri: str,
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(model path, volumes, volumeMounts, extra args) for an artifact URI."""
    if artifact_uri.startswith("pvc://"):
        rest = artifact_uri[len("pvc://") :]
        claim, _, path = rest.partition("/")
        volumes = [
            {"name": "artifacts", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        ]
        mounts = [{"name": "artifacts", "mountPath": MOUNT, "readOnly": True}]
        return f"{MOUNT}/{path}".rstrip("/"), volumes, mounts, []
    if artifact_uri.startswith(("s3://", "gs://")):
        return artifact_uri, [], [], ["--load-format", "runai_streamer"]
    raise ValueError(f"unsupported artifact URI {artifact_uri!r}")


def quantization_args(export_format: ExportFormat | None) -> list[str]:
    if export_format is ExportFormat.BITSANDBYTES_NF4:
        return ["--quantization", "bitsandbytes"]
    if export_format is ExportFormat.COMPRESSED_TENSORS:
        return ["--quantization", "compressed-tensors"]
    return []


def container_security_context(sc: VllmSecurityContext) -> dict[str, Any]:
    """The vLLM container's securityContext; the defaults are what Pod Security
    "restricted" asks for, and each field the spec turns off is left out or relaxed."""
    out: dict[str, Any] = {
        "runAsNonRoot": sc.run_as_non_root,
        "allowPrivilegeEscalation": sc.allow_privilege_escalation,
        "seccompProfile": {"type": sc.seccomp_profile},
    }
    if sc.drop_all_capabilities:
        out["capabilities"] = {"drop": ["ALL"]}
    if sc.run_as_user is not None:
        out["runAsUser"] = sc.run_as_user
    if sc.run_as_group is not None:
        out["runAsGroup"] = sc.run_as_group
    return out


def _owner(owner: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not owner:
        return []
    return [{**owner, "controller": True, "blockOwnerDeletion": True}]


def canary_manifests(
    name: str,
    namespace: str,
    spec: QuantizedModelSpec,
    artifact_uri: str,
    *,
    served_model_name: str,
    aliases: tuple[str, ...] = (),
    export_format: ExportFormat | None = ExportFormat.COMPRESSED_TENSORS,
    attempt: int = 1,
    replicas: int = 1,
    extra_pod_labels: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Deployment, Service) of the canary. ``extra_pod_labels``: in replica-ratio mode,
    the stable Service's selector, so the canary pods receive a share of its traffic.
    ``owner``: an ownerReference to the QuantizedModel (apiVersion, kind, name, uid) so
    deleting it deletes the canary."""
    dep_name, svc_name = canary_names(name)
    port = spec.serving.port
    selector = {OWNER_LABEL: name, ROLE_LABEL: "canary"}
    pod_labels = _canary_pod_labels(selector, served_model_name, attempt, extra_pod_labels)
    meta_labels = {k: v for k, v in pod_labels.items() if k != ATTEMPT_LABEL}
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
              "prometheus.io/path": "/metrics"}
    metadata = {"namespace": namespace, "labels": meta_labels, "ownerReferences": _owner(owner)}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": dep_name, **metadata},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": scrape},
                "spec": _canary_pod_spec(spec, artifact_uri, served_model_name, aliases,
                                         export_format),
            },
        },
    }
    return deployment, _canary_service(svc_name, metadata, selector, port)


def _canary_service(
    name: str, metadata: dict[str, Any], selector: dict[str, str], port: int
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, **metadata},
        "spec": {"selector": selector,
                 "ports": [{"name": "http", "port": port, "targetPort": port}]},
    }


def _canary_pod_labels(
    selector: dict[str, str], served_model_name: str, attempt: int,
    extra_pod_labels: dict[str, str] | None,
) -> dict[str, str]:
    return {
        **(extra_pod_labels or {}),
        **selector,
        SERVED_LABEL: label_value(served_model_name),
        ATTEMPT_LABEL: str(attempt),
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/component": "canary",
        "app.kubernetes.io/managed-by": "samp-operator",
    }


def _canary_pod_spec(
    spec: QuantizedModelSpec, artifact_uri: str, served_model_name: str,
    aliases: tuple[str, ...], export_format: ExportFormat | None,
) -> dict[str, Any]:
    """One vLLM container serving the artifact under its served name and the aliases."""
    model, volumes, mounts, load_args = model_location(artifact_uri)
    # vLLM's engine and workers talk over /dev/shm (160 MiB for even a tiny model);
    # a container's default is 64 MiB, so without this the pod crash-loops (tests/e2e).
    volumes = [*volumes, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM}}]
    mounts = [*mounts, {"name": "dshm", "mountPath": "/dev/shm"}]
    args = [
        "--model", model,
        "--served-model-name", served_model_name,
        *[a for a in dict.fromkeys(aliases) if a != served_model_name],
        "--host", "0.0.0.0",
        "--port", str(spec.serving.port),
        *quantization_args(export_format),
        *load_args,
        *(["--trust-remote-code"] if spec.model.trust_remote_code else []),
        *spec.serving.extra_args,
    ]
    return {
        "containers": [_vllm_container(spec, artifact_uri, args, mounts)],
        "volumes": volumes,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "automountServiceAccountToken": spec.serving.automount_service_account_token,
    }


def _vllm_container(
    spec: QuantizedModelSpec, artifact_uri: str, args: list[str], mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    """The canary's vLLM container: probes on /health, hardened, draining on stop."""
    serving = spec.serving
    probe = {"httpGet": {"path": "/health", "port": serving.port}}
    container: dict[str, Any] = {
        "name": "vllm",
        "image": serving.image,
        "args": args,
        "ports": [{"name": "http", "containerPort": serving.port}],
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 180},
        "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 3},
        "resources": serving.resources.to_wire(),
        "securityContext": container_security_context(serving.security_context),
        "volumeMounts": mounts,
        # Keep serving while the endpoint removal reaches every kube-proxy and the queue
        # drains: without it, a scale-down (the stable at the 100% step, the canary after
        # promotion) cut in-flight requests (seen on the e2e node: 16 of 1680 requests; with
        # 10 s still 3 of 1200, all queued at the stable when it stopped).
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
    }
    secret = spec.artifacts.secret_ref or spec.model.secret_ref
    if secret is not None and not artifact_uri.startswith("pvc://"):
        container["envFrom"] = [{"secretRef": {"name": secret.name}}]
    return container


def _with_served_names(args: list[str], names: list[str]) -> list[str]:
    """``args`` with the values of ``--served-model-name`` (it takes several) replaced."""
    if "--served-model-name" not in args:
        return args
    start = args.index("--served-model-name") + 1
    end = start
    while end < len(args) and not args[end].startswith("--"):
        end += 1
    return [*args[:start], *names, *args[end:]]


def promoted_stable_patch(
    stable_deployment: dict[str, Any], canary_deployment: dict[str, Any], stable_served_name: str
) -> dict[str, Any]:
    """A JSON merge patch that makes the stable Deployment serve the canary's artifact.

    The stable keeps its name, selector, labels and replicas; its ``vllm`` container
    (or its first) takes the canary's image, args (with the stable's served model
    name), mounts and probes, and the pod template takes the canary's volumes.
    """
    c_tmpl = canary_deployment["spec"]["template"]["spec"]
    c_container = c_tmpl["containers"][0]
    s_containers = list(stable_deployment["spec"]["template"]["spec"]["containers"])
    idx = next((i for i, c in enumerate(s_containers) if c.get("name") == "vllm"), 0)
    args = _with_served_names(list(c_container["args"]), [stable_served_name])
    merged = {
        **s_containers[idx],
        **{k: v for k, v in c_container.items() if k not in ("name", "resources")},
        "args": args,
    }
    s_containers[idx] = merged
    pod: dict[str, Any] = {"containers": s_containers, "volumes": c_tmpl.get("volumes", [])}
    if c_tmpl.get("terminationGracePeriodSeconds") is not None:
        # the canary's preStop drain needs its grace period on the stable too
        pod["terminationGracePeriodSeconds"] = c_tmpl["terminationGracePeriodSeconds"]
    return {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {"samp.dev/promoted-from": canary_deployment["metadata"]["name"]}
                },
                "spec": pod,
            }
        }
    }


def owned_stable_manifest(  # noqa: PLR0917 (each argument is one fact of the apply)
    deployment: str,
    namespace: str,
    canary_deployment: dict[str, Any],
    served_names: list[str],
    selector: dict[str, str],
    service_selector: dict[str, str],
    replicas: int,
    owner: dict[str, Any] | None,
    container_name: str = "vllm",
) -> dict[str, Any]:
    """The serving Deployment the operator owns (``management: OperatorOwned``), as a
    server-side apply body: the canary's pod template serving under the stable's names.

    ``selector``: the existing Deployment's (immutable), or the operator's own for a new
    one; the pod labels carry it and the stable Service's selector, so the Service that
    clients and the route use sends them here. Applied with the field manager
    ``samp-operator``, it owns everything it sets; fields it does not set on a
    Deployment it takes over keep their values. The ownerReference makes it belong to
    the QuantizedModel, as a Rollout's ReplicaSets belong to the Rollout.
    """
    template = canary_deployment["spec"]["template"]
    c_container = template["spec"]["containers"][0]
    labels = {k: v for k, v in template["metadata"].get("labels", {}).items()
              if k != ATTEMPT_LABEL}
    labels.update(service_selector)
    labels.update({ROLE_LABEL: "stable", SERVED_LABEL: label_value(served_names[0]),
                   "app.kubernetes.io/component": "stable"})
    labels.update(selector)
    annotations = {**template["metadata"].get("annotations", {}),
                   "samp.dev/promoted-from": canary_deployment["metadata"]["name"]}
    container = {**c_container, "name": container_name,
                 "args": _with_served_names(list(c_container["args"]), served_names)}
    pod = {k: v for k, v in template["spec"].items() if k != "containers"}
    meta_labels = {k: v for k, v in labels.items() if k != SERVED_LABEL}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment, "namespace": namespace, "labels": meta_labels,
                     "ownerReferences": _owner(owner)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels, "annotations": annotations},
                         "spec": {**pod, "containers": [container]}},
        },
    }
