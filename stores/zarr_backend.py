"""Zarr v3 backend: one group per video, arrays chunked along time and sharded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from motionssl.stores import zarr_h264  # noqa: F401  (registers the motionssl.h264 codec with zarr)
from motionssl.stores.shard_reader import ShardedFrames
from motionssl.stores.zarr_writer import ZarrVideoWriter  # noqa: F401  (the backend's writer)

# Bytes asked from the end of a shard object the first time a reader touches it: its index and, for a shard this
# small or smaller, all of it, so a first read costs one round of requests, not two.
TAIL_BYTES = 1 << 20


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
        from motionssl.stores.remote import read_commit

        return cls.from_commit(remote, video_id, read_commit(remote, video_id))

    @classmethod
    def from_commit(cls, remote, video_id: str, attrs: dict | None) -> "ZarrVideoReader":
        """The reader of a video on object storage whose commit record's attributes are `attrs` (None: absent)."""
        from motionssl.stores.remote import video_prefix

        if attrs is None:
            raise KeyError(f"video {video_id!r} is not in store {remote.url} (no commit record)")
        return RemoteZarrVideoReader(remote, f"{video_prefix(video_id)}/{attrs['motionssl_data']}",
                                     meta=attrs["motionssl_video"], docs=attrs.get("motionssl_arrays") or {})

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

    def frames(self, name: str) -> ShardedFrames | None:
        """The direct shard reader of an array, or None where its layout is another (zarr reads it then)."""
        if name not in self._frames:
            self._frames[name] = ShardedFrames.open(self.path / name, self.array(name).metadata.to_dict()) \
                if self.local else None
        return self._frames[name]

    def read(self, name: str, sel) -> np.ndarray:
        frames = self.frames(name)
        if frames is not None:  # several times faster than zarr's per-chunk path (see shard_reader)
            return frames.read(_indices(sel, frames.shape[0]))
        arr = self.array(name)
        if isinstance(sel, slice):
            return arr[sel]
        return arr.get_orthogonal_selection((np.asarray(sel, np.int64),))  # an empty list is float64 otherwise

    def read_many(self, names, indices) -> dict[str, np.ndarray]:
        """Frames at `indices` of each array of `names`."""
        return {name: self.read(name, indices) for name in names}

    def close(self) -> None:
        pass


