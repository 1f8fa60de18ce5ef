"""In-process re-encoding to the CoViAR/CMD protocol: MPEG-4 Part 2, GOP 12, no B-frames.

Used by `extract --reencode` so videos in codecs without motion-vector export (HEVC, VP9, AV1...)
can still feed the motion-vector methods. Frames are scaled to the stored size while encoding,
so the motion vectors come out at exactly the stored resolution.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from motionssl.data_specs import stored_size
from motionssl.stores.decode import BadVideo, open_video

GOP = 12


def reencode_mpeg4(src: Path, dst: Path, *, short_side: int, max_pixels: int, gop: int = GOP) -> Path:
    container, probe = open_video(src, max_pixels=max_pixels)
    w, h = stored_size(probe.width, probe.height, short_side)
    fps = probe.fps if probe.fps > 0 else 25.0
    out = av.open(str(dst), "w")
    try:
        rate = Fraction(fps).limit_denominator(1001)
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 0
        stream.bit_rate = int(w * h * fps * 0.6)  # high quality: ~0.6 bit/pixel
        n = 0
        try:
            for frame in container.decode(video=0):
                img = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA")
                img.pts, img.time_base = n, 1 / rate  # frame index: keeps every frame
                for packet in stream.encode(img):
                    out.mux(packet)
                n += 1
        except av.error.FFmpegError as e:
            raise BadVideo(f"re-encoding failed after {n} frames ({e.strerror or type(e).__name__})") from None
        for packet in stream.encode(None):
            out.mux(packet)
    finally:
        out.close()
        container.close()
    if n == 0:
        raise BadVideo("no frames could be decoded for re-encoding")
    return dst
