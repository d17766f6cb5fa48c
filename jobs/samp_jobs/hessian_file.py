"""``hessians.safetensors`` written while scoring runs and read ahead while GPTQ runs.

An 8B's Hessians are 33 GB. Written at the end of the sensitivity stage they cost ~17 s
on the H200 machine (``safetensors.save_file`` copies every tensor into ``bytes`` first,
then writes); read one group at a time in export they cost a copy out of the file and a
pageable host-to-device copy per group, with the GPU idle meanwhile.

Writer: every group's size is known before scoring, so the file's layout is too. A
thread writes each group's bytes at its offset (``os.pwrite``, no copy; the GIL is
released while it writes) as soon as its layer's device-to-host copy has landed, while
the GPU goes on scoring; the header, which carries the token counts, is written last
into room reserved for it. The result is an ordinary safetensors file.

Reader: a thread copies the next group out of the (memory-mapped) file into one of two
pinned buffers, allocated once and reused, while the GPU rounds the current group (an
earlier reader that pinned a fresh buffer for every group made the 8B's GPTQ phase
slower on the H200: 69 s against 50 s).
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor
_HEADER_ROOM = 32  # bytes reserved per entry for numbers that grow (token counts)


class StreamingHessianWriter:
    """A safetensors file of float32 tensors whose layout is fixed up front; tensors are
    written by a background thread in any order, each as often as it is handed over (the
    last write wins), and :meth:`finish` writes the header and moves the file in place.
    ``draft``: the metadata as far as known (numbers may grow by the time of finish)."""

    def __init__(
        self, path: Path, shapes: Mapping[str, tuple[int, ...]], draft: dict[str, Any]
    ) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.shapes = dict(shapes)
        self.offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for name, shape in self.shapes.items():
            size = 4 * int(np.prod(shape))
            self.offsets[name] = (pos, pos + size)
            pos += size
        self.header_room = _round8(len(self._header(draft)) + _HEADER_ROOM * (len(shapes) + 1))
        self.data_start = 8 + self.header_room
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self.fd, self.data_start + pos)
        self.busy_seconds = 0.0
        self._queue: queue.Queue[tuple[str, Tensor, Any, Any] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hessian-writer", daemon=True)
        self._thread.start()

    def _header(self, meta: dict[str, Any]) -> bytes:
        head: dict[str, Any] = {"__metadata__": {"groups": json.dumps(meta)}}
        for name, shape in self.shapes.items():
            head[name] = {"dtype": "F32", "shape": list(shape),
                          "data_offsets": list(self.offsets[name])}
        return json.dumps(head, separators=(",", ":")).encode()

    def put(
        self, name: str, host: Tensor, ready: Any = None, done: Callable[[], None] | None = None
    ) -> None:
        """Write ``host`` (a contiguous float32 CPU tensor) as ``name`` once ``ready`` (a
        CUDA event, or None) has completed; then call ``done`` (from the writer's thread;
        also after a failed write, which :meth:`finish` and :meth:`read` report). Until
        then ``host`` must stay as it is."""
        if tuple(host.shape) != self.shapes[name] or host.dtype != torch.float32:
            raise ValueError(f"{name}: {tuple(host.shape)} {host.dtype} is not the reserved "
                             f"{self.shapes[name]} float32")
        self._queue.put((name, host, ready, done))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, host, ready, done = item
            try:
                if self._error is None:
                    if ready is not None:
                        ready.synchronize()  # releases the GIL while the copy lands
                    t = time.monotonic()
                    _pwrite_all(self.fd, host, self.data_start + self.offsets[name][0])
                    self.busy_seconds += time.monotonic() - t
            except BaseException as e:
                self._error = e
            finally:
                if done is not None:
                    done()

    def read(self, name: str) -> Tensor:
        """``name`` as last written (the caller waits for its ``done`` first)."""
        if self._error is not None:
            raise RuntimeError(f"writing {self.tmp} failed: {self._error}") from self._error
        begin = self.data_start + self.offsets[name][0]
        data = np.fromfile(self.tmp, dtype=np.float32, count=int(np.prod(self.shapes[name])),
                           offset=begin)
        return torch.from_numpy(data).view(self.shapes[name])

    def finish(self, meta: dict[str, Any]) -> int:
        """Wait for the writes, write the header, move the file in place; returns bytes."""
        self._queue.put(None)
        self._thread.join()
        try:
            if self._error is not None:
                raise RuntimeError(f"writing {self.tmp} failed: {self._error}") from self._error
            head = self._header(meta)
            if len(head) > self.header_room:
                raise RuntimeError(f"{self.tmp}: header of {len(head)} B exceeds its "
                                   f"reserved {self.header_room} B")
            head = head.ljust(self.header_room, b" ")  # safetensors pads with spaces
            _pwrite_all(self.fd, struct.pack("<Q", self.header_room) + head, 0)
        finally:
            os.close(self.fd)
        self.tmp.replace(self.path)
        return self.path.stat().st_size


def _round8(n: int) -> int:
    return (n + 7) // 8 * 8


def _pwrite_all(fd: int, data: Tensor | bytes, offset: int) -> None:
    view = data.numpy().data.cast("B") if isinstance(data, Tensor) else memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def tensor_map(path: Path) -> dict[str, Any]:
    """Every tensor of a safetensors file as a copy-on-write memory map (float32 only)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        head = json.loads(f.read(n))
    out: dict[str, Any] = {}
    for name, entry in head.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {entry['dtype']}, expected F32")
        begin, _end = entry["data_offsets"]
        out[name] = np.memmap(path, dtype=np.float32, mode="c", offset=8 + n + begin,
                              shape=tuple(entry["shape"]))
    return out


