"""Benchmark training compute: CPU step time of every backbone.

    .venv/bin/python benchmarks/bench_train.py --out bench_out      # about 2 min on 2 cores

bench_backbones: for every backbone in `motionssl.train.backbones.BACKBONES` at its full default width, one
training step on a random clip batch (default 4 x 3 x 8 x 112 x 112, float32, train mode): zero the gradients,
forward, loss = mean of the squared pooled features, backward. No optimiser update, no data loading.
torch.set_num_threads(--threads) (default 2). After --warmup untimed steps per backbone, --reps rounds; each round
times one step of every backbone, in reverse order every other round, so that drift in machine load hits all
backbones alike. Reported: median and min of the step (forward + backward) and of its forward part, in ms;
parameters; forward GFLOPs from torch.utils.flop_counter (2 FLOPs per multiply-add) and the GFLOP/s that the step
reaches taking backward as 2x forward. Writes OUT/bench_train.json and prints the table.

"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from machine import machine_info
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

LOADER_STORES = {  # name: (format, spec overrides of `compressed`)
    "zarr": ("zarr", {}),
    "hdf5": ("hdf5", {}),
    "zarr, 1-frame chunks": ("zarr", {"storage": {"chunk_frames": 1, "shard_frames": 64}}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default bench_out)")
    ap.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated names (default all)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    t_start = time.perf_counter()
    res: dict = {"date": time.strftime("%Y-%m-%d"),
                 "machine": machine_info(("motionssl", "torch", "torchvision", "numpy")),
                 "args": {k: str(v) for k, v in vars(args).items()}}
    res["backbones"] = bench_backbones(names=args.backbones.split(","), batch=args.batch, frames=args.frames,
                                       size=args.size, warmup=args.warmup, reps=args.reps, threads=args.threads)
    print_backbones(res["backbones"])
    res["total_seconds"] = time.perf_counter() - t_start
    res["loadavg_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_train.json").write_text(json.dumps(res, indent=1))
    print(f"\nwrote {args.out / 'bench_train.json'} ({res['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
