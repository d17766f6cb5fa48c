"""Loopback traffic for the demo and the rollout tests, split by the canary's weight.

* :class:`LocalWeights` — the traffic router in one process (samp_operator.traffic's
  interface: set the weight, read it back); the load generator asks it where each
  request goes, playing the part a gateway plays in a cluster.
* :class:`LoadGenerator` — a few threads sending ``/v1/completions`` to the stable or
  the canary by the router's weight, with a per-target ``max_tokens`` (``ignore_eos``),
  so a latency regression can be produced honestly by asking the canary for longer
  generations. Bounded by a request budget and by ``stop()``; loopback only.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Backend", "LoadGenerator", "LoadStats", "LocalWeights", "TrafficShare"]


@dataclass
class LocalWeights:
    """In-process router: the load generator asks it where each request goes."""

    weight: int = 0
    history: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_weight(self, weight: int) -> None:
        with self._lock:
            self.weight = max(0, min(100, int(weight)))
            self.history.append(self.weight)

    def verify_weight(self, weight: int) -> bool:
        with self._lock:
            return self.weight == weight

    def stable_serving(self) -> bool:
        return True  # the stable process is never stopped

    def canary_share(self) -> float:
        with self._lock:
            return self.weight / 100.0


@dataclass
class Backend:
    """Where the load generator sends one side's requests, and what it asks for.

    ``parallel`` is the completion API's ``n`` (sequences per request): more decode work
    per request, which the fault injection uses to make a canary measurably slower."""

    url: str
    model: str
    max_tokens: int = 16
    parallel: int = 1


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    per_model: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)


class TrafficShare(Protocol):
    def canary_share(self) -> float:
        """Fraction of requests (0..1) to send to the canary now."""


class LoadGenerator:
    """Bounded load on 127.0.0.1: ``threads`` workers, at most ``max_requests`` in all.

    ``router`` says where each request goes: ``LocalWeights`` in one process, or an
    object reading the weights the operator wrote into an HTTPRoute (the cluster test).
    """

    def __init__(
        self,
        stable: Backend,
        canary: Backend,
        router: TrafficShare,
        *,
        threads: int = 2,
        max_requests: int = 20_000,
        seed: int = 0,
        prompt: str = "the quick brown fox jumps over the lazy dog",
    ) -> None:
        self.stable, self.canary, self.router = stable, canary, router
        self.threads, self.max_requests = threads, max_requests
        self.prompt = prompt
        self.stats = LoadStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _pick(self) -> Backend:
        with self._lock:
            return self.canary if self._rng.random() < self.router.canary_share() else self.stable

    def _one(self, b: Backend) -> None:
        body = json.dumps(
            {
                "model": b.model,
                "prompt": self.prompt,
                "max_tokens": b.max_tokens,
                "ignore_eos": True,
                "temperature": 0.0 if b.parallel == 1 else 1.0,
                "n": b.parallel,
            }
        ).encode()
        req = urllib.request.Request(
            f"{b.url}/v1/completions", data=body, headers={"content-type": "application/json"}
        )
        t0 = time.monotonic()
        ok = False
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
                ok = r.status == 200
        except (urllib.error.URLError, OSError, TimeoutError):
            ok = False
        dt = time.monotonic() - t0
        with self._lock:
            self.stats.ok += ok
            self.stats.failed += not ok
            self.stats.per_model[b.model] = self.stats.per_model.get(b.model, 0) + 1
            self.stats.latencies.setdefault(b.model, []).append(dt)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self.stats.sent >= self.max_requests:
                    return
                self.stats.sent += 1
            self._one(self._pick())

    def start(self) -> None:
        self._stop.clear()
        self._workers = [
            threading.Thread(target=self._run, daemon=True, name=f"load-{i}")
            for i in range(self.threads)
        ]
        for w in self._workers:
            w.start()

    def stop(self) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(timeout=90)
        self._workers = []

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
