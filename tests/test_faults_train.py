"""Training under real faults: SIGKILL mid-epoch then --resume auto, non-finite losses, a stuck DataLoader worker,
a damaged store, and bad configuration through the real CLI."""
import gc
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_SPEC, extract_in_process
from motionssl.cli import app
from motionssl.preprocess.synthetic import encode, translating_frames
from motionssl.stores import StoreError, open_store
from motionssl.train import checkpoint
from motionssl.train.config import PretrainConfig, resolve
from motionssl.train.faults import DataTimeout, NonFiniteLoss
from motionssl.train.loop import train
from motionssl.train.methods import METHODS
from motionssl.train.run_log import read_log

TINY = dict(method="rgb-moco", backbone="r3d10", backbone_width=4, clip_len=4, stride=2, size=32, batch_size=2,
            workers=0, deterministic=True, progress=False, log_every=1, save_every=100, lr=0.05,
            method_options={"hidden": 32, "dim": 16, "queue_size": 8})
TINY_CLI = ["--backbone", "r3d10", "--backbone-width", "4", "--clip-len", "4", "--stride", "2", "--size", "32",
            "--batch-size", "2", "--option", "hidden=32", "--option", "dim=16", "--no-progress"]


@pytest.fixture(scope="module")
def store8(tmp_path_factory) -> Path:
    """Eight 12-frame videos v0..v7 (a batch of 2: 4 steps per epoch), extracted in-process."""
    root = tmp_path_factory.mktemp("train_faults")
    (root / "videos").mkdir()
    for i in range(8):
        encode(root / "videos" / f"v{i}.mp4", translating_frames(12, size=(96, 64), velocity=(2 + i % 3, i % 2),
                                                               seed=20 + i), "x264-nob")
    return extract_in_process(root / "videos", root / "store.zarr", {**TINY_SPEC, "modalities": ["rgb"]}, "zarr")


@pytest.fixture(autouse=True)
def deterministic_mode_restored():
    """train() turns deterministic algorithms on for the process; leave other tests as they were."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def config(store: Path, out: Path, **overrides) -> PretrainConfig:
    """What `motionssl pretrain` resolves: the method's paper settings under these tiny ones."""
    return resolve(METHODS["rgb-moco"].defaults, {}, {**TINY, "store": str(store), "out": str(out), **overrides})


@contextmanager
def one_thread():
    """The same thread count here as in the `OMP_NUM_THREADS=1` subprocesses, so the float sums agree bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cli(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def losses(run: Path) -> list[float]:
    return [row["loss"] for row in read_log(run)]


def copy_store(store: Path, to: Path) -> Path:
    shutil.copytree(store, to)
    return to


def first_batch_videos(store: Path, step: int, batch: int = 2, seed: int = 0) -> list[str]:
    """The videos of batch `step` of epoch 0: DistributedSampler's order, computed here independently."""
    order = torch.randperm(8, generator=torch.Generator().manual_seed(seed)).tolist()
    ids = open_store(store).videos
    return [ids[i] for i in order[step * batch:(step + 1) * batch]]


# -- SIGKILL mid-epoch, then --resume auto ------------------------------------------------------------------------