def read_ahead(
    path: Path, names: list[str], device: torch.device, waited: list[float] | None = None
) -> Iterator[Tensor]:
    """The tensors ``names`` of ``path`` on ``device``, in order, each read from the file
    by a thread into one of two reused host buffers (pinned on CUDA) while the caller
    works on the one before. ``waited`` collects the seconds the caller waited for reads."""
    maps = tensor_map(path)
    if not names:
        return
    cuda = device.type == "cuda"
    largest = max(maps[n].size for n in names)
    bufs = [torch.empty(largest, dtype=torch.float32, pin_memory=cuda) for _ in range(2)]
    free = [_Landed(device), _Landed(device)]  # the buffer's last upload finished
    pool = _Prefetch(maps, names, bufs, free)
    try:
        for i, n in enumerate(names):
            t = time.monotonic()
            host = pool.take(i)
            if waited is not None:
                waited.append(time.monotonic() - t)
            dev = host.to(device, non_blocking=True) if cuda else host.clone()
            free[i % 2].record()
            pool.uploaded[i].set()
            yield dev.view(maps[n].shape)
    finally:
        pool.stop()


class _Landed:
    """A CUDA event on ``device``'s current stream; nothing to wait for on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self.event = (
            torch.cuda.Event() if self.stream is not None else None  # type: ignore[no-untyped-call]
        )
        self.record()

    def record(self) -> None:
        if self.event is not None:
            self.event.record(self.stream)

    def synchronize(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class _Prefetch:
    """Fills pinned buffer ``i % 2`` with tensor ``i`` once the upload of tensor ``i − 2``
    out of that buffer has been queued (``uploaded``) and has finished (``free``)."""

    def __init__(self, maps: dict[str, Any], names: list[str], bufs: list[Tensor],
                 free: list[_Landed]) -> None:
        self.ready = [threading.Event() for _ in names]
        self.uploaded = [threading.Event() for _ in names]
        self.error: BaseException | None = None
        self.stopped = False
        self.maps, self.names, self.bufs, self.free = maps, names, bufs, free
        self.thread = threading.Thread(target=self._run, name="hessian-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for i, n in enumerate(self.names):
                if i >= 2:
                    self.uploaded[i - 2].wait()
                if self.stopped:
                    return
                self.free[i % 2].synchronize()
                src = torch.from_numpy(np.asarray(self.maps[n]).reshape(-1))
                self.bufs[i % 2][: src.numel()].copy_(src)
                self.ready[i].set()
        except BaseException as e:
            self.error = e
            for r in self.ready:
                r.set()

    def take(self, i: int) -> Tensor:
        self.ready[i].wait()
        if self.error is not None:
            raise RuntimeError(f"reading {self.names[i]} failed: {self.error}") from self.error
        return self.bufs[i % 2][: self.maps[self.names[i]].size]

    def stop(self) -> None:
        self.stopped = True
        for u in self.uploaded:
            u.set()
        self.thread.join()
