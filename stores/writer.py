"""Writing one video: buffered appends along time, then an atomic rename into place (on object storage: an
upload and a commit record, `remote.py`)."""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from motionssl.data_specs import Spec
from motionssl.stores.layout import temp_path


class VideoWriter:
    """Base for one video's writer. Subclasses create arrays and write aligned blocks.

    Appends are buffered to whole shards, so every shard (zarr) or chunk run (hdf5) is written
    once. Nothing is visible under the video's final name until `commit`.
    """

    def __init__(self, final: Path, spec: Spec):
        self.final = final
        self.tmp = temp_path(final)
        self.spec = spec
        self._buf: dict[str, list[np.ndarray]] = {}
        self._flush_at: dict[str, int] = {}
        self._written: dict[str, int] = {}
        self._ndim: dict[str, int] = {}
        final.parent.mkdir(parents=True, exist_ok=True)

    # -- subclass hooks
    def _create(self, name: str, frame_shape: tuple, dtype, chunk: int, shard: int) -> None: ...
    def _write(self, name: str, start: int, block: np.ndarray) -> None: ...
    def _set_attrs(self, name: str, attrs: dict) -> None: ...
    def _finish(self, meta: dict) -> None: ...
    def _close(self) -> None: ...

    def add_array(self, name: str, frame_shape: tuple, dtype, *, chunk: int | None = None,
                  shard: int | None = None, attrs: dict | None = None) -> None:
        """Declare an array of shape (T, *frame_shape), chunked along time (spec defaults).
        `attrs` are stored with the array (e.g. how to dequantise it)."""
        st = self.spec.storage
        chunk, shard = chunk or st.chunk_frames, shard or st.shard_frames
        self._create(name, tuple(frame_shape), np.dtype(dtype), chunk, shard)
        if attrs:
            self._set_attrs(name, attrs)
        self._buf[name] = []
        self._flush_at[name] = max(shard, chunk)  # each shard (or chunk) written once
        self._written[name] = 0
        self._ndim[name] = 1 + len(frame_shape)

    def append(self, name: str, item: np.ndarray) -> None:
        """Append one frame (shape frame_shape) to `name`."""
        buf = self._buf[name]
        buf.append(item)
        if len(buf) >= self._flush_at[name]:
            self._flush(name)

    def _flush(self, name: str) -> None:
        buf = self._buf[name]
        if buf:
            block = np.stack(buf)
            self._write(name, self._written[name], block)
            self._written[name] += len(block)
            buf.clear()

    def commit(self, meta: dict) -> dict:
        """Write `meta`, with `arrays` added ({name: {frames, shard, ndim}}: what the start-up check needs to find
        every shard file without reading any array's metadata), and publish the video; returns that meta."""
        for name in self._buf:
            self._flush(name)
        meta = {**meta, "arrays": {name: {"frames": n, "shard": self._flush_at[name], "ndim": self._ndim[name]}
                                   for name, n in self._written.items()}}
        self._finish(meta)
        self._close()
        self._publish()
        return meta

    def _publish(self) -> None:
        """Make the finished temporary the video, atomically: fsync it, then rename it into place."""
        _fsync_tree(self.tmp)
        if self.final.exists():  # --overwrite: move the old one aside, never leave neither in place
            old = temp_path(self.final)
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            _remove(old)
        else:
            os.replace(self.tmp, self.final)

    def abort(self) -> None:
        try:
            self._close()
        finally:
            _remove(self.tmp)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _fsync_tree(path: Path) -> None:
    """fsync every file under `path`, concurrently: ext4 then commits them in shared journal
    transactions instead of one each (benchmarks/README.md, "Figures moved out of docstrings")."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        list(pool.map(_fsync, files))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
