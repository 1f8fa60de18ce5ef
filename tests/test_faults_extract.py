"""Extraction under real faults: poison videos, killed decoders and Dask workers, a full disk, an unwritable output,
two runs on one store. Faults come from real signals, real mounts and real processes; the decoder's test hooks
(stores/fault_injection.py) only choose which video crashes, stalls or hits ENOSPC."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_spec
from motionssl.preprocess.synthetic import encode, translating_frames
from motionssl.stores import open_store
from motionssl.stores.layout import scan_videos
from motionssl.stores.verify import verify_store
from test_extract import extract, report_of

CLI = [sys.executable, "-m", "motionssl.cli"]


def videos(root: Path, **frames: int) -> Path:
    """A directory of small x264 videos, `name=frames` each."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, n) in enumerate(frames.items()):
        encode(root / f"{name}.mp4", translating_frames(n, size=(96, 64), seed=i), "x264-nob")
    return root


def wait_for(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pids_with_open(path: Path) -> list[int]:
    """Processes that hold `path` open (the decoder working on a video holds its file open while it decodes)."""
    target, found = str(path.resolve()), []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                    found.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                continue
    return found


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def verified(store: Path) -> None:
    """`motionssl verify` passes (its exit status is tested in test_store.py)."""
    assert verify_store(open_store(store)) == []


@pytest.fixture
def spec(tmp_path) -> Path:
    return write_spec(tmp_path / "tiny.yaml")


# -- poison videos and dying decoders ------------------------------------------------------------------------------

def test_a_poison_video_is_quarantined_and_a_full_disk_is_not(tmp_path, spec):
    """A decoder that crashes (SIGSEGV) on a video gets a second, fresh decoder, then the video is quarantined: the
    same command skips it until its file changes. A write that fails on a full disk (a real ENOSPC OSError from the
    writer, injected: test_disk_full_while_writing has a real full filesystem) is no fault of the video: it fails
    clearly, leaves nothing, and the next run does it again."""
    d = videos(tmp_path / "in", good=8, poison=8, full=20)
    store, log = tmp_path / "s.zarr", tmp_path / "faults.log"
    env = {"MOTIONSSL_FAULT": "crash:poison,enospc:full", "MOTIONSSL_FAULT_LOG": str(log)}
    extract(d, store, spec, env=env, check=3)
    rec = {v["id"]: v for v in report_of(store)["videos"]}
    assert rec["good"]["status"] == "ok"
    poison = rec["poison"]
    assert poison["status"] == "failed" and poison["attempts"] == 2 and poison["quarantined"]
    assert poison["error"] == "decoder process crashed (signal SIGSEGV) on each of 2 attempts; quarantined"
    assert log.read_text().count("crash poison") == 2  # two fresh decoders, no more
    full = rec["full"]
    assert full["status"] == "failed" and not full["quarantined"] and full["attempts"] == 1
    assert full["error"].startswith("write failed: No space left on device (writing ")
    assert full["error"].endswith("free space and rerun the same extract (finished videos are skipped)")
    assert report_of(store)["summary"]["quarantined"] == ["poison"]
    assert scan_videos(store, "zarr") == (["good"], [])  # nothing partial left
    # The same command again: the poison is not retried while its file is unchanged; the full disk is.
    extract(d, store, spec, env=env, check=3)
    rec = {v["id"]: v for v in report_of(store)["videos"]}
    assert rec["poison"]["attempts"] == 0 and rec["poison"]["error"].startswith(
        "quarantined by an earlier run (decoder process crashed (signal SIGSEGV) on each of 2 attempts); "
        "replace or fix poison.mp4, or touch it, to try again")
    assert rec["good"]["status"] == "skipped" and rec["full"]["attempts"] == 1
    assert log.read_text().count("crash poison") == 2 and log.read_text().count("enospc full") == 2
    # Disk space back (no more fault), and the poison touched (or replaced): both done.
    os.utime(d / "poison.mp4")
    extract(d, store, spec, check=0)
    assert {v["id"]: v["status"] for v in report_of(store)["videos"]} == {"good": "skipped", "poison": "ok",
                                                                          "full": "ok"}
    assert json.loads((store / "quarantine.json").read_text()) == {"videos": {}}
    verified(store)


def test_a_killed_decoder_is_retried_in_a_fresh_one(tmp_path, spec):
    """The local cluster's workers are threads; the processes that die are their decoders. SIGKILL the one that is
    decoding a video: the video is redone in a fresh decoder, nothing partial stays, the run exits 0."""
    d = videos(tmp_path / "in", slow=4, fast=8)
    store = tmp_path / "s.zarr"
    run = subprocess.Popen([*CLI, "extract", str(d), "-o", str(store), "--spec", str(spec), "--workers", "2",
                            "--no-progress"], env={**os.environ, "MOTIONSSL_FAULT": "slow:slow"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    decoder = wait_for(lambda: pids_with_open(d / "slow.mp4"), "a decoder on slow.mp4")[0]
    assert parent_of(decoder) == run.pid
    os.kill(decoder, signal.SIGKILL)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, out + err
    rec = {v["id"]: v for v in report_of(store)["videos"]}
    assert rec["slow"]["status"] == "ok" and rec["slow"]["attempts"] == 2 and rec["fast"]["attempts"] == 1
    assert open_store(store).meta("slow")["frames"] == 4
    assert not scan_videos(store, "zarr")[1]
    verified(store)


def test_dask_workers_killed_mid_task(tmp_path, spec):
    """A real `dask scheduler` and four `dask worker` processes (no nanny: a dead worker stays dead). Dask may run a
    task whose worker died once more (allowed-failures 1). SIGKILL the worker decoding a video: the video is redone
    on another worker and the run exits 0. Kill both workers that run a second video: Dask gives up on that video
    alone (KilledWorker), which is reported, while a poison video on the same cluster kills no worker."""
    log = tmp_path / "faults.log"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
           # the decoders run in the workers: their hooks are armed there
           "MOTIONSSL_FAULT": "slow:slow_,crash:poison", "MOTIONSSL_FAULT_LOG": str(log)}
    sched_file = tmp_path / "scheduler.json"
    logs = open(tmp_path / "dask.log", "w")
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", "0", "--dashboard-address", ":0", "--scheduler-file", str(sched_file)],
                                 env=env, stdout=logs, stderr=logs)
    workers = []
    try:
        wait_for(sched_file.exists, "the scheduler")
        workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                     str(sched_file), "--no-nanny", "--nthreads", "1", "--no-dashboard"],
                                    env=env, stdout=logs, stderr=logs) for _ in range(4)]
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout="60s") as client:
            client.wait_for_workers(4, timeout=120)
            address = client.scheduler.address
        by_pid = {w.pid: w for w in workers}

        def kill_worker_decoding(video: Path) -> int:
            """SIGKILL the worker whose decoder has `video` open; returns that decoder's pid."""
            def find():
                return [p for p in pids_with_open(video)
                        if parent_of(p) in by_pid and by_pid[parent_of(p)].poll() is None]
            decoder = wait_for(find, f"a worker's decoder on {video.name}")[0]
            worker = by_pid[parent_of(decoder)]
            worker.kill()
            worker.wait()
            return decoder

        # 1. one worker dies mid-task: its video is retried on another one, and the run completes.
        d1 = videos(tmp_path / "in1", slow_a=6, fast_a=8, fast_b=8)
        s1 = tmp_path / "s1.zarr"
        cmd = [*CLI, "extract", str(d1), "-o", str(s1), "--spec", str(spec), "--scheduler", address, "--no-progress"]
        run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        decoder = kill_worker_decoding(d1 / "slow_a.mp4")
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, out + err
        assert {v["id"]: v["status"] for v in report_of(s1)["videos"]} == {"slow_a": "ok", "fast_a": "ok",
                                                                           "fast_b": "ok"}
        wait_for(lambda: not alive(decoder), "the dead worker's decoder to go")  # PDEATHSIG
        verified(s1)  # the dead attempt's partial write was cleaned up

        # 2. a video whose every worker dies is given up by Dask alone; a poison video kills no worker.
        d2 = videos(tmp_path / "in2", slow_b=20, poison=8, fast_c=8)  # slow_b lasts 6 s: the others finish first
        s2 = tmp_path / "s2.zarr"
        cmd = [*CLI, "extract", str(d2), "-o", str(s2), "--spec", str(spec), "--scheduler", address, "--no-progress"]
        run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        kill_worker_decoding(d2 / "slow_b.mp4")
        wait_for(lambda: log.exists() and log.read_text().count("crash poison") == 2, "the poison's two attempts")
        wait_for(lambda: "fast_c" in scan_videos(s2, "zarr")[0], "fast_c to be written")
        kill_worker_decoding(d2 / "slow_b.mp4")  # where Dask ran it again
        out, err = run.communicate(timeout=180)
        assert run.returncode == 3, out + err
        rec = {v["id"]: v for v in report_of(s2)["videos"]}
        assert rec["fast_c"]["status"] == "ok"
        assert rec["poison"]["quarantined"] and rec["poison"]["attempts"] == 2
        assert rec["slow_b"]["status"] == "failed" and rec["slow_b"]["error"].startswith(
            "every Dask worker that ran it died (KilledWorker)")
        # Every worker death is one of the test's three SIGKILLs: the poison crashed decoders, never a worker.
        assert sorted(w.poll() or 0 for w in workers) == [-signal.SIGKILL] * 3 + [0]  # 0: still running
        assert log.read_text().count("crash poison") == 2
        assert not scan_videos(s2, "zarr")[1]
    finally:
        for p in [*workers, scheduler]:
            if p.poll() is None:
                p.kill()
                p.wait()
        logs.close()


