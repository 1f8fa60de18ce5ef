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
value is their mean. Blocks are rasterised over their w x h area on a grid of 4x4 coded pixels,
then pooled onto cells of `cell x cell` stored pixels, weighted by overlap area.
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


UNIT = 4  # coded pixels: the smallest partition FFmpeg exports (H.264 4x4), so blocks tile units exactly


def _cell_edges(size: int, cell: int) -> np.ndarray:
    return np.minimum(np.arange(0, size + cell, cell, dtype=np.float64), size)[: -(-size // cell) + 1]


@lru_cache(maxsize=64)
def _resampler(coded: int, stored: int, cell: int) -> np.ndarray:
    """(n_units, n_cells) overlap, in stored pixels, of each 4-px coded unit with each cell."""
    n_units = -(-coded // UNIT)
    scale = stored / coded
    lo = np.arange(n_units) * UNIT * scale
    hi = np.minimum((np.arange(n_units) + 1) * UNIT, coded) * scale
    edges = _cell_edges(stored, cell)
    ov = np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1])
    return np.clip(ov, 0.0, None).astype(np.float32)


def _rasterise(x0, x1, y0, y1, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(k, uh, uw): sum of `values` (k, n) over each block's unit rectangle, via a difference image."""
    uh, uw = shape
    stride, size = uw + 1, (uh + 1) * (uw + 1)
    index = np.concatenate([y0 * stride + x0, y0 * stride + x1, y1 * stride + x0, y1 * stride + x1])
    sign = np.repeat(np.array([1.0, -1.0, -1.0, 1.0], np.float32), len(x0))
    diff = np.empty((len(values), uh + 1, uw + 1), np.float32)
    for i, v in enumerate(values):
        diff[i] = np.bincount(index, sign * np.tile(v, 4), minlength=size).reshape(uh + 1, uw + 1)
    np.cumsum(diff, axis=1, out=diff)
    np.cumsum(diff, axis=2, out=diff)
    return diff[:, :uh, :uw]


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
    ry, rx = _resampler(sh, dh, cell), _resampler(sw, dw, cell)
    grid = (ry.shape[1], rx.shape[1])
    empty = np.zeros(grid + (2,), np.float32), np.zeros(grid, bool)
    if records is None or len(records) == 0:
        return empty
    source = records["source"]
    keep = ((source < 0) & (past_gap is not None)) | ((source > 0) & (future_gap is not None))
    r = records[keep] if not keep.all() else records
    if len(r) == 0:
        return empty

    # Forward per-frame displacement of each record, in stored pixels.
    gap = np.where(r["source"] < 0, past_gap or 1, -(future_gap or 1)).astype(np.float64)
    scale = r["motion_scale"].astype(np.float64) * gap
    fwd_x = (-r["motion_x"] / scale * (dw / sw)).astype(np.float32)
    fwd_y = (-r["motion_y"] / scale * (dh / sh)).astype(np.float32)

    # Per 4-px unit: number of records covering it and their sum. A bi-predicted block has two
    # records over the same units, so sum / count is the mean of its two estimates.
    uh, uw = ry.shape[0], rx.shape[0]
    hw, hh = r["w"].astype(np.int64) // 2, r["h"].astype(np.int64) // 2
    cx, cy = r["dst_x"].astype(np.int64), r["dst_y"].astype(np.int64)
    x0 = np.clip((cx - hw) // UNIT, 0, uw)
    x1 = np.clip(-(-(cx + hw) // UNIT), 0, uw)
    y0 = np.clip((cy - hh) // UNIT, 0, uh)
    y1 = np.clip(-(-(cy + hh) // UNIT), 0, uh)
    count, sum_x, sum_y = _rasterise(x0, x1, y0, y1, np.stack([np.ones_like(fwd_x), fwd_x, fwd_y]), (uh, uw))
    covered = count > 0.5
    safe = np.where(covered, count, 1.0)

    # Area-weighted pooling of the covered units onto cells: R_y^T U R_x.
    ryt = np.ascontiguousarray(ry.T)
    coverage = ryt @ covered.astype(np.float32) @ rx
    sums = np.stack([ryt @ (np.where(covered, s / safe, 0.0)) @ rx for s in (sum_x, sum_y)], axis=-1)
    area = np.outer(_cell_edges(dh, cell)[1:] - _cell_edges(dh, cell)[:-1],
                    _cell_edges(dw, cell)[1:] - _cell_edges(dw, cell)[:-1])
    valid = coverage >= min_coverage * area - 1e-4
    with np.errstate(invalid="ignore", divide="ignore"):
        mv = np.where(valid[..., None], sums / coverage[..., None], 0.0)
    return mv.astype(np.float32), valid


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
