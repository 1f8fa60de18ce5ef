"""Frames of a sharded Zarr v3 array read straight from its shard files.

zarr-python 3 reads every chunk through its asyncio event loop and re-reads the shard index each time: about
1.5 ms of overhead per chunk, more than Blosc takes to decode it (benchmarks/README.md, "Trainer: loader
throughput"). The arrays `ZarrVideoWriter` writes have one layout, fixed by the Zarr v3 sharding spec: shards
and chunks of whole frames along time, chunks coded `bytes` + `blosc` or `motionssl.h264`, the shard index (offset, nbytes as
little-endian uint64 per chunk, then a crc32c) at the end of the shard file, each chunk optionally followed by
its own crc32c (the `crc32c` codec, spec storage.checksums). This reader handles exactly that layout and nothing
else (`open` returns None otherwise, and the caller uses zarr). It checks the index's crc32c, and each chunk's
where the array has them: flipped bytes fail the read (`ChecksumError`) instead of decoding to garbage.
"""
from __future__ import annotations

import os
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import blosc

from motionssl.stores.h264 import CODEC_NAME, ChunkCoder

MISSING = np.iinfo(np.uint64).max  # index entry of a chunk never written
BLOSC_HEADER = 16  # bytes: version, versionlz, flags, typesize, nbytes, blocksize, cbytes
CRC = 4  # bytes of a crc32c, little-endian, after what it checks


class ChecksumError(OSError):
    """Bytes on disk that differ from what was written (a chunk's or a shard index's crc32c does not match)."""


def checked(data: bytes, what: str) -> bytes:
    """`data` without its trailing crc32c, which must match."""
    body = data[:-CRC]
    if len(data) < CRC or google_crc32c.value(body) != int.from_bytes(data[-CRC:], "little"):
        raise ChecksumError(f"{what}: checksum mismatch (bytes changed on disk); run `motionssl verify`")
    return body