# -- disk full ----------------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 400 KiB filesystem (tmpfs), which the test can grow later."""
    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(where)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root with CAP_SYS_ADMIN: {r.stderr.strip()}); "
                    f"test_a_poison_video_is_quarantined_and_a_full_disk_is_not injects the same error")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_disk_full_while_writing(tmp_path, spec, small_disk, fmt):
    """A 60-frame video does not fit on a 400 KiB disk, a 4-frame one does: the big one fails with a clear reason and
    leaves nothing; once the disk has room, the same command completes it."""
    d = tmp_path / "in"
    d.mkdir()
    encode(d / "big.mp4", translating_frames(60, size=(192, 128), seed=1), "x264-nob")
    encode(d / "small.mp4", translating_frames(4, size=(96, 64), seed=2), "x264-nob")
    store, report = small_disk / f"s.{fmt}", tmp_path / "report.json"
    extra = ["--format", fmt, "--workers", 1, "--report", report]  # one at a time: the small one always fits
    extract(d, store, spec, *extra, check=3)
    rec = {v["id"]: v for v in json.loads(report.read_text())["videos"]}
    assert rec["small"]["status"] == "ok" and rec["big"]["status"] == "failed"
    assert rec["big"]["error"].startswith("write failed: No space left on device (writing ")
    assert rec["big"]["error"].endswith("free space and rerun the same extract (finished videos are skipped)")
    assert "\n" not in rec["big"]["error"] and not rec["big"].get("quarantined")
    s = open_store(store)
    assert s.videos == ["small"] and "big" not in json.loads((store / "index.json").read_text())["videos"]
    assert scan_videos(store, fmt) == (["small"], [])  # no partial write left behind
    verified(store)
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    extract(d, store, spec, *extra, check=0)
    assert {v["id"]: v["status"] for v in json.loads(report.read_text())["videos"]} == {"big": "ok",
                                                                                        "small": "skipped"}
    assert open_store(store).meta("big")["frames"] == 60
    verified(store)


