"""HDF5 backend: one shard file per video (never two writers on a file), opened lazily per process.

h5py cannot run Python filters, so an array coded with H.264 (`motionssl.stores.h264`) is stored as a
variable-length uint8 dataset with one entry per chunk (its H.264 stream) and the attribute `motionssl_h264`
giving the logical shape, dtype, frames per chunk and codec (and, with spec storage.checksums, each entry's
crc32c: HDF5's fletcher32 filter, which checks the other arrays' chunks, never sees variable-length data); the
reader decodes it back to that shape.
"""
from __future__ import annotations

import json
from pathlib import Path

import google_crc32c
import h5py
import hdf5plugin  # registers the Blosc filter (32001), to write and to read
import numpy as np

from motionssl.stores.h264 import ChunkCoder, h264_coder
from motionssl.stores.shard_reader import ChecksumError
from motionssl.stores.writer import VideoWriter

H264_ATTR = "motionssl_h264"
SLICE_COST_BYTES = 64 * 1024  # one h5py slice read costs about as much as decoding this much more


def hdf5_filter(storage) -> dict:
    """create_dataset's keywords for storage.hdf5_compression (Blosc shuffles inside the filter) and
    storage.checksums: HDF5's fletcher32 filter, over each chunk as stored, checked by every read."""
    checksum = {"fletcher32": True} if storage.checksums else {}
    if storage.hdf5_compression == "blosc":
        return dict(hdf5plugin.Blosc(cname=storage.zarr_codec, clevel=storage.zarr_level,
                                     shuffle=hdf5plugin.Blosc.SHUFFLE)) | checksum
    if storage.hdf5_compression == "none":
        return checksum
    return {"compression": storage.hdf5_compression, "shuffle": True} | checksum


class HDF5VideoWriter(VideoWriter):
    def __init__(self, final: Path, spec):
        super().__init__(final, spec)
        self.file = h5py.File(self.tmp, "w", libver="latest")
        self.filter = hdf5_filter(spec.storage)
        self.h264: dict[str, tuple[ChunkCoder, int, dict]] = {}

    def _create(self, name, frame_shape, dtype, chunk, shard):
        coder = h264_coder(self.spec, name, dtype)
        if coder is not None:
            self.file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=h5py.vlen_dtype(np.uint8))
            doc = {"shape": [0, *frame_shape], "dtype": np.dtype(dtype).name, "chunk_frames": chunk,
                   "codec": coder.to_dict()}
            self.h264[name] = (coder, chunk, doc)
            return
        st = self.spec.storage
        if chunk == st.chunk_frames and st.hdf5_chunk_frames:  # per-frame arrays: reads decode no unread frames
            chunk = st.hdf5_chunk_frames
        self.file.create_dataset(
            name, shape=(0, *frame_shape), maxshape=(None, *frame_shape), dtype=dtype,
            chunks=(chunk, *frame_shape), **self.filter,
        )

    def _write(self, name, start, block):
        if name in self.h264:  # whole chunks (the base class flushes whole shards), the last one maybe short
            coder, chunk, doc = self.h264[name]
            ds, first = self.file[name], start // chunk
            coded = [np.frombuffer(coder.encode(block[i:i + chunk]), np.uint8) for i in range(0, len(block), chunk)]
            if self.spec.storage.checksums:  # HDF5 filters never see variable-length data (it lives in the heap)
                doc.setdefault("crc32c", []).extend(google_crc32c.value(c.tobytes()) for c in coded)
            ds.resize(first + len(coded), axis=0)
            ds[first:first + len(coded)] = coded
            doc["shape"][0] = start + len(block)
            return
        ds = self.file[name]
        ds.resize(start + len(block), axis=0)
        ds[start:start + len(block)] = block

    def _set_attrs(self, name, attrs):
        self.file[name].attrs["motionssl"] = json.dumps(attrs)

    def _finish(self, meta):
        for name, (_, _, doc) in self.h264.items():
            self.file[name].attrs[H264_ATTR] = json.dumps(doc)
        self.file.attrs["motionssl_video"] = json.dumps(meta)

    def _close(self):
        if self.file.id.valid:
            self.file.close()


