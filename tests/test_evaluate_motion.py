"""`motionssl evaluate motion`: each representation's backward warp on known translation, the clip cover, the report
on a real store (flow and motion vectors far ahead of no motion), the CGM-Net row, and `show --checkpoint`."""
import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from motionssl.cli import app
from motionssl.eval.motion import (
    LearnedMotion, backward_warp, cells_to_pixels, clip_blocks, evaluate_motion, pair_errors, psnr, ssim, to_signed,
)
from motionssl.preprocess.synthetic import translating_frames
from motionssl.pictures.frames import render_panel_with_boxes
from motionssl.stores import open_store
from motionssl.train import checkpoint

TINY = ["--backbone", "r3d10", "--backbone-width", "4", "--clip-len", "4", "--size", "32", "--no-progress",
        "--workers", "0"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_perfect_shift_predicts_the_next_frame_inside_the_valid_region():
    frames = to_signed(np.stack(translating_frames(2, size=(48, 40), velocity=(3, -2), seed=1)))
    source, target = frames[:1], frames[1:]
    shift = torch.tensor([3.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 40, 48)
    pred = backward_warp(source, shift)
    whole, inner = pair_errors(pred, target, margin=3)
    assert inner.item() < 1e-5                                   # content that stayed in the frame: exact
    assert whole.item() > 1e-3                                   # the rows and columns that entered are not
    identity_whole, identity_inner = pair_errors(source, target, margin=3)
    assert identity_inner.item() > 0.1
    assert torch.allclose(backward_warp(source, torch.zeros(1, 2, 40, 48)), source, atol=1e-5)


def test_motion_vectors_warp_on_the_target_frames_cells():
    """mv[t+1] = content motion t -> t+1 per cell of frame t+1: a rightward 4 px translation, one cell invalid."""
    frames = to_signed(np.stack(translating_frames(2, size=(32, 16), velocity=(4, 0), seed=2)))
    mv = np.tile(np.array([4, 0], np.float16), (1, 4, 8, 1))
    valid = np.ones((1, 4, 8), bool)
    valid[0, 1, 2] = False
    field, share = cells_to_pixels(mv, valid, (16, 32), cell=4)
    assert field.shape == (1, 2, 16, 32) and share == pytest.approx(31 / 32)
    assert (field[0, 0, 4:8, 8:12] == 0).all() and (field[0, 0, :4] == 4).all() and (field[0, 1] == 0).all()
    pred = backward_warp(frames[:1], field)
    err = (pred - frames[1:]).abs()[0].mean(0)
    exact = torch.ones(16, 32, dtype=torch.bool)
    exact[:, :4] = False                                         # content entering at the left border
    exact[4:8, 8:12] = False                                     # the invalid cell copies frame t
    assert err[exact].max() < 1e-5
    assert err[4:8, 8:12].mean() > 0.05


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 20, 31, 100])
@pytest.mark.parametrize("clip_len", [2, 4, 8, 16])
def test_clip_blocks_put_every_pair_in_exactly_one_clip(n, clip_len):
    blocks = clip_blocks(n, clip_len)
    pairs = [t for _, ts in blocks for t in ts]
    assert pairs == list(range(n - 1))
    for start, ts in blocks:
        assert start >= 0 and start <= ts[0] and ts[-1] + 1 <= start + clip_len - 1
        assert start + clip_len <= max(n, clip_len)  # a clip never reads past the video (short videos: padded)


@pytest.fixture(scope="module")
def cgm_checkpoint(tiny_stores, tmp_path_factory):
    run = tmp_path_factory.mktemp("cgm_eval") / "run"
    r = cli("pretrain", "--method", "cgm", tiny_stores["zarr"], "-o", run, *TINY, "--steps", "2",
            "--batch-size", "3")
    assert r.exit_code == 0, r.output
    return run / "checkpoint.pt"


def test_stored_flow_and_motion_vectors_beat_no_motion_by_far(tiny_stores, tmp_path):
    out = tmp_path / "motion"
    result = evaluate_motion(tiny_stores["zarr"], out, flow_stores=[tiny_stores["hdf5"]], progress=False)
    rows = {r["key"]: r for r in result["rows"]}
    assert list(rows) == ["identity", "mv", "flow", "extra0"]
    assert rows["flow"]["name"] == "flow (dis)" and rows["extra0"]["name"].startswith("flow (dis, ")
    store = open_store(tiny_stores["zarr"])
    assert result["pairs"] == sum(store.meta(v)["frames"] - 1 for v in store.videos) == 81
    identity = rows["identity"]["l1"]
    assert identity > 0.2                                        # 4 px/frame of a texture: far from still
    assert rows["flow"]["l1"] < 0.15 * identity and rows["mv"]["l1"] < 0.2 * identity
    assert rows["flow"]["l1_interior"] < rows["flow"]["l1"]      # the entering border is the hard part
    assert rows["extra0"]["l1"] == pytest.approx(rows["flow"]["l1"], rel=1e-6)  # same videos, same DIS flow
    assert 0.8 < rows["mv"]["valid_pixels"] < 1                  # I-frames have no vectors
    saved = json.loads((out / "motion.json").read_text())
    assert saved["rows"][0]["vs_identity"] == 1.0 and set(saved["rows"][1]["per_video"]) == set(store.videos)
    table = (out / "motion.md").read_text()
    assert table.count("\n| ") == 4 and "| flow (dis) |" in table
    for picture in ("motion_l1.png", "motion_errors.png"):
        image = cv2.imread(str(out / picture))
        assert image is not None and image.std() > 10


