"""Zarr v3 backend: one group per video, arrays chunked along time and sharded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from motionssl.stores import zarr_h264  # noqa: F401  (registers the motionssl.h264 codec with zarr)
from motionssl.stores.shard_reader import ShardedFrames
from motionssl.stores.zarr_writer import ZarrVideoWriter  # noqa: F401  (the backend's writer)


class ZarrVideoReader:
    def __init__(self, path: Path | str, *, data=None, meta: dict | None = None):
        self.path = path
        self.local = data is None  # on disk: the group at `path`, its shard files read directly
        self.data = zarr.open_group(str(path), mode="r") if data is None else data  # the group of the arrays
        self._meta = meta
        self._arrays: dict[str, zarr.Array] = {}
        self._attrs: dict[str, dict] = {}
        self._frames: dict[str, ShardedFrames | None] = {}  # direct shard readers, None where zarr reads

    @classmethod
    def remote(cls, remote, video_id: str) -> "ZarrVideoReader":
        """A video on object storage, through its commit record (`remote.py`): its meta, and the arrays of the
        attempt it names. A video without a commit record is absent (KeyError), whatever objects it has."""
        from zarr.storage import FsspecStore

        from motionssl.stores.remote import read_commit, video_prefix

        attrs = read_commit(remote, video_id)
        if attrs is None:
            raise KeyError(f"video {video_id!r} is not in store {remote.url} (no commit record)")
        url = f"{remote.url_of(video_prefix(video_id))}/{attrs['motionssl_data']}"
        # No allowed exceptions: a missing shard object fails the read (damage), never reads back as zeros.
        store = FsspecStore.from_url(url, read_only=True, allowed_exceptions=())
        return cls(url, data=zarr.open_group(store, mode="r", zarr_format=3), meta=attrs["motionssl_video"])

    def meta(self) -> dict:
        return dict(self._meta if self._meta is not None else self.data.attrs["motionssl_video"])

    def arrays(self) -> dict[str, tuple[tuple, np.dtype]]:
        return {name: (tuple(a.shape), a.dtype) for name, a in self.data.arrays()}

    def array(self, name: str):
        if name not in self._arrays:  # opening an array reads its zarr.json: once per reader
            self._arrays[name] = self.data[name]
        return self._arrays[name]

    def attrs(self, name: str) -> dict:
        if name not in self._attrs:
            self._attrs[name] = dict(self.array(name).attrs)
        return self._attrs[name]

    def read(self, name: str, sel) -> np.ndarray:
        arr = self.array(name)
        if name not in self._frames:
            self._frames[name] = ShardedFrames.open(self.path / name, arr.metadata.to_dict()) if self.local else None
        frames = self._frames[name]
        if frames is not None:  # several times faster than zarr's per-chunk path (see shard_reader)
            return frames.read(np.arange(*sel.indices(arr.shape[0])) if isinstance(sel, slice) else sel)
        if isinstance(sel, slice):
            return arr[sel]
        return arr.get_orthogonal_selection((np.asarray(sel, np.int64),))  # an empty list is float64 otherwise

    def close(self) -> None:
        pass

