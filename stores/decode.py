"""One decoding pass over a video with PyAV: stored-size RGB, frame types, pts and motion vectors."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from motionssl.stores.motion_vectors import (
    CODECS_WITH_MV_EXPORT, CODECS_WITHOUT_B_FRAME_MVS, ReferenceGaps, pool_motion_vectors,
)

PICT_TYPES = {0: "?", 1: "I", 2: "P", 3: "B", 4: "S", 5: "i", 6: "p", 7: "b"}


class BadVideo(Exception):
    """This video cannot be extracted; the message is the one-line reason for the report."""


@dataclass(frozen=True)
class Probe:
    codec: str
    width: int
    height: int
    fps: float
    frames_declared: int
    has_mv_export: bool


@dataclass
class Frame:
    index: int
    pts: float
    frame_type: str
    rgb: np.ndarray | None
    mv: np.ndarray | None
    mv_valid: np.ndarray | None
    rotation: int = 0


def open_video(path: str | Path, *, max_pixels: int) -> tuple[av.container.InputContainer, Probe]:
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise BadVideo("empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise BadVideo(f"cannot open as video ({e.strerror or type(e).__name__}): not a video, truncated or corrupt") from None
    if not container.streams.video:
        container.close()
        raise BadVideo("no video stream in file")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    w, h = ctx.width, ctx.height
    if w <= 0 or h <= 0:
        container.close()
        raise BadVideo(f"video stream has no frame size ({w}x{h})")
    if w * h > max_pixels:
        container.close()
        raise BadVideo(f"frame size {w}x{h} exceeds decode.max_pixels={max_pixels}; raise it in the spec to allow")
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    probe = Probe(
        codec=ctx.name, width=w, height=h, fps=float(rate), frames_declared=int(stream.frames or 0),
        has_mv_export=ctx.name in CODECS_WITH_MV_EXPORT,
    )
    return container, probe


def decode_frames(
    container: av.container.InputContainer,
    probe: Probe,
    *,
    size: tuple[int, int],
    mv_cell: int | None,
    rgb: bool = True,
) -> Iterator[Frame]:
    """Yield frames in presentation order, RGB at `size` = (w, h) (None when `rgb` is False); motion vectors
    when mv_cell is set."""
    stream = container.streams.video[0]
    stream.thread_count = 1  # one worker process = one core; parallelism comes from Dask
    want_mv = mv_cell is not None and probe.has_mv_export
    if want_mv:
        stream.codec_context.options = {"flags2": "+export_mvs"}
    tb = stream.time_base or Fraction(1, 1)
    frame_ticks = float(1 / (Fraction(probe.fps).limit_denominator(100000) * tb)) if probe.fps > 0 else 1.0
    gaps = ReferenceGaps(frame_ticks)
    # One reformatter for the whole video keeps its swscale context: `frame.to_ndarray(width=...)`
    # builds a new one per frame, which cost 0.2 ms/frame (same pixels either way).
    reformatter = VideoReformatter() if rgb else None
    index = 0
    try:
        for packet in container.demux(stream):
            gaps.demuxed(packet.pts)
            for frame in packet.decode():
                yield _convert(frame, index, probe, size, mv_cell if want_mv else None, gaps, tb, reformatter)
                index += 1
    except av.error.FFmpegError as e:
        raise BadVideo(f"truncated or corrupt: decoding failed after {index} frames ({e.strerror or type(e).__name__})") from None


def _convert(frame, index, probe, size, mv_cell, gaps, tb, reformatter) -> Frame:
    rgb = None if reformatter is None else reformatter.reformat(
        frame, width=size[0], height=size[1], format="rgb24", interpolation="AREA", threads=1).to_ndarray()
    ftype = PICT_TYPES.get(int(frame.pict_type), "?")
    mv = valid = None
    if mv_cell is not None:
        side = frame.side_data.get("MOTION_VECTORS")
        records = side.to_ndarray() if side is not None else None
        if ftype == "B" and probe.codec in CODECS_WITHOUT_B_FRAME_MVS:
            records = None
        past, future = gaps.gaps(frame.pts)
        mv, valid = pool_motion_vectors(
            records, src_size=(probe.width, probe.height), dst_size=size, cell=mv_cell,
            past_gap=past, future_gap=future,
        )
    pts = float(frame.pts * tb) if frame.pts is not None else index / max(probe.fps, 1e-6)
    return Frame(index, pts, ftype, rgb, mv, valid, int(getattr(frame, "rotation", 0) or 0))


def limit_threads() -> None:
    """One core per decoder process: Blosc compresses in the calling thread (by default it adds a
    thread per core from the main thread, which only contends here). OpenCV, BLAS, OpenMP and torch
    are pinned through OPENCV_FOR_THREADS_NUM, OMP_NUM_THREADS & co., set before the process
    starts (isolation.py), so that specs without flow never import OpenCV."""
    import numcodecs.blosc

    numcodecs.blosc.use_threads = False
