"""What the training loop does when something goes wrong: broken videos, non-finite losses, stuck data workers.

- `usable_store`: before any work, the store's videos are checked without decoding (`stores.verify.broken_videos`).
  Broken ones stop the run with their names, or are left out under `skip_broken`, and the run says which.
- `NonFiniteGuard`: a NaN or inf loss stops the run with the step and the batch's video ids, or, under
  `skip_nonfinite`, skips the batch: no backward, no optimiser step, and every buffer the forward changed (BatchNorm
  statistics, MoCo queues) put back, so one bad batch leaves no trace. The step still counts, so the data order
  and a resume stay exact. Ranks agree on it (one all-reduce), so DDP never deadlocks on it.
- `TrackedDataset` + `next_batch`: each DataLoader worker notes in shared memory which sample it is working on, so
  a worker stuck past `data_timeout` is reported with the sample and video it is stuck on; and a StoreError raised
  in a worker is written there as a record (its type and one-line message), which the main process raises again as
  a StoreError. Nothing is recognised by the wording of torch's messages: a timeout is a failed wait of at least
  `data_timeout` seconds with no worker record.
- `Termination`: SIGTERM (what SLURM sends before its kill) makes the loop save after the step it is in and stop;
  `stop_workers` then shuts the DataLoader workers down, which ignore the signal themselves.

Test hooks (`motionssl.stores.fault_injection`): `hang-sample:ID` hangs a worker in that video's sample; `inf-sample:ID`
makes that sample's RGB clips +inf, a real non-finite forward.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import Dataset, get_worker_info

from motionssl.stores import fault_injection
from motionssl.stores import Store, StoreError


class TrainingFault(RuntimeError):
    """Training stopped on a fault found while it ran; the message is one line and says what to do."""


class NonFiniteLoss(TrainingFault, FloatingPointError):
    pass


class DataTimeout(TrainingFault):
    pass


RECORD_BYTES = 4096  # per worker: one JSON fault record {"type", "message", "index"}
WORKER_ERRORS = {"StoreError": StoreError}  # what a worker's record may raise again in the main process


# -- broken videos --------------------------------------------------------------------------------------------

def usable_store(store: Store, *, skip_broken: bool, announce: bool = True) -> tuple[Store, dict[str, str]]:
    """(the store to train on, {broken video: problem}). Raises StoreError on a broken video unless `skip_broken`.

    Its cost per video is in benchmarks/README.md, "Reliability". Under DDP rank 0 checks and the others take its
    answer, so a shared filesystem sees the check once."""
    from motionssl.stores.verify import broken_videos

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        answer = [broken_videos(store) if torch.distributed.get_rank() == 0 else None]
        torch.distributed.broadcast_object_list(answer, src=0)
        broken = answer[0]
    else:
        broken = broken_videos(store)
    if not broken:
        return store, {}
    shown = "; ".join(f"{vid} ({why.split('; ')[0]})" for vid, why in list(broken.items())[:3])
    shown += f"; and {len(broken) - 3} more" if len(broken) > 3 else ""
    if not skip_broken:
        raise StoreError(f"store {store.path} has {len(broken)} broken video(s): {shown}; see `motionssl verify "
                         f"{store.path}`, re-extract them, or pass --skip-broken to train without them")
    if announce:
        print(f"warning: skipping {len(broken)} broken video(s) of {store.path} (--skip-broken): {shown}",
              file=sys.stderr)
    return store.without(broken), broken


# -- non-finite losses ----------------------------------------------------------------------------------------

class NonFiniteGuard:
    def __init__(self, module: torch.nn.Module, *, skip: bool, world_size: int, hint: str, skipped: int = 0):
        self.module, self.skip, self.world_size, self.hint = module, skip, world_size, hint
        self.skipped = skipped  # over the whole run: a resumed run starts from its checkpoint's count
        self._saved: list[torch.Tensor] | None = None

    def before_forward(self) -> None:
        if self.skip:
            self._saved = [b.detach().clone() for b in self.module.buffers()]

    def finite(self, loss: torch.Tensor, *, step: int, videos: list[str]) -> bool:
        """True to go on with this batch; False when it is skipped; raises NonFiniteLoss when skipping is off."""
        ok = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
        if self.world_size > 1:  # every rank takes the same branch
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if ok.item() == 1.0:
            return True
        local = loss.detach().float()
        what = (f"loss is {local.item()} at step {step}" if not torch.isfinite(local).all()
                else f"another rank's loss is not finite at step {step}")
        where = f"{what} (batch of videos {', '.join(videos)})"
        if not self.skip:
            raise NonFiniteLoss(f"{where}; {self.hint}, or pass --skip-nonfinite to skip such batches")
        with torch.no_grad():
            for buffer, saved in zip(self.module.buffers(), self._saved or []):
                buffer.copy_(saved)
        self.skipped += 1
        from tqdm import tqdm

        tqdm.write(f"warning: {where}: batch skipped (--skip-nonfinite; {self.skipped} so far)", file=sys.stderr)
        return False


def batch_videos(batch: dict, dataset) -> list[str]:
    """The video ids of a collated batch, from its dataset indices."""
    indices = batch.get("index") if isinstance(batch, dict) else None
    names = getattr(dataset, "videos", None)
    if indices is None or names is None:
        return ["(unknown)"]
    return [str(names[int(i)]) for i in torch.as_tensor(indices).reshape(-1)]


# -- stuck data workers -----------------------------------------------------------------------------------------

class TrackedDataset(Dataset):
    """The training dataset as the DataLoader sees it: each worker writes the index of the sample it is working on
    into its slot of a shared array (-1 when idle), so the main process can name a sample a worker is stuck on."""

    def __init__(self, dataset, *, workers: int):
        self.dataset = dataset
        self.working = multiprocessing.RawArray("q", [-1] * max(workers, 1))
        self.records = multiprocessing.RawArray("c", RECORD_BYTES * max(workers, 1))

    def __len__(self) -> int:
        return len(self.dataset)

    def video(self, index: int) -> str:
        names = getattr(self.dataset, "videos", None)
        return str(names[index]) if names is not None else f"#{index}"

    def __getitem__(self, key):
        slot = self._slot()
        self.working[slot] = _index(key)
        sample = self._sample(key, slot)
        self.working[slot] = -1
        return sample

    def __getitems__(self, keys: list) -> list:
        """A batch's samples (the DataLoader's batched fetch). From a store on object storage the videos' commit
        records come in one round, and the samples are drawn concurrently, in threads, while reads wait on requests,
        not on the CPU (benchmarks/README.md, "Scale"). The slot then names the batch's first sample."""
        store = getattr(self.dataset, "store", None)
        if getattr(store, "remote", None) is None or len(keys) < 2:
            return [self[key] for key in keys]
        if getattr(self.dataset, "videos", None) is not None:
            with contextlib.suppress(OSError):  # each sample's own read then fails, and is recorded, as without it
                store.open_many([self.video(_index(key)) for key in keys])
        if not store.reads_wait():  # every recent read came from the node's cache: threads would only contend
            return [self[key] for key in keys]
        slot = self._slot()
        self.working[slot] = _index(keys[0])
        samples = list(_fetch_pool().map(lambda key: self._sample(key, slot), keys))
        self.working[slot] = -1
        return samples

    @staticmethod
    def _slot() -> int:
        info = get_worker_info()
        return info.id if info is not None else 0

    def _sample(self, key, slot: int):
        index = _index(key)
        faults = fault_injection.armed(self.video(index))
        if "hang-sample" in faults:
            fault_injection.record("hang-sample", self.video(index))
            time.sleep(10**6)
        try:
            sample = self.dataset[key]
        except tuple(WORKER_ERRORS.values()) as e:
            self._record(slot, e, index)
            raise
        if "inf-sample" in faults:
            fault_injection.record("inf-sample", self.video(index))
            for view in sample["views"]:
                if "rgb_color" in view:  # uint8 cannot hold inf: a NaN brightness makes the finished clip NaN
                    view["rgb_color"][0] = float("nan")
        return sample

    def _record(self, slot: int, error: Exception, index: int) -> None:
        record = {"type": type(error).__name__, "message": str(error).strip(), "index": index}
        raw = json.dumps(record).encode()
        if len(raw) > RECORD_BYTES:  # a long message loses its tail, never the record's shape
            record["message"] = record["message"][:RECORD_BYTES // 2] + " ..."
            raw = json.dumps(record).encode()[:RECORD_BYTES]
        self.records[slot * RECORD_BYTES:(slot + 1) * RECORD_BYTES] = raw.ljust(RECORD_BYTES, b"\0")

    def worker_error(self) -> Exception | None:
        """The first worker's recorded error, as its own exception type; None when no worker recorded one."""
        for slot in range(len(self.working)):
            raw = bytes(self.records[slot * RECORD_BYTES:(slot + 1) * RECORD_BYTES]).rstrip(b"\0")
            if raw:
                record = json.loads(raw)
                return WORKER_ERRORS[record["type"]](record["message"])
        return None

    def stuck(self) -> list[str]:
        return [f"worker {w} on sample {i} (video {self.video(i)!r})" for w, i in enumerate(self.working) if i >= 0]


def _index(key) -> int:
    return int(key[0]) if isinstance(key, tuple) else int(key)


_pool: list = []  # [(pid, executor)]: one per process, never inherited across a fork
FETCH_THREADS = 16


def _fetch_pool() -> ThreadPoolExecutor:
    if not _pool or _pool[0][0] != os.getpid():
        _pool[:] = [(os.getpid(), ThreadPoolExecutor(max_workers=FETCH_THREADS))]
    return _pool[0][1]


def next_batch(batches, tracked: TrackedDataset, *, timeout: float, store_path) -> object:
    """next(batches), with a stuck worker and a damaged store reported in one line."""
    started = time.monotonic()
    try:
        return next(batches)
    except Exception:
        error = tracked.worker_error()
        if error is not None:  # raised in a worker: torch re-raises it with the worker's traceback in the text
            raise error from None
        if timeout and time.monotonic() - started >= timeout:  # the DataLoader waited `timeout` and gave up
            stuck = "; ".join(tracked.stuck()) or "no worker is inside a sample"
            raise DataTimeout(f"no batch from the DataLoader workers for {timeout:g}s: {stuck}; check that video "
                              f"(`motionssl verify {store_path}`), or raise --data-timeout if samples are this "
                              f"slow") from None
        raise


# -- SIGTERM ----------------------------------------------------------------------------------------------------

class Termination:
    """SIGTERM as a request to stop: the loop finishes the step it is in, saves a checkpoint and stops, so
    `--resume auto` loses nothing. Ranks agree on the step (one all-reduce), so DDP saves and stops together.

    DataLoader workers ignore SIGTERM (`ignore_in_worker`): SLURM signals every process of the job, and a worker
    killed by it would end the run with a DataLoader error before the save; `stop_workers` ends them instead."""

    def __init__(self, *, world_size: int, device: torch.device):
        self.world_size, self.device = world_size, device
        self.received: int | None = None
        self._previous = None

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._note)
        except ValueError:  # not the main thread (train() called from a thread): signals cannot reach it anyway
            self._previous = None

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _note(self, signum, frame) -> None:
        self.received = signum

    def requested(self) -> bool:
        """Called once per step on every rank."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return flag.item() == 1.0

    @staticmethod
    def ignore_in_worker() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_workers(loader) -> None:
    """End a DataLoader's workers now: the iterator's own shutdown, then a kill for any still alive (one stuck in a
    sample, which a SIGTERM no longer stops). Uses the iterator's private `_workers` and `_shutdown_workers`."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is None or not hasattr(iterator, "_workers"):
        return
    workers = list(iterator._workers)
    iterator._shutdown_workers()
    for w in workers:
        if w.is_alive():
            w.kill()
            w.join()
    loader._iterator = None