def test_pretrain_killed_mid_epoch_resumes_to_the_same_losses(store8, tmp_path):
    """A real pretrain process (2 DataLoader workers) is SIGKILLed with its whole process group while it writes its
    second checkpoint if the polling catches that, else just after it. `--resume auto` continues from
    the last checkpoint, which always loads, and the 16 losses equal those of a run that never stopped."""
    steps, save_every = 16, 5  # checkpoints at 5, 10, 15: all mid-epoch (4 steps per epoch)
    options = {**TINY["method_options"], "queue_size": 262144}  # a 16 MB queue: a checkpoint write takes a while
    with one_thread():
        straight = train(config(store8, tmp_path / "straight", steps=steps, method_options=options))
    assert straight["finished"]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "motionssl.cli", "pretrain", str(store8), "-o", str(run),
                             *TINY_CLI, "--steps", str(steps), "--workers", "2", "--deterministic", "--lr", "0.05",
                             "--option", "queue_size=262144", "--log-every", "1", "--save-every", str(save_every)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if any(run.glob(".checkpoint.pt.tmp-*")) and (run / checkpoint.LAST).exists():
            break  # a second checkpoint being written: kill it mid-write
        if (run / checkpoint.LAST).exists() and checkpoint.load(run / checkpoint.LAST)["step"] >= 2 * save_every:
            break  # the polling missed the write of step 10: kill just after it
        assert proc.poll() is None, f"pretrain ended before it could be killed: {proc.stderr.read()}"
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cut_short = list(run.glob(".checkpoint.pt.tmp-*"))
    saved = checkpoint.load(run / checkpoint.LAST)  # never half-written: it loads, whenever the kill came
    assert saved["step"] in (5, 10, 15), saved["step"]
    print(f"killed {'while writing checkpoint ' + str(saved['step'] + save_every) if cut_short else 'between writes'}"
          f", resuming from step {saved['step']}")
    with one_thread():
        r = cli("pretrain", "-o", run, "--resume", "auto", "--workers", "0", "--no-progress")
    assert r.exit_code == 0, r.output
    assert [row["step"] for row in read_log(run)] == list(range(1, steps + 1))
    assert losses(run) == losses(tmp_path / "straight")
    assert not list(run.glob(".checkpoint.pt.tmp-*"))  # a write the kill cut short is cleaned up
    a, b = (checkpoint.load(p / checkpoint.LAST)["method"] for p in (tmp_path / "straight", run))
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- non-finite losses ----------------------------------------------------------------------------------------------

def test_a_non_finite_loss_stops_with_the_step_and_the_videos(store8, tmp_path):
    """A real blow-up: Adam at lr 1e30 makes every weight ~1e30 after one step, so step 1's loss is NaN."""
    r = cli("pretrain", store8, "-o", tmp_path / "run", *TINY_CLI, "--steps", "4", "--workers", "0",
            "--lr", "1e30", "--log-every", "1")
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    v = first_batch_videos(store8, 1)
    assert lines[0].startswith(f"error: loss is nan at step 1 (batch of videos {v[0]}, {v[1]}); lower --lr or set "
                               f"grad_clip"), lines[0]
    assert lines[0].endswith("or pass --skip-nonfinite to skip such batches")
    assert len(read_log(tmp_path / "run")) == 1  # step 0 trained and logged, nothing after it


