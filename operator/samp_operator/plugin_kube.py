"""The API calls of ``kubectl samp``, with errors a person can act on.

Every failure leaves here as a :class:`CliError` with one line of text and an exit code
(no traceback, no HTTP headers): a missing kubeconfig, an unknown context, an API server
that does not answer, a QuantizedModel or namespace that does not exist, a refusal.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samp_core.api import GROUP, PLURAL, VERSION

EXIT_API = 5  # the API server could not be used (config, network, refusal, not found)
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class CliError(Exception):
    """A one-line message for the user and the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_API) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Target:
    """Where the commands act: the API client and the default namespace."""

    api: Any  # kubernetes.client.CustomObjectsApi
    namespace: str
    server: str


def connect(kubeconfig: str | None, context: str | None) -> Target:
    """Load the kubeconfig (or the in-cluster config) as kubectl does; the namespace
    defaults to the context's, like kubectl's."""
    import kubernetes
    from kubernetes.config import ConfigException

    # The client's retries log each attempt at WARNING; one clear error is enough.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    default_path = Path.home() / ".kube" / "config"
    configuration = kubernetes.client.Configuration()
    try:
        if path or default_path.exists() or context:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context, client_configuration=configuration)
            namespace = _context_namespace(path, context)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
            namespace = IN_CLUSTER_NAMESPACE.read_text().strip()
        else:
            raise CliError(f"no kubeconfig ({default_path} does not exist) and not in a "
                           "cluster: set KUBECONFIG or pass --kubeconfig")
    except (ConfigException, OSError) as err:
        where = path or str(default_path)
        raise CliError(f"cannot load a kubeconfig ({where}): {_first_line(err)}; set "
                       "KUBECONFIG or pass --kubeconfig/--context") from None
    configuration.retries = 1
    client = kubernetes.client.ApiClient(configuration)
    return Target(kubernetes.client.CustomObjectsApi(client), namespace, configuration.host)


def _context_namespace(path: str | None, context: str | None) -> str:
    from kubernetes.config import list_kube_config_contexts

    contexts, active = list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def explain(err: Exception, target: Target, what: str) -> CliError:
    """An API or network exception as one line naming the object and what to check."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(err, CliError):
        return err
    if isinstance(err, ApiException):
        reason = _api_message(err)
        if err.status == 404:
            if "could not find the requested resource" in reason:
                return CliError(f"the server at {target.server} does not serve quantizedmodels."
                                f"{GROUP}: is the CRD installed (helm install samp-operator)?")
            return CliError(f"{what} not found ({reason})")
        if err.status in (401, 403):
            return CliError(f"{what}: refused by the API server ({err.status}): {reason}")
        return CliError(f"{what}: the API server answered {err.status}: {reason}")
    if isinstance(err, HTTPError | OSError):
        return CliError(f"cannot reach the API server at {target.server}: {_first_line(err)}")
    raise err


def _api_message(err: Any) -> str:
    try:
        return str(json.loads(err.body).get("message") or err.reason)
    except (TypeError, ValueError, AttributeError):
        return str(err.reason)


def get(target: Target, namespace: str, name: str) -> dict[str, Any]:
    try:
        return dict(target.api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name))
    except Exception as err:
        raise explain(err, target, f"quantizedmodel {namespace}/{name}") from None


def list_all(target: Target, namespace: str | None) -> list[dict[str, Any]]:
    """Every QuantizedModel of one namespace, or of all (None)."""
    try:
        if namespace is None:
            body = target.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            body = target.api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    except Exception as err:
        where = "all namespaces" if namespace is None else f"namespace {namespace}"
        raise explain(err, target, f"quantizedmodels in {where}") from None
    return list(body.get("items") or [])


def patch_annotations(target: Target, namespace: str, name: str,
                      patch: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return dict(target.api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, patch,
            _content_type="application/merge-patch+json"))
    except Exception as err:
        raise explain(err, target, f"quantizedmodel {namespace}/{name}") from None


def watch(target: Target, namespace: str, name: str, timeout_seconds: int
          ) -> Iterator[dict[str, Any]]:
    """The object now, then each change, until the server ends the watch (timeout)."""
    from kubernetes import watch as kube_watch

    current = get(target, namespace, name)
    yield current
    stream = kube_watch.Watch()  # type: ignore[no-untyped-call]
    try:
        for event in stream.stream(  # type: ignore[no-untyped-call]
                target.api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=current["metadata"]["resourceVersion"],
                timeout_seconds=max(1, timeout_seconds)):
            if event["type"] == "DELETED":
                raise CliError(f"quantizedmodel {namespace}/{name} was deleted")
            if event["type"] in ("ADDED", "MODIFIED"):
                yield dict(event["object"])
    except CliError:
        raise
    except Exception as err:
        raise explain(err, target, f"quantizedmodel {namespace}/{name}") from None
    finally:
        stream.stop()  # type: ignore[no-untyped-call]