def test_the_cgm_row_and_one_line_errors(tiny_stores, cgm_checkpoint, tmp_path):
    r = cli("evaluate", "motion", tiny_stores["zarr"], "-o", tmp_path / "m", "--checkpoint", cgm_checkpoint,
            "--video-id", "right", "--no-progress")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "m" / "motion.json").read_text())
    cgm = result["rows"][-1]
    assert cgm["key"] == "cgm" and result["pairs"] == cgm["pairs"] == 47 and result["cgm_clip_len"] == 4
    assert 0 < cgm["l1"] < 2 and "| cgm (" in r.output
    not_cgm = tmp_path / "moco.pt"
    checkpoint.save(not_cgm, {"config": {"method": "rgb-moco"}, "method": {}})
    cases = [(["--checkpoint", not_cgm], "takes one written by `motionssl pretrain --method cgm`"),
             (["--video-id", "nope"], "videos not in"), (["--margin", "40"], "leaves no interior"),
             (["--flow-store", tmp_path / "m"], "is not a motionssl store")]
    for extra, message in cases:
        r = cli("evaluate", "motion", tiny_stores["zarr"], "-o", tmp_path / "e", *extra, "--no-progress")
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output


def test_show_draws_the_learned_motion_column(tiny_stores, cgm_checkpoint, tmp_path):
    learned = LearnedMotion(cgm_checkpoint)
    store = open_store(tiny_stores["zarr"])
    field = learned.displacement(store, "short", [0, 5])        # 6 frames, clips of 4: the last one predicts
    assert field.shape == (2, 64, 128, 2) and np.isfinite(field).all() and np.abs(field).max() <= 4  # k_hr 9: +-4 px

    class Rightward:  # anything with `displacement` is drawn: here 3 px/frame to the right everywhere
        def displacement(self, store, video_id, steps):
            return np.tile(np.array([3.0, 0.0], np.float32), (len(steps), 64, 128, 1))

    image, boxes = render_panel_with_boxes(store, "right", steps=[3, 20], learned=Rightward(), max_motion=3)
    assert {(3, "learned"), (20, "learned")} <= set(boxes)
    y0, x0, y1, x1 = boxes[(3, "learned")]
    tile = image[y0:y1, x0:x1].reshape(-1, 3)
    assert (tile == tile[0]).all() and tile[0][0] == 255 and tile[0][1] < 40  # saturated red = rightward
    r = cli("show", tiny_stores["zarr"], "right", "-o", tmp_path / "panel.png", "--checkpoint", cgm_checkpoint)
    assert r.exit_code == 0, r.output
    plain = cli("show", tiny_stores["zarr"], "right", "-o", tmp_path / "plain.png")
    assert plain.exit_code == 0
    wide, narrow = (cv2.imread(str(tmp_path / n)).shape[1] for n in ("panel.png", "plain.png"))
    assert wide > narrow + 100


# -- Table 1 (right): PSNR and SSIM ------------------------------------------------------------------------------

def naive_ssim(x: np.ndarray, y: np.ndarray, window: int = 11, sigma: float = 1.5, value_range: float = 2.0) -> float:
    """SSIM of two (H, W) images by loops over every window that fits (Wang et al. 2004, sample covariances)."""
    g = np.exp(-((np.arange(window) - window // 2) ** 2) / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    n = window * window
    out = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            a, b = x[i:i + window, j:j + window], y[i:i + window, j:j + window]
            ma, mb = (w * a).sum(), (w * b).sum()
            va = ((w * a * a).sum() - ma * ma) * n / (n - 1)
            vb = ((w * b * b).sum() - mb * mb) * n / (n - 1)
            cab = ((w * a * b).sum() - ma * mb) * n / (n - 1)
            out.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(out))


def test_psnr_and_ssim_match_their_definitions():
    rng = np.random.default_rng(0)
    target = torch.tensor(rng.uniform(-1, 1, size=(2, 3, 16, 20)))
    offset = target + 0.1                                         # MSE 0.01: PSNR 10 log10(4 / 0.01) = 26.02 dB
    assert psnr(offset, target).numpy() == pytest.approx([10 * np.log10(400)] * 2)
    assert psnr(target, target).numpy() == pytest.approx([100 + 10 * np.log10(4)] * 2)  # floored, not infinite
    noisy = (target + torch.tensor(rng.normal(0, 0.3, size=target.shape))).clamp(-1, 1)
    got = ssim(noisy, target).numpy()
    expected = [np.mean([naive_ssim(noisy[i, c].numpy(), target[i, c].numpy()) for c in range(3)]) for i in range(2)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert ssim(target, target).numpy() == pytest.approx([1.0, 1.0]) and 0 < got.max() < 0.9


def test_the_report_has_psnr_and_ssim_for_every_row(tiny_stores, tmp_path):
    result = evaluate_motion(tiny_stores["zarr"], tmp_path / "m", videos=["short"], progress=False)
    rows = {r["key"]: r for r in result["rows"]}
    assert list(rows) == ["identity", "mv", "flow"]
    # flow predicts the next frame far better than no motion, on both measures
    assert rows["flow"]["psnr"] > rows["identity"]["psnr"] + 5 and rows["flow"]["ssim"] > rows["identity"]["ssim"] + 0.2
    store = open_store(tiny_stores["zarr"])
    frames = to_signed(store.read("short", "rgb", 0, 6))
    assert rows["identity"]["psnr"] == pytest.approx(psnr(frames[:-1], frames[1:]).mean().item())
    assert rows["identity"]["ssim"] == pytest.approx(ssim(frames[:-1], frames[1:]).mean().item())
    table = (tmp_path / "m" / "motion.md").read_text()
    assert "| PSNR (dB) | SSIM |" in table and f"| {rows['flow']['psnr']:.2f} | {rows['flow']['ssim']:.4f} |" in table
