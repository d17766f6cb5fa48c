"""Tensor shapes of a local safetensors checkpoint, read from the file headers only (no
torch, no weights loaded), for ``samp validate --model DIR``'s budget check."""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own cap on the JSON header


def tensor_shapes(model_dir: Path) -> dict[str, list[int]]:
    """name -> shape of every tensor in ``model_dir/*.safetensors``; ValueError naming the
    file when there is none or a header is not safetensors."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir}: no *.safetensors file")
    shapes: dict[str, list[int]] = {}
    for path in files:
        with path.open("rb") as f:
            raw = f.read(8)
            size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 0 < size <= MAX_HEADER_BYTES:
                raise ValueError(f"{path}: not a safetensors file (header size {size})")
            try:
                header = json.loads(f.read(size))
            except ValueError as err:
                raise ValueError(f"{path}: unreadable safetensors header: {err}") from err
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes
