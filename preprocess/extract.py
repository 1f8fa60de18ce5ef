"""`motionssl extract`: every video of a directory into one store, one Dask task per video."""
from __future__ import annotations

import gc
import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from motionssl.data_specs import Spec
from motionssl.stores import init_store, package_version, read_video_metas, write_index
from motionssl.stores.layout import INDEX, QUARANTINE, VIDEOS, read_json, scan_videos, video_path, write_json_atomic
from motionssl.stores.lock import Locked, acquire_lock
from motionssl.stores.remote import Remote, RemoteError, acquire_remote_lock, is_url, stage_dir

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
    ".ts", ".mts", ".m2ts", ".ogv", ".vob", ".h264", ".264", ".hevc", ".265", ".y4m",
})
LOCK = ".extract.lock"
EXIT_OK, EXIT_SOME_FAILED = 0, 3  # fatal errors exit 2, from the CLI
# The local cluster's start-up budget; a busy machine starts it slowly, so it is tried twice, the second time with
# twice the budget.
START_BASE_S, START_PER_WORKER_S = 60.0, 1.0
# A decoder that dies (a signal, an exit) is given one more try in a fresh process: a death can be transient
# (the OOM killer, a killed process). A hang is not retried: it already cost a whole --timeout.
MAX_ATTEMPTS = 2
# The in-process cluster's periodic work takes CPU from the decoders: the statistical profiler, the event-loop tick
# and the system monitor at their defaults cost more than the run's own tasks (benchmarks/README.md, "Round four").
QUIET_CLUSTER = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                 "distributed.admin.system-monitor.interval": "5s"}


class FatalError(Exception):
    """Stops the run before any work; the message says what to do."""


@dataclass
class ExtractOptions:
    video_dir: Path
    store: Path | str  # a directory, or a URL on object storage (s3://bucket/prefix/x.zarr)
    spec: Spec
    fmt: str = "zarr"
    workers: int | None = None
    scheduler: str | None = None
    report: Path | None = None
    overwrite: bool = False
    timeout: float = 300.0
    reencode: bool = False
    progress: bool = True
    start_timeout: float | None = None  # seconds for the local cluster to start; None: START_BASE_S + per worker
    keep_partial: bool = False


def scan_video_dir(video_dir: Path) -> dict[str, Path]:
    """{video id: path}; the id is the path relative to video_dir, without extension, '/'-separated."""
    found: dict[str, Path] = {}
    for p in sorted(video_dir.rglob("*")):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."):
            vid = p.relative_to(video_dir).with_suffix("").as_posix()
            if vid in found:
                raise FatalError(f"two videos map to id {vid!r}: {found[vid].name} and {p.name}; rename one")
            found[vid] = p
    return found


def default_report_path(store: Path | str) -> Path:
    """Beside the store; for a store on object storage, in the current directory."""
    if is_url(store):
        return Path.cwd() / (str(store).rstrip("/").rsplit("/", 1)[-1] + ".report.json")
    return store.with_name(store.name + ".report.json")


# -- work that runs on Dask workers ------------------------------------------------------------

_decoders = threading.local()  # per worker thread: its decoder process
_started: queue.SimpleQueue = queue.SimpleQueue()  # decoder processes started ahead of a local cluster
_all_decoders: list = []
_first_jobs: dict = {}  # video id -> (the decoder process already extracting it, the job)


def start_decoders(n: int, *, preload: tuple[str, ...] = (), first_jobs: tuple[dict, ...] = ()) -> None:
    """Start n decoder processes now, for the workers of a local cluster to take, so that their
    start-up overlaps this process's own (Dask, the cluster). While this process has no other thread they are
    copies of it (fork), which skip a fresh interpreter's imports; else fresh ones, which import numpy, PyAV and
    `preload`. Decoder i starts on first_jobs[i] at once; the task of that video collects its result."""
    from motionssl.preprocess.isolation import DecoderFailed, DecoderProcess, can_fork

    fork = can_fork()
    if fork and any(job["format"] == "hdf5" for job in first_jobs):
        import motionssl.stores.hdf5_backend  # noqa: F401  imported once here rather than in each copy
    if fork:  # the copies' garbage collector then never walks (and copies) the pages of what they inherit
        gc.freeze()
    try:
        for i in range(n):
            decoder = DecoderProcess(preload=preload)
            decoder.start(fork=fork)
            _all_decoders.append(decoder)
            try:
                if i < len(first_jobs):
                    decoder.submit(first_jobs[i])
                    _first_jobs[first_jobs[i]["video_id"]] = decoder, first_jobs[i]
                    continue
            except DecoderFailed:  # died at once: its task runs the job the usual way, with its retry
                pass
            _started.put(decoder)
    finally:
        if fork:
            gc.unfreeze()


def stop_decoders() -> None:
    for decoder in _all_decoders:
        decoder.stop()
    _all_decoders.clear()
    for _, job in _first_jobs.values():  # never collected (the cluster did not start): what a kill left
        _remove_temps(job)
    _first_jobs.clear()


def _decoder():
    decoder = getattr(_decoders, "decoder", None)
    if decoder is None:
        try:
            decoder = _started.get_nowait()
        except queue.Empty:
            from motionssl.preprocess.isolation import DecoderProcess

            decoder = DecoderProcess()
            _all_decoders.append(decoder)
        _decoders.decoder = decoder
    return decoder


def extract_task(job: dict, timeout: float) -> dict:
    """One video, on a Dask worker: run it in the worker's decoder process, clean up on failure."""
    from motionssl.preprocess.isolation import DecoderFailed

    if job.get("gpus"):  # local multi-GPU cluster: worker i uses GPU i
        from dask.distributed import get_worker

        name = get_worker().name
        job = {**job, "device": f"cuda:{name % job['gpus'] if isinstance(name, int) else 0}"}
    t0 = time.perf_counter()
    record = {"id": job["video_id"], "status": "failed", "error": None, "frames": 0, "seconds": 0.0}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            started, _ = _first_jobs.pop(job["video_id"], (None, None))
            if started is not None:  # its decoder took the job before the cluster was up: this thread's now
                if getattr(_decoders, "decoder", None) is not None:
                    _started.put(_decoders.decoder)
                _decoders.decoder = started
                result = started.collect(timeout)
            else:
                result = _decoder().run(job, timeout)
            break
        except DecoderFailed as e:
            _remove_temps(job)  # what the dead decoder had written
            if not e.hung and attempt < MAX_ATTEMPTS:
                continue
            tries = f" on each of {attempt} attempts" if attempt > 1 else ""
            # A poison video: kept out of later runs too (see `_quarantine`), unless its file changes.
            result = {"ok": False, "error": f"{e}{tries}; quarantined", "quarantined": True}
            break
    record["attempts"] = attempt
    if result["ok"]:
        meta = result["meta"]
        record.update(status="ok", frames=meta["frames"], meta=meta, notes=meta.get("notes", []),
                      partial=meta.get("partial"))
    else:
        record["error"] = result["error"]
        record["quarantined"] = bool(result.get("quarantined"))
        _remove_temps(job)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


def _remove_temps(job: dict) -> None:
    """Remove what a crashed or killed writer of this one video left behind (on object storage: its local
    staging; what it uploaded is unreferenced, and goes when the video is next committed)."""
    if is_url(job["store"]):
        shutil.rmtree(stage_dir(job["store"], job["video_id"]), ignore_errors=True)
        return
    final = video_path(Path(job["store"]), job["format"], job["video_id"])
    parent = final.parent
    if parent.is_dir():
        for p in parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


# -- the driver ---------------------------------------------------------------------------------

def _check_writable(store: Path | str) -> None:
    """Fatal unless a file can be created where the videos will go. A real probe, not only os.access: that says
    yes to root whatever the permission bits, and to NFS clients whose server will refuse."""
    if is_url(store):
        try:
            remote = Remote(str(store))
            probe = f".motionssl-probe-{uuid.uuid4().hex[:8]}"
            remote.put(probe, b"")
            remote.delete(probe)
        except RemoteError as e:
            raise FatalError(str(e)) from None
        except Exception as e:  # no bucket, no credentials, refused: the client's own one-line reason
            detail = str(e).splitlines()[0] if str(e) else ""
            raise FatalError(f"cannot write to {store} ({type(e).__name__}: {detail}); check the bucket and the "
                             f"credentials of your client (environment or config files), or choose another -o") from None
        return
    if store.exists() and not store.is_dir():
        raise FatalError(f"{store} exists and is not a directory; choose another -o")
    where = next((d for d in (store / VIDEOS, store, store.parent) if d.exists()), store.parent)
    if not where.is_dir():
        raise FatalError(f"output directory {where} does not exist; create it first")
    try:
        fd, probe = tempfile.mkstemp(prefix=".motionssl-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FatalError(f"cannot write to {where} ({e.strerror}); choose another -o or make it writable") from None


def _ensure_zarr_parents(store: Path | str, ids) -> None:
    """Intermediate groups for nested ids, written once here so no two tasks race on them."""
    from motionssl.stores.zarr_writer import group_doc, write_group

    parents = {Path(VIDEOS)}
    for vid in ids:
        for parent in Path(VIDEOS, vid).parents:
            if parent != Path("."):
                parents.add(parent)
    if is_url(store):
        remote = Remote(str(store))
        rels = [f"{p.as_posix()}/zarr.json" for p in parents]
        missing = [rel for rel, data in remote.get_many(rels).items() if data is None]
        remote.put_many({rel: json.dumps(group_doc()).encode() for rel in missing})
        return
    for parent in sorted(parents, key=lambda p: len(p.parts)):
        if not (store / parent / "zarr.json").exists():
            write_group(store / parent)


def _uses_gpu(spec: Spec) -> bool:
    """Flow that runs on a GPU when there is one: RAFT needs it, tvl1-torch falls back to the CPU."""
    return spec.needs_flow and spec.flow.method in ("raft", "tvl1-torch")


def _flow_modules(spec: Spec) -> tuple[str, ...]:
    """What a decoder imports for the spec's flow beyond OpenCV: torch for tvl1-torch, torchvision for RAFT."""
    if not spec.needs_flow:
        return ()
    return {"tvl1-torch": ("motionssl.preprocess.tvl1_torch",),
            "raft": ("torchvision.models.optical_flow",)}.get(spec.flow.method, ())


def _needs_gpu(spec: Spec) -> bool:
    return spec.needs_flow and spec.flow.method == "raft"


def _check_flow_setup(spec: Spec) -> None:
    """RAFT weights must exist before any work starts: never run with random weights."""
    if _needs_gpu(spec):
        from motionssl.preprocess.flow import MissingWeights, find_raft_weights

        try:
            find_raft_weights(model=spec.flow.raft_model, weights=spec.flow.raft_weights)
        except MissingWeights as e:
            raise FatalError(str(e)) from None


def _local_gpus() -> int:
    # Linux without an NVIDIA (or ROCm) driver has no device torch.cuda could see: skip importing torch (~1 s).
    if sys.platform == "linux" and not any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/kfd")):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _start_client(opts: ExtractOptions, gpus: int):
    from dask.distributed import Client, LocalCluster

    if opts.scheduler:
        try:
            client = Client(opts.scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise FatalError(f"cannot reach Dask scheduler {opts.scheduler} ({e}); check the address") from None
        if _needs_gpu(opts.spec) and not _gpu_workers(client):
            client.close()
            raise FatalError("spec needs GPU workers but no worker offers the GPU resource; "
                             "start them with `dask worker ADDRESS --resources GPU=1` (see README)")
        return client, None
    import dask

    n = local_workers(opts, gpus)
    budget = opts.start_timeout if opts.start_timeout is not None else START_BASE_S + START_PER_WORKER_S * n
    _quiet_dask(logging.ERROR)  # a slow start logs its comms' INFO records (tracebacks included) otherwise
    for timeout in (budget, 2 * budget):
        cluster = None
        # A worker only hands videos to its decoder process, which does the work on one core (pinned,
        # isolation.py): workers are threads here, since worker processes would each pay an
        # interpreter and Dask's imports for nothing (0.7 s of wall per run, benchmarks/README.md).
        try:
            with dask.config.set({"distributed.logging.distributed": "error",
                                  "distributed.comm.timeouts.connect": f"{timeout}s", **QUIET_CLUSTER}):
                cluster = LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=False, dashboard_address=":0", silence_logs=40,
                    resources={"GPU": 1} if gpus else None, death_timeout=timeout,
                    memory_limit=0,  # no memory monitor: a worker thread holds only records, the decoders the frames
                )
                return Client(cluster, timeout=timeout), cluster
        except (OSError, RuntimeError) as e:  # TimeoutError is an OSError; RuntimeError: "Cluster failed to start"
            error = e
            _quiet_dask(logging.CRITICAL + 1)  # its teardown logs errors too: the one line below says it all
            if cluster is not None:
                cluster.close()
    raise FatalError(f"the local Dask cluster ({n} workers) did not start, in {budget:g}s nor in {2 * budget:g}s "
                     f"({type(error).__name__}: {error}); the machine is busy: retry when it is quieter, with fewer "
                     f"--workers, or with a larger --start-timeout")


def _quiet_dask(level: int) -> None:
    """Only records of `level` or above from every `distributed` logger, from here on."""
    for name in ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]:
        logging.getLogger(name).setLevel(level)


def _gpu_workers(client) -> bool:
    return any(w.get("resources", {}).get("GPU") for w in client.scheduler_info()["workers"].values())


def local_workers(opts: ExtractOptions, gpus: int) -> int:
    return opts.workers or (gpus if gpus else max(1, len(os.sched_getaffinity(0))))


def run_extract(opts: ExtractOptions) -> int:
    from motionssl.stores import StoreError

    video_dir, store = opts.video_dir, opts.store
    if not video_dir.is_dir():
        raise FatalError(f"video directory {video_dir} does not exist or is not a directory")
    videos = scan_video_dir(video_dir)
    if not videos:
        raise FatalError(f"no video files found under {video_dir} (extensions: {', '.join(sorted(VIDEO_EXTENSIONS))})")
    _check_writable(store)
    report_path = opts.report or default_report_path(store)
    if not report_path.parent.is_dir() or not os.access(report_path.parent, os.W_OK):
        raise FatalError(f"cannot write the report to {report_path}: its directory is missing or read-only; "
                         f"pass --report with a writable path")
    _check_flow_setup(opts.spec)
    try:
        init_store(store, opts.fmt, opts.spec)
    except StoreError as e:
        raise FatalError(str(e)) from None
    remote = Remote(str(store)) if is_url(store) else None
    try:
        lock = acquire_remote_lock(remote, LOCK, user="extract") if remote else acquire_lock(store, LOCK, user="extract")
    except Locked as e:
        raise FatalError(str(e)) from None
    try:
        return _run_locked(opts, videos, report_path)
    finally:
        stop_decoders()
        remote.delete(lock) if remote else lock.unlink(missing_ok=True)


def _remove_leftovers(store: Path | str, fmt: str, *, known=()) -> set[str] | None:
    """Partial videos of an interrupted run, or of attempts whose worker died; called only under the lock, with
    no task of this run still writing. Returns the ids of the videos on disk. (On object storage, each video's
    commit removes its own: a listing of the whole store would cost more than it saves; returns None.)"""
    if is_url(store):
        return None
    ids, temps = scan_videos(store, fmt, known=known)
    for p in temps:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return set(ids)


def _source_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_doc(store: Path | str, name: str):
    """A JSON document at the store's root, or None when absent."""
    if is_url(store):
        return Remote(str(store)).get_json(name)
    return read_json(store / name) if (store / name).is_file() else None


def _quarantine(store: Path | str, spec: Spec, videos: dict[str, Path], overwrite: bool) -> dict[str, dict]:
    """Videos whose decoder crashed or hung in an earlier run, and whose file has not changed since: not tried
    again. A changed file (replaced, fixed, or only touched) and --overwrite try it again."""
    try:
        entries = (_read_doc(store, QUARANTINE) or {"videos": {}})["videos"] if not overwrite else {}
    except (OSError, ValueError, KeyError):  # damaged: it only saves time, so try every video again
        entries = {}
    digest = spec.digest
    return {vid: q for vid, q in entries.items() if vid in videos and q.get("spec_digest") == digest
            and q.get("stamp") == _source_stamp(videos[vid])}


def _save_quarantine(store: Path | str, quarantine: dict[str, dict]) -> None:
    if is_url(store):
        remote = Remote(str(store))
        if quarantine or remote.get(QUARANTINE) is not None:
            remote.put_json(QUARANTINE, {"videos": quarantine})
    elif quarantine or (store / QUARANTINE).exists():
        write_json_atomic(store / QUARANTINE, {"videos": quarantine})


def _task_failure(vid: str, error: BaseException) -> dict:
    """The record of a video whose Dask task itself failed: KilledWorker when every worker that ran it died."""
    reason = (f"every Dask worker that ran it died ({type(error).__name__}); check the workers' logs "
              f"(memory limits?) and rerun" if type(error).__name__ == "KilledWorker"
              else f"its task failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return {"id": vid, "status": "failed", "error": reason, "frames": 0, "seconds": 0.0}


def _run_locked(opts: ExtractOptions, videos: dict[str, Path], report_path: Path) -> int:
    store, spec, fmt = opts.store, opts.spec, opts.fmt
    t_start = time.perf_counter()
    index = (_read_doc(store, INDEX) or {"videos": {}})["videos"]
    on_disk = _remove_leftovers(store, fmt, known=index)
    if on_disk is not None:  # on object storage the index lists only committed videos, and nothing removes one
        index = {vid: m for vid, m in index.items() if vid in on_disk}
    quarantine = _quarantine(store, spec, videos, opts.overwrite)
    committed = {} if opts.overwrite else read_video_metas(store, fmt, [vid for vid in videos if vid not in index])
    records, todo = [], []
    digest = spec.digest  # once: it hashes the whole spec
    for vid, path in videos.items():
        meta = None if opts.overwrite else (index.get(vid) or committed.get(vid))
        if meta is not None and meta.get("spec_digest") == digest:
            index[vid] = meta
            records.append({"id": vid, "status": "skipped", "error": None, "frames": meta["frames"], "seconds": 0.0})
        elif vid in quarantine:
            reason = (f"quarantined by an earlier run ({quarantine[vid]['error']}); replace or fix {path.name}, "
                      f"or touch it, to try again")
            records.append({"id": vid, "status": "failed", "frames": 0, "seconds": 0.0, "attempts": 0,
                            "quarantined": True, "error": reason})
            print(f"failed: {vid}: {records[-1]['error']}")
        else:
            todo.append(vid)
    gpus = _local_gpus() if todo and _uses_gpu(spec) and not opts.scheduler else 0

    def job_of(vid: str, cpu: bool) -> dict:
        return {"path": str(videos[vid].resolve()), "source": str(videos[vid].relative_to(opts.video_dir)),
                "video_id": vid, "store": str(store) if is_url(store) else str(store.resolve()), "format": fmt,
                "spec": spec.to_dict(), "reencode": opts.reencode, "keep_partial": opts.keep_partial, "gpus": gpus,
                "motionssl_version": package_version()} | ({"device": "cpu"} if cpu else {})

    if fmt == "zarr" and todo:
        _ensure_zarr_parents(store, todo)
    if todo and not opts.scheduler and not gpus:  # the first videos start while Dask imports and starts
        n = min(local_workers(opts, 0), len(todo))  # a worker with no video never needs its decoder
        start_decoders(n, preload=_flow_modules(spec), first_jobs=tuple(job_of(v, _uses_gpu(spec)) for v in todo[:n]))

    failures = frames = 0
    if todo:
        from dask.distributed import as_completed
        from tqdm import tqdm

        client, cluster = _start_client(opts, gpus)
        try:
            needs_gpu = _uses_gpu(spec) and bool(gpus or (opts.scheduler and _gpu_workers(client)))
            if _uses_gpu(spec) and not needs_gpu:  # tasks that hold no GPU resource stay off any GPU
                where = "on this machine" if not opts.scheduler else "among the workers"
                print(f"note: no CUDA device {where}: {spec.flow.method} runs on the CPU"
                      + (", slowly" if _needs_gpu(spec) else ", one thread per worker"))
            link = getattr(client, "dashboard_link", None)
            print(f"dask: {len(client.scheduler_info()['workers'])} workers" + (f", dashboard {link}" if link else ""))
            jobs = [job_of(vid, _uses_gpu(spec) and not needs_gpu) for vid in todo]
            run = uuid.uuid4().hex[:8]
            keys = [f"extract-{run}-{i}" for i in range(len(jobs))]
            video_of = dict(zip(keys, todo))
            futures = client.map(extract_task, jobs, timeout=opts.timeout, pure=False, key=keys,
                                 resources={"GPU": 1} if needs_gpu else None)
            last_index = time.monotonic()
            bar = tqdm(total=len(jobs), unit="video", disable=not opts.progress, dynamic_ncols=True)
            for fut in as_completed(futures):
                try:
                    rec = fut.result()
                except Exception as e:  # the task, not the video, failed: that video alone is reported failed
                    rec = _task_failure(video_of[fut.key], e)
                fut.release()
                meta = rec.pop("meta", None)
                if rec["status"] == "ok":
                    index[rec["id"]] = meta
                    frames += rec["frames"]
                    quarantine.pop(rec["id"], None)
                else:
                    failures += 1
                    bar.write(f"failed: {rec['id']}: {rec['error']}")
                    if rec.get("quarantined"):
                        quarantine[rec["id"]] = {"error": rec["error"].removesuffix("; quarantined"),
                                                 "attempts": rec["attempts"], "spec_digest": spec.digest,
                                                 "stamp": _source_stamp(videos[rec["id"]])}
                records.append(rec)
                elapsed = time.perf_counter() - t_start
                bar.set_postfix(fps=f"{frames / max(elapsed, 1e-9):.0f}", failed=failures)
                bar.update(1)
                if time.monotonic() - last_index > 10:
                    try:
                        write_index(store, index)
                    except OSError as e:  # a full disk, say: the videos are on disk, and the final write retries
                        bar.write(f"warning: could not update {INDEX} ({e.strerror}); will retry")
                    last_index = time.monotonic()
            bar.close()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        _remove_leftovers(store, fmt, known=index)  # attempts whose worker died mid-write
    failures = sum(r["status"] == "failed" for r in records)
    write_index(store, index)
    _save_quarantine(store, quarantine)
    seconds = time.perf_counter() - t_start
    order = {vid: i for i, vid in enumerate(videos)}
    records.sort(key=lambda r: order[r["id"]])
    summary = {
        "videos": len(records), "ok": sum(r["status"] == "ok" for r in records),
        "skipped": sum(r["status"] == "skipped" for r in records), "failed": failures,
        "frames_extracted": frames, "seconds": round(seconds, 3),
        "frames_per_second": round(frames / seconds, 1) if seconds > 0 else None,
        "no_motion_vectors": [r["id"] for r in records if any("no motion vectors" in n for n in r.get("notes", []))],
        "quarantined": [r["id"] for r in records if r.get("quarantined")],
        "partial": [r["id"] for r in records if r.get("partial")],
        "spec": spec.name, "spec_digest": spec.digest, "format": fmt, "store": str(store),
    }
    report = {"videos": records, "summary": summary}
    tmp = report_path.with_name(f".{report_path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, report_path)
    print(f"extract: {summary['ok']} ok, {summary['skipped']} skipped, {failures} failed, "
          f"{frames} frames in {seconds:.1f}s; report {report_path}")
    if summary["partial"]:
        print(f"note: {len(summary['partial'])} partial video(s), kept up to their damage: "
              f"{', '.join(summary['partial'][:5])}" + (" ..." if len(summary["partial"]) > 5 else ""))
    for vid in summary["no_motion_vectors"]:
        print(f"note: {vid}: {index[vid]['notes'][0] if vid in index else 'no motion vectors'}")
    return EXIT_SOME_FAILED if failures else EXIT_OK
