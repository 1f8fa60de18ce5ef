"""Zarr v3 arrays written straight to their files: metadata documents and whole shards.

A video's writer fills every shard completely, once, in order, so zarr-python's general write path
(read-modify-write of shards, per-chunk trips through its asyncio event loop and thread pool, a
metadata rewrite per resize) costs time and buys nothing here: about 0.4 ms per frame on top of
compression (benchmarks/README.md). This module writes the layout `shard_reader.py` reads, which
is the one zarr-python itself writes for these arrays: chunks of whole frames along time coded
`bytes` + `blosc` (the same numcodecs Blosc zarr-python uses) and, with spec storage.checksums, `crc32c`;
each shard's index (offset, nbytes as little-endian uint64 per chunk, then a crc32c) at its end, and the
same `zarr.json` documents
[test_store.py::test_zarr_writer_writes_what_zarr_python_writes]. It never imports zarr, which
keeps it out of every decoder process's start-up.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numcodecs import Blosc, blosc
from numcodecs.checksum32 import crc32c_checksum

from motionssl.stores.h264 import ChunkCoder, h264_coder
from motionssl.stores.writer import VideoWriter

MISSING = np.iinfo(np.uint64).max  # shard index entry of a chunk beyond the end of the array
CHECKSUM_CODEC = {"name": "crc32c"}
INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, CHECKSUM_CODEC]


@dataclass
class _Array:
    frame_shape: tuple[int, ...]
    dtype: np.dtype
    chunk: int  # frames per chunk
    shard: int  # frames per shard file; == chunk: not sharded, one file per chunk
    blosc: Blosc
    attrs: dict = field(default_factory=dict)
    h264: ChunkCoder | None = None  # chunks coded as H.264 streams instead of Blosc
    checksum: bool = False  # each chunk ends in its crc32c (zarr's `crc32c` codec), checked on read

    def chunk_file(self, root: Path, index: int) -> Path:
        return root / "c" / "/".join([str(index)] + ["0"] * len(self.frame_shape))

    def encode(self, block: np.ndarray) -> bytes:
        """One shard (or, unsharded, one chunk) file; a short last block is padded with zeros (the
        fill value) to whole chunks, and chunks past it are absent from the index."""
        block = np.ascontiguousarray(block, self.dtype.newbyteorder("<"))
        n_chunks = -(-len(block) // self.chunk)
        if self.h264 is not None:  # a short last chunk is coded as it is; decoding fills the rest with 0
            chunks = [self.h264.encode(block[i:i + self.chunk]) for i in range(0, len(block), self.chunk)]
        else:
            if len(block) < n_chunks * self.chunk:
                block = np.concatenate([block, np.zeros((n_chunks * self.chunk - len(block), *self.frame_shape),
                                                        block.dtype)])
            # numcodecs' blosc.compress and crc32c_checksum, not the Blosc and CRC32C codecs: the same bytes, without
            # the codecs' buffer checks and copies (0.1 ms a chunk, a third of the writer: benchmarks/README.md)
            b = self.blosc
            chunks = [blosc.compress(block[i:i + self.chunk], b._cname_bytes, b.clevel, b.shuffle, b.blocksize)
                      for i in range(0, len(block), self.chunk)]
        if self.checksum:
            chunks = [_with_crc32c(c) for c in chunks]
        if self.shard == self.chunk:
            return chunks[0]
        index = np.full((self.shard // self.chunk, 2), MISSING, "<u8")
        index[:n_chunks, 1] = [len(c) for c in chunks]
        index[:n_chunks, 0] = np.cumsum(index[:n_chunks, 1]) - index[:n_chunks, 1]
        return b"".join([*chunks, _with_crc32c(index.tobytes())])

    def metadata(self, frames: int) -> dict:
        """The array's zarr.json document, as zarr-python writes it."""
        # zarr-python gives 1-byte types a `bytes` codec without an endianness.
        data_bytes = {"name": "bytes", **({"configuration": {"endian": "little"}} if self.dtype.itemsize > 1 else {})}
        blosc = {"name": "blosc", "configuration": {"typesize": self.dtype.itemsize, "cname": self.blosc.cname,
                                                    "clevel": self.blosc.clevel, "shuffle": "shuffle",
                                                    "blocksize": self.blosc.blocksize}}
        codecs = [data_bytes, blosc] if self.h264 is None else [self.h264.to_dict()]
        if self.checksum:
            codecs.append(CHECKSUM_CODEC)
        if self.shard > self.chunk:
            codecs = [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [self.chunk, *self.frame_shape], "codecs": codecs,
                "index_codecs": INDEX_CODECS, "index_location": "end"}}]
        return {
            "shape": [frames, *self.frame_shape], "data_type": self.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [self.shard, *self.frame_shape]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": np.zeros((), self.dtype).item(), "codecs": codecs, "attributes": self.attrs,
            "dimension_names": ["t", *[f"d{i}" for i in range(len(self.frame_shape))]],
            "zarr_format": 3, "node_type": "array", "storage_transformers": [],
        }


def _with_crc32c(data: bytes) -> bytes:
    """`data` then its crc32c, little-endian: what zarr's `crc32c` codec writes."""
    return data + (crc32c_checksum(data) & 0xFFFFFFFF).to_bytes(4, "little")


class ZarrVideoWriter(VideoWriter):
    def __init__(self, final: Path, spec):
        super().__init__(final, spec)
        self.tmp.mkdir()
        self.arrays: dict[str, _Array] = {}

    def _create(self, name, frame_shape, dtype, chunk, shard):
        st = self.spec.storage
        # One Blosc block per chunk: Blosc's automatic blocks (tens of kB at zstd level 1) made
        # compression 40 % slower and rgb chunks 8 % larger (benchmarks/README.md).
        block = chunk * int(np.prod(frame_shape, dtype=np.int64)) * dtype.itemsize
        blosc = Blosc(cname=st.zarr_codec, clevel=st.zarr_level, shuffle=Blosc.SHUFFLE, blocksize=block)
        self.arrays[name] = _Array(frame_shape, dtype, chunk, max(shard, chunk), blosc,
                                   h264=h264_coder(self.spec, name, dtype), checksum=st.checksums)
        (self.tmp / name / "c").mkdir(parents=True)

    def _write(self, name, start, block):
        arr = self.arrays[name]
        index, offset = divmod(start, arr.shard)
        assert offset == 0, "the base class flushes whole shards"
        path = arr.chunk_file(self.tmp / name, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(arr.encode(block))

    def _set_attrs(self, name, attrs):
        self.arrays[name].attrs = dict(attrs)

    def _finish(self, meta):
        for name, arr in self.arrays.items():
            _write_json(self.tmp / name / "zarr.json", arr.metadata(self._written[name]))
        write_group(self.tmp, {"motionssl_video": meta})

    def _close(self):
        pass


def write_group(path: Path, attributes: dict | None = None) -> None:
    """A zarr v3 group at `path` (its zarr.json), as `zarr.open_group(path, mode="a")` makes one."""
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / "zarr.json", group_doc(attributes))


def group_doc(attributes: dict | None = None) -> dict:
    return {"attributes": attributes or {}, "zarr_format": 3, "node_type": "group"}


def _write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2))
