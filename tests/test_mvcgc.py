"""MVCGC: the top-k intersection on a hand-built example, eq. 4 against a naive loop and closed forms, stages from
the step, gradients to every part, queues in lockstep, decoded motion vectors equal to the stored ones, a short
pretrain whose losses go down in both stages, exact resume inside each stage, and one-line errors."""
import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch
import yaml

from motionssl.stores import StoreError, open_store
from motionssl.train import checkpoint
from motionssl.train.config import resolve
from motionssl.train.datasets import ClipDataset, Needs
from motionssl.train.decoded_motion import DecodedMotionStore
from motionssl.train.methods.mvcgc import MVCGC, cross_guidance_nce, topk_intersection
from motionssl.train.optim import lr_at
from motionssl.train.run_log import read_log
from test_cmd import rgb_only_store  # noqa: F401 (fixture)
from test_datasets import one_thread  # noqa: F401 (fixture)
from test_contrastive import dot, unit
from test_datasets import assert_samples_equal
from test_extract import motionssl
from test_pretrain import moco_store  # noqa: F401 (fixture)

TINY_CLI = ["--backbone", "r3d10", "--backbone-width", "4", "--clip-len", "4", "--stride", "2", "--size", "32",
            "--option", "hidden=16", "--option", "dim=8", "--option", "queue_size=8", "--no-progress"]


def tiny_mvcgc(**options) -> MVCGC:
    cfg = resolve(MVCGC.defaults, {}, {"method": "mvcgc", "store": "unused", "out": "unused", "backbone": "r3d10",
                                       "backbone_width": 4, "clip_len": 4, "stride": 2, "size": 32, "steps": 10,
                                       "method_options": {"hidden": 16, "dim": 8, "queue_size": 12, **options}})
    torch.manual_seed(0)
    return MVCGC(cfg, total_steps=10)


