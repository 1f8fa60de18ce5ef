"""The pretraining loop: one process or many (torchrun), exact resume, AMP, logs and checkpoints.

Every random choice of a sample is a function of (seed, epoch, index) (see `datasets.ClipDataset`), and the
order of samples a function of (seed, epoch) (`DistributedSampler`), so a run resumed at step s sees the same
batches from step s on as a run that never stopped; with the model, optimiser, scaler, queues and RNG states
restored, its losses are equal on CPU in deterministic mode.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from motionssl.stores import open_store
from motionssl.stores.lock import Locked, acquire_lock
from motionssl.train import checkpoint
from motionssl.train.collate import collate
from motionssl.train.config import ConfigError, PretrainConfig, write_yaml
from motionssl.train.datasets import finish_batch, seed_worker
from motionssl.train.distributed import barrier, cleanup, init_from_env
from motionssl.train.faults import (NonFiniteGuard, Termination, TrackedDataset, batch_videos, next_batch,
                                   stop_workers, usable_store)
from motionssl.train.methods import METHODS
from motionssl.train.methods.base import Method, parse_options
from motionssl.train.optim import lr_at, make_optimizer, param_groups, schedule_segment, set_lr
from motionssl.train.run_log import RunLog, plot_run

# Config fields a resumed run may change; any other difference means a different experiment.
RESUMABLE_CHANGES = {"store", "store_version", "out", "workers", "progress", "log_every", "save_every", "halt_after",
                     "skip_broken", "skip_nonfinite", "data_timeout"}
RUN_LOCK = ".run.lock"  # one training run per run directory (rank 0 holds it)
EXIT_TERMINATED = 128 + signal.SIGTERM  # the shell's status for SIGTERM: the job did not finish; it saved first


class KeySampler(DistributedSampler):
    """A DistributedSampler that yields `(index, epoch)` keys and can start part-way into an epoch."""

    def __init__(self, dataset, **kwargs):
        super().__init__(dataset, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter([(i, self.epoch) for i in list(super().__iter__())[self.start:]])

    def __len__(self) -> int:
        return self.num_samples - self.start


@dataclass
class Precision:
    dtype: torch.dtype | None  # autocast dtype; None = fp32

    @staticmethod
    def choose(name: str, device: torch.device) -> "Precision":
        if name == "auto":
            name = "bf16" if device.type == "cuda" else "fp32"
        return Precision({"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name])


def worker_init(worker_id: int) -> None:
    Termination.ignore_in_worker()
    seed_worker(worker_id)


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


UPSAMPLING_LIMIT = 1.5


def upsampling_note(size: int, short_side: int) -> str | None:
    """A warning when even a whole-frame crop (the largest a training view takes) is resized up by more than
    UPSAMPLING_LIMIT: the clips then hold less detail than their size says, and smaller crops are upsampled more."""
    if size <= UPSAMPLING_LIMIT * short_side:
        return None
    return (f"warning: --size {size} from a store of short side {short_side} px upsamples every crop at least "
            f"{size / short_side:.2f}x; extract with a larger resolution.short_side (>= {size}) or lower --size")


def check_resume_config(saved: dict, cfg: PretrainConfig) -> None:
    # A config field newer than the run holds its default there; a method option newer than the run is not compared.
    now, default = cfg.to_dict(), PretrainConfig().to_dict()
    saved = {**default, **saved}
    saved["method_options"] = {**now["method_options"], **(saved.get("method_options") or {})}
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(f"cannot resume with a different config ({diffs}); use the run's config.yaml or a new -o RUN_DIR")


def check_store_version(saved: dict, store, *, allow_change: bool) -> str | None:
    """None when the store a run is resumed on is the one it was trained on (or the run predates versions); a
    warning line when it changed and `allow_change`; else ConfigError."""
    before = saved.get("store_version")
    if before is None or before == store.version:
        return None
    what = f"store {store.path} changed since this run last saved (version {before} -> {store.version})"
    if not allow_change:
        raise ConfigError(f"{what}: videos were added, redone or removed; resume on the store it was trained on, "
                          f"or pass --allow-store-change to continue on this one")
    return f"warning: {what}; continuing on it (--allow-store-change)"


def train(cfg: PretrainConfig, *, resume: str | None = None, method_cls: type[Method] | None = None,
          allow_store_change: bool = False) -> dict:
    """Run (or continue) one pretraining run; returns the summary also written to RUN_DIR/summary.json.

    The store's version (`Store.version`) is recorded in config.yaml, the checkpoint and summary.json; a resume on
    a store whose version differs is refused unless `allow_store_change`.

    `method_cls` (default: METHODS[cfg.method]) is the objective, and its `dataset` the data: `finetune` passes its
    supervised objective here to reuse checkpoints, resume, logging and DDP."""
    dist = init_from_env()
    run_dir = Path(cfg.out)
    resume_from = checkpoint.find_resume(run_dir, resume)
    lock = refused = None
    if dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = acquire_lock(run_dir, RUN_LOCK, user="training run")
        except Locked as e:
            refused = str(e)
    if dist.world_size > 1:  # every rank stops, not rank 0 alone with the others waiting on it
        answer = [refused]
        torch.distributed.broadcast_object_list(answer, src=0)
        refused = answer[0]
    if refused:
        raise ConfigError(refused)
    try:
        return _train(cfg, dist, resume=resume, resume_from=resume_from, method_cls=method_cls or METHODS[cfg.method],
                      allow_store_change=allow_store_change)
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


def _train(cfg: PretrainConfig, dist, *, resume: str | None, resume_from: Path | None,
           method_cls: type[Method], allow_store_change: bool) -> dict:
    main = dist.rank == 0
    run_dir = Path(cfg.out)
    if resume is None and (run_dir / checkpoint.LAST).exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume auto, or pass a new -o RUN_DIR")
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        # CUDA has no deterministic backward of 3-D max-pooling (S3D, C3D): warn there instead of failing
        torch.use_deterministic_algorithms(True, warn_only=dist.device.type == "cuda")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    # fail on typos before any work, and record every option (defaults included) in config.yaml
    cfg.method_options = dataclasses.asdict(parse_options(method_cls.Options, cfg.method_options, method=cfg.method))
    store, broken = usable_store(open_store(cfg.store), skip_broken=cfg.skip_broken, announce=main)
    cfg.store_version = store.version
    dataset = method_cls.dataset(cfg, store)
    if main and (note := upsampling_note(cfg.size, store.spec.resolution.short_side)):
        print(note, file=sys.stderr)
    sampler = KeySampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=cfg.seed,
                         drop_last=True)
    steps_per_epoch = sampler.num_samples // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"store {cfg.store} has {len(dataset)} videos: too few for batch size {cfg.batch_size} "
                          f"x {dist.world_size} process(es); lower --batch-size")
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    method = method_cls(cfg, total_steps=total_steps).to(dist.device)
    restarts = method.schedule_restarts()
    optimizer = make_optimizer(param_groups(method, cfg.weight_decay,
                                          decay_biases_and_norms=cfg.decay_biases_and_norms),
                             name=cfg.optimizer, lr=cfg.lr)
    precision = Precision.choose(cfg.precision, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=precision.dtype == torch.float16)

    start_step = skipped_before = 0
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        check_resume_config(state["config"], cfg)
        if (note := check_store_version(state["config"], store, allow_change=allow_store_change)) and main:
            print(note, file=sys.stderr)
        checkpoint.restore(state, method=method, optimizer=optimizer, scaler=scaler)
        checkpoint.set_rng_state(state["rng"][min(dist.rank, len(state["rng"]) - 1)])
        start_step = state["step"]
        skipped_before = state.get("skipped_nonfinite", 0)
    if main:
        write_yaml(cfg, run_dir / "config.yaml")

    model = method
    if dist.group:  # also a group of one (MOTIONSSL_DIST_BACKEND under torchrun): DDP and its backend exercised
        model = DistributedDataParallel(method, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                                        broadcast_buffers=False)  # queues are filled with gathered keys on every rank
    # Its own generator: starting an iterator draws a seed, which must not come from the global RNG, or a run
    # resumed mid-epoch would shift the random stream of every later step (dropout) by one draw.
    tracked = TrackedDataset(dataset, workers=cfg.workers)
    data_timeout = cfg.data_timeout if cfg.workers > 0 else 0
    loader = DataLoader(tracked, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, worker_init_fn=worker_init, persistent_workers=cfg.workers > 0,
                        pin_memory=dist.device.type == "cuda", timeout=data_timeout,
                        generator=torch.Generator().manual_seed(cfg.seed), collate_fn=collate)
    guard = NonFiniteGuard(method, skip=cfg.skip_nonfinite, world_size=dist.world_size, skipped=skipped_before,
                           hint=f"lower --lr or set grad_clip (the last checkpoint is {run_dir / checkpoint.LAST})")

    def save(step: int) -> None:
        rng = [None] * dist.world_size
        if dist.world_size > 1:
            torch.distributed.all_gather_object(rng, checkpoint.rng_state())
        else:
            rng = [checkpoint.rng_state()]
        if main:
            checkpoint.save(run_dir / checkpoint.LAST, {
                "step": step, "epoch": step // steps_per_epoch, "config": cfg.to_dict(),
                "method": method.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng, "backbone": method.export_backbone(), "world_size": dist.world_size,
                "skipped_nonfinite": guard.skipped})
        barrier()

    log = RunLog(run_dir, resume_step=start_step, tensorboard=main) if main else None
    stop_step = total_steps if cfg.halt_after is None else min(total_steps, start_step + cfg.halt_after)
    bar = tqdm(total=total_steps, initial=start_step, disable=not (main and cfg.progress), unit="step",
               dynamic_ncols=True, desc=cfg.method)
    method.train()
    step, epoch, batches = start_step, None, None
    window: list[float] = []
    t_wall = time.perf_counter()
    clips_per_step = cfg.batch_size * dist.world_size
    termination, terminated = Termination(world_size=dist.world_size, device=dist.device), False
    try:
        termination.install()
        while step < stop_step:
            if epoch != step // steps_per_epoch:
                epoch = step // steps_per_epoch
                sampler.set_epoch(epoch, start=(step % steps_per_epoch) * cfg.batch_size)
                batches = iter(loader)
            t0 = time.perf_counter()
            batch = finish_batch(to_device(next_batch(batches, tracked, timeout=data_timeout, store_path=store.path),
                                           dist.device))
            t_data = time.perf_counter() - t0
            first, end = schedule_segment(step, restarts, total_steps)
            lr = lr_at(step - first, base_lr=cfg.lr, warmup_steps=warmup_steps if first == 0 else 0,
                       total_steps=end - first, min_lr=cfg.lr * cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            guard.before_forward()
            with torch.autocast(dist.device.type, dtype=precision.dtype or torch.bfloat16,
                                enabled=precision.dtype is not None):
                out = model(batch, step=step)
            loss = out["loss"]
            grad_norm = None
            if guard.finite(loss, step=step, videos=batch_videos(batch, dataset)):  # else skipped; the step counts
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip).item()
                scaler.step(optimizer)
                scaler.update()
                method.after_step(step)
            step += 1
            dt = time.perf_counter() - t0
            window.append(dt)
            if main:
                rate = clips_per_step / dt
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", clips_s=f"{rate:.1f}", refresh=False)
                if step % cfg.log_every == 0 or step == stop_step:
                    values = {"epoch": epoch, "loss": loss.item(), "lr": lr,
                              "clips_per_s": clips_per_step * len(window) / sum(window), "data_s": t_data,
                              **({"grad_norm": grad_norm} if grad_norm is not None else {}),
                              "skipped_nonfinite": guard.skipped, **out["logs"]}
                    log.log(step, values)
                    window = []
            terminated = termination.requested() and step < stop_step
            if step % cfg.save_every == 0 or step == stop_step or terminated:
                save(step)
            if terminated:
                break
    finally:
        termination.restore()
        stop_workers(loader)
        bar.close()
        if log is not None:
            log.close()
    summary = {"method": cfg.method, "run_dir": str(run_dir), "store": cfg.store, "store_version": cfg.store_version,
               "steps": step, "total_steps": total_steps,
               "finished": step >= total_steps, "steps_per_epoch": steps_per_epoch, "world_size": dist.world_size,
               "device": str(dist.device), "seconds": time.perf_counter() - t_wall,
               "final_loss": None if step == start_step else loss.item(), "skipped_nonfinite": guard.skipped,
               "skipped_videos": broken, "terminated": "SIGTERM" if terminated else None}
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        plot_run(run_dir)
    cleanup()
    return summary
