"""Where sensitivity scoring keeps weights and layer-boundary hidden states.

Fisher and KL scoring replay the network layer by layer from stored hidden
states at every layer boundary. On a GPU the fastest home for those states is
device memory (no host round trips), and the fastest home for the weights is
also the device when the whole model fits beside them (an 8B model in bf16 on
an H200). When it does not (70B), weights are streamed one decoder layer at a
time from pinned host memory, and when the boundary states of all calibration
tokens do not fit either, the tokens are scored in chunks: each chunk is a
full forward + backward over the layers, so chunking costs weight transfers,
never accuracy (the per-token sums simply add up).

``plan_memory`` is pure arithmetic so the choice can be tested and logged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

GIB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    resident_weights: bool  # the whole model is put on the device once for the run
    boundaries_on_device: bool  # boundary hidden states live on the device (else host RAM)
    micro_batches_per_chunk: int
    num_chunks: int
    reason: str

    def as_log(self) -> dict[str, object]:
        return {
            "residentWeights": self.resident_weights,
            "boundariesOnDevice": self.boundaries_on_device,
            "microBatchesPerChunk": self.micro_batches_per_chunk,
            "chunks": self.num_chunks,
            "reason": self.reason,
        }


def plan_memory(
    *,
    accelerator: bool,
    device_budget: int,
    host_budget: int,
    model_bytes: int,
    layer_bytes: int,
    working_bytes: int,
    state_bytes_per_micro_batch: int,
    num_micro_batches: int,
    num_boundaries: int,
    max_micro_batches_per_chunk: int | None = None,
) -> MemoryPlan:
    """Choose weight residency, where boundary states live and the chunk size.

    ``state_bytes_per_micro_batch`` is one micro-batch's hidden states at one
    boundary; ``num_boundaries`` how many boundaries are kept (layers + 1 for
    fisher/kl, 2 for a forward-only pass that keeps just the current and next).
    """
    if num_micro_batches < 1:
        raise ValueError("nothing to score: no calibration micro-batches")
    per_mb = state_bytes_per_micro_batch * num_boundaries
    cap = min(num_micro_batches, max_micro_batches_per_chunk or num_micro_batches)

    def chunked(budget: int) -> int:
        return min(cap, budget // per_mb) if per_mb else cap

    if accelerator:
        free = device_budget - working_bytes
        # Keep the weights resident only if that leaves room for most of the states.
        if model_bytes <= free // 2 and chunked(free - model_bytes) >= 1:
            n = chunked(free - model_bytes)
            return MemoryPlan(True, True, n, math.ceil(num_micro_batches / n), "weights fit")
        n = chunked(free - 2 * layer_bytes)  # one layer on the device, the next arriving
        if n >= 1:
            why = "weights streamed per layer: model too large to keep beside the states"
            return MemoryPlan(False, True, n, math.ceil(num_micro_batches / n), why)
    n = chunked(host_budget)
    if n < 1:
        raise MemoryError(
            f"one micro-batch needs {per_mb / GIB:.1f} GiB of boundary states and only "
            f"{max(device_budget - working_bytes, host_budget) / GIB:.1f} GiB are free; "
            "lower sensitivity micro-batch size or calibration sequence length"
        )
    why = "boundary states in host memory: they do not fit on the device"
    if not accelerator:
        why = "cpu run"
    return MemoryPlan(not accelerator, False, n, math.ceil(num_micro_batches / n), why)


def host_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GIB


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


class WeightPlacer:
    """Puts modules on the device for a block without ever copying weights back.

    The host tensors are kept and re-attached on exit (``Module.to("cpu")``
    would allocate and copy 16-bit weights back for nothing). With ``pin``,
    host weights are moved to page-locked memory the first time, so later
    uploads run at full PCIe speed and asynchronously.
    """

    def __init__(self, device: torch.device, *, pin: bool = False) -> None:
        self.device = device
        self.pin = pin and device.type == "cuda"

    def _tensors(self, module: nn.Module) -> list[torch.Tensor]:
        return [*module.parameters(), *module.buffers()]

    @contextmanager
    def hold(self, *modules: nn.Module) -> Iterator[None]:
        if self.device.type == "cpu":
            yield
            return
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            for m in modules:
                for t in self._tensors(m):
                    host = t.data
                    if host.device == self.device:
                        continue
                    if self.pin and not host.is_pinned():
                        host = host.pin_memory()
                        t.data = host  # stays pinned for the next upload
                    saved.append((t, host))
                    t.data = host.to(self.device, non_blocking=self.pin)
            yield
        finally:
            for t, host in saved:
                t.data = host
