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
    def __init__(self, path: Path | str, shape: tuple[int, ...], dtype: np.dtype, shard_t: int, chunk_t: int,
                 h264: ChunkCoder | None = None, checksum: bool = False):
        self.path, self.shape, self.dtype = path, shape, dtype
        self.shard_t, self.chunk_t = shard_t, chunk_t
        self.per_shard = shard_t // chunk_t
        self.chunk_shape = (chunk_t, *shape[1:])
        self._index: dict[int, np.ndarray] = {}
        self._h264 = h264
        self._checksum = checksum

    @classmethod
    def open(cls, path: Path | str, metadata: dict) -> ShardedFrames | None:
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

    @property
    def index_bytes(self) -> int:
        """Bytes of a shard's index at its end: (offset, nbytes) per chunk, then a crc32c."""
        return 16 * self.per_shard + CRC

    def shard_key(self, shard: int) -> str:
        """The shard's file (or object) name relative to the array: c/<shard>/0/0..."""
        return "c/" + "/".join([str(shard)] + ["0"] * (len(self.shape) - 1))

    def _shard_file(self, shard: int) -> str:
        return f"{self.path}/{self.shard_key(shard)}"

    def index_of(self, shard: int, tail: bytes | None = None) -> np.ndarray | None:
        """The shard's index: cached, or parsed (and cached) from `tail`, bytes that end where the shard ends; None
        when neither."""
        index = self._index.get(shard)
        if index is None and tail is not None:
            if len(tail) < self.index_bytes:
                raise OSError(f"{self._shard_file(shard)}: shard of {len(tail)} bytes is shorter than its index; "
                              "run `motionssl verify`")
            raw = tail[len(tail) - self.index_bytes:]
            index = self._index[shard] = np.frombuffer(checked(raw, f"{self._shard_file(shard)}: shard index"),
                                                       "<u8").reshape(-1, 2)
        return index

    def span(self, shard: int, ks) -> tuple[int, int]:
        """[start, end) of the bytes holding chunks `ks` of the shard (its index known): the writer writes a
        shard's chunks one after another, so a clip's chunks of one shard are one range."""
        index = self._index[shard]
        chunks = [self._entry(index, shard, k) for k in ks]
        return min(o for o, _ in chunks), max(o + n for o, n in chunks)

    def _entry(self, index: np.ndarray, shard: int, k: int) -> tuple[int, int]:
        offset, nbytes = index[k]
        if offset == MISSING:  # never written: the writer writes every chunk, so this is damage
            raise OSError(f"{self.path}: chunk {shard * self.per_shard + k} is missing; run `motionssl verify`")
        return int(offset), int(nbytes)

    def chunk_in(self, shard: int, k: int, data: bytes, start: int) -> bytes:
        """Chunk k's bytes out of `data`, the shard's bytes from `start` on."""
        offset, nbytes = self._entry(self._index[shard], shard, k)
        out = data[offset - start:offset - start + nbytes]
        if offset < start or len(out) < nbytes:
            raise OSError(f"{self.path}: chunk {shard * self.per_shard + k} lies past the end of its shard; run "
                          "`motionssl verify`")
        return out

    def _decode(self, data: bytes, chunk: int, frames: int, dest: np.ndarray | None = None) -> np.ndarray:
        """A chunk's bytes, decoded: at least its first `frames` frames; into `dest` (a C-contiguous chunk-shaped
        array) when given, for Blosc chunks."""
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

    def chunks_of(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(frame indices checked and made non-negative, the distinct chunks that hold them, in order)."""
        indices = np.asarray(indices, np.int64)
        n = self.shape[0]
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"frame index out of range for {n} frames: {indices.min()}..{indices.max()}")
        indices = indices % max(n, 1)
        return indices, np.unique(indices // self.chunk_t)

    def read(self, indices, fetched: dict[int, bytes] | None = None) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed); each chunk decoded once per call. Chunks come from
        `fetched` ({chunk: bytes}, fetched by the caller) or else from the shard files, each opened once."""
        indices, needed = self.chunks_of(indices)
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        within = indices % self.chunk_t
        inverse = np.searchsorted(needed, indices // self.chunk_t)
        # One-frame Blosc chunks at distinct frames (a clip's read): each decodes straight into its row of `out`.
        direct = self.chunk_t == 1 and self._h264 is None and len(needed) == len(indices)
        rows_of = np.argsort(indices, kind="stable") if direct else None  # row of needed[j]: rows_of[j]
        files = _ShardFiles(self) if fetched is None else None
        try:
            for j, chunk in enumerate(needed.tolist()):
                data = fetched[chunk] if files is None else files.chunk(chunk)
                if direct:
                    row = int(rows_of[j])
                    self._decode(data, chunk, 1, dest=out[row:row + 1])
                    continue
                rows = np.flatnonzero(inverse == j)
                frames = self._decode(data, chunk, int(within[rows].max()) + 1)
                out[rows] = frames[within[rows]]
        finally:
            if files is not None:
                files.close()
        return out


class _ShardFiles:
    """Chunks of an array on disk, read with pread from its shard files, one open file at a time."""

    def __init__(self, frames: ShardedFrames):
        self.frames, self.fd, self.shard = frames, -1, -1

    def chunk(self, chunk: int) -> bytes:
        f = self.frames
        shard, k = divmod(chunk, f.per_shard)
        if shard != self.shard:
            self.close()
            self.fd, self.shard = os.open(f._shard_file(shard), os.O_RDONLY), shard
        if f.index_of(shard) is None:
            end = os.fstat(self.fd).st_size
            f.index_of(shard, os.pread(self.fd, f.index_bytes, max(end - f.index_bytes, 0)))
        offset, nbytes = f._entry(f.index_of(shard), shard, k)
        data = os.pread(self.fd, nbytes, offset)
        if len(data) < nbytes:
            raise OSError(f"{f.path}: chunk {chunk} lies past the end of its shard file; run `motionssl verify`")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.shard = -1, -1
