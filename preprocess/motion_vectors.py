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
value is their mean. Blocks are rasterised over their w x h area and pooled onto cells of
`cell x cell` stored pixels, weighted by overlap area.
"""
from __future__ import annotations

import numpy as np

# Decoders whose FFmpeg implementation honours flags2=+export_mvs.
CODECS_WITH_MV_EXPORT = frozenset({
    "h264", "mpeg4", "mpeg1video", "mpeg2video", "h261", "h263", "h263p", "h263i", "flv1",
    "msmpeg4v1", "msmpeg4v2", "msmpeg4v3", "msmpeg4", "wmv1", "wmv2", "rv10", "rv20",
})
# FFmpeg's MPEG-4 Part 2 decoder exports zero vectors for direct-mode B-frame blocks, which are
# most of them: B-frames of these codecs are stored as invalid rather than as false "no motion".
CODECS_WITHOUT_B_FRAME_MVS = frozenset({"mpeg4"})


def _cell_edges(size: int, cell: int) -> np.ndarray:
    return np.minimum(np.arange(0, size + cell, cell, dtype=np.float32), size)[: -(-size // cell) + 1]


def _overlap(lo: np.ndarray, hi: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(n_blocks, n_cells) length of [lo, hi) inside each [edges[j], edges[j+1])."""
    ov = np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1])
    return np.clip(ov, 0.0, None)


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
    ex, ey = _cell_edges(dw, cell), _cell_edges(dh, cell)
    grid = (len(ey) - 1, len(ex) - 1)
    empty = np.zeros(grid + (2,), np.float32), np.zeros(grid, bool)
    if records is None or len(records) == 0:
        return empty

    source = records["source"]
    keep = ((source < 0) & (past_gap is not None)) | ((source > 0) & (future_gap is not None))
    r = records[keep]
    if len(r) == 0:
        return empty
    source = r["source"]
    scale = r["motion_scale"].astype(np.float32)
    # Displacement dst - src in coded pixels, then forward per frame.
    fwd_x = -r["motion_x"].astype(np.float32) / scale
    fwd_y = -r["motion_y"].astype(np.float32) / scale
    gap = np.where(source < 0, past_gap or 1, -(future_gap or 1)).astype(np.float32)
    fwd_x /= gap
    fwd_y /= gap
    sx, sy = dw / sw, dh / sh
    fwd_x *= sx
    fwd_y *= sy

    # Bi-predicted blocks appear once per direction: weight each record 1/(records for that block).
    key = np.stack([r["dst_x"], r["dst_y"], r["w"], r["h"]], axis=1).astype(np.int64)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse.ravel()].astype(np.float32)

    cx = r["dst_x"].astype(np.float32)
    cy = r["dst_y"].astype(np.float32)
    hw = r["w"].astype(np.float32) / 2
    hh = r["h"].astype(np.float32) / 2
    ox = _overlap((cx - hw) * sx, (cx + hw) * sx, ex)
    oy = _overlap((cy - hh) * sy, (cy + hh) * sy, ey) * weight[:, None]

    stacked = np.concatenate([oy, oy * fwd_x[:, None], oy * fwd_y[:, None]], axis=1)  # (n, 3*Gh)
    pooled = (stacked.T @ ox).reshape(3, grid[0], grid[1])
    coverage, sum_x, sum_y = pooled
    area = np.outer(np.diff(ey), np.diff(ex))
    valid = coverage >= min_coverage * area
    with np.errstate(invalid="ignore", divide="ignore"):
        mv = np.stack([sum_x / coverage, sum_y / coverage], axis=-1)
    mv[~valid] = 0.0
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

    def gaps(self, pts: int | None) -> tuple[int | None, int | None]:
        if pts is None or pts not in self._pts:
            return 1, 1
        earlier = self._pts[: self._pts.index(pts)][-self.window:]
        before = [p for p in earlier if p < pts]
        after = [p for p in earlier if p > pts]
        past = self._frames(pts - max(before)) if before else None
        future = self._frames(min(after) - pts) if after else None
        return past, future

    def _frames(self, delta: int) -> int:
        return max(1, int(round(delta / self.frame_duration)))
