"""HDF5 backend: one shard file per video (never two writers on a file), opened lazily per process."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from motionssl.stores.writer import VideoWriter


class HDF5VideoWriter(VideoWriter):
    def __init__(self, final: Path, spec):
        super().__init__(final, spec)
        self.file = h5py.File(self.tmp, "w", libver="latest")
        comp = spec.storage.hdf5_compression
        self.compression = None if comp == "none" else comp

    def _create(self, name, frame_shape, dtype, chunk, shard):
        self.file.create_dataset(
            name, shape=(0, *frame_shape), maxshape=(None, *frame_shape), dtype=dtype,
            chunks=(chunk, *frame_shape), compression=self.compression, shuffle=self.compression is not None,
        )

    def _write(self, name, start, block):
        ds = self.file[name]
        ds.resize(start + len(block), axis=0)
        ds[start:start + len(block)] = block

    def _set_attrs(self, name, attrs):
        self.file[name].attrs["motionssl"] = json.dumps(attrs)

    def _finish(self, meta):
        self.file.attrs["motionssl_video"] = json.dumps(meta)

    def _close(self):
        if self.file.id.valid:
            self.file.close()


class HDF5VideoReader:
    def __init__(self, path: Path):
        self.path = path
        self.file = h5py.File(path, "r")
        self._datasets: dict[str, h5py.Dataset] = {}
        self._attrs: dict[str, dict] = {}

    def meta(self) -> dict:
        return json.loads(self.file.attrs["motionssl_video"])

    def arrays(self) -> dict[str, tuple[tuple, np.dtype]]:
        return {name: (tuple(ds.shape), ds.dtype) for name, ds in self.file.items()}

    def array(self, name: str):
        if name not in self._datasets:  # a lookup costs more than reading a small array: once per reader
            self._datasets[name] = self.file[name]
        return self._datasets[name]

    def attrs(self, name: str) -> dict:
        if name not in self._attrs:
            raw = self.array(name).attrs.get("motionssl")
            self._attrs[name] = json.loads(raw) if raw is not None else {}
        return self._attrs[name]

    def read(self, name: str, sel) -> np.ndarray:
        ds = self.array(name)
        if isinstance(sel, slice):
            return ds[sel]
        idx, n = np.asarray(sel, np.int64), len(ds)
        if idx.size == 0:
            return ds[0:0]
        if idx.min() < -n or idx.max() >= n:
            raise IndexError(f"frame index out of range for {n} frames: {idx.min()}..{idx.max()}")
        idx = idx % n
        uniq, inverse = np.unique(idx, return_inverse=True)
        # h5py's point and strided selections decode a chunk once per frame (40x slower at stride 4): read
        # runs of consecutive chunks as whole slices instead, and pick the frames from them.
        chunk = ds.chunks[0] if ds.chunks else n
        runs = np.split(uniq, np.flatnonzero(np.diff(uniq // chunk) > 1) + 1)
        blocks = []
        for run in runs:
            block = ds[run[0]:run[-1] + 1]
            blocks.append(block if len(block) == len(run) else block[run - run[0]])
        picked = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        return picked if np.array_equal(uniq, idx) else picked[inverse.ravel()]

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()
