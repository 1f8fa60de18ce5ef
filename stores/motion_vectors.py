"""Turn FFmpeg's exported motion vectors into a dense forward-motion grid.

FFmpeg exports one record per predicted block and reference direction: the block's centre
`dst` in the current frame, its size `w x h`, and `motion / motion_scale` such that
`src = dst + motion / motion_scale` is where the block comes from in the reference frame.
`source < 0` means the reference lies in the past, `source > 0` in the future (B-frames).

Every record is converted to one convention (data_specs/README.md): the displacement of content
from frame t-1 to frame t, in stored pixels, assuming constant motion across the reference gap:
  past reference d frames back:  (dst - src) / d
  future reference d frames on:  (src - dst) / d
A block predicted from both directions contributes both estimates with weight 1/2 each, so its
value is their mean. Blocks are rasterised over their w x h area on a grid of 8x8 (else 4x4)
coded pixels, then pooled onto cells of `cell x cell` stored pixels, weighted by overlap area.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

# Decoders whose FFmpeg implementation honours flags2=+export_mvs.
CODECS_WITH_MV_EXPORT = frozenset({
    "h264", "mpeg4", "mpeg1video", "mpeg2video", "h261", "h263", "h263p", "h263i", "flv1",
    "msmpeg4v1", "msmpeg4v2", "msmpeg4v3", "msmpeg4", "wmv1", "wmv2", "rv10", "rv20",
})
# FFmpeg's MPEG-4 Part 2 decoder exports zero vectors for direct-mode B-frame blocks, which are
# most of them: B-frames of these codecs are stored as invalid rather than as false "no motion".
CODECS_WITHOUT_B_FRAME_MVS = frozenset({"mpeg4"})


# Blocks are rasterised on a grid of 8x8 coded pixels when all their edges are multiples of 8, as
# for everything FFmpeg exports (16x16, 16x8, 8x16, 8x8; H.264 sub-8x8 partitions come as 8x8),
# else of 4x4 (H.264's smallest partition), onto which odd blocks are snapped outwards.
COARSE_UNIT, FINE_UNIT = 8, 4


def _cell_edges(size: int, cell: int) -> np.ndarray:
    return np.minimum(np.arange(0, size + cell, cell, dtype=np.float64), size)[: -(-size // cell) + 1]


@lru_cache(maxsize=64)
def _resampler(coded: int, stored: int, cell: int, unit: int) -> np.ndarray:
    """(n_units, n_cells) overlap, in stored pixels, of each `unit`-px coded unit with each cell."""
    n_units = -(-coded // unit)
    scale = stored / coded
    lo = np.arange(n_units) * unit * scale
    hi = np.minimum((np.arange(n_units) + 1) * unit, coded) * scale
    edges = _cell_edges(stored, cell)
    ov = np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1])
    return np.clip(ov, 0.0, None).astype(np.float32)


@lru_cache(maxsize=64)
def _cell_area(width: int, height: int, cell: int) -> np.ndarray:
    return np.outer(np.diff(_cell_edges(height, cell)), np.diff(_cell_edges(width, cell))).astype(np.float32)


def _paint(x0, x1, y0, y1, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(1 + k, h, w): per unit, whether any block covers it, and the mean of `values` (k, n) over
    the blocks covering it. Blocks span a few units each, so they are painted unit by unit."""
    h, w = shape
    # Every block enumerates the largest block's offsets; those beyond its own extent are dropped.
    oy, ox = np.arange((y1 - y0).max())[:, None, None], np.arange((x1 - x0).max())[:, None]
    inside = ((oy < y1 - y0) & (ox < x1 - x0)).ravel()
    index = ((y0 + oy) * w + (x0 + ox)).ravel()[inside]
    block = np.flatnonzero(inside) % len(x0)
    count = np.bincount(index, minlength=h * w)
    covered = count > 0
    inverse = covered / np.maximum(count, 1)
    out = np.empty((1 + len(values), h * w), np.float32)
    out[0] = covered
    for k, v in enumerate(values, start=1):
        np.multiply(np.bincount(index, v[block], minlength=h * w), inverse, out=out[k])
    return out.reshape(-1, h, w)


