"""GPTQ's input Hessians collected in the sensitivity pass, kept for export.

The sensitivity stage already runs every calibration token through every decoder layer
with the layer on the device. When the plan will round some groups with GPTQ, the
scorer's forward pass also accumulates ``X Xᵀ / n`` of each group's input (one Hessian
per plan group: q/k/v and gate/up read one input), and the stage writes them beside
``sensitivity.json`` as ``hessians.safetensors``. Export then rounds each group straight
from its stored Hessian: no calibration forward pass, no hidden states moved between
layers.

What changes against export's own pass (:func:`samp_jobs.export_gptq.gptq_pass`): the
Hessians come from the 16-bit model's inputs, not from inputs that earlier, already
quantized layers produced (GPTQ's "sequential" variant). Which groups GPTQ will round is
not known before the plan, so every group that *could* take a GPTQ format is collected.
Size: ``in_features² × 4`` bytes per group (an 8B Llama: about 30 GB, most of it the
14336-wide down projections).

Accumulation: bf16 inputs through a tensor-core GEMM with fp32 output on CUDA (exact
products, fp32 sums); fp32 on the CPU. Writing and reading overlap the GPU work
(``samp_jobs.hessian_file``): each layer's Hessians are written while later layers are
scored, and export reads the next group while the GPU rounds the current one.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samp_core.formats import Format
from samp_core.groups import LayerGroup
from samp_core.results import PlanResult
from samp_jobs.gptq import HessianAccumulator
from samp_jobs.hessian_file import StreamingHessianWriter, read_ahead
from samp_jobs.runlog import log

HESSIANS_FILE = "hessians.safetensors"
Tensor = torch.Tensor


class HessianCollector:
    """Per-group input Hessians, gathered by hooks while the scorer runs each layer.

    Accumulators live on the device while their layer runs and on the host otherwise,
    so device memory holds one layer's Hessians at a time. When streaming to a file
    (:meth:`stream_to`), a parked Hessian lives in the file instead: its pinned buffer
    goes back to a pool once written (host memory: a few layers' worth, not all 33 GB
    of an 8B), and a later chunk of tokens reads it back from there.
    """

    def __init__(
        self,
        groups: Iterable[LayerGroup],
        candidates: dict[str, list[Format]],
        gptq_formats: Iterable[Format],
        modules: dict[str, nn.Module],
        device: torch.device,
    ) -> None:
        wanted = set(gptq_formats)
        self.groups = [g for g in groups if wanted & set(candidates.get(g.name, []))]
        self.modules = modules
        self.device = device
        self.acc: dict[str, HessianAccumulator] = {}
        self.host: dict[str, Tensor] = {}  # pinned host buffers (CUDA)
        self.seconds = 0.0
        self.writer: StreamingHessianWriter | None = None
        self.written: dict[str, threading.Event] = {}  # parked into the file, once set
        self.pool: dict[tuple[int, ...], list[Tensor]] = {}  # written pinned buffers
        self.pool_lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the stored file's tensors (fp32, ``in_features²`` per group)."""
        return sum(4 * g.in_features**2 for g in self.groups)

    def stream_to(self, path: Path) -> None:
        """Write each layer's Hessians to ``path`` while scoring goes on; :meth:`save`
        with the same path then finishes the file."""
        shapes = {g.modules[0]: (g.in_features, g.in_features) for g in self.groups}
        self.writer = StreamingHessianWriter(path, shapes, self._meta(lambda _g: 0))

    def _meta(self, tokens: Any) -> dict[str, Any]:
        """The file's metadata: each group's name, modules and ``tokens(group)``."""
        return {
            g.modules[0]: {"group": g.name, "modules": g.modules, "tokens": tokens(g)}
            for g in self.groups
        }

    def _of_layer(self, idx: int | None) -> list[LayerGroup]:
        return [g for g in self.groups if g.layer_index == idx]

    def _accumulator(self, g: LayerGroup) -> HessianAccumulator:
        acc = self.acc.get(g.name)
        if acc is None:
            acc = self.acc[g.name] = HessianAccumulator(g.in_features, self.device)
        elif g.name in self.written and self.writer is not None:  # parked in the file
            self.written.pop(g.name).wait()
            acc.h = self.writer.read(g.modules[0]).to(self.device)
        else:
            acc.h = acc.h.to(self.device, non_blocking=True)
        return acc

    def _park(self, groups: list[LayerGroup]) -> None:
        """Move these groups' Hessians to the host: pinned buffers and an asynchronous copy
        on CUDA (an 8B layer's are 1 GB: 0.7 s a layer from pageable memory); when
        streaming, on into the file."""
        if self.writer is not None:
            for g in groups:
                self._park_in_file(g, self.writer)
            return
        for g in groups:
            acc = self.acc[g.name]
            if acc.h.device.type == "cpu":
                continue
            host = self.host.get(g.name)
            if host is None:
                host = self.host[g.name] = torch.empty(
                    acc.h.shape, dtype=acc.h.dtype, pin_memory=True
                )
            host.copy_(acc.h, non_blocking=True)
            acc.h = host

    def _park_in_file(self, g: LayerGroup, writer: StreamingHessianWriter) -> None:
        acc = self.acc[g.name]
        landed = None
        if acc.h.device.type == "cuda":
            host = self._pinned(tuple(acc.h.shape))
            host.copy_(acc.h, non_blocking=True)
            landed = torch.cuda.Event()  # type: ignore[no-untyped-call]
            landed.record(torch.cuda.current_stream(acc.h.device))
        else:
            host = acc.h.contiguous()
        done = self.written[g.name] = threading.Event()

        def written(
            host: Tensor = host, done: threading.Event = done, pooled: bool = landed is not None
        ) -> None:
            if pooled:
                with self.pool_lock:
                    self.pool.setdefault(tuple(host.shape), []).append(host)
            done.set()

        writer.put(g.modules[0], host, landed, written)
        acc.h = torch.empty(0)  # in the file now; _accumulator reads it back if needed

    def _pinned(self, shape: tuple[int, ...]) -> Tensor:
        """A pinned host buffer of ``shape``: a written one from the pool, else a new one."""
        with self.pool_lock:
            free = self.pool.get(shape)
            if free:
                return free.pop()
        return torch.empty(shape, dtype=torch.float32, pin_memory=True)

    def _synced(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _add(self, acc: HessianAccumulator, x: Tensor) -> None:
        t = time.monotonic()
        acc.add(x.detach())
        self.seconds += time.monotonic() - t

    @contextmanager
    def layer(self, idx: int) -> Iterator[None]:
        """Hooks on decoder layer ``idx``'s groups for the duration of its forward."""
        mine = self._of_layer(idx)
        handles = []
        for g in mine:
            acc = self._accumulator(g)

            def hook(
                _m: nn.Module, args: tuple[Tensor, ...], acc: HessianAccumulator = acc
            ) -> None:
                self._add(acc, args[0])

            # fused modules share their input: one hook on the first covers the group
            handles.append(self.modules[g.modules[0]].register_forward_pre_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._park(mine)

    def add_head(self, norm: nn.Module, final: list[Tensor]) -> None:
        """The head's input is the final norm of the last hidden states."""
        mine = self._of_layer(None)
        if not mine:
            return
        accs = [self._accumulator(g) for g in mine]
        with torch.no_grad():
            for h in final:
                x = norm(h.to(self.device))
                for acc in accs:
                    self._add(acc, x)
        self._park(mine)

    def save(self, path: Path) -> int:
        """Write every collected Hessian (fp32) with its group's modules; returns bytes."""
        from safetensors.torch import save_file

        self._synced()
        t = time.monotonic()
        meta = self._meta(lambda g: self.acc[g.name].n)
        w = self.writer
        if w is not None and w.path != path:
            raise ValueError(f"the Hessians are being written to {w.path}, not {path}")
        if w is not None:  # every layer's groups are parked in it
            size = w.finish(meta)
            background = {"writerBusySeconds": round(w.busy_seconds, 3)}
        else:
            tensors = {g.modules[0]: self.acc[g.name].h.contiguous() for g in self.groups}
            tmp = path.with_name(path.name + ".tmp")
            save_file(tensors, str(tmp), metadata={"groups": json.dumps(meta)})
            tmp.replace(path)
            size = path.stat().st_size
            background = {}
        log(
            "sensitivity.hessians",
            groups=len(self.groups),
            bytes=size,
            accumulateSeconds=round(self.seconds, 3),
            writeSeconds=round(time.monotonic() - t, 3),  # what the stage waited for
            **background,
        )
        return size


# Room left beside the Hessians on the work volume: the checkpoint export writes there too.
DISK_HEADROOM = 0.10


def collector_for(
    groups: list[LayerGroup],
    candidates: dict[str, list[Format]],
    rounding: Any,
    model: nn.Module,
    device: torch.device,
    *,
    path: Path | None = None,
    free_bytes: int | None = None,
) -> HessianCollector | None:
    """A collector when ``rounding`` (samp_core.results.Rounding) will use GPTQ on a
    format some group can take; else None. With ``path`` it writes there while scoring
    runs (finished by ``save(path)``).

    Also None when the file would not fit on ``path``'s volume (``free_bytes``, default
    what the volume has free, less :data:`DISK_HEADROOM`): a 70B's Hessians are 4.1 GB a
    layer, 330 GB in all. Export then rounds by its own layer-by-layer pass, which keeps
    one layer's Hessians at a time (``gpu_pipeline_h200_70b_export_run2.json``: 4.49 s a
    70B layer on an H200).
    """
    from samp_core.formats import RoundingMethod

    if rounding is None or rounding.method is not RoundingMethod.GPTQ:
        return None
    c = HessianCollector(groups, candidates, rounding.formats, dict(model.named_modules()), device)
    if not c.groups:
        return None
    if path is not None:
        if free_bytes is None:
            free_bytes = shutil.disk_usage(path.parent).free
        room = int(free_bytes * (1.0 - DISK_HEADROOM))
        if c.nbytes > room:
            log(
                "sensitivity.hessians.skipped",
                bytes=c.nbytes,
                room=room,
                reason="the Hessians would not fit the work volume; export computes them "
                "layer by layer instead (slower: one more calibration pass). Give the "
                "stage a larger work volume to keep them.",
            )
            return None
        c.stream_to(path)
    return c


class StoredHessians:
    """Hessians written by the sensitivity stage: which groups they cover (export reads
    the tensors with ``samp_jobs.hessian_file.read_ahead``)."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        with safe_open(str(path), framework="pt") as f:
            self.meta: dict[str, dict[str, Any]] = json.loads((f.metadata() or {})["groups"])

    def missing(self, plan: PlanResult) -> list[str]:
        """GPTQ groups of ``plan`` this file has no Hessian for (or for other modules)."""
        targets = set(plan.gptq_modules())
        out = []
        for a in plan.assignments:
            if not set(a.modules) & targets:
                continue
            m = self.meta.get(a.modules[0])
            if m is None or list(m["modules"]) != list(a.modules):
                out.append(a.group)
        return out


def load_hessians(path: Path, plan: PlanResult) -> StoredHessians | None:
    """The stored Hessians if they cover every GPTQ group of ``plan``; else None (logged),
    and export runs its own calibration pass."""
    if not path.is_file() or not plan.gptq_modules():
        return None
    stored = StoredHessians(path)
    missing = stored.missing(plan)
    if missing:
        log("export.hessians.incomplete", path=str(path), missing=missing[:5], count=len(missing))
        return None
    return stored


def gptq_from_hessians(
    parts: Any,
    plan: PlanResult,
    qcfg: Any,
    stored: StoredHessians,
    device: torch.device,
) -> dict[str, Tensor]:
    """GPTQ codes for every module the plan rounds with GPTQ, from stored Hessians.

    One GPTQ call per plan group (its modules' rows stacked: they share the Hessian),
    each weight moved to ``device`` only for its call, the next group's Hessian read from
    the file meanwhile. Returns int8 codes on the CPU.
    """
    from samp_jobs.export_gptq import gptq_group_codes

    targets = set(plan.gptq_modules())
    mods = dict(parts.model.named_modules())
    codes: dict[str, Tensor] = {}
    totals = {"gptq": 0.0, "rtn": 0.0}
    t0 = time.monotonic()

    def _round(a: Any, h: Tensor) -> None:
        ws = [mods[n].weight.data for n in a.modules]
        got, st = gptq_group_codes(tuple(a.modules), ws, h, qcfg, plan=plan, device=device)
        codes.update(got)
        totals["gptq"] += st.loss
        totals["rtn"] += st.rtn_loss

    todo = [a for a in plan.assignments if set(a.modules) & targets]
    waited: list[float] = []
    reads = read_ahead(stored.path, [a.modules[0] for a in todo], device, waited)
    for a, h in zip(todo, reads, strict=True):
        _round(a, h)
    log(
        "export.gptq",
        modules=len(codes),
        hessians=str(stored.path),
        seconds=round(time.monotonic() - t0, 3),
        readWaitSeconds=round(sum(waited), 3),  # GPTQ waiting for the file, not the GPU
        proxyLoss=round(totals["gptq"], 6),
        rtnProxyLoss=round(totals["rtn"], 6),
    )
    return codes
