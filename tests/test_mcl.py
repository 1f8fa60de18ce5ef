"""MCL: motion-focused sampling on hand-built motion maps, the motion alignment loss against naive references and
closed forms, training through the gradient map (second order), and `pretrain --method mcl` end to end."""
import copy

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from motionssl.stores import open_store
from motionssl.train.augment import crop_resize_frames, draw_color, draw_spatial
from motionssl.train.config import resolve
from motionssl.train.datasets import ClipDataset, finish_batch
from motionssl.train.loop import train
from motionssl.train.methods.mcl import MCL, alignment_losses, alignment_map, motion_target
from motionssl.train.motion_sampling import motion_crop, motion_focused_clip, per_frame_means
from motionssl.train.run_log import read_log
from resume_check import ONE_THREAD, assert_resume_is_exact, one_thread  # noqa: F401 (a fixture)
from test_extract import motionssl

pytestmark = pytest.mark.usefixtures("one_thread")  # every test: tiny nets on a shared 2-core machine

TINY = {"backbone": "r3d10", "backbone_width": 4, "clip_len": 4, "stride": 2, "size": 64, "batch_size": 8,
        "workers": 0, "steps": 10}
TINY_OPTIONS = {"hidden": 32, "dim": 16, "queue_size": 16, "tau": 0.2, "momentum": 0.9}


def naive_clip_motion(maps: np.ndarray, start: int, clip_len: int, stride: int) -> float:
    """3D average pool of the clip's ST-motion, frames past the end clamped to the last."""
    frames = [min(start + stride * k, len(maps) - 1) for k in range(clip_len)]
    return float(np.mean([maps[f] for f in frames]))


def coverage(hot: np.ndarray, params) -> float:
    x0, y0, w, h = params.pixel_box(*hot.shape)
    return hot[y0:y0 + h, x0:x0 + w].sum() / hot.sum()


# -- temporal sampling ------------------------------------------------------------------------------------------------

def test_temporal_sampling_draws_every_clip_above_the_median_and_no_other():
    T, clip_len, stride = 40, 4, 3
    rng = np.random.default_rng(0)
    strength = np.concatenate([np.zeros(12), np.linspace(0, 3, 16), np.full(12, 0.5)])  # still, speeding up, slow
    maps = strength[:, None, None] * (rng.random((T, 6, 8)) < 0.3) + 0.01 * rng.random((T, 6, 8))
    frame_motion = per_frame_means(maps)
    np.testing.assert_allclose(frame_motion, [m.mean() for m in maps])
    motion = np.array([naive_clip_motion(maps, s, clip_len, stride) for s in range(T - (clip_len - 1) * stride)])
    expected = set(np.flatnonzero(motion > np.median(motion)))
    assert 0 < len(expected) < len(motion)
    drawn = [motion_focused_clip(frame_motion, clip_len, stride, np.random.default_rng(seed)) for seed in range(600)]
    assert all(np.array_equal(idx, idx[0] + stride * np.arange(clip_len)) for idx in drawn)
    assert {int(idx[0]) for idx in drawn} == expected


def test_temporal_sampling_of_a_flat_or_short_video():
    flat = np.ones(20)
    starts = {int(motion_focused_clip(flat, 4, 2, np.random.default_rng(s))[0]) for s in range(300)}
    assert starts == set(range(20 - 6))  # no clip above the median: every clip that fits
    short = motion_focused_clip(np.arange(5.0), 4, 2, np.random.default_rng(0))
    assert short.tolist() == [0, 2, 4, 4]


# -- spatial cropping -------------------------------------------------------------------------------------------------

