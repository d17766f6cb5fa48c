"""Which Prometheus addresses the canary gates may query.

Like Argo Rollouts and Flagger, a QuantizedModel may name any Prometheus
(spec.gates.prometheusUrl). An operator admin can narrow that with
--prometheus-allowed-host / SAMP_PROMETHEUS_ALLOWED_HOSTS (default: every host), for
example to keep cloud metadata addresses out of reach; redirects are never followed
(samp_operator.prometheus), so an allowed host cannot hand the query to another one.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit


def host_allowed(url: str, allowed: Sequence[str]) -> bool:
    """True when ``allowed`` is empty, or lists the URL's host: ``name``, ``name:port`` or
    ``*.domain`` (any host under that domain)."""
    if not allowed:
        return True
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    with_port = f"{host}:{parts.port}" if parts.port else host
    for entry in (e.strip().lower() for e in allowed):
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif entry in (host, with_port):
            return True
    return False


def refusal(url: str, allowed: Sequence[str]) -> str | None:
    """Why the gates may not query ``url``, or None when they may."""
    if host_allowed(url, allowed):
        return None
    host = urlsplit(url).netloc
    return (
        f"Prometheus host {host} (spec.gates.prometheusUrl) is not in the operator's "
        f"--prometheus-allowed-host list ({', '.join(allowed)}); use an allowed "
        "Prometheus, or ask the operator's admin to add it"
    )
