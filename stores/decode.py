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


class Truncated(BadVideo):
    """The decoder or demuxer says the video is damaged after `frames` good frames (all of them yielded)."""

    def __init__(self, message: str, *, frames: int):
        super().__init__(message)
        self.frames = frames


@dataclass(frozen=True)
class Probe:
    codec: str
    width: int
    height: int
    fps: float
    frames_declared: int  # the container's count: a hint (AVI counts its empty filler chunks), never a verdict
    has_mv_export: bool
    file_bytes: int = 0
    cut: str | None = None  # how the file's own structure says it is cut short (container_cut)


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
    if ctx is None:  # a stream FFmpeg has no decoder for (or whose codec id is damaged)
        container.close()
        raise BadVideo("no decoder for the video stream (an unknown or damaged codec id)")
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
        has_mv_export=ctx.name in CODECS_WITH_MV_EXPORT, file_bytes=size, cut=container_cut(path, size),
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
    damage = None
    try:
        for packet in container.demux(stream):
            # A packet cut short: flagged by the demuxer (AVI, MP4), or, in a file whose structure says it is cut,
            # the one that reaches the end of the file (Matroska truncates it without a flag).
            if packet.is_corrupt or (probe.cut and packet.size and packet.pos is not None
                                     and packet.pos + packet.size >= probe.file_bytes):
                damage = f"a packet is cut short or corrupt (at byte {packet.pos})"
                break
            gaps.demuxed(packet.pts)
            for frame in packet.decode():
                yield _convert(frame, index, probe, size, mv_cell if want_mv else None, gaps, tb, reformatter)
                index += 1
        if damage is not None:  # the frames the decoder holds back (reordering) came from whole packets
            for frame in stream.decode(None):
                yield _convert(frame, index, probe, size, mv_cell if want_mv else None, gaps, tb, reformatter)
                index += 1
    except av.error.FFmpegError as e:
        damage = f"decoding failed ({e.strerror or type(e).__name__})"
    if damage is not None or probe.cut is not None:
        where = f"after {index} good frames" if index else "before any good frame"
        raise Truncated(f"truncated or corrupt {where}: {damage or probe.cut}", frames=index)


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


# Top-level elements whose sizes say where a file ends: RIFF chunks (AVI), ISO-BMFF boxes (MP4, MOV), the
# Matroska segment. A file shorter than that was cut; the demuxers themselves may stop silently there.
MP4_TOP = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"sidx", b"moof",
           b"mfra", b"meta", b"pdin", b"prft", b"emsg"}
MAX_ELEMENTS = 4096  # a walk over more top-level elements stops (a fuzzed or odd file): no claim


def container_cut(path: Path, size: int) -> str | None:
    """How the file's top-level structure says it is cut short, or None (sound, or not a structure known here)."""
    with open(path, "rb") as f:
        head = f.read(256)
        if head[:4] == b"RIFF":
            return _riff_cut(f, size)
        if head[4:8] in MP4_TOP:
            return _mp4_cut(f, size)
        if head[:4] == b"\x1aE\xdf\xa3":
            return _matroska_cut(head, size)
    return None


def _riff_cut(f, size: int) -> str | None:
    offset = 0
    for _ in range(MAX_ELEMENTS):  # RIFF, then RIFF AVIX extensions of files over 1 GB
        f.seek(offset)
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF":
            return None
        end = offset + 8 + int.from_bytes(head[4:8], "little")
        if end > size:
            return f"the file ends at byte {size} but its RIFF {head[8:12].decode('latin-1')!r} chunk runs to {end}"
        offset = end + (end & 1)
    return None


def _mp4_cut(f, size: int) -> str | None:
    offset = 0
    for _ in range(MAX_ELEMENTS):
        if offset >= size:
            return None
        f.seek(offset)
        head = f.read(16)
        kind = head[4:8]
        if len(head) < 8 or not all(32 <= c < 127 for c in kind):
            return None  # trailing bytes that are no box: the demuxer judges them
        length = int.from_bytes(head[:4], "big")
        if length == 1:
            if len(head) < 16:
                return None
            length = int.from_bytes(head[8:16], "big")
        elif length == 0:  # runs to the end of the file, by definition
            return None
        if length < 8:
            return None
        if offset + length > size:
            return f"the file ends at byte {size} but its MP4 box {kind.decode()!r} runs to {offset + length}"
        offset += length
    return None


def _ebml_vint(buf: bytes, at: int) -> tuple[int, int, bool] | None:
    """(value, bytes used, all ones i.e. 'unknown size') of the EBML variable-length integer at `at`."""
    if at >= len(buf) or buf[at] == 0:
        return None
    n = 9 - buf[at].bit_length()
    if at + n > len(buf):
        return None
    value = buf[at] & (0xFF >> n)
    for b in buf[at + 1:at + n]:
        value = (value << 8) | b
    return value, n, value == (1 << (7 * n)) - 1


def _matroska_cut(head: bytes, size: int) -> str | None:
    header = _ebml_vint(head, 4)  # EBML header: id 1A45DFA3, size, body
    if header is None:
        return None
    at = 4 + header[1] + header[0]
    if head[at:at + 4] != b"\x18\x53\x80\x67":  # the Segment
        return None
    seg = _ebml_vint(head, at + 4)
    if seg is None or seg[2]:  # unknown size (a live stream): no claim
        return None
    end = at + 4 + seg[1] + seg[0]
    return f"the file ends at byte {size} but its Matroska segment runs to {end}" if end > size else None
