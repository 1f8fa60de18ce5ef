"""Step time of every pretraining method, as a ratio to `rgb-moco` with the same backbone and input.

    .venv/bin/python benchmarks/bench_methods.py --out bench_out             # CPU, a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_methods.py --device cuda --batch 16    # on a GPU machine

One store, built once in a temporary folder: motion-class videos (preprocess/motion_classes.py) extracted in process
with every modality (DIS flow, Blosc RGB). For each method in `METHODS` (or --methods): the config resolved as
`pretrain` resolves it (paper defaults, then the fixed input below and the method's entry in BENCH_OPTIONS, which
only shrinks queues so that they fit the tiny store), the method built, its own dataset and a DataLoader (0
workers) drawing --batches batches once, before any timing. A timed step is exactly the loop's: forward under the
loop's precision, backward, optimiser step, `after_step`. After --warmup untimed steps per method, --reps rounds; each
round times one step of every method, in reverse order every other round, so that drift in machine load hits every
method alike. Reported: median and min step ms, the ratio of medians to rgb-moco, and the paired ratio (the median
over rounds of each round's step time over rgb-moco's in that round: steadier on a loaded machine). Data loading is not timed
(bench_train.py measures the loader). Writes OUT/bench_methods.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from machine import machine_info

# Options that only make the methods fit the benchmark's small store (queues no larger than its keys).
BENCH_OPTIONS: dict[str, dict] = {
    "rgb-moco": {"queue_size": 256},
    "cmd": {},                                      # no queue; the paper's networks and its 8 future frames
    "mvcgc": {"queue_size": 256, "init_steps": 0},  # stage 2 (cross guidance); stage 1 is two MoCo streams
    "mcl": {"queue_size": 256},
    "modist": {"queue_size": 256},
}


def extract_in_process(videos: Path, store: Path, spec) -> Path:
    """Every video under `videos` extracted into a new Zarr store by the per-video driver, in this process."""
    from motionssl.preprocess.extract import scan_video_dir
    from motionssl.preprocess.video_job import extract_video
    from motionssl.stores import init_store, write_index

    init_store(store, "zarr", spec)
    metas = {vid: extract_video({"path": str(p), "video_id": vid, "store": str(store), "format": "zarr",
                                 "spec": spec.to_dict()})
             for vid, p in scan_video_dir(videos).items()}
    write_index(store, metas)
    return store


def build_store(dest: Path, *, per_class: int, frames: int) -> Path:
    from motionssl.data_specs import spec_from_dict
    from motionssl.preprocess.motion_classes import write_motion_classes

    videos = dest / "videos"
    write_motion_classes(videos, per_class=per_class, test_per_class=1, frames=frames, size=(192, 128))
    spec = spec_from_dict({"spec_version": 1, "name": "bench-all", "resolution": {"short_side": 128},
                           "modalities": ["rgb", "iframes", "mv", "flow", "boundary", "edges"],
                           "flow": {"method": "dis"}})
    return extract_in_process(videos, dest / "store.zarr", spec)


def _containers_copied(batch):
    """The batch's dicts and lists copied (tensors shared): finish_batch replaces entries in place."""
    if isinstance(batch, dict):
        return {k: _containers_copied(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_containers_copied(v) for v in batch)
    return batch


class Runner:
    """One method ready to step: model, optimiser and prefetched batches on the device."""

    def __init__(self, name: str, store: Path, out: Path, args: argparse.Namespace):
        from motionssl.train.config import resolve
        from motionssl.train.datasets import finish_batch
        from motionssl.train.loop import Precision, to_device
        from motionssl.train.methods import METHODS
        from motionssl.stores import open_store
        from motionssl.train.optim import make_optimizer, param_groups

        self.cls = METHODS[name]
        cli = {"method": name, "store": str(store), "out": str(out / name), "backbone": args.backbone,
               "backbone_width": args.width, "clip_len": args.clip_len, "stride": args.stride, "size": args.size,
               "batch_size": args.batch, "steps": 1000, "workers": 0, "seed": 0,
               "method_options": BENCH_OPTIONS.get(name, {})}
        self.cfg = resolve(self.cls.defaults, {}, cli, source="bench_methods")
        self.device = torch.device(args.device)
        self.method = self.cls(self.cfg, total_steps=1000).to(self.device)
        self.optimizer = make_optimizer(param_groups(self.method, self.cfg.weight_decay), name=self.cfg.optimizer,
                                        lr=self.cfg.lr)
        self.precision = Precision.choose(self.cfg.precision, self.device)
        dataset = self.cls.dataset(self.cfg, open_store(store))
        loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(0))
        self.batches = []
        while len(self.batches) < args.batches:
            self.batches += [to_device(b, self.device) for b in loader][:args.batches - len(self.batches)]
        self.finish = finish_batch  # per step, untimed: the batches stay uint8 and are reused
        self.params = sum(p.numel() for p in self.method.parameters() if p.requires_grad)
        self.step = 0
        # cpu: this process's CPU seconds, robust to other jobs on a shared machine when --threads 1
        self.clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def run_step(self) -> float:
        batch = self.finish(_containers_copied(self.batches[self.step % len(self.batches)]))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = self.clock()
        with torch.autocast(self.device.type, dtype=self.precision.dtype or torch.bfloat16,
                            enabled=self.precision.dtype is not None):
            loss = self.method(batch, step=self.step)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.method.after_step(self.step)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.step += 1
        return self.clock() - t0


