"""MoDist: its losses against a naive loop and closed forms, motion-clip thresholding and temporal jitter on known
maps, the two pathways and their banks, and `pretrain --method modist` end to end."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from motionssl.stores import open_store
from motionssl.train.augment import center_params, crop_resize_frames, draw_color, draw_spatial
from motionssl.train.config import resolve
from motionssl.train.datasets import ClipDataset, finish_batch
from motionssl.train.loop import train
from motionssl.train.methods.modist import MoDist, modist_losses
from motionssl.train.motion_sampling import clip_means, eligible_starts, per_frame_means
from motionssl.train.run_log import read_log
from motionssl.train.sampling import clip_at, random_clip
from resume_check import ONE_THREAD, assert_resume_is_exact, one_thread  # noqa: F401 (a fixture)
from test_extract import motionssl

pytestmark = pytest.mark.usefixtures("one_thread")  # every test: tiny nets on a shared 2-core machine

TINY = {"backbone": "r3d10", "backbone_width": 8, "clip_len": 4, "stride": 2, "size": 32, "batch_size": 8,
        "workers": 0, "steps": 10}
TINY_OPTIONS = {"hidden": 32, "dim": 16, "queue_size": 16, "tau": 0.2, "momentum": 0.9, "motion_backbone": "r2d10",
                "motion_width": 4, "motion_clip_len": 8, "motion_stride": 1}


def naive_in(q, pos, bank, tau, mask):
    """IN(q, k+, negatives) of eq. 1 by a loop over queries, masked bank entries left out."""
    out = []
    for i in range(len(q)):
        p = math.exp(float(q[i] @ pos[i]) / tau)
        negatives = sum(math.exp(float(q[i] @ n) / tau) for j, n in enumerate(bank) if not mask[i, j])
        out.append(-math.log(p / (p + negatives)))
    return float(np.mean(out))


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


@pytest.mark.parametrize("cross_negatives", ["key", "query"])
def test_losses_match_a_naive_loop(cross_negatives):
    v_q, v_k, m_q, m_k = (unit(4, 8, seed=s) for s in range(4))
    bank_v, bank_m = unit(6, 8, seed=4), unit(6, 8, seed=5)
    mask_v, mask_m = torch.rand(4, 6, generator=torch.Generator().manual_seed(6)) < 0.3, torch.zeros(4, 6, dtype=bool)
    mask_m[1, 2:5] = True
    ours = modist_losses(v_q, v_k, m_q, m_k, bank_v, bank_m, 0.1, mask_v=mask_v, mask_m=mask_m,
                         cross_negatives=cross_negatives)
    if cross_negatives == "key":  # v_q against the motion bank, m_q against the visual bank
        mv = naive_in(v_q, m_k, bank_m, 0.1, mask_m) + naive_in(m_q, v_k, bank_v, 0.1, mask_v)
    else:
        mv = naive_in(v_q, m_k, bank_v, 0.1, mask_v) + naive_in(m_q, v_k, bank_m, 0.1, mask_m)
    expected = {"v": naive_in(v_q, v_k, bank_v, 0.1, mask_v), "m": naive_in(m_q, m_k, bank_m, 0.1, mask_m), "mv": mv}
    assert ours.keys() == expected.keys()
    for k in expected:
        assert ours[k].item() == pytest.approx(expected[k], rel=1e-6)


def test_only_key_negatives_make_the_cross_task_need_the_video():
    """Motion embeddings that carry nothing of their video (all one vector c), visual ones in a cone around c. The
    term v_q -> m_k with the key's bank as negatives is at chance, ln(1 + N): its positive ties with every negative.
    With the query's bank (eq. 2 as printed) it falls below chance anyway: c is closer to v_q than other videos' v."""
    c = unit(1, 8, seed=0)
    v = F.normalize(c + 0.5 * unit(14, 8, seed=1), dim=1)  # 4 queries, 4 keys, a bank of 6
    m = c.expand(14, 8)
    none = torch.zeros(4, 6, dtype=bool)
    key = modist_losses(v[:4], v[4:8], m[:4], m[4:8], v[8:], m[8:], 0.1, mask_v=none, mask_m=none,
                        cross_negatives="key")
    query = modist_losses(v[:4], v[4:8], m[:4], m[4:8], v[8:], m[8:], 0.1, mask_v=none, mask_m=none)
    key_vm = key["mv"].item() - naive_in(m[:4], v[4:8], v[8:], 0.1, none)  # less the m_q -> v_k term
    query_vm = query["mv"].item() - naive_in(m[:4], v[4:8], m[8:], 0.1, none)
    assert key_vm == pytest.approx(math.log(1 + 6))
    assert query_vm < math.log(1 + 6) - 0.5


def test_losses_of_collapsed_embeddings_are_log_one_plus_the_negatives():
    e = unit(1, 8, seed=0)
    same = e.expand(4, 8)
    bank = e.expand(10, 8)
    mask = torch.zeros(4, 10, dtype=bool)
    mask[:, :3] = True  # 3 entries of each query's own video: 7 negatives left
    out = modist_losses(same, same, same, same, bank, bank, 0.1, mask_v=mask, mask_m=mask)
    assert out["v"].item() == pytest.approx(math.log(8)) and out["m"].item() == pytest.approx(math.log(8))
    assert out["mv"].item() == pytest.approx(2 * math.log(8))


# -- motion clips ---------------------------------------------------------------------------------------------------

def test_eligible_starts_keep_the_clips_whose_mean_edge_exceeds_gamma():
    rng = np.random.default_rng(0)
    strength = np.concatenate([np.zeros(10), np.full(10, 2.0), np.zeros(5), np.full(10, 0.5)])
    edges = strength[:, None, None] * rng.random((35, 6, 8))
    means = per_frame_means(edges)
    starts = eligible_starts(means, 4, 2, threshold=0.3)
    naive = [s for s in range(35 - 6) if np.mean([edges[s + 2 * k] for k in range(4)]) > 0.3]
    assert starts.tolist() == naive and 0 < len(naive) < 29
    np.testing.assert_allclose(clip_means(means, np.array(naive), 4, 2), [edges[s:s + 7:2].mean() for s in naive])
    assert eligible_starts(np.zeros(20), 4, 2, threshold=0.3).tolist() == list(range(14))  # still video: any clip


def modist_config(store, tmp_path, **options):
    cli = {"method": "modist", "store": str(store), "out": str(tmp_path / "run"), **TINY,
           "method_options": {**TINY_OPTIONS, **options}}
    return resolve(MoDist.defaults, {}, cli)


@pytest.mark.parametrize("sync", [False, True])
def test_samples_follow_the_documented_draws(motion_store, tmp_path, sync):
    """Visual views as ClipDataset's (their starts among the motion clips' with sync); motion views among the clips above gamma, jittered (independent times, centre
    crop) or, with sync, at the other visual view's time and crop (m_q with v_k, m_k with v_q); edges in [0, 1]."""
    cfg = modist_config(motion_store, tmp_path, sync=sync)
    store = open_store(motion_store)
    ds = MoDist.dataset(cfg, store)
    clamp, threshold = 10.0, 0.02 * 10.0
    for index, epoch in [(0, 0), (5, 2)]:
        sample = ds[(index, epoch)]
        edges = store.read(ds.videos[index], "edges")
        means = per_frame_means(edges)
        starts = eligible_starts(means, 8, 1, threshold)
        assert len(starts) < len(edges) - 7  # the still start of every video is left out
        rng = np.random.default_rng([cfg.seed, epoch, index])
        drawn = []
        if not sync:
            plain = ClipDataset(store, MoDist.needs(cfg), size=32)[(index, epoch)]["views"]
            assert all(torch.equal(a["rgb"], b["rgb"]) for a, b in zip(sample["views"], plain))
        for view in sample["views"]:
            idx = (clip_at(int(starts[rng.integers(len(starts))]), len(edges), 4, 2) if sync
                   else random_clip(len(edges), 4, 2, rng))
            box = draw_spatial(rng, aspect=1.0)
            draw_color(rng)
            assert view["frames"].tolist() == idx.tolist() and view["rgb"].shape == (3, 4, 32, 32)
            drawn.append((int(idx[0]), box))
        rng = np.random.default_rng([cfg.seed, epoch, index, 1])  # the motion clips' own stream
        for v, motion in enumerate(sample["motion_views"]):
            start, box = drawn[1 - v] if sync else (int(starts[rng.integers(len(starts))]), center_params(1.0))
            idx = clip_at(start, len(edges), 8, 1)
            assert motion["frames"].tolist() == idx.tolist()
            assert edges[idx].mean() > threshold
            expected = crop_resize_frames(edges[idx][..., None], box, 32)[..., 0] / clamp
            np.testing.assert_allclose(motion["edges"][0].numpy(), expected, rtol=1e-6)
            assert 0 <= motion["edges"].min() and motion["edges"].max() <= 1