def test_skip_nonfinite_skips_the_batch_and_leaves_no_trace(store8, tmp_path, monkeypatch, capsys):
    """Video v3's clips are made +inf (fault hook `inf-sample`): each batch holding it has a NaN loss. The run stops
    there; resumed with skip_nonfinite (as the message says), such batches are skipped and counted across resumes,
    and the NaN keys reach neither the MoCo queue nor the BatchNorm statistics: every other loss is finite."""
    monkeypatch.setenv("MOTIONSSL_FAULT", "inf-sample:v3")
    orders = [torch.randperm(8, generator=torch.Generator().manual_seed(epoch)).tolist() for epoch in (0, 1)]
    bad = [epoch * 4 + order.index(3) // 2 for epoch, order in enumerate(orders)]  # v3's batch in each epoch
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=rf"loss is nan at step {bad[0]} \(batch of videos .*v3"):
        train(config(store8, run, steps=8, save_every=1))
    assert checkpoint.load(run / checkpoint.LAST)["step"] == bad[0]
    first = train(config(store8, run, steps=8, save_every=1, skip_nonfinite=True, halt_after=1),  # the bad batch
                  resume="auto")
    assert first["skipped_nonfinite"] == 1 and not first["finished"]
    summary = train(config(store8, run, steps=8, save_every=1, skip_nonfinite=True), resume="auto")
    assert summary["finished"] and summary["skipped_nonfinite"] == 2
    rows = read_log(run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["step"] for r in rows if not np.isfinite(r["loss"])] == [b + 1 for b in bad]
    assert [r["skipped_nonfinite"] for r in rows] == [sum(b < r["step"] for b in bad) for r in rows]
    state = checkpoint.load(run / checkpoint.LAST)["method"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    err = capsys.readouterr().err
    assert err.count("batch skipped (--skip-nonfinite") == 2 and "v3" in err


# -- a stuck DataLoader worker --------------------------------------------------------------------------------------

def test_a_stuck_dataloader_worker_is_named(store8, tmp_path, monkeypatch):
    """A worker hangs for real inside v5's sample (fault hook `hang-sample`); the run stops after data_timeout
    naming the sample and its video, and the stuck worker process is gone afterwards."""
    monkeypatch.setenv("MOTIONSSL_FAULT", "hang-sample:v5")
    with pytest.raises(DataTimeout) as e:
        train(config(store8, tmp_path / "run", steps=8, workers=2, data_timeout=3))
    message = str(e.value)
    del e
    assert message.startswith("no batch from the DataLoader workers for 3s: worker ")
    assert "on sample 5 (video 'v5')" in message and "raise --data-timeout" in message and "\n" not in message
    gc.collect()  # the loader's iterator goes, and with it its workers
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()


# -- a damaged store ------------------------------------------------------------------------------------------------

def test_pretrain_skips_broken_videos_when_asked(store8, tmp_path, capsys):
    store = copy_store(store8, tmp_path / "s.zarr")
    (store / "videos" / "v6" / "rgb" / "c" / "0" / "0" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"1 broken video\(s\): v6 \(rgb: chunk file"):
        train(config(store, tmp_path / "refused", steps=2))
    assert not (tmp_path / "refused" / checkpoint.LAST).exists()
    summary = train(config(store, tmp_path / "run", steps=2, skip_broken=True))
    assert summary["finished"] and list(summary["skipped_videos"]) == ["v6"]
    assert "skipping 1 broken video(s)" in capsys.readouterr().err
    assert summary["steps_per_epoch"] == 3  # 7 videos left, batches of 2


def test_damage_inside_a_file_stops_training_naming_video_and_array(store8, tmp_path):
    """A truncated shard passes the start-up check (its file is there); reading it in a DataLoader worker fails, and
    the run stops with one line naming the video and the array."""
    store = copy_store(store8, tmp_path / "s.zarr")
    shard = store / "videos" / "v2" / "rgb" / "c" / "0" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(StoreError) as e:
        train(config(store, tmp_path / "run", steps=8, workers=2))
    assert str(e.value).startswith(f"cannot read rgb of video 'v2' in {store} (")
    assert "motionssl verify" in str(e.value) and "\n" not in str(e.value)


# -- bad configuration and CLI input, each through a real `motionssl` process ----------------------------------------

def test_bad_configuration_is_one_line_before_any_work(store8, tmp_path):
    """(An unknown method: test_pretrain.py::test_pretrain_errors_are_one_line; a broken store:
    test_pretrain_skips_broken_videos_when_asked above.)"""
    mv_only = extract_in_process(store8.parent / "videos", tmp_path / "mv.zarr",
                                 {**TINY_SPEC, "modalities": ["mv"]}, "zarr")
    labels = tmp_path / "labels.csv"
    labels.write_text("video_id,label,split\nv0,a,train\nv1,b,train\nclass_x/v_9,a,test\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    run = tmp_path / "runs"
    pretrain = ["pretrain", "--steps", "1", *TINY_CLI]
    cases = {  # name: (arguments, what the line must say); each exits 2
        "missing modality": ([*pretrain, mv_only, "-o", run / "b"],
                             "has no rgb; extract one that does with `motionssl extract VIDEOS -o STORE` and "
                             "`--spec compressed`"),
        "labels": (["finetune", "--from-scratch", "--backbone", "r3d10", store8, "--labels", labels,
                    "-o", run / "c", "--steps", "1"],
                   "are not in the store (its ids look like v0, v1, v2): class_x/v_9; extract them or fix the labels"),
        "empty video dir": (["extract", empty, "-o", tmp_path / "e.zarr"], "no video files found under"),
        "unknown spec": (["extract", store8.parent / "videos", "-o", tmp_path / "f.zarr", "--spec", "nope"],
                         "unknown spec"),
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "motionssl.cli", *map(str, args)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for name, (args, _) in cases.items()}  # all at once: each pays its own start-up
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, out, err)
        assert cases[name][1] in lines[0], (name, lines[0])
    # a closed choice: typer refuses it before anything runs, listing the choices
    r = subprocess.run([sys.executable, "-m", "motionssl.cli", *map(str, [*pretrain, store8, "-o", run / "a",
                        "--backbone", "resnet9000"])], capture_output=True, text=True)
    assert r.returncode == 2 and "'resnet9000' is not one of" in r.stderr and "'r3d18'" in r.stderr, r.stderr
    for name in "abc":  # nothing was trained or written
        assert not (run / name / checkpoint.LAST).exists() and not (run / name / "log.csv").exists()
    assert not (tmp_path / "e.zarr").exists() and not (tmp_path / "f.zarr").exists()


# -- SIGTERM (what SLURM sends before its kill), and two runs on one run directory -----------------------------------

def start_pretrain(store: Path, run: Path, *extra) -> subprocess.Popen:
    """A real `pretrain` process with 2 DataLoader workers, in its own process group."""
    return subprocess.Popen([sys.executable, "-m", "motionssl.cli", "pretrain", str(store), "-o", str(run),
                             *TINY_CLI, "--option", "queue_size=8", "--workers", "2", "--deterministic", "--lr", "0.05",
                             "--log-every", "1", *map(str, extra)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, run: Path, step: int) -> list[int]:
    """Wait until `run` logged `step`; the pids of the process's children then (its DataLoader workers)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"pretrain ended early: {proc.stderr.read()}"
        try:
            logged = read_log(run)[-1]["step"] if (run / "log.csv").exists() else 0
        except (IndexError, KeyError, TypeError, ValueError):  # a row being written
            logged = 0
        if logged >= step:
            return [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        time.sleep(0.01)
    raise AssertionError(f"{run} did not reach step {step}")


def all_gone(pids: list[int], within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_sigterm_saves_the_step_it_is_in_and_the_resumed_run_equals_one_never_stopped(store8, tmp_path):
    """SIGTERM to the whole process group, as SLURM signals every process of a job: the run finishes its step,
    saves it, shuts its workers down and exits 143; nothing is lost. A stale lock (its holder dead) is taken over
    by the resumed run, whose losses equal those of a run that never stopped."""
    steps = 60
    with one_thread():
        assert train(config(store8, tmp_path / "straight", steps=steps))["finished"]
    run = tmp_path / "run"
    proc = start_pretrain(store8, run, "--steps", steps, "--save-every", 100)
    workers = wait_for_step(proc, run, 3)
    assert len(workers) >= 2, workers
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, out + err
    saved = checkpoint.load(run / checkpoint.LAST)["step"]
    assert 3 <= saved < steps and f"stopped by SIGTERM at step {saved} of {steps}" in out, out
    assert read_log(run)[-1]["step"] == saved  # every step it logged is in the checkpoint
    assert all_gone(workers), "a DataLoader worker outlived the run"
    assert not (run / ".run.lock").exists()

    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / ".run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "then"}))
    with one_thread():
        r = cli("pretrain", "-o", run, "--resume", "auto", "--workers", "0", "--no-progress")
    assert r.exit_code == 0, r.output
    assert [row["step"] for row in read_log(run)] == list(range(1, steps + 1))
    assert losses(run) == losses(tmp_path / "straight")
    assert not (run / ".run.lock").exists()


def test_a_second_pretrain_on_the_same_run_directory_is_refused_naming_the_first(store8, tmp_path):
    """Two real processes. The second is refused (exit 2) naming the first; the first, then sent SIGTERM to its
    main process alone (`kill PID`), saves, and its workers exit with it."""
    run = tmp_path / "run"
    first = start_pretrain(store8, run, "--steps", 2000, "--save-every", 5000)
    workers = wait_for_step(first, run, 1)
    second = subprocess.run([sys.executable, "-m", "motionssl.cli", "pretrain", str(store8), "-o",
                             str(run), *TINY_CLI, "--steps", "4", "--workers", "0"], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stdout + second.stderr
    assert lines[0].startswith(f"error: {run} is being written by another training run (pid {first.pid} on "
                               f"{socket.gethostname()}, since "), lines[0]
    assert lines[0].endswith(f"wait for it, or delete {run / '.run.lock'} if that process is gone"), lines[0]
    assert first.poll() is None  # undisturbed
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 143 and "Traceback" not in err, out + err
    assert checkpoint.load(run / checkpoint.LAST)["step"] == read_log(run)[-1]["step"]
    assert all_gone(workers) and not (run / ".run.lock").exists()
