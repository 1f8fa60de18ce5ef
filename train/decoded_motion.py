"""Motion vectors decoded from the original videos while loading: MVCGC's storage-light mode (`--mv-source decode`).

`DecodedMotionStore` wraps a store and serves `mv` and `mv_valid` by decoding each video's `source` file (recorded
in its meta by `extract`) with the extractor's own decoder (`stores.decode`: PyAV, FFmpeg's exported vectors,
pooled onto the spec's grid at the stored size), so the values equal the stored ones exactly; every other array
comes from the store. The store need not hold `mv` at all: only the videos must still be where `extract` read
them. A video is decoded from its first frame up to the last frame asked for (vectors need their references), once
per sample: the last video's vectors stay cached in the worker until a later frame or another video is asked for.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from motionssl.data_specs import mv_grid
from motionssl.stores.decode import BadVideo, decode_frames, open_video
from motionssl.stores import Store, StoreError

DECODED = ("mv", "mv_valid")


class DecodedMotionStore:
    """The reader API of `store` (spec, videos, meta, read, read_at), with mv and mv_valid decoded from source."""

    def __init__(self, store: Store):
        self.store, self.path = store, store.path
        modalities = store.spec.modalities + (() if "mv" in store.spec.modalities else ("mv",))
        self.spec = dataclasses.replace(store.spec, modalities=modalities)
        for vid in store.videos:
            meta = store.meta(vid)
            if meta.get("reencoded"):
                raise StoreError(f"video {vid} was extracted with --reencode: its motion vectors come from the "
                                 f"re-encoded stream, not from {meta.get('source')}; use --mv-source store")
            if not Path(meta.get("source", "")).is_file():
                raise StoreError(f"video {vid}: its source {meta.get('source')!r} is not a file; --mv-source decode "
                                 f"reads the videos `extract` read, or use --mv-source store")
        self._cached: tuple[str, np.ndarray, np.ndarray] | None = None

    @property
    def videos(self) -> list[str]:
        return self.store.videos

    def meta(self, video_id: str) -> dict:
        return self.store.meta(video_id)

    def read(self, video_id: str, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        if name in DECODED:
            return self.read_at(video_id, name, np.arange(self.meta(video_id)["frames"])[start:stop])
        return self.store.read(video_id, name, start, stop)

    def read_arrays(self, video_id: str, names, indices) -> dict[str, np.ndarray]:
        return {name: self.read_at(video_id, name, indices) for name in names}

    def read_at(self, video_id: str, name: str, indices) -> np.ndarray:
        if name not in DECODED:
            return self.store.read_at(video_id, name, indices)
        indices = np.asarray(indices, dtype=np.int64)
        mv, valid = self._decoded(video_id, int(indices.max(initial=0)))
        return (mv if name == "mv" else valid)[indices]

    def _decoded(self, video_id: str, last: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cached is None or self._cached[0] != video_id or len(self._cached[1]) <= last:
            self._cached = (video_id, *decode_motion(self.meta(video_id), cell=self.spec.mv.cell,
                                                     max_pixels=self.spec.decode.max_pixels, last=last))
        return self._cached[1], self._cached[2]


def decode_motion(meta: dict, *, cell: int, max_pixels: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """(mv (n, Gh, Gw, 2) float16, mv_valid (n, Gh, Gw) bool) of frames 0 .. last of the video `meta` describes,
    as `extract` stores them (I-frames and codecs without vector export: all invalid, zero)."""
    size = (meta["stored_width"], meta["stored_height"])
    gw, gh = mv_grid(size[0], size[1], cell)
    n = min(last + 1, meta["frames"])
    mv, valid = np.zeros((n, gh, gw, 2), np.float16), np.zeros((n, gh, gw), bool)
    try:
        container, probe = open_video(meta["source"], max_pixels=max_pixels)
        try:
            for frame in decode_frames(container, probe, size=size, mv_cell=cell, rgb=False):
                if frame.mv is not None and frame.frame_type != "I":  # the store's convention (video_job)
                    mv[frame.index], valid[frame.index] = frame.mv, frame.mv_valid
                if frame.index + 1 >= n:  # a partial video's source is damaged past its last stored frame
                    break
        finally:
            container.close()
    except BadVideo as e:
        raise StoreError(f"video {meta['id']}: cannot decode {meta['source']}: {e}") from None
    return mv, valid
