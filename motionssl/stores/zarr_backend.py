"""Zarr v3 backend: one group per video, arrays chunked along time and sharded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from motionssl.stores.shard_reader import ShardedFrames
from motionssl.stores.writer import VideoWriter


class ZarrVideoWriter(VideoWriter):
    def __init__(self, final: Path, spec):
        super().__init__(final, spec)
        self.group = zarr.open_group(str(self.tmp), mode="w")
        st = spec.storage
        self.codec = BloscCodec(cname=st.zarr_codec, clevel=st.zarr_level, shuffle="shuffle")
        self.arrays: dict[str, zarr.Array] = {}

    def _create(self, name, frame_shape, dtype, chunk, shard):
        self.arrays[name] = self.group.create_array(
            name, shape=(0, *frame_shape), dtype=dtype, chunks=(chunk, *frame_shape),
            shards=(shard, *frame_shape) if shard > chunk else None, compressors=self.codec,
            fill_value=0, dimension_names=("t", *[f"d{i}" for i in range(len(frame_shape))]),
            config={"write_empty_chunks": True},  # a missing chunk file then always means damage
        )

    def _write(self, name, start, block):
        arr = self.arrays[name]
        arr.resize((start + len(block), *arr.shape[1:]))
        arr[start:start + len(block)] = block

    def _set_attrs(self, name, attrs):
        self.arrays[name].attrs.update(attrs)

    def _finish(self, meta):
        self.group.attrs.put({"motionssl_video": meta})

    def _close(self):
        pass


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
        return arr.get_orthogonal_selection((np.asarray(sel),))

    def close(self) -> None:
        pass