class HDF5VideoReader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.file = h5py.File(path, "r")
        except OSError as e:
            raise open_error(Path(path), e) from None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._attrs: dict[str, dict] = {}
        self._h264: dict[str, H264Frames | None] = {}

    def meta(self) -> dict:
        return json.loads(self.file.attrs["motionssl_video"])

    def arrays(self) -> dict[str, tuple[tuple, np.dtype]]:
        out = {}
        for name, ds in self.file.items():
            frames = self.h264_frames(name)
            out[name] = (frames.shape, frames.dtype) if frames is not None else (tuple(ds.shape), ds.dtype)
        return out

    def h264_frames(self, name: str) -> H264Frames | None:
        if name not in self._h264:
            raw = self.array(name).attrs.get(H264_ATTR)
            self._h264[name] = H264Frames(self.array(name), json.loads(raw)) if raw is not None else None
        return self._h264[name]

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
        frames = self.h264_frames(name)
        if frames is not None:
            return frames.read(np.arange(*sel.indices(frames.shape[0])) if isinstance(sel, slice) else sel)
        try:
            return self._read(ds, sel)
        except OSError as e:
            if ds.fletcher32 and "filter returned failure" in str(e):
                raise ChecksumError(f"{self.path}: {name}: a chunk fails its fletcher32 checksum (bytes changed on "
                                    f"disk) or its decompression; run `motionssl verify`") from None
            raise

    def _read(self, ds, sel) -> np.ndarray:
        if isinstance(sel, slice):
            return ds[sel]
        idx, n = np.asarray(sel, np.int64), len(ds)
        if idx.size == 0:
            return ds[0:0]
        if idx.min() < -n or idx.max() >= n:
            raise IndexError(f"frame index out of range for {n} frames: {idx.min()}..{idx.max()}")
        idx = idx % n
        uniq, inverse = np.unique(idx, return_inverse=True)
        # h5py's point and strided selections decode a chunk once per frame (benchmarks/README.md): read
        # runs of chunks as whole slices instead, and pick the frames from them. A slice costs about as much
        # as decoding 64 KiB, so gaps smaller than that (small per-frame arrays: mv, mv_valid) join the run.
        chunk = ds.chunks[0] if ds.chunks else n
        gap_frames = max(1, SLICE_COST_BYTES // max(ds.dtype.itemsize * int(np.prod(ds.shape[1:])), 1))
        gaps = (np.diff(uniq // chunk) - 1) * chunk
        runs = np.split(uniq, np.flatnonzero(gaps >= gap_frames) + 1)
        blocks = []
        for run in runs:
            block = ds[run[0]:run[-1] + 1]
            blocks.append(block if len(block) == len(run) else block[run - run[0]])
        picked = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        return picked if np.array_equal(uniq, idx) else picked[inverse.ravel()]

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


def open_error(path: Path, e: OSError):
    """A StoreError that says why an HDF5 video file will not open, and what to do."""
    from motionssl.stores import StoreError

    text = str(e)
    redo = "delete it and rerun `motionssl extract` with the same arguments to redo the video"
    if "unable to lock file" in text:
        why = f"it is open for writing in another process (HDF5 file lock); stop that process, or {redo}"
    elif "already open for write" in text:
        why = (f"it is marked open for writing (a writer crashed or was killed with it open); clear the mark with "
               f"`h5clear --status {path}` (HDF5 tools), or {redo}")
    elif "truncated file" in text:
        why = f"it is truncated ({text.rsplit('(', 1)[-1].rstrip(')')}); {redo}"
    else:
        why = f"{text.splitlines()[0] if text else type(e).__name__}; {redo}"
    return StoreError(f"cannot open {path}: {why}")


class H264Frames:
    """Frames of an H.264-coded array: one variable-length dataset entry per chunk, decoded on read."""

    def __init__(self, ds: h5py.Dataset, doc: dict):
        self.ds = ds
        self.shape, self.dtype = tuple(doc["shape"]), np.dtype(doc["dtype"])
        self.chunk_t = int(doc["chunk_frames"])
        self.coder = ChunkCoder.from_dict(doc["codec"])
        self.crc32c = doc.get("crc32c")  # per chunk, with spec storage.checksums

    def read(self, indices) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed); each chunk decoded once, up to its last frame asked for."""
        indices = np.asarray(indices, np.int64)
        n = self.shape[0]
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"frame index out of range for {n} frames: {indices.min()}..{indices.max()}")
        indices = indices % max(n, 1)
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        chunks = indices // self.chunk_t
        for chunk in np.unique(chunks):
            rows = np.flatnonzero(chunks == chunk)
            offsets = indices[rows] - chunk * self.chunk_t
            data = self.ds[int(chunk)].tobytes()
            if self.crc32c is not None and google_crc32c.value(data) != self.crc32c[int(chunk)]:
                raise ChecksumError(f"{self.ds.file.filename}: {self.ds.name.lstrip('/')}: chunk {int(chunk)}: "
                                    f"checksum mismatch (bytes changed on disk); run `motionssl verify`")
            out[rows] = self.coder.decode(data, (self.chunk_t, *self.shape[1:]), int(offsets.max()) + 1)[offsets]
        return out
