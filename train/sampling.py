"""Which frames a clip reads: pure functions of the video length and a generator.

A clip of `clip_len` frames at `stride` starts at `start` and reads `start + stride * arange(clip_len)`; it
spans `(clip_len - 1) * stride + 1` frames. A video shorter than that span yields the clip starting at 0
with every index past the end clamped to the last frame (the last frame repeats), so any video gives a
clip of the requested shape.
"""
from __future__ import annotations

import numpy as np


def clip_span(clip_len: int, stride: int) -> int:
    """Frames from the first to the last index of a clip, both included."""
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_len and stride must be >= 1, got {clip_len}, {stride}")
    return (clip_len - 1) * stride + 1


def clip_at(start: int, num_frames: int, clip_len: int, stride: int) -> np.ndarray:
    """The indices of the clip starting at `start`, clamped to the last frame."""
    return np.minimum(start + stride * np.arange(clip_len, dtype=np.int64), num_frames - 1)


def last_start(num_frames: int, clip_len: int, stride: int) -> int:
    """The largest start whose clip fits in the video; 0 when none fits."""
    return _last(num_frames, clip_span(clip_len, stride))


def _last(num_frames: int, span: int) -> int:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    return max(num_frames - span, 0)


def random_start(num_frames: int, span: int, rng: np.random.Generator) -> int:
    """A start uniform over every start whose `span` frames fit; 0 when none fits."""
    return int(rng.integers(0, _last(num_frames, span) + 1))


def random_clip(num_frames: int, clip_len: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """(clip_len,) int64 indices; the start is uniform over every start whose clip fits."""
    return clip_at(random_start(num_frames, clip_span(clip_len, stride), rng), num_frames, clip_len, stride)


def evenly_spaced_starts(num_frames: int, span: int, n: int) -> np.ndarray:
    """(n,) int64 starts of `span` frames, spread evenly from 0 to the last start that fits; n = 1: the centre."""
    last = _last(num_frames, span)
    return np.full(n, last // 2, dtype=np.int64) if n == 1 else np.linspace(0, last, n).round().astype(np.int64)


def evenly_spaced_clips(num_frames: int, clip_len: int, stride: int, n: int) -> np.ndarray:
    """(n, clip_len) int64: n clips whose starts spread evenly from the first to the last valid start
    (multi-clip testing). n = 1 gives the centre clip."""
    starts = evenly_spaced_starts(num_frames, clip_span(clip_len, stride), n)
    return np.stack([clip_at(int(s), num_frames, clip_len, stride) for s in starts])


def candidate_starts(num_frames: int, clip_len: int, stride: int, step: int | None = None) -> np.ndarray:
    """Starts, every `step` frames (default: `stride`), of the clips that fit; [0] for a short video.
    Motion-focused sampling scores the clip at each and draws among them."""
    step = stride if step is None else step
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    return np.arange(0, last_start(num_frames, clip_len, stride) + 1, step, dtype=np.int64)