# -- the method -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_modist(motion_store, tmp_path_factory):
    torch.manual_seed(0)
    cfg = modist_config(motion_store, tmp_path_factory.mktemp("modist"))
    batch = finish_batch(default_collate([MoDist.dataset(cfg, open_store(motion_store))[i] for i in range(8)]))
    return MoDist(cfg, total_steps=10), batch, cfg


def test_motion_pathway_is_a_2d_resnet_with_an_eighth_of_the_channels(motion_store, tmp_path):
    cfg = modist_config(motion_store, tmp_path, motion_width=0, motion_backbone="r2d18")
    cfg.backbone, cfg.backbone_width = "r3d18", 16
    method = MoDist(cfg, total_steps=1)
    assert method.motion_backbone.out_dim * 8 == method.backbone.out_dim == 128
    convs = [m for m in method.motion_backbone.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs[0].in_channels == 1 and all(c.kernel_size[0] == 1 for c in convs)  # per frame: no temporal kernel
    stacked = MoDist(modist_config(motion_store, tmp_path, motion_input="channels"), total_steps=1)
    assert stacked.motion_backbone.stem[0].in_channels == 8  # 8 edge frames as the channels of one image


def test_every_trainable_part_gets_a_gradient_and_banks_store_video_ids(tiny_modist):
    method, batch, _ = copy.deepcopy(tiny_modist[0]), tiny_modist[1], tiny_modist[2]
    out = method(batch, step=0)
    out["loss"].backward()
    assert set(out["logs"]) == {"loss_v", "loss_m", "loss_mv"}
    assert out["loss"].item() == pytest.approx(sum(out["logs"].values()), rel=1e-6)
    for part in (method.backbone, method.head, method.motion_backbone, method.motion_head):
        silent = [n for n, p in part.named_parameters() if p.grad is None or not p.grad.any()]
        assert not silent, silent
    for part in (method.backbone_k, method.head_k, method.motion_backbone_k, method.motion_head_k):
        assert not any(p.requires_grad for p in part.parameters())
    for queue in (method.queue, method.motion_queue):
        assert sorted(queue.video_ids[:8].tolist()) == sorted(batch["video"].tolist())


def test_same_video_bank_entries_are_never_negatives(tiny_modist, motion_store):
    """A batch of one video against banks holding only that video: every denominator keeps its positive alone, so
    each loss is 0 (log 1), whatever the embeddings."""
    method, _, cfg = copy.deepcopy(tiny_modist[0]), tiny_modist[1], tiny_modist[2]
    ds = MoDist.dataset(cfg, open_store(motion_store))
    batch = finish_batch(default_collate([ds[(3, epoch)] for epoch in range(4)]))
    for queue in (method.queue, method.motion_queue):
        queue.video_ids.fill_(int(batch["video"][0]))
    logs = method(batch, step=0)["logs"]
    assert all(v == pytest.approx(0, abs=1e-6) for v in logs.values()), logs
    logs = method(batch, step=1)["logs"]  # the banks now also hold other keys of the same video
    assert all(v == pytest.approx(0, abs=1e-6) for v in logs.values()), logs


def test_after_step_moves_both_momentum_copies(tiny_modist):
    method = copy.deepcopy(tiny_modist[0])
    with torch.no_grad():
        for p in [*method.backbone.parameters(), *method.motion_backbone.parameters()]:
            p.add_(1.0)
    before = [p.clone() for p in method.motion_backbone_k.parameters()]
    method.after_step(0)
    for b, online, target in zip(before, method.motion_backbone.parameters(), method.motion_backbone_k.parameters()):
        torch.testing.assert_close(target, 0.9 * b + 0.1 * online)


def test_ablation_switches(tiny_modist, motion_store, tmp_path):
    batch = tiny_modist[1]
    torch.manual_seed(0)
    no_lm = MoDist(modist_config(motion_store, tmp_path, motion_loss=False), total_steps=1)
    out = no_lm(batch, step=0)
    assert out["loss"].item() == pytest.approx(out["logs"]["loss_v"] + out["logs"]["loss_mv"], rel=1e-6)
    with pytest.raises(Exception, match="motion_input must be one of frames, channels"):
        MoDist(modist_config(motion_store, tmp_path, motion_input="flow"), total_steps=1)
    with pytest.raises(Exception, match="cross_negatives must be one of query, key"):
        MoDist(modist_config(motion_store, tmp_path, cross_negatives="both"), total_steps=1)


# -- end to end -----------------------------------------------------------------------------------------------------

def test_pretrain_lowers_each_loss(motion_store, tmp_path):
    cfg = resolve(MoDist.defaults, {}, {"method": "modist", "store": str(motion_store), "out": str(tmp_path / "run"),
                                        **TINY, "steps": 80, "optimizer": "adam", "lr": 0.001, "log_every": 1,
                                        "save_every": 1000, "progress": False, "method_options": TINY_OPTIONS})
    assert train(cfg)["finished"]
    rows = read_log(tmp_path / "run")
    for name in ("loss_v", "loss_m", "loss_mv"):
        values = np.array([r[name] for r in rows])
        assert values[-12:].mean() < values[2:14].mean() - 0.2, (name, values)


def test_resume_continues_exactly(motion_store, tmp_path):
    common = ["--method", "modist", motion_store, "--backbone", "r3d10", "--backbone-width",
              "4", "--clip-len", "4", "--stride", "2", "--size", "32", "--steps", "6", "--batch-size", "2",
              "--log-every", "1", "--save-every", "100", "--deterministic", "--no-progress", "--lr", "0.05",
              *[f"--option={k}={v}" for k, v in {**TINY_OPTIONS, "queue_size": 8}.items()]]
    assert_resume_is_exact(common, tmp_path, ("loss_v", "loss_m", "loss_mv"))  # and both pathways and banks


def test_a_compressed_store_fails_naming_the_spec(compressed_store, tmp_path):
    r = motionssl("pretrain", "--method", "modist", compressed_store, "-o", tmp_path / "run",
                  "--steps", "1", env=ONE_THREAD)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "has no edges" in r.stderr and "--spec default" in r.stderr


# -- Table 3b (motion_signal) and the paper's main backbone (slow_r50) --------------------------------------------

@pytest.mark.parametrize("sync", [False, True])
def test_motion_signals_are_the_flow_or_the_frame_differences_of_the_same_clips(motion_store, tmp_path, sync):
    from motionssl.train.augment import crop_resize_motion
    from motionssl.train.methods.modist import FLOW_SCALE

    store = open_store(motion_store)
    edges_ds = MoDist.dataset(modist_config(motion_store, tmp_path, sync=sync), store)
    for signal, channels in (("flow", 2), ("frame_diff", 1)):
        ds = MoDist.dataset(modist_config(motion_store, tmp_path, sync=sync, motion_signal=signal), store)
        for index, epoch in [(1, 0), (6, 3)]:
            sample, plain = ds[(index, epoch)], edges_ds[(index, epoch)]
            vid = ds.videos[index]
            assert all(torch.equal(a["rgb"], b["rgb"]) for a, b in zip(sample["views"], plain["views"]))
            for v, (motion, reference) in enumerate(zip(sample["motion_views"], plain["motion_views"])):
                idx = motion["frames"].numpy()
                assert torch.equal(motion["frames"], reference["frames"])        # the same motion clips
                assert motion["edges"].shape == (channels, 8, 32, 32)
                box = ds._visual[1 - v][1] if sync else center_params(1.0)
                if signal == "flow":
                    flow = crop_resize_motion(store.read_at(vid, "flow", idx), box, (32, 32), frame_hw=(64, 64))
                    expected = flow.transpose(3, 0, 1, 2) / FLOW_SCALE
                else:
                    rgb = store.read_at(vid, "rgb", np.concatenate([[max(idx[0] - 1, 0)], idx]))
                    gray = crop_resize_frames(rgb, box, 32).astype(np.float64) @ [0.299, 0.587, 0.114]
                    expected = ((gray[1:] - gray[:-1]) / 255)[None]
                np.testing.assert_allclose(motion["edges"].numpy(), expected, atol=1e-5)
                assert motion["edges"].abs().max() > 0.02                        # a moving square: not all zero


def test_motion_signal_sets_the_motion_pathways_input_channels(tiny_modist, motion_store, tmp_path):
    flow = MoDist(modist_config(motion_store, tmp_path, motion_signal="flow"), total_steps=1)
    assert flow.motion_backbone.stem[0].in_channels == 2
    stacked = MoDist(modist_config(motion_store, tmp_path, motion_signal="flow", motion_input="channels"),
                     total_steps=1)
    assert stacked.motion_backbone.stem[0].in_channels == 16                     # 8 frames x (dx, dy)
    edges = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).view(2, 2, 3, 2, 2)
    assert torch.equal(stacked.motion_input(edges)[:, :, 0], edges.flatten(1, 2))
    one = torch.randn(2, 1, 8, 4, 4)                                              # edges: as before, frames as channels
    assert torch.equal(tiny_modist[0].motion_input(one), one)
    with pytest.raises(Exception, match="motion_signal must be one of edges, flow, frame_diff"):
        MoDist(modist_config(motion_store, tmp_path, motion_signal="rgb"), total_steps=1)


def test_pretrain_with_each_signal_and_slow_r50(motion_store, tmp_path):
    for name, extra in [("flow", ["--option", "motion_signal=flow"]),
                        ("diff", ["--option", "motion_signal=frame_diff", "--option", "motion_input=channels"]),
                        ("slow", ["--backbone", "slow_r50"])]:
        run = tmp_path / name
        args = ["--method", "modist", motion_store, "-o", run, "--backbone", "r3d10", "--backbone-width", "4",
                "--clip-len", "4", "--stride", "2", "--size", "32", "--steps", "2", "--batch-size", "4",
                "--log-every", "1", "--no-progress", "--workers", "0",
                *[f"--option={k}={v}" for k, v in {**TINY_OPTIONS, "queue_size": 8}.items()], *extra]
        r = motionssl("pretrain", *[str(a) for a in args], env=ONE_THREAD)
        assert r.returncode == 0, r.stderr
        rows = read_log(run)
        assert len(rows) == 2 and all(np.isfinite(row["loss_m"]) for row in rows)
    from motionssl.train import checkpoint

    assert checkpoint.load(tmp_path / "slow" / "checkpoint.pt")["backbone"]["name"] == "slow_r50"
