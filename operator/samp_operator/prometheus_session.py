"""The HTTP session under prometheus-api-client's queries: each answer bounded.

``PrometheusConnect.custom_query`` builds the request (URL, ``query``/``time`` params,
headers, auth, verify, timeout), sends it through its session's ``request`` and parses
``data.result``; it reads the body whole (requests' default) and follows redirects. A
per-read timeout does not stop an endpoint that trickles bytes (the fault runs of issue
15 saw one query held 16 s against a 5 s read timeout), and a redirect could lead to a
host the operator does not allow. So :class:`BoundedSession` ``send``s itself: it streams
the body against the analysis deadline and :data:`MAX_ANSWER_BYTES`, never follows a
redirect, and turns every answer but a 200 into the provider's :class:`QueryError`, so
the library only ever parses a complete, bounded 200.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests

from samp_operator.prometheus_queries import QueryError

MAX_ANSWER_BYTES = 4 << 20  # an instant query answering one number is a few hundred bytes


def late_reason(analysis_timeout_seconds: float) -> str:
    return (f"no complete answer within the analysis deadline "
            f"({analysis_timeout_seconds:g} s)")


class BoundedSession(requests.Session):
    """A session whose every answer is read against a deadline (``time.monotonic()``,
    set per query by :meth:`deadline`) and capped at :data:`MAX_ANSWER_BYTES`."""

    def __init__(self, analysis_timeout_seconds: float) -> None:
        super().__init__()
        self.analysis_timeout_seconds = analysis_timeout_seconds
        self._local = threading.local()  # this thread's query: its deadline, its answer

    @contextmanager
    def deadline(self, at: float) -> Iterator[None]:
        """Bound the sends made inside the block by ``at``."""
        self._local.deadline, self._local.body = at, b""
        try:
            yield
        finally:
            self._local.deadline = None

    @property
    def last_body(self) -> bytes:
        """This thread's last answer, for the operator's log."""
        return getattr(self._local, "body", b"")

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """One request, straight through the adapter: Session.send would read a redirect's
        body whole (to release its connection) before we could bound it."""
        deadline = getattr(self._local, "deadline", None)
        if deadline is None:
            raise RuntimeError("BoundedSession.send outside BoundedSession.deadline()")
        kwargs.pop("allow_redirects", None)  # never followed: a 3xx is refused below
        kwargs["stream"] = True
        resp = self.get_adapter(url=request.url or "").send(request, **kwargs)
        try:
            body = self._read(resp, deadline)
        except BaseException:
            resp.close()  # a partial answer: the connection is dropped
            raise
        resp._content, resp._content_consumed = body, True  # what .content and .json() read
        resp.close()  # read to its end: the connection goes back to the pool
        self._local.body = body
        _refuse_all_but_200(resp, body)
        return resp

    def _read(self, resp: requests.Response, deadline: float) -> bytes:
        """The body as it arrives, until the deadline."""
        body = bytearray()
        while True:
            if time.monotonic() > deadline:
                raise QueryError(late_reason(self.analysis_timeout_seconds), unreachable=True)
            chunk = resp.raw.read1(65536, decode_content=True)
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise QueryError(f"answer larger than {MAX_ANSWER_BYTES} bytes",
                                 unreachable=True)


def _refuse_all_but_200(resp: requests.Response, body: bytes) -> None:
    status = resp.status_code
    if 300 <= status < 400:
        raise QueryError(
            f"HTTP {status}: redirected, which is not followed; set the Prometheus URL "
            "to the final address",
            unreachable=True,
            detail=f"Location: {resp.headers.get('Location')!r}",
        )
    if status != 200:
        raise QueryError(
            f"HTTP status {status}" + (" (bad_data: the query was refused)"
                                       if b"bad_data" in body else ""),
            unreachable=status >= 500 and b"bad_data" not in body,
            detail=repr(body[:300]),
        )