def pool_motion_vectors(
    records: np.ndarray | None,
    *,
    src_size: tuple[int, int],
    dst_size: tuple[int, int],
    cell: int,
    past_gap: int | None,
    future_gap: int | None,
    min_coverage: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool one frame's exported vectors into (mv (Gh, Gw, 2) float32, valid (Gh, Gw) bool).

    src_size/dst_size are (width, height) of the coded and stored frames. past_gap/future_gap are
    the distances in frames to the reference on each side (None: no reference on that side).
    A cell is valid when inter-predicted blocks cover at least `min_coverage` of it; intra
    blocks export nothing, so they leave cells invalid (value 0).
    """
    (sw, sh), (dw, dh) = src_size, dst_size
    area = _cell_area(dw, dh, cell)
    empty = np.zeros(area.shape + (2,), np.float32), np.zeros(area.shape, bool)
    if records is None or len(records) == 0:
        return empty
    source = records["source"]
    keep = ((source < 0) & (past_gap is not None)) | ((source > 0) & (future_gap is not None))
    r = records[keep] if not keep.all() else records
    if len(r) == 0:
        return empty

    # Forward per-frame displacement of each record, in stored pixels (float64: bincount's own type).
    gap = np.where(r["source"] < 0, past_gap or 1, -(future_gap or 1)) * r["motion_scale"].astype(np.float64)
    fwd = np.array([r["motion_x"], r["motion_y"]], np.float64)
    fwd /= gap
    fwd *= [[-dw / sw], [-dh / sh]]

    # Block rectangles on the coarsest unit grid their edges allow, clipped to the frame.
    hw, hh = r["w"] >> 1, r["h"] >> 1
    left, top = r["dst_x"].astype(np.intp) - hw, r["dst_y"].astype(np.intp) - hh
    edges = np.bitwise_or.reduce(left | top | (hw << 1) | (hh << 1))
    unit = FINE_UNIT if edges % COARSE_UNIT else COARSE_UNIT
    ry, rx = _resampler(sh, dh, cell, unit), _resampler(sw, dw, cell, unit)
    uh, uw = ry.shape[0], rx.shape[0]
    x0, x1 = np.clip([left // unit, -(-(left + 2 * hw) // unit)], 0, uw)
    y0, y1 = np.clip([top // unit, -(-(top + 2 * hh) // unit)], 0, uh)
    # Per unit: covered, and the mean of the records over it (a bi-predicted block has two
    # records over the same units, so its value is the mean of its two estimates).
    units = _paint(x0, x1, y0, y1, fwd, (uh, uw))

    # Area-weighted pooling of the covered units onto cells: R_y^T U R_x.
    pooled = ry.T @ units @ rx
    valid = pooled[0] >= min_coverage * area - 1e-4
    mv = np.zeros(area.shape + (2,), np.float32)
    np.divide(np.moveaxis(pooled[1:], 0, -1), pooled[0, ..., None], out=mv, where=valid[..., None])
    return mv, valid


class ReferenceGaps:
    """Distance in frames from a displayed frame to its nearest reference on each side.

    FFmpeg does not export which frame a vector refers to. We take the nearest frame on that
    side, in presentation order, that was decoded before the current one: exact for one
    reference per direction (CoViAR-style MPEG-4, x264 with ref=1, B-pyramids included), an
    approximation when an encoder picks an older reference among several.
    """

    def __init__(self, frame_duration: float, window: int = 64):
        self.frame_duration = frame_duration
        self.window = window
        self._pts: list[int] = []  # packet pts in decode order, last `window` only

    def demuxed(self, pts: int | None) -> None:
        if pts is None:
            return
        self._pts.append(pts)
        if len(self._pts) > 4 * self.window:
            del self._pts[: -self.window]

    def gaps(self, pts: int | None) -> tuple[int, int]:
        if pts is None or pts not in self._pts:
            return 1, 1
        earlier = self._pts[: self._pts.index(pts)][-self.window:]
        before = [p for p in earlier if p < pts]
        after = [p for p in earlier if p > pts]
        # No earlier-decoded frame on a side: a well-formed stream has no vectors for that side,
        # while broken timestamps (all equal, say) must not drop every vector: assume 1 frame.
        past = self._frames(pts - max(before)) if before else 1
        future = self._frames(min(after) - pts) if after else 1
        return past, future

    def _frames(self, delta: int) -> int:
        return max(1, int(round(delta / self.frame_duration)))
