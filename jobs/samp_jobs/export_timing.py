"""Export bookkeeping: wall seconds per phase, and the garbage collector kept out of the way."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from samp_jobs.runlog import log

__all__ = ["PhaseClock", "QuietGC"]


class PhaseClock:
    """Wall seconds per export phase; each phase is logged as ``export.phase`` when it ends.

    On CUDA the device is synchronised before a phase's time is read, so queued kernels
    are charged to the phase that launched them.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda" and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            torch.cuda.synchronize(self.device)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            dt = time.perf_counter() - t
            self.add(name, dt)
            log("export.phase", phase=name, seconds=round(dt, 4))

    def lap(self) -> float:
        """Synchronise and return now; for phases interleaved module by module."""
        self._sync()
        return time.perf_counter()

    def wall(self) -> float:
        return time.perf_counter() - self.started

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


class QuietGC:
    """Keeps Python's cyclic garbage collector out of the import and model-load phases.

    Importing compressed-tensors and transformers and building the model create
    millions of long-lived objects, which trigger full collections that free next to
    nothing (about 0.9 s of a 300M-parameter export on our 2-core machine, more than the
    whole qparam phase). ``held`` disables the collector for a block (reference counting
    still frees everything acyclic, tensors included); with ``freeze``, what is alive at
    the end of the block (imported modules, classes) moves to the permanent generation
    so later collections skip it, and ``thaw`` gives it back when the export ends.
    Nothing is frozen when someone else already froze objects.
    """

    def __init__(self) -> None:
        self.froze = False

    @contextmanager
    def held(self, *, freeze: bool = False) -> Iterator[None]:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            yield
            if freeze and not self.froze and gc.get_freeze_count() == 0:
                gc.freeze()
                self.froze = True
        finally:
            if was_enabled:
                gc.enable()

    def thaw(self) -> None:
        if self.froze:
            gc.unfreeze()
            self.froze = False