def main() -> None:
    from motionssl.train.methods import METHODS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; rgb-moco is always included")
    ap.add_argument("--backbone", default="r3d18")
    ap.add_argument("--width", type=int, default=None, help="backbone base channels (default: full width)")
    ap.add_argument("--clip-len", type=int, default=8)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=2, help="distinct prefetched batches per method")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter; cpu: process CPU time (use with --threads 1 on a busy machine)")
    ap.add_argument("--per-class", type=int, default=4, help="videos per motion class in the store")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = ["rgb-moco"] + [m for m in args.methods.split(",") if m and m != "rgb-moco"]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(("torch", "torchvision")), "args": {k: str(v) for k, v in vars(args).items()},
              "methods": {}}
    if args.device.startswith("cuda"):
        result["machine"]["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        store = build_store(tmp, per_class=args.per_class, frames=32)  # 48 lets a fast square leave the frame
        runners = {name: Runner(name, store, tmp / "runs", args) for name in names}
        times: dict[str, list[float]] = {name: [] for name in names}
        for name, r in runners.items():
            for _ in range(args.warmup):
                r.run_step()
        for rep in range(args.reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                times[name].append(runners[name].run_step())
    base = statistics.median(times["rgb-moco"])
    for name in names:
        med = statistics.median(times[name])
        paired = statistics.median(t / b for t, b in zip(times[name], times["rgb-moco"]))
        result["methods"][name] = {"step_ms_median": 1e3 * med, "step_ms_min": 1e3 * min(times[name]),
                                   "ratio_to_rgb_moco": med / base, "paired_ratio": paired,
                                   "trainable_params": runners[name].params,
                                   "step_s": times[name]}
    (args.out / "bench_methods.json").write_text(json.dumps(result, indent=1))
    print(f"{args.backbone} width {args.width or 'full'}, {args.batch} x {args.clip_len} x {args.size}^2, "
          f"{args.device}, {args.threads} threads, median of {args.reps}")
    print(f"{'method':12s} {'median ms':>10s} {'min ms':>8s} {'x rgb-moco':>10s} {'paired':>7s} {'params':>11s}")
    for name, row in result["methods"].items():
        print(f"{name:12s} {row['step_ms_median']:10.1f} {row['step_ms_min']:8.1f} {row['ratio_to_rgb_moco']:10.2f} "
              f"{row['paired_ratio']:7.2f} {row['trainable_params']:11,d}")


if __name__ == "__main__":
    main()
