"""Zarr v3 backend: one group per video, arrays chunked along time and sharded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from motionssl.stores import zarr_h264  # noqa: F401  (registers the motionssl.h264 codec with zarr)
from motionssl.stores.shard_reader import ShardedFrames
from motionssl.stores.zarr_writer import ZarrVideoWriter  # noqa: F401  (the backend's writer)


class ZarrVideoReader:
    def __init__(self, path: Path):
        self.path = path
        self.group = zarr.open_group(str(path), mode="r")
        self._arrays: dict[str, zarr.Array] = {}
        self._attrs: dict[str, dict] = {}
        self._frames: dict[str, ShardedFrames | None] = {}  # direct shard readers, None where zarr reads

    def meta(self) -> dict:
        return dict(self.group.attrs["motionssl_video"])

    def arrays(self) -> dict[str, tuple[tuple, np.dtype]]:
        return {name: (tuple(a.shape), a.dtype) for name, a in self.group.arrays()}

    def array(self, name: str):
        if name not in self._arrays:  # opening an array reads its zarr.json: once per reader
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def attrs(self, name: str) -> dict:
        if name not in self._attrs:
            self._attrs[name] = dict(self.array(name).attrs)
        return self._attrs[name]

    def read(self, name: str, sel) -> np.ndarray:
        arr = self.array(name)
        if name not in self._frames:
            self._frames[name] = ShardedFrames.open(self.path / name, arr.metadata.to_dict())
        frames = self._frames[name]
        if frames is not None:  # several times faster than zarr's per-chunk path (see shard_reader)
            return frames.read(np.arange(*sel.indices(arr.shape[0])) if isinstance(sel, slice) else sel)
        if isinstance(sel, slice):
            return arr[sel]
        return arr.get_orthogonal_selection((np.asarray(sel, np.int64),))  # an empty list is float64 otherwise

    def close(self) -> None:
        pass
