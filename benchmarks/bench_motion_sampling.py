"""Data cost of motion-focused sampling (MCL's TA + SA, MoDist's motion clips) per sample, against plain clips.

    .venv/bin/python benchmarks/bench_motion_sampling.py --out bench_out

One store, built once in a temporary folder with the shipped `fast` spec (DIS flow; RGB, flow and the uint8 motion
maps as H.264 chunks, as users get them): --videos videos of --frames frames, 192x128, a textured square sliding over
a textured background (preprocess/motion_classes.py's frames, slower so that they fit). Per sample (0 workers, the
paper's MCL input: 2 views of 16 frames at stride 2, 112 px), in ms:
- `plain`: ClipDataset with rgb + boundary (what MCL reads anyway: boundary is its MAL target);
- `mcl cold`: MotionFocusedClips on the first visit of each video, which reads the video's boundary whole once
  for its per-frame T-motion; `mcl warm`: later visits (T-motion cached in the dataset copy, i.e. per worker);
- `naive`: scoring every candidate clip by reading its own boundary frames, per sample (what the cache avoids);
- `modist cold` / `modist warm`: MoDistClips (2 RGB views of 8 frames at stride 8, 2 edge clips of 16 at stride 4).
The loaders take turns on each (video, epoch) key: epoch 0 is cold, --rounds more are warm. Also the whole-video
boundary read per video and the cache's bytes per video. Writes OUT/bench_motion_sampling.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_methods import extract_in_process
from machine import machine_info


def build_store(dest: Path, *, videos: int, frames: int) -> Path:
    from motionssl.data_specs import load_spec
    from motionssl.preprocess.motion_classes import DIRECTIONS, motion_class_frames
    from motionssl.preprocess.synthetic import encode

    src = dest / "videos"
    src.mkdir()
    directions = list(DIRECTIONS.values())
    for i in range(videos):
        rng = np.random.default_rng(i)
        encode(src / f"v{i:03d}.mp4", motion_class_frames(directions[i % 4], rng, frames=frames, size=(192, 128),
                                                          speed=(0.2, 0.45)))
    return extract_in_process(src, dest / "store.zarr", load_spec("fast"))


def naive_sample(ds, store, key) -> None:
    """MCL's temporal sampling cost when each candidate clip's boundary is read to score it (no per-video
    statistics), then the sample (SA only: its clip is drawn uniformly, which costs the same as any other)."""
    from motionssl.train.sampling import candidate_starts, clip_at

    index = key[0]
    vid = ds.videos[index]
    n = store.meta(vid)["frames"]
    for s in candidate_starts(n, ds.needs.clip_len, ds.needs.stride, step=1):
        store.read_at(vid, "boundary", clip_at(int(s), n, ds.needs.clip_len, ds.needs.stride)).mean()
    ds[key]


def main() -> None:
    from motionssl.stores import open_store
    from motionssl.train.datasets import ClipDataset, Needs
    from motionssl.train.methods.mcl import MotionFocusedClips
    from motionssl.train.methods.modist import MoDistClips

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=4, help="warm visits of every video")
    ap.add_argument("--naive-videos", type=int, default=3, help="videos sampled the naive way (slow)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(("torch", "numpy", "zarr")), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(build_store(Path(tmp), videos=args.videos, frames=args.frames))
        needs = Needs(modalities=("rgb", "boundary"), clip_len=16, stride=2, views=2)
        loaders = {
            "plain": ClipDataset(store, needs, size=112),
            "mcl": MotionFocusedClips(store, needs, size=112, seed=0),
            "modist": MoDistClips(store, Needs(modalities=("rgb",), clip_len=8, stride=8, views=2), size=112, seed=0,
                                  motion_clip_len=16, motion_stride=4, gamma=0.02, sync=False),
        }
        rows: dict[str, list[float]] = {"plain": [], "mcl cold": [], "mcl warm": [], "modist cold": [],
                                        "modist warm": []}
        # Round 0 is each video's first visit (cold); the loaders take turns on every key, in reverse order every
        # other key, so that drift in machine load hits them alike.
        for epoch in range(args.rounds + 1):
            for i in range(len(store.videos)):
                names = list(loaders) if i % 2 == 0 else list(loaders)[::-1]
                for name in names:
                    t0 = time.perf_counter()
                    loaders[name][(i, epoch)]
                    ms = 1e3 * (time.perf_counter() - t0)
                    rows[name if name == "plain" else f"{name} {'cold' if epoch == 0 else 'warm'}"].append(ms)
        naive = MotionFocusedClips(store, needs, size=112, seed=0, temporal=False)  # its TA done the naive way
        rows["naive"] = []
        for i in range(args.naive_videos):
            t0 = time.perf_counter()
            naive_sample(naive, store, (i, 0))
            rows["naive"].append(1e3 * (time.perf_counter() - t0))
        mcl = loaders["mcl"]
        whole = []
        for vid in store.videos:
            t0 = time.perf_counter()
            store.read(vid, "boundary")
            whole.append(1e3 * (time.perf_counter() - t0))
        result["boundary_read_whole_ms_per_video"] = statistics.median(whole)
        result["cache_bytes_per_video"] = int(np.mean([mcl.frame_motion(vid).nbytes for vid in store.videos]))
        result["frames_per_video"] = args.frames
    result["per_sample_ms_median"] = {k: statistics.median(v) for k, v in rows.items()}
    result["per_sample_ms"] = rows
    base = result["per_sample_ms_median"]["plain"]
    (args.out / "bench_motion_sampling.json").write_text(json.dumps(result, indent=1))
    print(f"{args.videos} videos x {args.frames} frames (fast spec, 192x128), per sample, 0 workers, 1 thread")
    print(f"{'loader':12s} {'median ms':>10s} {'x plain':>8s}")
    for k, v in result["per_sample_ms_median"].items():
        print(f"{k:12s} {v:10.1f} {v / base:8.2f}")
    print(f"whole-video boundary read: {result['boundary_read_whole_ms_per_video']:.1f} ms; "
          f"cache: {result['cache_bytes_per_video']} B per video")


if __name__ == "__main__":
    main()