class ShardedFrames:
    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, shard_t: int, chunk_t: int,
                 h264: ChunkCoder | None = None, checksum: bool = False):
        self.path, self.shape, self.dtype = path, shape, dtype
        self.shard_t, self.chunk_t = shard_t, chunk_t
        self.per_shard = shard_t // chunk_t
        self.chunk_shape = (chunk_t, *shape[1:])
        self._index: dict[int, np.ndarray] = {}
        self._h264 = h264
        self._checksum = checksum

    @classmethod
    def open(cls, path: Path, metadata: dict) -> ShardedFrames | None:
        """The reader of the array at `path` with zarr.json `metadata`, or None when its layout is another."""
        codecs = metadata.get("codecs", [])
        if metadata.get("chunk_grid", {}).get("name") != "regular" or len(codecs) != 1 \
                or codecs[0]["name"] != "sharding_indexed":
            return None
        shard = metadata["chunk_grid"]["configuration"]["chunk_shape"]
        conf = codecs[0]["configuration"]
        inner = [c["name"] for c in conf["codecs"]]
        checksum = inner[-1:] == ["crc32c"]
        if checksum:
            inner = inner[:-1]
        index = [c["name"] for c in conf["index_codecs"]]
        endian = [c.get("configuration", {}).get("endian", "little") for c in conf["codecs"] + conf["index_codecs"]
                  if c["name"] == "bytes"]
        shape, chunk = metadata["shape"], conf["chunk_shape"]
        whole_frames = shard[1:] == shape[1:] and chunk[1:] == shape[1:] and shard[0] % chunk[0] == 0
        key = metadata.get("chunk_key_encoding", {})
        if (inner not in (["bytes", "blosc"], [CODEC_NAME]) or index != ["bytes", "crc32c"] or conf.get("index_location", "end") != "end"
                or set(endian) != {"little"} or not whole_frames or key.get("name") != "default"
                or key.get("configuration", {}).get("separator", "/") != "/"):
            return None
        dtype = np.dtype(metadata["data_type"]).newbyteorder("<")
        h264 = ChunkCoder.from_dict(conf["codecs"][0]) if inner == [CODEC_NAME] else None
        return cls(path, tuple(shape), dtype, shard[0], chunk[0], h264, checksum)

    def _shard_file(self, shard: int) -> Path:
        return self.path / "c" / "/".join([str(shard)] + ["0"] * (len(self.shape) - 1))

    def _chunk(self, fd: int, shard: int, k: int, frames: int, dest: np.ndarray | None = None) -> np.ndarray:
        """Chunk k of the shard open as `fd`, decoded: at least its first `frames` frames; into `dest` (a
        C-contiguous chunk-shaped array) when given, for Blosc chunks."""
        index = self._index.get(shard)
        if index is None:
            size = 16 * self.per_shard + 4
            end = os.fstat(fd).st_size
            raw = os.pread(fd, size, max(end - size, 0))
            if len(raw) < size:
                raise OSError(f"{self._shard_file(shard)}: shard file of {end} bytes is shorter than its index; "
                              "run `motionssl verify`")
            index = self._index[shard] = np.frombuffer(checked(raw, f"{self._shard_file(shard)}: shard index"),
                                                       "<u8").reshape(-1, 2)
        offset, nbytes = index[k]
        chunk = shard * self.per_shard + k
        if offset == MISSING:  # never written: the writer writes every chunk, so this is damage
            raise OSError(f"{self.path}: chunk {chunk} is missing; run `motionssl verify`")
        data = os.pread(fd, int(nbytes), int(offset))
        if len(data) < nbytes:
            raise OSError(f"{self.path}: chunk {chunk} lies past the end of its shard file; run `motionssl verify`")
        if self._checksum:
            data = checked(data, f"{self.path}: chunk {chunk}")
        if self._h264 is not None:  # P-frames depend on earlier ones only: stop at the last frame asked for
            return self._h264.decode(data, self.chunk_shape, frames)
        if dest is not None:
            # Blosc's header holds the decoded size at bytes 4-8; one claiming fewer would leave part of dest unset.
            if len(data) < BLOSC_HEADER or int.from_bytes(data[4:8], "little") != dest.nbytes:
                raise OSError(f"{self.path}: chunk {chunk} does not decode to one frame; "
                              "run `motionssl verify`")
            blosc.decompress(data, dest)
            return dest
        return np.frombuffer(blosc.decompress(data), self.dtype).reshape(self.chunk_shape)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed); each shard file is opened and each chunk decoded
        once per call."""
        indices = np.asarray(indices, np.int64)
        n = self.shape[0]
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"frame index out of range for {n} frames: {indices.min()}..{indices.max()}")
        indices = indices % max(n, 1)
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        chunks, within = np.divmod(indices, self.chunk_t)
        needed, inverse = np.unique(chunks, return_inverse=True)
        # One-frame Blosc chunks at distinct frames (a clip's read): each decodes straight into its row of `out`.
        direct = self.chunk_t == 1 and self._h264 is None and len(needed) == len(indices)
        rows_of = np.argsort(indices, kind="stable") if direct else None  # row of needed[j]: rows_of[j]
        fd, fd_shard = -1, -1
        try:
            for j, chunk in enumerate(needed.tolist()):
                shard, k = divmod(chunk, self.per_shard)
                if shard != fd_shard:
                    if fd >= 0:
                        os.close(fd)
                    fd, fd_shard = os.open(self._shard_file(shard), os.O_RDONLY), shard
                if direct:
                    row = int(rows_of[j])
                    self._chunk(fd, shard, k, 1, dest=out[row:row + 1])
                    continue
                rows = np.flatnonzero(inverse == j)
                frames = self._chunk(fd, shard, k, int(within[rows].max()) + 1)
                out[rows] = frames[within[rows]]
        finally:
            if fd >= 0:
                os.close(fd)
        return out
