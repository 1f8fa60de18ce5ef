"""Batches that leave a DataLoader worker as one shared-memory block.

torch sends each tensor of a worker's batch to the main process on its own: one shared-memory file created per
tensor, and one file descriptor passed per tensor, each over a new authenticated socket connection (Python's
resource_sharer). A training batch of rgb + mv carries eight tensors (index, video, label, frames, rgb, its colour
vector, mv, mv_valid); at batch 8 on 2 cores that cost the main process 0.5 ms a clip, a tenth of what a worker
spends making the clip (benchmarks/README.md, "Trainer: loader throughput").

`collate` stacks a batch exactly as `default_collate` does (same structure, dtypes and values), but in a worker it
stacks every tensor into one shared block, and the batch crosses the process boundary as that block and a small
layout: one file, one descriptor. The main process gets a plain batch whose tensors are views of the block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

ALIGN = 64  # bytes: every slot starts on a cache line, so any dtype can view it


@dataclass(frozen=True)
class Slot:
    """A stacked tensor's place in the block: byte offset, dtype and shape."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * torch.empty((), dtype=self.dtype).element_size()


class _Unsupported(Exception):
    """A leaf `collate` does not pack (strings aside): default_collate handles the whole batch instead."""


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool) or isinstance(value, int):
        return torch.tensor(value)  # int64 or bool, as default_collate
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.as_tensor(value)
    if isinstance(value, np.number):
        return torch.as_tensor(np.asarray(value))
    raise _Unsupported(type(value).__name__)


def _plan(values: Sequence[Any], slots: list[tuple[Slot, list[torch.Tensor]]], offset: list[int]) -> Any:
    """The batch's layout: the samples' structure with a Slot at each tensor leaf (strings stay lists)."""
    first = values[0]
    if isinstance(first, dict):
        return {key: _plan([v[key] for v in values], slots, offset) for key in first}
    if isinstance(first, (list, tuple)):
        if hasattr(first, "_fields") or any(len(v) != len(first) for v in values):
            raise _Unsupported("a named tuple, or sequences of unequal length")
        return [_plan([v[i] for v in values], slots, offset) for i in range(len(first))]
    if isinstance(first, str):
        return list(values)
    tensors = [_as_tensor(v) for v in values]
    head = tensors[0]
    if head.is_sparse or head.device.type != "cpu" or any(
            t.shape != head.shape or t.dtype != head.dtype for t in tensors):
        raise _Unsupported("tensors of unequal shape or dtype")
    slot = Slot(offset[0], head.dtype, (len(tensors), *head.shape))
    offset[0] += -(-slot.nbytes // ALIGN) * ALIGN
    slots.append((slot, tensors))
    return slot


def _views(layout: Any, block: torch.Tensor) -> Any:
    if isinstance(layout, Slot):
        return block[layout.offset:layout.offset + layout.nbytes].view(layout.dtype).view(layout.shape)
    if isinstance(layout, dict):
        return {key: _views(v, block) for key, v in layout.items()}
    if isinstance(layout, list) and layout and all(isinstance(v, str) for v in layout):
        return layout
    return [_views(v, block) for v in layout]


def unpack(block: torch.Tensor, layout: Any) -> Any:
    """The batch `layout` describes, its tensors views of `block` (what the main process unpickles)."""
    return _views(layout, block)


class SharedBatch:
    """A batch stacked in one shared-memory block; pickles as (block, layout) and unpickles as the plain batch."""

    def __init__(self, block: torch.Tensor, layout: Any):
        self.block, self.layout = block, layout

    def __reduce__(self):
        return unpack, (self.block, self.layout)


def collate(samples: Sequence[Any]) -> Any:
    """default_collate's batch of `samples`; in a DataLoader worker, stacked in one shared block (module docstring).
    Samples whose leaves are not all tensors, numbers, numpy arrays or strings go to default_collate."""
    slots: list[tuple[Slot, list[torch.Tensor]]] = []
    offset = [0]
    try:
        layout = _plan(samples, slots, offset)
    except _Unsupported:
        return default_collate(samples)
    in_worker = get_worker_info() is not None
    storage = torch.UntypedStorage._new_shared(max(offset[0], 1)) if in_worker else torch.UntypedStorage(
        max(offset[0], 1))
    block = torch.empty(0, dtype=torch.uint8).set_(storage)
    for slot, tensors in slots:
        torch.stack(tensors, out=block[slot.offset:slot.offset + slot.nbytes].view(slot.dtype).view(slot.shape))
    return SharedBatch(block, layout) if in_worker else unpack(block, layout)
