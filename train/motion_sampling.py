"""Motion-guided clip and crop choices (MCL §3.2, MoDist §3.1): pure functions of motion maps and a generator.

    frame_motion = per_frame_means(boundary)                      # (T,) MCL's T-motion of every frame
    idx = motion_focused_clip(frame_motion, 16, 2, rng)            # a clip above the video's median motion
    box = motion_crop(boundary[idx].mean(0), rng)                  # a crop covering 80% of its hottest pixels
    starts = eligible_starts(edge_means, 16, 4, threshold=0.2)     # MoDist: clips whose mean flow edge > gamma

`FrameMeans` computes a video's per-frame means once and keeps them (one small float array per video) for the life
of the dataset copy it belongs to, i.e. per DataLoader worker: a value of the store, so samples stay a pure function
of (seed, epoch, index).
"""
from __future__ import annotations

import numpy as np

from motionssl.stores import Store
from motionssl.train.augment import SpatialParams, draw_spatial
from motionssl.train.sampling import candidate_starts, clip_at


def per_frame_means(maps: np.ndarray) -> np.ndarray:
    """(T, H, W) -> (T,) float64: each frame's mean (MCL's T-motion P_s, MoDist's sum_i P_i / K)."""
    return maps.reshape(len(maps), -1).mean(axis=1, dtype=np.float64)


class FrameMeans:
    """Per-frame means of one store array (`boundary` or `edges`) for each video, read whole once per video."""

    def __init__(self, store: Store, name: str):
        self.store, self.name = store, name
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, video_id: str) -> np.ndarray:
        if video_id not in self._cache:
            self._cache[video_id] = per_frame_means(self.store.read(video_id, self.name))
        return self._cache[video_id]


def clip_means(frame_values: np.ndarray, starts: np.ndarray, clip_len: int, stride: int) -> np.ndarray:
    """(len(starts),): the mean of `frame_values` over the frames of the clip at each start (MCL's clip motion,
    the 3D average pool of its ST-motion)."""
    idx = np.minimum(np.asarray(starts, np.int64)[:, None] + stride * np.arange(clip_len), len(frame_values) - 1)
    return frame_values[idx].mean(axis=1)


def motion_focused_clip(frame_motion: np.ndarray, clip_len: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """MCL's temporal sampling: (clip_len,) frame indices of a clip drawn uniformly among the candidate clips (every
    start whose clip fits) whose motion is above the median over the video's candidates. When none is strictly
    above (every candidate alike, e.g. a static video or a single candidate), among all candidates."""
    starts = candidate_starts(len(frame_motion), clip_len, stride, step=1)
    motion = clip_means(frame_motion, starts, clip_len, stride)
    above = starts[motion > np.median(motion)]
    pool = above if len(above) else starts
    return clip_at(int(pool[rng.integers(len(pool))]), len(frame_motion), clip_len, stride)


def motion_crop(s_motion: np.ndarray, rng: np.random.Generator, *, percentile: float = 90.0, cover: float = 0.8,
                tries: int = 100, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                flip_p: float = 0.5) -> SpatialParams:
    """MCL's spatial cropping: a crop of the frame whose S-motion map is `s_motion` (H, W), the same on every frame.

    The hot pixels are those above the map's `percentile`. Boxes are drawn as `draw_spatial` draws them
    (RandomResizedCrop: area in `scale`, aspect in `ratio`), and the first that holds at least `cover` of the hot
    pixels is kept, so the crop is uniform among such boxes. After `tries` misses (hot pixels spread too widely for
    any box of that size), the bounding box of all hot pixels, which holds all of them. Without hot pixels (a map
    that is flat) every box qualifies.
    """
    height, width = s_motion.shape
    hot = s_motion > np.percentile(s_motion, percentile)
    rows, cols = np.nonzero(hot)
    total = len(rows)
    if total:
        table = np.zeros((height + 1, width + 1), np.int64)
        table[1:, 1:] = hot.cumsum(0).cumsum(1)
    for _ in range(tries):
        params = draw_spatial(rng, aspect=width / height, scale=scale, ratio=ratio, flip_p=flip_p)
        if not total:
            return params
        x0, y0, w, h = params.pixel_box(height, width)
        inside = table[y0 + h, x0 + w] - table[y0, x0 + w] - table[y0 + h, x0] + table[y0, x0]
        if inside >= cover * total:
            return params
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return SpatialParams(x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height,
                         flip=bool(rng.random() < flip_p))


def eligible_starts(frame_values: np.ndarray, clip_len: int, stride: int, threshold: float) -> np.ndarray:
    """MoDist's motion thresholding: the starts of the clips whose mean per-frame value (the mean flow edge of its
    frames) exceeds `threshold`; every start when none does (a video without motion still gives a clip)."""
    starts = candidate_starts(len(frame_values), clip_len, stride, step=1)
    keep = starts[clip_means(frame_values, starts, clip_len, stride) > threshold]
    return keep if len(keep) else starts