# -- an output that cannot be written ---------------------------------------------------------------------------

def test_an_unwritable_output_is_fatal_before_any_work(tmp_path, spec):
    """Root ignores permission bits, so the read-only case is a read-only mount; a missing parent needs none."""
    d = videos(tmp_path / "in", one=4)
    missing = extract(d, tmp_path / "no" / "such" / "s.zarr", spec, check=2)
    assert f"output directory {tmp_path / 'no' / 'such'} does not exist" in one_line_error(missing, 2)
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ro)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN: {r.stderr.strip()})")
    try:
        extract(d, ro / "old.zarr", spec)  # a store made while it was writable
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        for store, where in ((ro / "new.zarr", ro), (ro / "old.zarr", ro / "old.zarr" / "videos")):
            line = one_line_error(extract(d, store, spec, "--overwrite", check=2), 2)
            assert line == f"error: cannot write to {where} (Read-only file system); choose another -o or make it " \
                           f"writable", line
        assert not (ro / "new.zarr").exists()
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=True)


# -- two runs at once -----------------------------------------------------------------------------------------------

def test_a_second_extract_on_the_same_store_is_refused_naming_the_first(tmp_path, spec):
    d = videos(tmp_path / "in", slow=6, other=8)
    store = tmp_path / "s.zarr"
    first = subprocess.Popen([*CLI, "extract", str(d), "-o", str(store), "--spec", str(spec), "--workers", "2",
                              "--no-progress"], env={**os.environ, "MOTIONSSL_FAULT": "slow:slow"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for((store / ".extract.lock").exists, "the first run's lock")
    second = extract(d, store, spec, check=2)
    line = one_line_error(second, 2)
    assert f"{store} is being written by another extract (pid {first.pid} on {socket.gethostname()}, since " in line
    assert line.endswith("wait for it, or delete " + str(store / ".extract.lock") + " if that process is gone")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err  # the first run was not disturbed
    assert {v["status"] for v in report_of(store)["videos"]} == {"ok"}
    verified(store)
