"""What `pretrain`'s start-up check of the store costs, against a full `motionssl verify` of the same store.

    .venv/bin/python benchmarks/bench_faults.py --out bench_out      # ~1 min on 2 cores

Both backends, side by side in one run: --videos videos of --frames frames, each with the arrays of the `compressed`
spec (rgb, iframes, iframe_index, mv, mv_valid, pts, frame_type) at short side 64, written through the real video
writer (chunks of 8 frames, shards of 64). Timed, best of --repeats, page cache warm:
  - `broken_videos` (train/faults.usable_store): metadata and file presence, nothing decoded;
  - `verify_store`: the same plus every array read through.
Writes OUT/bench_faults.json and prints ms per video and the ratio.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import machine_info
from motionssl.data_specs import load_spec, mv_grid, spec_from_dict
from motionssl.stores import init_store, make_writer, open_store, write_index
from motionssl.stores.verify import broken_videos, verify_store


def build(root: Path, fmt: str, videos: int, frames: int) -> Path:
    raw = load_spec("compressed").to_dict()
    spec = spec_from_dict({**raw, "resolution": {"short_side": 64}, "storage": {"chunk_frames": 8,
                                                                                 "shard_frames": 64}})
    init_store(root, fmt, spec)
    h, w = 64, 86
    gh, gw = mv_grid(w, h, spec.mv.cell)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 16, (frames, h, w, 3), dtype=np.uint8) * 16  # compressible, like frames
    mv = rng.normal(0, 2, (frames, gh, gw, 2)).astype(np.float16)
    metas = {}
    for i in range(videos):
        vid = f"class_{i % 10}/v_{i:04d}"
        wr = make_writer(root, fmt, vid, spec)
        write_arrays(wr, rgb, mv)
        meta = {"id": vid, "frames": frames, "spec_digest": spec.digest, "stored_width": w, "stored_height": h}
        metas[vid] = wr.commit(meta)
    write_index(root, metas)
    return root


def write_arrays(wr, rgb: np.ndarray, mv: np.ndarray) -> None:
    """The `compressed` spec's seven arrays of one video, from its frames (T, h, w, 3) and motion vectors."""
    h, w = rgb.shape[1:3]
    gh, gw = mv.shape[1:3]
    for name, shape, dtype, extra in (("pts", (), np.float64, 4096), ("frame_type", (), np.uint8, 4096),
                                      ("rgb", (h, w, 3), np.uint8, None), ("iframes", (h, w, 3), np.uint8, 1),
                                      ("iframe_index", (), np.int32, 4096), ("mv", (gh, gw, 2), np.float16, None),
                                      ("mv_valid", (gh, gw), np.bool_, None)):
        wr.add_array(name, shape, dtype, chunk=extra, shard=extra if extra == 4096 else None)
    for t in range(len(rgb)):
        wr.append("pts", np.float64(t / 25))
        wr.append("frame_type", np.uint8(ord("I" if t % 12 == 0 else "P")))
        wr.append("rgb", rgb[t])
        wr.append("mv", mv[t])
        wr.append("mv_valid", mv[t, ..., 0] > 0)
        if t % 12 == 0:
            wr.append("iframes", rgb[t])
            wr.append("iframe_index", np.int32(t))


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine_info(("numpy", "zarr", "h5py")), "videos": args.videos, "frames": args.frames}
    work = Path(tempfile.mkdtemp(prefix="bench_faults-"))
    try:
        for fmt in ("zarr", "hdf5"):
            store = build(work / f"s.{fmt}", fmt, args.videos, args.frames)
            quick = best(lambda: broken_videos(open_store(store)), args.repeats)
            full = best(lambda: verify_store(open_store(store)), args.repeats)
            assert broken_videos(open_store(store)) == {} and verify_store(open_store(store)) == []
            results[fmt] = {"startup_check_s": quick, "verify_s": full, "startup_check_ms_per_video":
                            1e3 * quick / args.videos, "verify_ms_per_video": 1e3 * full / args.videos,
                            "verify_over_check": full / quick}
            shutil.rmtree(store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (args.out / "bench_faults.json").write_text(json.dumps(results, indent=1))
    print(f"{args.videos} videos x {args.frames} frames, best of {args.repeats}")
    print(f"{'backend':8s} {'start-up check':>16s} {'verify':>12s} {'ratio':>7s}")
    for fmt in ("zarr", "hdf5"):
        r = results[fmt]
        print(f"{fmt:8s} {r['startup_check_ms_per_video']:11.2f} ms/v {r['verify_ms_per_video']:7.2f} ms/v "
              f"{r['verify_over_check']:6.1f}x")


if __name__ == "__main__":
    main()
