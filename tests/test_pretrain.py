"""`motionssl pretrain`: a run whose loss goes down, exact resume, a 2-process DDP run, and its errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from motionssl.preprocess.synthetic import encode, translating_frames
from motionssl.train import checkpoint
from motionssl.pictures.curves import smooth
from motionssl.train.run_log import read_log
from conftest import write_spec
from test_extract import extract, motionssl

BIN = Path(sys.executable).parent
TINY = ["--backbone", "r3d10", "--backbone-width", "4", "--clip-len", "4", "--stride", "2", "--size", "32",
        "--option", "hidden=32", "--option", "dim=16", "--no-progress"]


@pytest.fixture(scope="module")
def moco_store(tmp_path_factory) -> Path:
    """Eight short videos, each a texture of its own tint moving its own way, extracted with the tiny spec."""
    root = tmp_path_factory.mktemp("pretrain")
    videos = root / "videos"
    videos.mkdir()
    tints = [(1, .3, .3), (.3, 1, .3), (.3, .3, 1), (1, 1, .3), (1, .3, 1), (.3, 1, 1), (1, 1, 1), (.6, .4, .2)]
    velocities = [(3, 0), (0, 3), (-3, 0), (0, -3), (2, 2), (-2, 2), (3, 1), (1, 3)]
    for i, (tint, velocity) in enumerate(zip(tints, velocities)):
        frames = translating_frames(24, velocity=velocity, seed=10 + i)
        encode(videos / f"tint_{i}.mp4", [(f * np.array(tint)).astype(np.uint8) for f in frames], "x264-nob")
    store = root / "store.zarr"
    extract(videos, store, write_spec(root / "tiny.yaml"))
    return store


def pretrain(*args, env=None) -> subprocess.CompletedProcess:
    return motionssl("pretrain", *[str(a) for a in args], env=env)


def test_rgb_moco_loss_goes_down(moco_store, tmp_path):
    run = tmp_path / "run"
    r = pretrain(moco_store, "-o", run, *TINY, "--steps", "50", "--batch-size", "8", "--workers", "0",
                 "--lr", "0.003", "--backbone-width", "8", "--option", "queue_size=16", "--option", "tau=0.2",
                 "--option", "momentum=0.9", "--log-every", "1", "--save-every", "25")
    assert r.returncode == 0, r.stderr
    losses = np.array([row["loss"] for row in read_log(run)])
    assert len(losses) == 50 and np.isfinite(losses).all()
    # Once the queue holds real keys (step 3 on), a representation that cannot tell videos apart scores
    # log(1 + 14): 16 keys, 2 of them from the query's own video and masked. Training must get well below.
    chance = np.log(1 + 14)
    assert losses[-12:].mean() < min(chance - 0.4, losses[2:12].mean() - 0.2), losses
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 50 and summary["steps_per_epoch"] == 1
    state = checkpoint.load(run / "checkpoint.pt")
    assert state["step"] == 50 and state["backbone"]["name"] == "r3d10"
    assert list((run / "tensorboard").iterdir()), "no TensorBoard events"
    curves = cv2.imread(str(run / "curves.png"))
    assert curves.shape == (300, 3 * 480, 3) and (curves < 200).any()
    assert (run / "config.yaml").read_text().count("queue_size: 16") == 1


def test_resume_continues_exactly(moco_store, tmp_path):
    """Halted at step 3 and resumed, a run logs the same losses as one that never stopped."""
    common = [moco_store, *TINY, "--steps", "6", "--batch-size", "2", "--log-every", "1",
              "--save-every", "100", "--deterministic", "--option", "queue_size=8", "--lr", "0.05"]
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    assert pretrain("-o", straight, *common, "--workers", "0").returncode == 0
    r = pretrain("-o", halted, *common, "--workers", "2", "--halt-after", "3")
    assert r.returncode == 0, r.stderr
    assert "halted at step 3 of 6" in r.stdout
    assert checkpoint.load(halted / "checkpoint.pt")["step"] == 3
    r = pretrain("-o", halted, "--resume", "auto", "--workers", "0", "--no-progress")  # the saved config
    assert r.returncode == 0, r.stderr
    a, b = read_log(straight), read_log(halted)
    assert [row["step"] for row in b] == [1, 2, 3, 4, 5, 6]
    assert [row["loss"] for row in a] == [row["loss"] for row in b]
    sa, sb = (checkpoint.load(p / "checkpoint.pt")["method"] for p in (straight, halted))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # weights, momentum encoder and queue


def test_resume_refuses_a_different_experiment(moco_store, tmp_path):
    run = tmp_path / "run"
    common = [moco_store, *TINY, "--steps", "2", "--batch-size", "2", "--workers", "0"]
    assert pretrain("-o", run, *common).returncode == 0
    r = pretrain("-o", run, *common, "--lr", "0.5", "--resume", "auto")
    assert r.returncode == 2 and "cannot resume with a different config (lr:" in r.stderr
    r = pretrain("-o", run, *common)
    assert r.returncode == 2 and "already holds a run; continue it with --resume auto" in r.stderr
    r = pretrain("-o", run, *common, "--resume", str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "no such checkpoint" in r.stderr


def test_resume_refuses_a_store_that_changed_unless_allowed(moco_store, tmp_path):
    """The store's version (a digest of its index) goes into config.yaml and summary.json; a resume on a store whose
    videos changed is refused, and goes on with --allow-store-change."""
    import shutil
    import yaml

    from motionssl.stores import index_digest, open_store, write_index
    from motionssl.stores.layout import INDEX, read_json

    store = tmp_path / "store.zarr"
    shutil.copytree(moco_store, store)
    version = open_store(store).version
    assert version == index_digest(read_json(store / INDEX)["videos"]) and version.startswith("sha256:")
    r = motionssl("info", str(store))
    assert r.returncode == 0 and f"version {version}" in r.stdout
    assert json.loads(motionssl("info", str(store), "--json").stdout)["version"] == version

    run = tmp_path / "run"
    common = [*TINY, "--steps", "2", "--batch-size", "2", "--workers", "0"]
    assert pretrain(store, "-o", run, *common, "--halt-after", "1").returncode == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["store_version"] == version
    assert json.loads((run / "summary.json").read_text())["store_version"] == version
    r = pretrain("-o", run, "--resume", "auto", "--no-progress")  # the same store: resumes
    assert r.returncode == 0, r.stderr

    run2 = tmp_path / "run2"
    assert pretrain(store, "-o", run2, *common, "--halt-after", "1").returncode == 0
    index = read_json(store / INDEX)["videos"]
    index.pop(sorted(index)[-1])  # a video removed from the store
    write_index(store, index)
    changed = open_store(store).version
    assert changed != version
    r = pretrain("-o", run2, "--resume", "auto", "--no-progress")
    assert r.returncode == 2
    assert f"changed since this run last saved (version {version} -> {changed})" in r.stderr
    assert "--allow-store-change" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert checkpoint.load(run2 / "checkpoint.pt")["step"] == 1  # untouched
    r = pretrain("-o", run2, "--resume", "auto", "--no-progress", "--allow-store-change")
    assert r.returncode == 0, r.stderr
    assert "continuing on it (--allow-store-change)" in r.stderr
    assert json.loads((run2 / "summary.json").read_text())["store_version"] == changed
    assert yaml.safe_load((run2 / "config.yaml").read_text())["store_version"] == changed
    assert checkpoint.load(run2 / "checkpoint.pt")["config"]["store_version"] == changed


def test_ddp_two_processes_on_gloo(moco_store, tmp_path):
    run = tmp_path / "ddp"
    # gloo forced: on a host with one GPU, NCCL would be chosen and rank 1 would ask for a missing cuda:1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOTIONSSL_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(BIN / "motionssl"), "pretrain", str(moco_store), "-o", str(run), *TINY, "--steps", "3",
           "--batch-size", "2", "--workers", "0", "--log-every", "1", "--option", "queue_size=8"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["steps_per_epoch"] == 2
    state = checkpoint.load(run / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    # both ranks enqueue the gathered keys: 3 steps x 2 ranks x 2 clips, video ids from the whole batch
    queue_ids = state["method"]["queue.video_ids"]
    assert (queue_ids >= 0).sum() == 8  # the 8-slot queue wrapped around
    assert len(read_log(run)) == 3  # only rank 0 logs
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]


def test_pretrain_errors_are_one_line(moco_store, tmp_path):
    results = []
    r = pretrain(tmp_path / "nothing", "-o", tmp_path / "r", "--steps", "1")
    assert r.returncode == 2 and "is not a motionssl store" in r.stderr
    results.append(r)
    r = pretrain(moco_store, "-o", tmp_path / "r", "--steps", "1", "--method", "simclr")  # a typed choice: typer's
    assert r.returncode == 2 and "'simclr' is not one of" in r.stderr and "'rgb-moco', 'cmd'" in r.stderr  # usage error
    r = pretrain(moco_store, "-o", tmp_path / "r", *TINY, "--steps", "1", "--batch-size", "64")
    assert r.returncode == 2 and "too few for batch size 64" in r.stderr
    results.append(r)
    r = pretrain(moco_store, "-o", tmp_path / "r", *TINY, "--steps", "1", "--option", "temperature=1")
    assert r.returncode == 2 and "unknown method_options temperature" in r.stderr
    results.append(r)
    for r in results:
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--resume" in motionssl("pretrain", "--help").stdout


def test_moving_average_matches_a_loop():
    values = np.random.default_rng(0).normal(size=40)
    naive = [values[max(0, i + 1 - 7):i + 1].mean() for i in range(40)]
    np.testing.assert_allclose(smooth(values, 7), naive)
