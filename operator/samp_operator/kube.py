"""The Kubernetes adapter: the only module here that calls the API server for our objects.

Blocking calls of the official client; the handlers run them in worker threads. Creates
tolerate AlreadyExists (names are deterministic: the object is ours, adopt it) and deletes
tolerate NotFound, so every call is safe to repeat.

The status writer (:meth:`Kube.write_status`) is the only code that writes
``QuantizedModel.status``: one JSON merge patch per reconcile, only the fields that
changed, with ``metadata.resourceVersion`` as a precondition so a decision made from a
stale read fails with Conflict instead of overwriting a newer status.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from samp_core.api import GROUP, KIND, PLURAL, VERSION

log = logging.getLogger("samp.kube")


class ConflictError(Exception):
    """The object changed since it was read; read it again and decide again."""


def api_client() -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config."""
    cfg = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        kubernetes.config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient(cfg)


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning ``old`` into ``new`` (None: nothing to change)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
            continue
        sub = merge_patch(old[key], value)
        if sub is not None:
            patch[key] = sub
    return patch or None


_COLLECTION = {
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    "Event": "/api/v1/namespaces/{namespace}/events",
    KIND: f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}",
}


class Kube:
    """Raw REST over the official client's connection, auth and TLS handling.

    Raw rather than the typed API classes: manifests are plain dicts built by the pure
    core (samp_core.stage_jobs), and merge patches need an explicit content type.
    """

    def __init__(self, client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = client or api_client()

    def request(self, method: str, path: str, body: Any = None, *,
                query: Mapping[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        _m, url, headers, data, _p = self.client.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"],
        )
        resp = self.client.call_api(method, url, header_params=headers, body=data,
                                    _request_timeout=30)
        resp.read()  # type: ignore[no-untyped-call]
        if resp.status >= 400:
            raise ApiException(http_resp=resp)
        return json.loads(resp.data) if resp.data else None

    def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int,
                     limit_bytes: int) -> str:
        """The last ``lines`` lines of a container's log (pods/log get), as text."""
        query = {"container": container, "tailLines": str(lines),
                 "limitBytes": str(limit_bytes)}
        _m, url, headers, _d, _p = self.client.param_serialize(
            method="GET", resource_path=f"/api/v1/namespaces/{namespace}/pods/{pod}/log",
            query_params=list(query.items()), header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"],
        )
        resp = self.client.call_api("GET", url, header_params=headers, _request_timeout=10)
        resp.read()  # type: ignore[no-untyped-call]
        if resp.status >= 400:
            raise ApiException(http_resp=resp)
        data = resp.data
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")

    @staticmethod
    def _path(kind: str, namespace: str, name: str | None = None) -> str:
        base = _COLLECTION[kind].format(namespace=namespace)
        return f"{base}/{name}" if name else base

    # ------------------------------------------------------------ QuantizedModels

    def get_qm(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = self.request("GET", self._path(KIND, namespace, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return body

    def write_status(self, body: Mapping[str, Any], status: Mapping[str, Any]) -> dict[
        str, Any
    ] | None:
        """Patch status to ``status``; returns the new body, or None when nothing changed.

        Raises ConflictError when the object changed since ``body`` was read."""
        patch = merge_patch(body.get("status") or {}, status)
        if patch is None:
            return None
        meta = body["metadata"]
        doc = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch}
        try:
            new: dict[str, Any] = self.request(
                "PATCH", self._path(KIND, meta["namespace"], meta["name"]) + "/status", doc,
                content_type="application/merge-patch+json")
        except ApiException as err:
            if err.status == 409:
                raise ConflictError(str(err.reason)) from err
            raise
        return new

    # ------------------------------------------------------------------ children

    def create(self, obj: Mapping[str, Any]) -> bool:
        """Create a Job or ConfigMap; False when it already existed (adopted)."""
        try:
            self.request("POST", self._path(obj["kind"], obj["metadata"]["namespace"]), obj)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete a Job (and its pods) or ConfigMap; False when it was already gone."""
        try:
            self.request("DELETE", self._path(kind, namespace, name),
                         {"apiVersion": "v1", "kind": "DeleteOptions",
                          "propagationPolicy": "Background"})
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.request("GET", self._path(kind, namespace, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return obj

    def list_names(self, kind: str, namespace: str, selector: str) -> list[str]:
        doc = self.request("GET", self._path(kind, namespace), query={"labelSelector": selector})
        return [item["metadata"]["name"] for item in doc.get("items", [])]

    # -------------------------------------------------------------------- events

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str,
                   message: str) -> None:
        """A core/v1 Event on the QuantizedModel. Failures are logged, never raised."""
        meta = body["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                         "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "samp-operator"},
            "reportingComponent": "samp-operator",
            "reportingInstance": os.environ.get("HOSTNAME", "samp-operator"),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.request("POST", self._path("Event", meta["namespace"]), event)
        except (ApiException, OSError) as err:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"],
                        meta["name"], err)
