"""H.264 chunk coding: each chunk of frames is one independent H.264 stream, so any chunk decodes alone.

A chunk of n frames (n = `storage.chunk_frames`, 8) is coded with libx264 through PyAV as one closed GOP:
an I-frame then n-1 P-frames, no B-frames, one thread, preset medium, Annex B bytes (SPS/PPS in front).
Two layouts:
- `rgb`: (n, H, W, 3) uint8 frames, converted to yuv444p (swscale, BT.601) and coded at a constant rate
  factor `crf` (High 4:4:4 profile). Lossy: see data_specs/README.md for the measured PSNR.
- `planes`: (n, H, W[, C]) uint8 arrays, their C channels stacked vertically into one (C*H, W) gray
  picture and coded at qp 0: lossless (used for quantised flow).

The chunk bytes are the same for the zarr store (`H264Codec`, a zarr v3 ArrayBytesCodec named
`motionssl.h264`) and the HDF5 store (one variable-length entry per chunk).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

CODEC_NAME = "motionssl.h264"
LAYOUTS = ("rgb", "planes")


def encode_chunk(frames: np.ndarray, *, layout: str, crf: int) -> bytes:
    """One chunk of uint8 frames (n, H, W, ...) as one H.264 stream (Annex B)."""
    if frames.dtype != np.uint8:
        raise TypeError(f"H.264 chunks hold uint8 arrays, got {frames.dtype}")
    pictures = _pictures(frames, layout)
    h, w = pictures.shape[1:3]
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height = w, h
    cc.pix_fmt = "yuv444p" if layout == "rgb" else "gray"
    cc.time_base, cc.framerate = Fraction(1, 25), Fraction(25)
    rate = {"crf": str(crf)} if layout == "rgb" else {"qp": "0"}
    cc.options = {**rate, "preset": "medium", "bf": "0", "g": str(len(frames)), "keyint_min": str(len(frames)),
                  "threads": "1"}
    out = []
    for i, pic in enumerate(pictures):
        frame = av.VideoFrame.from_ndarray(pic, format="rgb24" if layout == "rgb" else "gray")
        if layout == "rgb":
            frame = frame.reformat(format="yuv444p")
        frame.pts = i
        out += [bytes(p) for p in cc.encode(frame)]
    out += [bytes(p) for p in cc.encode(None)]
    return b"".join(out)


def decode_chunk(data: bytes, shape: tuple[int, ...], *, layout: str, frames: int | None = None,
                 threads: int = 1, thread_type: str = "SLICE") -> np.ndarray:
    """The uint8 array of `shape` (n, H, W, ...) coded in `data`. Only the first `frames` frames are
    decoded (P-frames depend on earlier ones only); the rest, and frames a partial chunk never had, are 0.

    threads, thread_type: FFmpeg's decoder threads (0: one per core) and kind (SLICE, FRAME, AUTO). One thread,
    the default, was the fastest per core (benchmarks/README.md, "Flow specs: store layout frontier")."""
    n = shape[0] if frames is None else min(frames, shape[0])
    out = np.zeros(shape, np.uint8)
    cc = av.CodecContext.create("h264", "r")
    cc.thread_count = threads
    if threads != 1:
        cc.thread_type = thread_type
    got = 0
    for packet in cc.parse(data) + cc.parse(None) + [None]:
        for frame in cc.decode(packet):
            if got < n:
                out[got] = _frame_array(frame, shape, layout)
            got += 1
        if got >= n:
            break
    return out


def _pictures(frames: np.ndarray, layout: str) -> np.ndarray:
    if layout == "rgb":
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"layout rgb needs (n, H, W, 3) frames, got {frames.shape}")
        return np.ascontiguousarray(frames)
    if frames.ndim == 3:
        return np.ascontiguousarray(frames)
    n, h, w, c = frames.shape
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2).reshape(n, c * h, w))


def _frame_array(frame: av.VideoFrame, shape: tuple[int, ...], layout: str) -> np.ndarray:
    if layout == "rgb":  # one swscale thread: its automatic count took 3x longer on small frames, same bytes
        return frame.to_ndarray(format="rgb24", threads=1)
    h, w = shape[1:3]
    c = shape[3] if len(shape) == 4 else 1
    # 4:0:0 decodes as gray or as yuv420p with the picture in Y; format="gray" would rescale yuv420p's range
    y = frame.to_ndarray(format="gray") if frame.format.name == "gray" else frame.to_ndarray()[:c * h]
    return y.reshape(c, h, w).transpose(1, 2, 0) if len(shape) == 4 else y


RGB_ARRAYS = ("rgb", "iframes")
FLOW_ARRAYS = ("flow", "boundary", "edges")


def h264_coder(spec, name: str, dtype: np.dtype) -> ChunkCoder | None:
    """The coder of array `name` under `spec.storage`, or None where it is stored with the generic codec."""
    st = spec.storage
    if name in RGB_ARRAYS and st.rgb_codec == "h264":
        return ChunkCoder("rgb", st.rgb_crf)
    if name in FLOW_ARRAYS and st.flow_codec == "h264" and np.dtype(dtype) == np.uint8:
        return ChunkCoder("planes", 0)
    return None


@dataclass(frozen=True)
class ChunkCoder:
    """The per-array coder both backends use: its layout and crf, and the zarr codec entry that names them."""

    layout: str
    crf: int

    def encode(self, frames: np.ndarray) -> bytes:
        return encode_chunk(frames, layout=self.layout, crf=self.crf)

    def decode(self, data: bytes, shape: tuple[int, ...], frames: int | None = None) -> np.ndarray:
        return decode_chunk(data, shape, layout=self.layout, frames=frames)

    def to_dict(self) -> dict:
        return {"name": CODEC_NAME, "configuration": {"layout": self.layout, "crf": self.crf}}

    @classmethod
    def from_dict(cls, d: dict) -> ChunkCoder:
        conf = d.get("configuration", {})
        if d.get("name") != CODEC_NAME or conf.get("layout") not in LAYOUTS:
            raise ValueError(f"not a {CODEC_NAME} codec entry: {d}")
        return cls(layout=conf["layout"], crf=int(conf["crf"]))