def blob_map(height=48, width=64, rows=(10, 26), cols=(40, 59), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s_motion = 0.1 * rng.random((height, width))
    s_motion[rows[0]:rows[1], cols[0]:cols[1]] += 1 + rng.random((rows[1] - rows[0], cols[1] - cols[0]))
    return s_motion


def test_spatial_crop_holds_80_percent_of_the_pixels_above_the_90th_percentile():
    s_motion = blob_map()
    hot = s_motion > np.percentile(s_motion, 90)
    boxes = [motion_crop(s_motion, np.random.default_rng(seed)) for seed in range(300)]
    assert min(coverage(hot, b) for b in boxes) >= 0.8
    assert len({b.pixel_box(48, 64) for b in boxes}) > 200  # drawn at random, not one box
    assert 0.3 < np.mean([b.flip for b in boxes]) < 0.7
    plain = [draw_spatial(np.random.default_rng(seed), aspect=64 / 48) for seed in range(300)]
    assert np.mean([coverage(hot, b) >= 0.8 for b in plain]) < 0.5  # the constraint is what keeps the blob in


def test_spatial_crop_falls_back_to_the_box_of_all_hot_pixels():
    s_motion = np.zeros((48, 64))
    s_motion[2:6, 3:7] = 1
    s_motion[40:45, 55:60] = 1  # two blobs in opposite corners: no box of at most 10% of the frame holds 80%
    box = motion_crop(s_motion, np.random.default_rng(0), scale=(0.05, 0.1))
    assert box.pixel_box(48, 64) == (3, 2, 57, 43)
    assert coverage(s_motion > np.percentile(s_motion, 90), box) == 1


def test_spatial_crop_of_a_flat_map_is_a_random_resized_crop():
    for seed in range(20):
        assert motion_crop(np.ones((48, 64)), np.random.default_rng(seed)) == \
            draw_spatial(np.random.default_rng(seed), aspect=64 / 48)


# -- the dataset ----------------------------------------------------------------------------------------------------

def mcl_config(store, tmp_path, **options):
    cli = {"method": "mcl", "store": str(store), "out": str(tmp_path / "run"), **TINY,
           "method_options": {**TINY_OPTIONS, **options}}
    return resolve(MCL.defaults, {}, cli)


def test_views_are_the_motion_focused_tubelets(motion_store, tmp_path):
    """Each view's frames and crop are the samplers' draws on the store's motion maps, in the documented rng order,
    and its boundary is that crop of the maps."""
    cfg = mcl_config(motion_store, tmp_path)
    ds, store = MCL.dataset(cfg, open_store(motion_store)), open_store(motion_store)
    for index, epoch in [(0, 0), (3, 1), (6, 4)]:
        sample = ds[(index, epoch)]
        vid = ds.videos[index]
        maps = store.read(vid, "boundary")
        rng = np.random.default_rng([cfg.seed, epoch, index])
        for view in sample["views"]:
            idx = motion_focused_clip(per_frame_means(maps), cfg.clip_len, cfg.stride, rng)
            box = motion_crop(maps[idx].mean(axis=0), rng)
            draw_color(rng)
            assert view["frames"].tolist() == idx.tolist()
            assert naive_clip_motion(maps, int(idx[0]), cfg.clip_len, cfg.stride) > np.median(
                [naive_clip_motion(maps, s, cfg.clip_len, cfg.stride) for s in range(len(maps) - 6)])
            expected = crop_resize_frames(maps[idx][..., None], box, cfg.size)[..., 0]
            np.testing.assert_array_equal(view["boundary"][0].numpy(), expected)


def test_without_ta_and_sa_the_views_are_clip_dataset_views(motion_store, tmp_path):
    cfg = mcl_config(motion_store, tmp_path, temporal_aug=False, spatial_aug=False)
    store = open_store(motion_store)
    ours, plain = MCL.dataset(cfg, store)[(2, 3)], ClipDataset(store, MCL.needs(cfg), size=cfg.size)[(2, 3)]
    for a, b in zip(ours["views"], plain["views"]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- motion alignment loss ------------------------------------------------------------------------------------------

def test_alignment_map_matches_a_loop():
    torch.manual_seed(0)
    grad, feat = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 2, 3, 4, dtype=torch.float64)
    g, h = grad.numpy(), feat.numpy()
    for variant in ("v1", "v2", "v3"):
        expected = np.zeros((2, 2, 3, 4))
        for b in range(2):
            for c in range(3):
                w = g[b, c].mean()
                expected[b] += {"v1": h[b, c], "v2": w * h[b, c], "v3": w * g[b, c]}[variant]
        if variant != "v1":
            expected = np.maximum(expected, 0)
        np.testing.assert_allclose(alignment_map(grad, feat, variant).numpy(), expected)


def test_alignment_losses_match_a_naive_reference():
    rng = np.random.default_rng(1)
    pred, motion = rng.random((3, 2, 4, 5)), rng.random((3, 2, 4, 5))

    def unit(x):
        return x / np.linalg.norm(x)

    naive = {"st": np.mean([np.sum((unit(p.ravel()) - unit(m.ravel())) ** 2) for p, m in zip(pred, motion)]),
             "s": np.mean([np.sum((unit(p.mean(0).ravel()) - unit(m.mean(0).ravel())) ** 2)
                           for p, m in zip(pred, motion)]),
             "t": np.mean([np.sum((unit(p.mean((1, 2))) - unit(m.mean((1, 2)))) ** 2) for p, m in zip(pred, motion)])}
    ours = alignment_losses(torch.from_numpy(pred), torch.from_numpy(motion))
    assert ours.keys() == naive.keys()
    for k in naive:
        assert ours[k].item() == pytest.approx(naive[k], rel=1e-6)
    assert alignment_losses(torch.from_numpy(pred), torch.from_numpy(motion), st=False, t=False).keys() == {"s"}


def test_alignment_losses_closed_forms():
    motion = torch.zeros(1, 2, 3, 3)
    motion[0, 0, 0, 0] = 2.0
    assert all(v.item() == pytest.approx(0) for v in alignment_losses(3.5 * motion, motion).values())
    elsewhere = torch.zeros(1, 2, 3, 3)
    elsewhere[0, 1, 2, 2] = 1.0  # another frame, another place: orthogonal in every pooling
    assert all(v.item() == pytest.approx(2) for v in alignment_losses(elsewhere, motion).values())
    assert all(v.item() == pytest.approx(1) for v in alignment_losses(torch.zeros(1, 2, 3, 3), motion).values())


def test_motion_target_is_the_average_pool_to_the_map_size():
    boundary = torch.arange(4 * 8 * 8, dtype=torch.float32).reshape(1, 1, 4, 8, 8)
    target = motion_target(boundary, (2, 2, 2))
    assert target.shape == (1, 2, 2, 2)
    assert target[0, 1, 0, 1].item() == boundary[0, 0, 2:4, 0:4, 4:8].mean().item()


# -- training through the gradient map --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_mcl(motion_store, tmp_path_factory):
    """A tiny MCL and one batch of the motion store."""
    torch.manual_seed(0)
    cfg = mcl_config(motion_store, tmp_path_factory.mktemp("mcl"))
    batch = finish_batch(default_collate([MCL.dataset(cfg, open_store(motion_store))[i] for i in range(8)]))
    return MCL(cfg, total_steps=10), batch


def mal(out: dict) -> torch.Tensor:
    return sum(v for k, v in out.items() if k.startswith("mal_"))


def test_mal_reaches_every_backbone_layer_through_the_gradient_map(tiny_mcl):
    method, batch = copy.deepcopy(tiny_mcl[0]), tiny_mcl[1]
    out = method.losses(batch, step=0)
    assert set(out) == {"nce", "pos_sim", "mal_st", "mal_s", "mal_t"}
    params = dict(method.backbone.named_parameters())
    grads = torch.autograd.grad(mal(out), list(params.values()), allow_unused=True)
    silent = [name for (name, _), g in zip(params.items(), grads) if g is None or g.abs().sum() == 0]
    assert not silent, silent  # stem to layer4: the alignment trains the whole backbone, not only the head


def test_one_step_with_mal_changes_the_backbone_unlike_nce_alone(tiny_mcl):
    """From the same weights on the same batch, an SGD step on L_NCE + L_MAL moves the backbone elsewhere than a step
    on L_NCE alone, and to where L_MAL is lower (to first order, by lr * |grad L_MAL|^2)."""
    base, batch = tiny_mcl
    after = {}
    for name, with_mal in [("nce", False), ("mcl", True)]:
        method = copy.deepcopy(base)
        params = [p for p in method.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.05)
        out = method.losses(batch, step=0)
        before = mal(out).item()
        (out["nce"] + mal(out) if with_mal else out["nce"]).backward()
        optimizer.step()
        after[name] = (mal(method.losses(batch, step=0)).item(), method.backbone.state_dict())
    changed = [k for k, v in after["nce"][1].items()
               if v.is_floating_point() and not torch.equal(v, after["mcl"][1][k])]
    assert any(k.startswith("stem.") for k in changed) and any(k.startswith("layer3.") for k in changed)
    assert after["mcl"][0] < min(before, after["nce"][0]) - 1e-3, (before, after["nce"][0], after["mcl"][0])


def test_every_trainable_parameter_gets_a_gradient(tiny_mcl):
    method, batch = copy.deepcopy(tiny_mcl[0]), tiny_mcl[1]
    method(batch, step=0)["loss"].backward()
    silent = [n for n, p in method.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not silent, silent
    assert not any(p.requires_grad for p in [*method.backbone_k.parameters(), *method.head_k.parameters()])


def test_switches_choose_the_terms(motion_store, tmp_path, tiny_mcl):
    batch = tiny_mcl[1]
    torch.manual_seed(0)
    only_s = MCL(mcl_config(motion_store, tmp_path, l_st=False, l_t=False), total_steps=10)
    assert set(only_s(batch, step=0)["logs"]) == {"nce", "pos_sim", "mal_s", "mal"}
    torch.manual_seed(0)
    none = MCL(mcl_config(motion_store, tmp_path, l_st=False, l_s=False, l_t=False), total_steps=10)
    out = none(batch, step=0)
    assert set(out["logs"]) == {"nce", "pos_sim"} and out["loss"].item() == out["logs"]["nce"]
    for variant in ("v1", "v2"):
        torch.manual_seed(0)
        method = MCL(mcl_config(motion_store, tmp_path, variant=variant), total_steps=10)
        assert torch.isfinite(method(batch, step=0)["loss"])
    with pytest.raises(Exception, match="variant must be one of v1, v2, v3"):
        MCL(mcl_config(motion_store, tmp_path, variant="v4"), total_steps=10)


# -- end to end -----------------------------------------------------------------------------------------------------

def test_pretrain_lowers_nce_and_mal(motion_store, tmp_path):
    """At this tiny scale (width 4, 8 videos) a full-weight MAL holds L_NCE back for longer than a test can run
    (measured: flat after 60 steps for some seeds); at weight 0.3 both fall within 60-100 steps for seeds 0-3."""
    cfg = resolve(MCL.defaults, {}, {"method": "mcl", "store": str(motion_store), "out": str(tmp_path / "run"),
                                     **TINY, "steps": 80, "optimizer": "adam", "lr": 0.003, "log_every": 1,
                                     "save_every": 1000, "progress": False,
                                     "method_options": {**TINY_OPTIONS, "mal_weight": 0.3}})
    assert train(cfg)["finished"]
    rows = read_log(tmp_path / "run")
    for name, margin in [("nce", 0.2), ("mal", 0.08)]:
        values = np.array([r[name] for r in rows])
        assert values[-12:].mean() < values[2:14].mean() - margin, (name, values)


def test_resume_continues_exactly(motion_store, tmp_path):
    common = ["--method", "mcl", motion_store, "--backbone", "r3d10", "--backbone-width", "4",
              "--clip-len", "4", "--stride", "2", "--size", "32", "--steps", "6", "--batch-size", "2",
              "--log-every", "1", "--save-every", "100", "--deterministic", "--no-progress", "--lr", "0.05",
              *[f"--option={k}={v}" for k, v in {**TINY_OPTIONS, "queue_size": 8}.items()]]
    assert_resume_is_exact(common, tmp_path, ("nce", "mal"))


def test_a_compressed_store_fails_naming_the_spec(compressed_store, tmp_path):
    r = motionssl("pretrain", "--method", "mcl", compressed_store, "-o", tmp_path / "run", "--steps", "1",
                  env=ONE_THREAD)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "has no boundary" in r.stderr and "--spec default" in r.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# -- the I2D setting (Table 1's 2D rows) ------------------------------------------------------------------------------

def test_i2d_a_2d_backbone_on_single_frames_trains_and_l_t_vanishes(motion_store, tmp_path):
    """`--backbone r2d18 --clip-len 1`: the map is one step long in time, so L_t is 0 and L_st equals L_s (Table 1's
    note for 2D backbones), and the run trains: the gradient map still aligns with the frame's motion."""
    cfg = resolve(MCL.defaults, {}, {"method": "mcl", "store": str(motion_store), "out": str(tmp_path / "run"),
                                     **TINY, "backbone": "r2d18", "clip_len": 1, "stride": 1, "steps": 3,
                                     "log_every": 1, "save_every": 1000, "progress": False,
                                     "method_options": TINY_OPTIONS})
    assert train(cfg)["finished"]
    rows = read_log(tmp_path / "run")
    assert len(rows) == 3
    for row in rows:
        assert row["mal_t"] == 0 and row["mal_st"] == pytest.approx(row["mal_s"], rel=1e-5)
        assert np.isfinite(row["nce"]) and row["mal_s"] > 0
    torch.manual_seed(0)
    method = MCL(cfg, total_steps=3)
    batch = finish_batch(default_collate([MCL.dataset(cfg, open_store(motion_store))[i] for i in range(4)]))
    assert batch["views"][0]["rgb"].shape[2] == 1                                 # single frames
    out = method(batch, step=0)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())