class RemoteZarrVideoReader(ZarrVideoReader):
    """A video on object storage. The arrays' documents come from the commit record (no request), and a clip's
    chunks of every array are fetched in one round of concurrent ranged GETs: one range per shard, since a shard's
    chunks lie one after another. Each shard's index is fetched once per reader and kept; the objects of a
    commit's attempt (`d-<token>/`) are written once and never change, so an index kept under its object's key
    stays true (a re-extracted video is another attempt, other keys). With the node's cache (MOTIONSSL_CACHE_DIR,
    `shard_cache.py`), shard objects are fetched whole, once, and read from it after. Arrays of another layout are
    read by zarr."""

    def __init__(self, remote, prefix: str, *, meta: dict, docs: dict[str, dict]):
        self.remote, self.prefix, self.docs = remote, prefix, docs
        self.path, self.local, self._meta = remote.url_of(prefix), False, meta
        self._group = None
        self._arrays, self._attrs, self._frames = {}, {}, {}

    @property
    def data(self):
        """The attempt's Zarr group, opened (one request) only where zarr reads."""
        if self._group is None:
            from zarr.storage import FsspecStore

            # No allowed exceptions: a missing shard object fails the read (damage), never reads back as zeros.
            store = FsspecStore.from_url(self.path, read_only=True, allowed_exceptions=())
            self._group = zarr.open_group(store, mode="r", zarr_format=3)
        return self._group

    def attrs(self, name: str) -> dict:
        if name in self.docs:
            return dict(self.docs[name].get("attributes") or {})
        return super().attrs(name)

    def frames(self, name: str) -> ShardedFrames | None:
        if name not in self._frames:
            doc = self.docs.get(name)
            self._frames[name] = None if doc is None else ShardedFrames.open(f"{self.path}/{name}", doc)
        return self._frames[name]

    def read(self, name: str, sel) -> np.ndarray:
        return self.read_many([name], sel)[name]

    def read_many(self, names, indices) -> dict[str, np.ndarray]:
        """Each array's chunks at `indices`, fetched for all arrays together (by ranges, or whole shards through the
        node's cache), then decoded as on disk."""
        out, plans = {}, {}  # plans: {name: (frames reader, indices, {shard: [chunk within shard]})}
        for name in names:
            frames = self.frames(name)
            if frames is None:
                out[name] = super().read(name, indices)
                continue
            sel, needed = frames.chunks_of(_indices(indices, frames.shape[0]))
            shards: dict[int, list[int]] = {}
            for chunk in needed.tolist():
                shards.setdefault(chunk // frames.per_shard, []).append(chunk % frames.per_shard)
            plans[name] = (frames, sel, shards)
        fetched = {name: {} for name in plans}
        key = {name: lambda shard, name=name: f"{self.prefix}/{name}/{plans[name][0].shard_key(shard)}"
               for name in plans}
        if self.remote.cache is not None:
            self._whole_shards(plans, key, fetched)
        else:
            self._ranges(plans, key, fetched)
        for name, (frames, sel, _) in plans.items():
            out[name] = frames.read(sel, fetched[name])
        return out

    def _ranges(self, plans: dict, key: dict, fetched: dict) -> None:
        """Round 1, for shards this reader has not touched: the last TAIL_BYTES of each (its index; all of a small
        shard). Round 2: one range per shard for the chunks still missing."""
        first = [(name, shard) for name, (frames, _, shards) in plans.items() for shard in shards
                 if frames.index_of(shard) is None]
        tails = self.remote.get_ranges([(key[name](shard), -TAIL_BYTES, None) for name, shard in first]) \
            if first else []
        whole = set()
        for (name, shard), tail in zip(first, tails):
            frames = plans[name][0]
            frames.index_of(shard, tail)
            if len(tail) < TAIL_BYTES:  # the whole shard object: its chunks are here already
                whole.add((name, shard))
                for k in plans[name][2][shard]:
                    fetched[name][shard * frames.per_shard + k] = frames.chunk_in(shard, k, tail, 0)
        rest = [(name, shard, plans[name][0].span(shard, ks)) for name, (_, _, shards) in plans.items()
                for shard, ks in shards.items() if (name, shard) not in whole]
        data = self.remote.get_ranges([(key[name](shard), start, end) for name, shard, (start, end) in rest]) \
            if rest else []
        for (name, shard, (start, _)), got in zip(rest, data):
            frames = plans[name][0]
            for k in plans[name][2][shard]:
                fetched[name][shard * frames.per_shard + k] = frames.chunk_in(shard, k, got, start)

    def _whole_shards(self, plans: dict, key: dict, fetched: dict) -> None:
        """With the node's cache (`shard_cache.py`): each shard object from it, or fetched whole in one round and
        kept there; its index from its tail, its chunks cut from it."""
        cache, remote = self.remote.cache, self.remote
        want = [(name, shard, key[name](shard)) for name, (_, _, shards) in plans.items() for shard in shards]
        objects = {rel: cache.get(remote.location(rel)) for _, _, rel in want}
        missing = [rel for rel, data in objects.items() if data is None]
        for rel, data in remote.get_many(missing).items():
            if data is None:  # the commit record names it: damage, never zeros
                raise FileNotFoundError(f"{remote.url_of(rel)}: shard object missing; run `motionssl verify`")
            cache.put(remote.location(rel), data)
            objects[rel] = data
        for name, shard, rel in want:
            frames, data = plans[name][0], objects[rel]
            frames.index_of(shard, data)
            for k in plans[name][2][shard]:
                fetched[name][shard * frames.per_shard + k] = frames.chunk_in(shard, k, data, 0)


def _indices(sel, n: int) -> np.ndarray:
    return np.arange(*sel.indices(n)) if isinstance(sel, slice) else np.asarray(sel, np.int64)

