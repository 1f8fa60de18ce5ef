"""Batches that leave a DataLoader worker as one shared-memory block, reused once the main process lets go of it.

torch sends each tensor of a worker's batch to the main process on its own: one shared-memory file created per
tensor, and one file descriptor passed per tensor, each over a new authenticated socket connection (Python's
resource_sharer). A training batch of rgb + mv carries eight tensors (index, video, label, frames, rgb, its colour
vector, mv, mv_valid), each paid for by the main process. And every batch is written into freshly created shared
memory, whose pages fault in one by one (what both cost: benchmarks/README.md, "Trainer: loader throughput").

`collate` stacks a batch exactly as `default_collate` does (same structure, dtypes and values). In a worker it
stacks every tensor into one shared block, and the batch crosses the process boundary as that block and a small
layout: one file, and two descriptors (the block's, and the worker's busy bytes below) instead of one per tensor.
The main process gets a plain batch whose tensors are views of the block. Each worker keeps up to `POOL_BLOCKS`
blocks and a shared byte per block, set while the main process holds the block's batch. The main process watches the block's memory itself (a weak reference to its storage, which every tensor
sharing that memory keeps alive, views of another dtype too) and clears the byte once no tensor is left on it, at
the next batch it receives; the worker then writes a later batch into that block instead of into new memory.
A batch the main process hands on to a third process counts as let go once the main process holds none of it:
copy it (or keep a reference) while the other process reads it.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import default_collate, get_worker_info

ALIGN = 64  # bytes: every slot starts on a cache line, so any dtype can view it
POOL_BLOCKS = 8  # per worker: prefetched batches (2 a worker by default), the one in use, pinning, and slack


@dataclass(frozen=True)
class Slot:
    """A stacked tensor's place in the block: byte offset, dtype and shape."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class _Unsupported(Exception):
    """A leaf `collate` does not pack (strings aside): default_collate handles the whole batch instead."""


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, int):
        return torch.tensor(value)  # int64, or bool for a bool, as default_collate
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


@dataclass
class _Pool:
    """A worker's reusable blocks, and their shared bytes: 1 while the main process holds the block's batch."""

    pid: int
    busy: torch.Tensor  # (POOL_BLOCKS,) uint8 in shared memory
    blocks: list[torch.UntypedStorage]


_pool = _Pool(-1, torch.zeros(0, dtype=torch.uint8), [])  # this worker process's; a forked one makes its own
_held: list[tuple[StorageWeakRef, torch.Tensor, int]] = []  # main process: (block memory, its busy bytes, index)
_held_lock = threading.Lock()  # unpickling runs in the pin-memory thread when there is one


def _block_for(nbytes: int) -> tuple[torch.UntypedStorage, int]:
    """A shared block of at least `nbytes` for this worker's next batch and its pool index: a pooled block the main
    process has let go of, else a new one (pooled while the pool has room; index -1 otherwise)."""
    global _pool
    if _pool.pid != os.getpid():
        _pool = _Pool(os.getpid(), torch.zeros(POOL_BLOCKS, dtype=torch.uint8).share_memory_(), [])
    busy = _pool.busy.numpy()
    for index, storage in enumerate(_pool.blocks):
        if busy[index] == 0 and storage.nbytes() >= nbytes:
            break
    else:
        storage, index = torch.UntypedStorage._new_shared(nbytes), len(_pool.blocks)
        if index == POOL_BLOCKS:
            return storage, -1
        _pool.blocks.append(storage)
    busy[index] = 1
    return storage, index


def unpack(block: torch.Tensor, layout: Any, busy: torch.Tensor, index: int) -> Any:
    """The batch `layout` describes, its tensors views of `block` (what the main process unpickles). Blocks of
    earlier batches that no tensor uses any more are handed back to their workers first."""
    with _held_lock:
        kept = []
        for memory, flags, i in _held:
            if memory.expired():
                flags[i] = 0
            else:
                kept.append((memory, flags, i))
        if index >= 0:
            kept.append((StorageWeakRef(block.untyped_storage()), busy, index))
        _held[:] = kept
    return _views(layout, block)


class SharedBatch:
    """A batch stacked in one shared-memory block; pickles as (block, layout, the worker's busy bytes, the block's
    index) and unpickles as the plain batch."""

    def __init__(self, block: torch.Tensor, layout: Any, index: int):
        self.block, self.layout, self.index = block, layout, index

    def __reduce__(self):
        return unpack, (self.block, self.layout, _pool.busy, self.index)


def collate(samples: Sequence[Any]) -> Any:
    """default_collate's batch of `samples`; in a DataLoader worker, stacked in one shared block (module docstring).
    Samples whose leaves are not all tensors, numbers, numpy arrays or strings go to default_collate."""
    slots: list[tuple[Slot, list[torch.Tensor]]] = []
    offset = [0]
    try:
        layout = _plan(samples, slots, offset)
    except _Unsupported:
        return default_collate(samples)
    nbytes = max(offset[0], 1)
    in_worker = get_worker_info() is not None
    storage, index = _block_for(nbytes) if in_worker else (torch.UntypedStorage(nbytes), -1)
    block = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,))
    for slot, tensors in slots:
        torch.stack(tensors, out=block[slot.offset:slot.offset + slot.nbytes].view(slot.dtype).view(slot.shape))
    return SharedBatch(block, layout, index) if in_worker else _views(layout, block)
