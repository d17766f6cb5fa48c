"""Which Prometheus a QuantizedModel's gates read, how it is trusted, and as whom.

* ``spec.gates.prometheusUrl`` — the tenant's own Prometheus: TLS verified against
  ``ca.crt`` of ``spec.gates.prometheusSecretRef`` or the system CAs (unless
  ``prometheusInsecureSkipVerify``), credentials from that Secret (``token``, or
  ``username``/``password``), read from the resource's own namespace. The operator's
  credentials are never sent there.
* else the operator's default (``--prometheus-url``, its CA file and credentials from
  its environment, see samp_operator.settings).
* neither: NoPrometheus (every analysis an Error); likewise a spec URL whose host is not
  in the operator's allow-list (samp_operator.prometheus_hosts).

Every provider is scoped to the resource's namespace and each side's pods
(samp_operator.prometheus_queries.SeriesScope). A Secret that cannot be read makes every
analysis an Error naming the field; the API's answer goes to the log only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import kubernetes

from samp_core.spec import QuantizedModelSpec
from samp_operator.canary_driver import MeasurementProvider, NoPrometheus
from samp_operator.prometheus import Credentials, PrometheusProvider
from samp_operator.prometheus_hosts import refusal
from samp_operator.prometheus_queries import SeriesScope
from samp_operator.serving import canary_names
from samp_operator.settings import PrometheusDefaults

log = logging.getLogger("samp.canary")

__all__ = ["ProviderFactory", "ca_file"]


class SecretUnreadableError(Exception):
    def __init__(self, message: str, *, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def ca_file(pem: str) -> str:
    """A CA bundle as a file (requests verifies against a path), one per content."""
    folder = Path(tempfile.gettempdir()) / "samp-prometheus-ca"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{hashlib.sha256(pem.encode()).hexdigest()[:16]}.pem"
    if not path.exists():
        path.write_text(pem)
    return str(path)


@dataclass
class ProviderFactory:
    core: kubernetes.client.CoreV1Api
    defaults: PrometheusDefaults

    def provider(
        self, spec: QuantizedModelSpec, namespace: str, name: str
    ) -> MeasurementProvider:
        """The measurement provider of one resource, scoped to its own series."""
        d = self.defaults
        scope = SeriesScope(
            namespace=namespace,
            canary_pods=canary_names(name)[0],
            stable_pods=spec.serving.stable.deployment if spec.serving.stable else None,
        )
        verify: bool | str
        if spec.gates.prometheus_url:
            url = spec.gates.prometheus_url
            refused = refusal(url, d.allowed_hosts)
            if refused:
                return NoPrometheus(refused)
            try:
                verify, credentials = self._tenant_trust(spec, namespace)
            except SecretUnreadableError as err:
                log.warning("%s/%s: %s", namespace, name, err.detail)
                return NoPrometheus(str(err))
        elif d.url:
            url, verify, credentials = d.url, d.verify, d.credentials
        else:
            return NoPrometheus()
        return PrometheusProvider(
            url, scope=scope, namespace_label=d.namespace_label, pod_label=d.pod_label,
            verify=verify, credentials=credentials,
        )

    def _tenant_trust(
        self, spec: QuantizedModelSpec, namespace: str
    ) -> tuple[bool | str, Credentials]:
        """(verify, credentials) for ``spec.gates.prometheusUrl`` from its Secret."""
        ref = spec.gates.prometheus_secret_ref
        data: dict[str, str] = {}
        if ref is not None:
            try:
                secret = self.core.read_namespaced_secret(ref.name, namespace)
            except kubernetes.client.ApiException as err:
                raise SecretUnreadableError(
                    f"cannot read Secret {ref.name} (spec.gates.prometheusSecretRef): "
                    f"HTTP {err.status}", detail=str(err)) from err
            data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        credentials = Credentials(token=data.get("token") or None,
                                  username=data.get("username") or None,
                                  password=data.get("password") or None)
        if spec.gates.prometheus_insecure_skip_verify:
            return False, credentials
        ca = data.get("ca.crt")
        return (ca_file(ca) if ca else True), credentials