def random_batch(b: int = 4, *, seed: int = 1, t: int = 4, size: int = 32, cell: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    views = [{"rgb": torch.randn(b, 3, t, size, size, generator=g),
              "mv": 4 * torch.randn(b, 2, t, size // cell, size // cell, generator=g)} for _ in range(2)]
    return {"views": views, "video": torch.arange(b) + 10 * seed}


# --- positives and eq. 4 -------------------------------------------------------------------------------------------

def test_topk_intersection_on_a_hand_built_example():
    sim_rgb = torch.tensor([[.9, .8, .1, .7, .2], [.1, .2, .3, .4, .5]])
    sim_mv = torch.tensor([[.1, .9, .8, .7, .3], [.5, .4, .3, .2, .1]])
    # row 0: top-3 rgb {0, 1, 3}, top-3 mv {1, 2, 3}: {1, 3}; row 1: {2, 3, 4} and {0, 1, 2}: {2}
    expected = torch.tensor([[0, 1, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(topk_intersection(sim_rgb, sim_mv, 3), expected)
    assert torch.equal(topk_intersection(sim_rgb, sim_mv, 1), torch.zeros(2, 5, dtype=torch.bool))
    assert torch.equal(topk_intersection(sim_rgb, sim_mv, 5), torch.ones(2, 5, dtype=torch.bool))
    # excluded entries (the query's own video) are neither chosen nor counted among the k
    exclude = torch.tensor([[0, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    # row 0 without 1: rgb {0, 3, 4}, mv {2, 3, 4}: {3, 4}; row 1: only 0 and 1 remain, both in both
    expected = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(topk_intersection(sim_rgb, sim_mv, 3, exclude=exclude), expected)


def naive_cross(q, k, queue, positives, tau, exclude) -> tuple[float, list[bool]]:
    losses, correct = [], []
    for i, qi in enumerate(q.double().tolist()):
        keys = [(k[i].double().tolist(), True)] + [(row, bool(positives[i, j])) for j, row in
                                                     enumerate(queue.double().tolist())
                                                     if not exclude[i, j] or positives[i, j]]
        e = [(math.exp(dot(qi, key) / tau), pos) for key, pos in keys]
        losses.append(-math.log(sum(v for v, pos in e if pos) / sum(v for v, _ in e)))
        correct.append(max(e, key=lambda vp: vp[0])[1])
    return sum(losses) / len(losses), correct


@pytest.mark.parametrize("B,K,tau", [(3, 8, 0.07), (5, 20, 0.2)])
def test_cross_guidance_nce_matches_a_naive_loop(B, K, tau):
    q, k, queue = unit(B, 6, seed=1), unit(B, 6, seed=2), unit(K, 6, seed=3)
    g = torch.Generator().manual_seed(4)
    positives = torch.rand(B, K, generator=g) < 0.25
    exclude = (torch.rand(B, K, generator=g) < 0.3) & ~positives
    loss, correct = cross_guidance_nce(q, k, queue, positives, tau, exclude=exclude)
    expected, expected_correct = naive_cross(q, k, queue, positives, tau, exclude)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert correct.tolist() == expected_correct
    no_positives = torch.zeros(B, K, dtype=torch.bool)  # only the own pair: MoCo's single-view InfoNCE
    from motionssl.train.contrastive import info_nce
    torch.testing.assert_close(cross_guidance_nce(q, k, queue, no_positives, tau, exclude=exclude)[0],
                               info_nce(q, k, queue, tau, queue_mask=exclude))


def test_cross_guidance_nce_closed_forms():
    B, K, tau = 3, 6, 0.5
    positives = torch.zeros(B, K, dtype=torch.bool)
    positives[0, :2] = positives[2, 5] = True
    exclude = torch.zeros(B, K, dtype=torch.bool)
    exclude[1, :3] = True
    kept = torch.tensor([K, K - 3, K]) + 1          # the own pair and the queue rows not excluded
    n_pos = positives.sum(1) + 1
    same = unit(1, 8, seed=5)  # identical embeddings: the positives' share of equal terms
    loss, _ = cross_guidance_nce(same.expand(B, 8), same.expand(B, 8), same.expand(K, 8), positives, tau,
                                 exclude=exclude)
    assert loss.item() == pytest.approx(torch.log(kept / n_pos).mean().item(), rel=1e-6)
    eye = torch.eye(B + K, 12)  # orthogonal: the own pair scores 1 / tau, every queue row 0
    loss, correct = cross_guidance_nce(eye[:B], eye[:B], eye[B:], positives, tau, exclude=exclude)
    e = math.exp(1 / tau)
    expected = np.mean([-math.log((e + p - 1) / (e + n - 1)) for p, n in zip(n_pos.tolist(), kept.tolist())])
    assert loss.item() == pytest.approx(expected, rel=1e-6) and correct.all()


# --- the method ----------------------------------------------------------------------------------------------------

def test_stage_is_a_function_of_the_step():
    method = tiny_mvcgc(init_fraction=0.5)
    assert [method.stage(s) for s in range(10)] == [1] * 5 + [2] * 5
    assert [tiny_mvcgc(init_steps=3).stage(s) for s in (0, 2, 3, 9)] == [1, 1, 2, 2]
    assert tiny_mvcgc(init_steps=0).stage(0) == 2
    with pytest.raises(Exception, match="init_fraction within"):
        tiny_mvcgc(init_fraction=1.5)


@pytest.mark.parametrize("init_steps", [10, 0])
def test_one_step_changes_every_online_part_and_momentum_moves_the_keys(init_steps):
    method = tiny_mvcgc(init_steps=init_steps, momentum=0.5).train()
    method(random_batch(seed=2), step=0)  # fill the queues with real keys first
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    out = method(random_batch(seed=1), step=1)
    assert out["logs"]["stage"] == (1.0 if init_steps else 2.0)
    assert set(out["logs"]) == {"stage", "rgb_top1", "mv_top1", "cross_top1", "positives"}
    out["loss"].backward()
    optimizer.step()
    online = [n for n, p in method.named_parameters() if p.requires_grad]
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in online} == {"rgb.backbone", "rgb.head", "mv.backbone",
                                                                         "mv.head"}
    unchanged = [n for n in online if torch.equal(dict(method.named_parameters())[n], before[n])]
    assert not unchanged, unchanged
    params = dict(method.named_parameters())
    method.after_step(1)
    for name in online:  # key <- 0.5 key + 0.5 online
        key = name.replace("backbone.", "backbone_k.", 1).replace("head.", "head_k.", 1)
        torch.testing.assert_close(params[key], 0.5 * before[key] + 0.5 * params[name])


def test_both_queues_take_the_batchs_keys_in_lockstep():
    method = tiny_mvcgc()
    batch = random_batch(b=4, seed=3)
    with torch.no_grad():
        method(batch, step=0)
    for stream in (method.rgb, method.mv):
        assert stream.queue.ptr.item() == 4 and stream.queue.video_ids[:4].tolist() == [30, 31, 32, 33]
    with torch.no_grad():
        k_r = method.rgb.key(batch["views"][1]["rgb"], seed=0)
    torch.testing.assert_close(method.rgb.queue.keys[:4], k_r)


# --- motion vectors decoded from the videos ------------------------------------------------------------------------

def test_decoded_motion_vectors_equal_the_stored_ones(tiny_stores):
    """x264 (48 and 6 frames) and MPEG-4 Part 2 sources: every sample is the same from either source."""
    store = open_store(tiny_stores["hdf5"])
    decoded = DecodedMotionStore(store)
    for vid in store.videos:
        frames = np.array([0, 3, 5, store.meta(vid)["frames"] - 1])
        for name in ("mv", "mv_valid"):
            np.testing.assert_array_equal(decoded.read_at(vid, name, frames), store.read_at(vid, name, frames))
        np.testing.assert_array_equal(decoded.read(vid, "mv"), store.read(vid, "mv"))
    needs = Needs(modalities=("rgb", "mv"), clip_len=4, stride=2, views=2)
    a, b = ClipDataset(store, needs, size=32), ClipDataset(decoded, needs, size=32)
    for key in [(0, 0), (1, 3), (2, 1)]:
        assert_samples_equal(a[key], b[key])


def test_decoded_motion_refuses_missing_and_reencoded_sources(rgb_only_store, tmp_path):
    def with_meta(**changes):
        copy = tmp_path / f"store_{len(list(tmp_path.iterdir()))}.zarr"
        shutil.copytree(rgb_only_store, copy)
        index = json.loads((copy / "index.json").read_text())
        index["videos"]["tint_0"].update(changes)
        (copy / "index.json").write_text(json.dumps(index))
        return open_store(copy)

    with pytest.raises(StoreError, match="its source '/nowhere/tint_0.mp4' is not a file; --mv-source decode"):
        DecodedMotionStore(with_meta(source="/nowhere/tint_0.mp4"))
    with pytest.raises(StoreError, match="extracted with --reencode"):
        DecodedMotionStore(with_meta(reencoded=True))


# --- end to end ----------------------------------------------------------------------------------------------------

def pretrain(*args):
    return motionssl("pretrain", "--method", "mvcgc", *[str(a) for a in args])


def test_pretrain_lowers_the_loss_of_both_stages(moco_store, tmp_path):
    config = tmp_path / "constant.yaml"
    config.write_text(yaml.safe_dump({"min_lr_ratio": 1.0}))
    run = tmp_path / "run"
    r = pretrain(moco_store, "-o", run, *TINY_CLI, "--backbone-width", "8", "--option", "hidden=32",
                 "--option", "dim=16", "--option", "queue_size=16", "--option", "tau=0.2", "--option", "momentum=0.9",
                 "--option", "init_steps=20", "--steps", "40", "--batch-size", "8", "--workers", "0", "--lr", "0.003",
                 "--log-every", "1", "--config", config)
    assert r.returncode == 0, r.stderr
    log = read_log(run)
    assert [row["stage"] for row in log] == [1.0] * 20 + [2.0] * 20

    def mean(key, rows):
        return float(np.mean([row[key] for row in rows]))

    # stage 1: two InfoNCE of 1 + 14 keys each (16 queued, 2 of the query's video masked): chance 2 log 15
    assert mean("loss", log[14:20]) < min(mean("loss", log[2:8]) - 0.5, 2 * math.log(15) - 1.0)
    assert mean("loss", log[34:40]) < mean("loss", log[20:26]) - 0.4  # seeds 0-2: 0.57-1.08 lower
    assert mean("cross_top1", log[34:40]) > mean("cross_top1", log[20:26])
    # mean |top-k(RGB) & top-k(MV)| over the batch, own pair excluded: in [0, k], and some queries have one
    assert all(0 <= row["positives"] <= 5 for row in log[20:]) and mean("positives", log[20:]) > 0.5
    assert cv2.imread(str(run / "curves.png")).shape[1] == 4 * 480  # loss, lr, clips/s, cross_top1


@pytest.mark.parametrize("stage_schedule", [True, False])
def test_stage_two_starts_its_own_learning_rate_schedule(moco_store, tmp_path, stage_schedule):
    run = tmp_path / "run"
    r = pretrain(moco_store, "-o", run, *TINY_CLI, "--option", "init_steps=3", "--option", "queue_size=8",
                 "--option", f"stage_schedule={str(stage_schedule).lower()}", "--steps", "6", "--batch-size", "2",
                 "--workers", "0", "--lr", "0.01", "--log-every", "1")
    assert r.returncode == 0, r.stderr
    lr = [row["lr"] for row in read_log(run)]  # the lr of each logged step, steps 0..5
    one_cosine = [lr_at(s, base_lr=0.01, warmup_steps=0, total_steps=6) for s in range(6)]
    stages = [lr_at(s, base_lr=0.01, warmup_steps=0, total_steps=3) for s in range(3)] * 2
    assert lr == pytest.approx(stages if stage_schedule else one_cosine)


def test_resume_continues_exactly_in_either_stage(moco_store, tmp_path):
    common = [moco_store, *TINY_CLI, "--steps", "8", "--batch-size", "2", "--log-every", "1",
              "--save-every", "100", "--deterministic", "--lr", "0.01", "--option", "init_steps=4"]
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    assert pretrain("-o", straight, *common, "--workers", "0").returncode == 0
    r = pretrain("-o", halted, *common, "--workers", "2", "--halt-after", "3")  # inside stage 1
    assert r.returncode == 0 and "halted at step 3 of 8" in r.stdout, r.stderr
    r = pretrain("-o", halted, "--resume", "auto", "--workers", "0", "--no-progress", "--halt-after", "3")
    assert r.returncode == 0 and "halted at step 6 of 8" in r.stdout, r.stderr  # inside stage 2
    state = checkpoint.load(halted / "checkpoint.pt")
    assert state["step"] == 6 and (state["method"]["rgb.queue.video_ids"] >= 0).sum() == 8
    r = pretrain("-o", halted, "--resume", "auto", "--workers", "0", "--no-progress")
    assert r.returncode == 0, r.stderr
    a, b = read_log(straight), read_log(halted)
    assert [row["stage"] for row in b] == [1.0] * 4 + [2.0] * 4
    assert [row["loss"] for row in a] == [row["loss"] for row in b]
    sa, sb = (checkpoint.load(p / "checkpoint.pt")["method"] for p in (straight, halted))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # encoders, key copies, queues


def test_decode_mode_trains_from_a_store_without_motion_vectors(moco_store, rgb_only_store, tmp_path):
    """The rgb-only store holds the same videos: decoding their vectors gives the store run's losses exactly."""
    common = [*TINY_CLI, "--steps", "3", "--batch-size", "4", "--workers", "0", "--log-every", "1",
              "--option", "init_steps=1", "--deterministic"]
    r = pretrain(moco_store, "-o", tmp_path / "store", *common)
    assert r.returncode == 0, r.stderr
    r = pretrain(rgb_only_store, "-o", tmp_path / "decode", *common, "--mv-source", "decode")
    assert r.returncode == 0, r.stderr
    losses = {source: [row["loss"] for row in read_log(tmp_path / source)] for source in ("store", "decode")}
    assert losses["store"] == losses["decode"]


def test_errors_are_one_line(rgb_only_store, tmp_path):
    for extra, message in [((), "has no mv;"), (("--mv-source", "nearby"), "mv_source must be one of store, decode")]:
        r = pretrain(rgb_only_store, "-o", tmp_path / "r", *TINY_CLI, "--steps", "1", *extra)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--spec compressed" in pretrain(rgb_only_store, "-o", tmp_path / "r", *TINY_CLI,
                                           "--steps", "1").stderr
    r = motionssl("pretrain", "--method", "rgb-moco", rgb_only_store, "-o", tmp_path / "m", "--steps", "1",
                  "--mv-source", "decode")
    assert r.returncode == 2 and "unknown method_options mv_source" in r.stderr


# --- the union ablation and the MV stream in finetune and evaluate (Tables 2-5) -----------------------------------

def test_topk_union_on_a_hand_built_example():
    from motionssl.train.methods.mvcgc import topk_union

    sim_rgb = torch.tensor([[.9, .8, .1, .7, .2], [.1, .2, .3, .4, .5]])
    sim_mv = torch.tensor([[.1, .9, .8, .7, .3], [.5, .4, .3, .2, .1]])
    # row 0: {0, 1, 3} | {1, 2, 3} = {0, 1, 2, 3}; row 1: {2, 3, 4} | {0, 1, 2} = all
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(topk_union(sim_rgb, sim_mv, 3), expected)
    exclude = torch.tensor([[0, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    # row 0 without 1: {0, 3, 4} | {2, 3, 4}; row 1: only 0 and 1 remain
    expected = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(topk_union(sim_rgb, sim_mv, 3, exclude=exclude), expected)


def test_positives_union_widens_the_positive_set_and_changes_the_stage_2_loss():
    out = {}
    for positives in ("intersection", "union"):
        method = tiny_mvcgc(init_steps=0, k=3, positives=positives).train()
        method(random_batch(seed=2), step=0)  # fill the queues
        method(random_batch(seed=4), step=1)
        out[positives] = method(random_batch(seed=1), step=2)
    assert out["union"]["logs"]["positives"] > out["intersection"]["logs"]["positives"]
    assert out["union"]["loss"].item() < out["intersection"]["loss"].item()  # more positives inside the log
    with pytest.raises(Exception, match="positives must be one of intersection, union"):
        tiny_mvcgc(positives="both")


def test_streams_in_finetune_and_evaluate(tiny_stores, tmp_path):
    """An MVCGC run, then its MV encoder and both streams through finetune, evaluate classify and retrieve."""
    store = tiny_stores["zarr"]
    labels = tmp_path / "labels.csv"
    labels.write_text("video_id,label,split\nright,a,train\ndown,b,train\nshort,a,test\n")
    run = tmp_path / "mvcgc"
    r = pretrain(store, "-o", run, *TINY_CLI, "--steps", "2", "--batch-size", "3", "--workers", "0",
                 "--option", "positives=union")
    assert r.returncode == 0, r.stderr
    ckpt = run / "checkpoint.pt"
    method_state = checkpoint.load(ckpt)["method"]
    common = [store, "--checkpoint", ckpt, "--labels", labels, "--steps", "2", "--batch-size", "2", "--workers", "0",
              "--no-progress", "--log-every", "1"]
    runs = {}
    for stream in ("mv", "both"):
        runs[stream] = tmp_path / f"ft-{stream}"
        r = motionssl("finetune", *[str(a) for a in common], "-o", runs[stream], "--stream", stream)
        assert r.returncode == 0, r.stderr
    both_log = read_log(runs["both"])
    assert all(row["loss"] == pytest.approx(row["ce_rgb"] + row["ce_mv"], rel=1e-5) for row in both_log)
    # the MV classifier starts from the MVCGC run's MV encoder, not the RGB one
    from motionssl.train.methods.mvcgc import mv_encoder

    probe = tmp_path / "probe"
    r = motionssl("finetune", *[str(a) for a in common], "-o", probe, "--stream", "mv", "--linear-probe",
                  "--cached-features", "--views", "2")
    assert r.returncode == 0, r.stderr
    probed = checkpoint.load(probe / "checkpoint.pt")
    encoder, spec = mv_encoder(checkpoint.load(ckpt), source="test")
    assert spec["kwargs"]["in_channels"] == 2 and probed["backbone"]["kwargs"]["in_channels"] == 2
    for key, value in encoder.state_dict().items():
        assert torch.equal(probed["backbone"]["state_dict"][key], value)
        assert torch.equal(method_state["mv.backbone." + key], value)
    found = {}
    for name, ft, stream in [("mv", runs["mv"], None), ("both", runs["both"], None), ("both-rgb", runs["both"], "rgb"),
                             ("both-mv", runs["both"], "mv")]:
        out = tmp_path / f"cls-{name}"
        extra = ["--stream", stream] if stream else []
        r = motionssl("evaluate", "classify", store, "--checkpoint", ft / "checkpoint.pt", "--labels", labels,
                      "-o", out, "--views", "2", *extra)
        assert r.returncode == 0, r.stderr
        found[name] = json.loads((out / "classification.json").read_text())
    assert found["mv"]["streams"] == ["mv"] and found["both"]["streams"] == ["rgb", "mv"]
    assert found["both-rgb"]["streams"] == ["rgb"] and found["both-mv"]["streams"] == ["mv"]
    r = motionssl("evaluate", "classify", store, "--checkpoint", runs["mv"] / "checkpoint.pt", "--labels", labels,
                  "-o", tmp_path / "bad", "--stream", "rgb")
    assert r.returncode == 2 and "fine-tuned with --stream mv" in r.stderr
    r = motionssl("evaluate", "retrieve", store, "--checkpoint", runs["mv"] / "checkpoint.pt", "--labels", labels,
                  "-o", tmp_path / "ret-ft-mv", "--views", "2")  # a fine-tuned MV encoder retrieves on mv
    assert r.returncode == 0, r.stderr
    for stream in ("rgb", "mv", "both"):
        out = tmp_path / f"ret-{stream}"
        r = motionssl("evaluate", "retrieve", store, "--checkpoint", ckpt, "--labels", labels, "-o", out, "--views",
                      "2", "--stream", stream)
        assert r.returncode == 0, r.stderr
        assert json.loads((out / "retrieval.json").read_text())["stream"] == stream
