"""API errors in one line: never the response headers, the API server's own message first."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException


def brief(err: Exception) -> str:
    """One line for an API error (status and reason), never the response headers."""
    status = getattr(err, "status", None)
    if status is not None:
        return f"HTTP {status} {getattr(err, 'reason', '')}".strip()
    return f"{type(err).__name__}: {err}"[:300]


def api_message(err: ApiException) -> str:
    """The API server's own message (e.g. which field is invalid), else status and reason."""
    try:
        message = json.loads(err.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message)[:900] if message else brief(err)
