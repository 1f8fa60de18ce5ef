"""Synthetic videos with known motion, encoded with PyAV: test fixtures, demo input, sanity checks."""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture: block matching locks onto it without ambiguity."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    big = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(big, (5, 5), 1.5)


def translating_frames(n: int, size=(192, 128), velocity=(4, 0), seed: int = 0) -> list[np.ndarray]:
    """Frames whose content moves by `velocity` = (dx, dy) pixels per frame (x right, y down)."""
    w, h = size
    vx, vy = velocity
    margin = max(abs(vx), abs(vy)) * n + 8
    tex = texture(h + 2 * margin, w + 2 * margin, seed)
    frames = []
    for t in range(n):
        x0, y0 = margin - vx * t, margin - vy * t  # window moves against the content
        frames.append(np.ascontiguousarray(tex[y0:y0 + h, x0:x0 + w]))
    return frames


def moving_square_frames(n: int, size=(192, 128), velocity=(3, 0), seed: int = 0) -> list[np.ndarray]:
    """A textured square moving over a static textured background."""
    w, h = size
    bg = texture(h, w, seed)
    fg = texture(48, 48, seed + 1) // 2 + 100
    frames = []
    for t in range(n):
        f = bg.copy()
        x, y = 40 + velocity[0] * t, 40 + velocity[1] * t
        f[y:y + 48, x:x + 48] = fg
        frames.append(f)
    return frames


CODEC_OPTIONS = {
    "x264-nob": ("libx264", {"preset": "medium"}, {"gop_size": 24, "max_b_frames": 0}),
    "x264-b": ("libx264", {"preset": "medium", "x264-params": "b-pyramid=normal:ref=3"},
               {"gop_size": 24, "max_b_frames": 3}),
    "mpeg4": ("mpeg4", {}, {"gop_size": 12, "max_b_frames": 0}),
    "mpeg4-b": ("mpeg4", {}, {"gop_size": 12, "max_b_frames": 2}),
    "x265": ("libx265", {"x265-params": "log-level=none"}, {}),
}


def encode(path: Path, frames: list[np.ndarray], kind: str = "x264-nob", fps: int = 25, faststart=False) -> Path:
    """faststart: MP4 index (moov) at the front, as web videos have it; PyAV writes it last otherwise."""
    codec, options, ctx = CODEC_OPTIONS[kind]
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for k, v in ctx.items():
            setattr(stream.codec_context, k, v)
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def encode_codec(path: Path, frames: list[np.ndarray], codec: str, pix_fmt: str = "yuv420p", *, fps: int = 25,
                 ms_timestamps: bool = False) -> Path:
    """Any encoder FFmpeg has (cinepak, mjpeg, ffv1, ...) into any container its suffix names. ms_timestamps: the
    encoder's time base is 1 ms and frames carry their time in ms, as muxed from variable-rate sources; an AVI
    then fills the gaps with empty chunks and declares 40 frames per second of video, not `fps`."""
    from fractions import Fraction

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if ms_timestamps:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if ms_timestamps:
                frame.pts = round(i * 1000 / fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
