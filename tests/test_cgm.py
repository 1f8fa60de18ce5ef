"""CGM-Net (`--method cgm`): eq. 1's warp, eqs. 2 and 5, the Charbonnier loss, CGMUL's shapes, gradients, and a
short CPU pretrain that learns (loss on fixed clips down), resumes exactly, and fails in one line."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from typer.testing import CliRunner

from conftest import TINY_SPEC, extract_in_process
from motionssl.cli import app
from motionssl.preprocess.synthetic import encode, translating_frames
from motionssl.stores import open_store
from motionssl.train import checkpoint
from motionssl.train.config import PretrainConfig
from motionssl.train.datasets import ClipDataset, finish_batch
from motionssl.train.methods.cgm import (
    CGM, CGMUL, ContextExtractor, charbonnier, context_correlation, dilate_filters, filter_displacement, per_frame,
    reach_k_hr, periodic_shuffle, pixel_adaptive_warp, to_signed_unit,
)
from motionssl.train.run_log import read_log
from test_extract import motionssl

TINY = ["--backbone", "r3d10", "--backbone-width", "8", "--clip-len", "4", "--size", "32", "--no-progress",
        "--workers", "0"]


def cli(*args):
    """In process (fast); runs that need --deterministic go through `motionssl` subprocesses instead."""
    return CliRunner().invoke(app, [str(a) for a in args])


def tiny_cfg(**overrides) -> PretrainConfig:
    values = {"method": "cgm", "store": "unused", "out": "unused", "backbone": "r3d10", "backbone_width": 4,
              "clip_len": 4, "stride": 1, "size": 32, "steps": 1, **overrides}
    return PretrainConfig(**values)


def naive_warp(x: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Eq. 1 by loops: out[c, y, x] = sum M[(dy+r)*k + dx+r, y, x] * X[c, y-dy, x-dx], borders replicated."""
    c, h, w = x.shape
    k = int(round(filters.shape[0] ** 0.5))
    r = k // 2
    out = np.zeros_like(x)
    for y in range(h):
        for xx in range(w):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    sy, sx = min(max(y - dy, 0), h - 1), min(max(xx - dx, 0), w - 1)
                    out[:, y, xx] += filters[(dy + r) * k + dx + r, y, xx] * x[:, sy, sx]
    return out


def test_charbonnier_matches_a_loop_and_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 5, 4))
    eps = 1e-3
    naive = np.mean([np.sqrt((p - q) ** 2 + eps ** 2) for p, q in zip(a.ravel(), b.ravel())])
    assert charbonnier(torch.tensor(a), torch.tensor(b), eps).item() == pytest.approx(naive, rel=1e-6)
    zeros = torch.zeros(2, 3)
    assert charbonnier(zeros, zeros, 1e-6).item() == pytest.approx(1e-6, rel=1e-3)   # rho(0) = eps
    assert charbonnier(zeros + 0.5, zeros, 1e-6).item() == pytest.approx(0.5, rel=1e-6)  # |x| for |x| >> eps


def test_pixel_adaptive_warp_is_eq1():
    rng = np.random.default_rng(1)
    x, filters = rng.normal(size=(3, 7, 6)), rng.normal(size=(25, 7, 6))
    got = pixel_adaptive_warp(torch.tensor(x)[None], torch.tensor(filters)[None])[0].numpy()
    np.testing.assert_allclose(got, naive_warp(x, filters), atol=1e-10)


def unfold_warp(x: torch.Tensor, filters: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Eq. 1 through `F.unfold` and autograd: the reference for the hand-written backward."""
    n, c, h, w = x.shape
    k = int(round(filters.shape[1] ** 0.5))
    p = k // 2 * dilation
    patches = torch.nn.functional.unfold(torch.nn.functional.pad(x, (p, p, p, p), mode="replicate"), k,
                                         dilation=dilation).view(n, c, k * k, h, w)
    return (patches * filters.flip(1).unsqueeze(1)).sum(2)


@pytest.mark.parametrize("k,dilation", [(3, 1), (5, 1), (3, 4), (5, 2)])
def test_pixel_adaptive_warp_gradients_match_autograd_through_unfold(k, dilation):
    torch.manual_seed(k + dilation)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    filters = torch.randn(2, k * k, 9, 11, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    got = pixel_adaptive_warp(x, filters, dilation=dilation)
    want = unfold_warp(x, filters, dilation)
    assert torch.allclose(got, want, atol=1e-12)
    grads_got = torch.autograd.grad((got * weight).sum(), (x, filters))
    grads_want = torch.autograd.grad((want * weight).sum(), (x, filters))
    for g, w in zip(grads_got, grads_want):
        assert torch.allclose(g, w, atol=1e-12)
    # one input without a gradient (the frames warped by the HR maps)
    (g_filters,) = torch.autograd.grad(pixel_adaptive_warp(x.detach(), filters, dilation=dilation).sum(), filters)
    assert torch.allclose(g_filters, torch.autograd.grad(unfold_warp(x.detach(), filters, dilation).sum(),
                                                         filters)[0], atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: pixel_adaptive_warp(a, b, dilation=dilation),
                                    (x[:1, :, :5, :6], filters[:1, :, :5, :6]))


def test_pixel_adaptive_warp_refuses_filters_of_another_grid():
    with pytest.raises(ValueError, match="need"):
        pixel_adaptive_warp(torch.zeros(1, 3, 6, 6), torch.zeros(1, 9, 1, 6))  # would broadcast silently
    with pytest.raises(ValueError, match="k\\*k taps"):
        pixel_adaptive_warp(torch.zeros(1, 3, 6, 6), torch.zeros(1, 8, 6, 6))


def test_pixel_adaptive_warp_promotes_dtypes_and_returns_gradients_in_each_inputs_dtype():
    x = torch.randn(1, 2, 6, 6, dtype=torch.bfloat16, requires_grad=True)
    filters = torch.rand(1, 9, 6, 6, requires_grad=True)
    out = pixel_adaptive_warp(x, filters)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and filters.grad.dtype == torch.float32


def test_one_hot_filters_reproduce_a_known_shift():
    """A one-hot tap at (dy, dx) = (1, -2) moves content by (-2, +1): frame t+1 of a texture translating that way."""
    frames = translating_frames(2, size=(40, 32), velocity=(-2, 1), seed=7)
    x = torch.tensor(np.stack(frames), dtype=torch.float64).permute(0, 3, 1, 2)
    k, r = 5, 2
    filters = torch.zeros(1, k * k, 32, 40, dtype=torch.float64)
    filters[:, (1 + r) * k + (-2 + r)] = 1
    moved = pixel_adaptive_warp(x[:1], filters)[0]
    inner = (slice(None), slice(r, -r), slice(r, -r))
    assert torch.equal(moved[inner], x[1][inner])
    identity = torch.zeros_like(filters).index_fill_(1, torch.tensor([12]), 1)
    assert torch.equal(pixel_adaptive_warp(x[:1], identity)[0], x[0])
    assert torch.allclose(filter_displacement(filters)[0, :, 10, 10], torch.tensor([-2.0, 1.0]))


def test_periodic_shuffle_is_eq5_and_a_permuted_pixel_shuffle():
    r, c, h, w = 2, 3, 2, 3
    x = torch.arange(r * r * c * h * w, dtype=torch.float32).view(1, r * r * c, h, w)
    out = periodic_shuffle(x, r)
    assert out.shape == (1, c, h * r, w * r)
    for ch in range(c):
        for y in range(h * r):
            for xx in range(w * r):
                assert out[0, ch, y, xx] == x[0, c * r * (y % r) + c * (xx % r) + ch, y // r, xx // r]
    # torch's channel index is ch * r * r + (y % r) * r + (x % r); ours is (y % r) * r * c + (x % r) * c + ch
    perm = torch.tensor([(i % (r * r)) * c + i // (r * r) for i in range(r * r * c)])
    assert torch.equal(out, F.pixel_shuffle(x[:, perm], r))


def test_context_correlation_is_eq2():
    rng = np.random.default_rng(2)
    ctx, mot, m = rng.normal(size=(4, 5, 6)), rng.normal(size=(4, 5, 6)), rng.normal(size=(9, 5, 6))
    naive = np.zeros((5, 6))
    for y in range(5):
        for x in range(6):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    sy, sx = min(max(y - dy, 0), 4), min(max(x - dx, 0), 5)
                    naive[y, x] += m[(dy + 1) * 3 + dx + 1, y, x] * (mot[:, y, x] * ctx[:, sy, sx]).sum() / 4
    got = context_correlation(*(torch.tensor(a)[None] for a in (ctx, mot, m)))
    assert got.shape == (1, 1, 5, 6)
    np.testing.assert_allclose(got[0, 0].numpy(), naive, atol=1e-10)


@pytest.mark.parametrize("softmax", [True, False])
def test_cgmul_upsamples_by_4_to_the_wider_filters(softmax):
    layer = CGMUL(8, taps_hr=25, softmax=softmax)
    assert layer.conv.in_channels == 4 * 8 + 1 and layer.conv.out_channels == 16 * 25
    hr = layer(torch.randn(3, 8, 5, 7), torch.randn(3, 8, 5, 7), torch.randn(3, 9, 5, 7).softmax(1))
    assert hr.shape == (3, 25, 20, 28)
    if softmax:
        assert torch.allclose(hr.sum(1), torch.ones(3, 20, 28)) and (hr >= 0).all()
    # near-identity start: the centre tap carries half the weight (softmax) or one (raw taps)
    assert hr[:, 12].mean().item() == pytest.approx(0.5 if softmax else 1.0, abs=0.05)


def test_context_extractor_is_resnet18_to_conv3_without_the_max_pool():
    ours = ContextExtractor(width=64)
    reference = torchvision.models.resnet18()  # random init, no download
    wanted = {k: v.shape for k, v in reference.state_dict().items()
              if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == wanted
    ours.load_state_dict({k: reference.state_dict()[k] for k in wanted})
    x = torch.randn(2, 3, 32, 48)
    ref = reference.eval()
    expected = ref.layer2(ref.layer1(ref.relu(ref.bn1(ref.conv1(x)))))  # conv1 -> conv3_x, no max-pool
    assert torch.allclose(ours.eval()(x), expected, atol=1e-5) and expected.shape == (2, 128, 8, 12)


def test_motion_maps_have_the_clip_length_and_both_resolutions():
    m = CGM(tiny_cfg(), total_steps=1)
    maps = m.motion_maps(torch.randn(2, 3, 4, 32, 40))
    assert maps.lr.shape == (2, 9, 4, 8, 10) and maps.hr.shape == (2, 81, 4, 32, 40)  # k_hr 9
    assert maps.pooled.shape == (2, m.backbone.out_dim)
    with pytest.raises(ValueError, match="multiples of 4"):
        m.motion_maps(torch.randn(1, 3, 4, 30, 32))


@pytest.mark.parametrize("softmax", [True, False])
def test_gradients_reach_every_trainable_part(softmax):
    torch.manual_seed(0)
    m = CGM(tiny_cfg(method_options={"softmax": softmax, "lambda2": 1.0, "labels": ["unused.csv"]}), total_steps=1,
            num_classes=3)
    batch = {"views": [{"rgb": torch.randn(2, 3, 5, 32, 32)}], "label": torch.tensor([0, 2])}
    out = m(batch, step=0)
    assert set(out["logs"]) >= {"loss_hr", "loss_lr", "loss_cls", "l1_recon", "l1_copy", "l1_future"}
    out["loss"].backward()
    dead = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not dead, dead
    parts = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert parts == {"backbone", "context", "decoder", "upsampler", "head"}


# -- end to end ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cgm_store(tmp_path_factory) -> Path:
    """Six textures translating 2 px/frame in six directions (x264), spec TINY_SPEC (rgb, iframes, mv)."""
    root = tmp_path_factory.mktemp("cgm")
    videos = root / "videos"
    videos.mkdir()
    for i, velocity in enumerate([(2, 0), (0, 2), (-2, 0), (0, -2), (2, 2), (-2, 1)]):
        encode(videos / f"t{i}.mp4", translating_frames(24, size=(96, 64), velocity=velocity, seed=20 + i), "x264-nob")
    return extract_in_process(videos, root / "store.zarr", TINY_SPEC, "zarr")


def fixed_batch_loss(method: CGM, store: Path, cfg: PretrainConfig) -> float:
    """Loss on the same centre clips of every video (train-mode BN, no update of the weights)."""
    ds = ClipDataset(open_store(store), CGM.needs(cfg), size=cfg.size, train=False)
    rgb = torch.stack([finish_batch(ds[i])["views"][0]["rgb"] for i in range(len(ds))])
    with torch.no_grad():
        return method.train()({"views": [{"rgb": rgb}]}, step=0)["logs"]["loss_hr"]


def test_pretrain_learns_motion_maps(cgm_store, tmp_path):
    run = tmp_path / "run"
    r = cli("pretrain", "--method", "cgm", cgm_store, "-o", run, *TINY, "--steps", "30",
            "--batch-size", "6", "--lr", "0.003", "--log-every", "1")
    assert r.exit_code == 0, r.output
    state = checkpoint.load(run / "checkpoint.pt")
    cfg = PretrainConfig(**state["config"])
    assert cfg.stride == 1 and cfg.optimizer == "adam" and cfg.method_options["k_hr"] is None  # k_hr: the reach rule
    torch.manual_seed(cfg.seed)
    start = CGM(cfg, total_steps=30)  # the run's initial weights: the loop seeds torch, then builds the method
    trained = CGM(cfg, total_steps=30)
    trained.load_state_dict(state["method"])
    before, after = fixed_batch_loss(start, cgm_store, cfg), fixed_batch_loss(trained, cgm_store, cfg)
    assert after < 0.93 * before, (before, after)  # measured: 0.194 -> 0.167
    rows = read_log(run)
    assert len(rows) == 30 and all(np.isfinite(row["loss"]) for row in rows)
    recon = np.mean([row["l1_recon"] / row["l1_copy"] for row in rows[-10:]])
    assert recon < 0.92, recon  # better than copying frame t (measured 0.86; the near-identity start: 0.91)
    assert state["backbone"]["name"] == "r3d10" and "head.weight" not in state["method"]


def test_resume_continues_exactly(cgm_store, tmp_path):
    common = ["--method", "cgm", cgm_store, *TINY, "--backbone-width", "4", "--steps", "4",
              "--batch-size", "3", "--log-every", "1", "--save-every", "100", "--deterministic"]
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    assert motionssl("pretrain", "-o", straight, *common).returncode == 0
    r = motionssl("pretrain", "-o", halted, *common, "--halt-after", "2")
    assert r.returncode == 0 and "halted at step 2 of 4" in r.stdout, r.stderr
    r = motionssl("pretrain", "-o", halted, "--resume", "auto", "--no-progress")
    assert r.returncode == 0, r.stderr
    a, b = read_log(straight), read_log(halted)
    assert [row["step"] for row in b] == [1, 2, 3, 4]
    assert [row["loss"] for row in a] == [row["loss"] for row in b]
    sa, sb = (checkpoint.load(p / "checkpoint.pt")["method"] for p in (straight, halted))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lambda2_trains_a_classifier_on_the_given_labels(cgm_store, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("video_id,label,split\n" + "".join(f"t{i},{'ab'[i % 2]},{'train' if i < 4 else 'test'}\n"
                                                          for i in range(6)))
    run = tmp_path / "run"
    r = cli("pretrain", "--method", "cgm", cgm_store, "-o", run, *TINY, "--steps", "2",
            "--batch-size", "4", "--log-every", "1", "--option", "lambda2=10", "--option", f"labels=[{labels}]")
    assert r.exit_code == 0, r.output
    assert all("loss_cls" in row and "acc" in row for row in read_log(run))
    state = checkpoint.load(run / "checkpoint.pt")
    assert state["method"]["head.weight"].shape[0] == 2
    first = read_log(run)[0]
    assert first["loss"] == pytest.approx(first["loss_hr"] + first["loss_lr"] + 10 * first["loss_cls"], rel=1e-5)


def test_errors_are_one_line(cgm_store, tmp_path):
    base = ["pretrain", "--method", "cgm", cgm_store, *TINY, "--steps", "1", "--batch-size", "2"]
    cases = [(["--size", "30"], "must be a multiple of 4"), (["--clip-len", "1"], "needs at least 2 frames"),
             (["--option", "lambda2=1"], "give the label files"), (["--option", "k_hr=4"], "positive odd")]
    for i, (extra, message) in enumerate(cases):
        r = cli(*base, "-o", tmp_path / f"r{i}", *extra)
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output


def test_training_clips_are_the_stored_pixels_cropped_and_flipped_only(cgm_store):
    """No colour jitter, grayscale or blur: de-normalised frames are whole uint8 levels (resampled uint8 frames)."""
    cfg = tiny_cfg(store=str(cgm_store))
    ds = CGM.dataset(cfg, open_store(cgm_store))
    assert ds.needs.clip_len == 5 and ds.scale == (0.4, 1.0)  # the clip and the frame after it
    for i in range(3):
        rgb = finish_batch(ds[(i, 0)])["views"][0]["rgb"]
        levels = (to_signed_unit(rgb[None]) + 1) * 127.5
        assert (levels - levels.round()).abs().max() < 1e-3


# -- Table 6 (upsampler) and Figure 6 (scale) ------------------------------------------------------------------

def test_a_dilated_warp_is_the_warp_of_the_zero_holed_filter_and_moves_by_the_dilation():
    torch.manual_seed(0)
    x, filters = torch.randn(2, 3, 12, 14), torch.randn(2, 9, 12, 14)
    big = dilate_filters(filters, 4)
    assert big.shape == (2, 81, 12, 14)
    assert torch.equal(big.view(2, 9, 9, 12, 14)[:, ::4, ::4].flatten(1, 2), filters)
    assert big.view(2, 9, 9, 12, 14)[:, 1::4].abs().sum() == 0                          # the zero holes
    assert torch.allclose(pixel_adaptive_warp(x, filters, dilation=4), pixel_adaptive_warp(x, big), atol=1e-6)
    one_hot = torch.zeros(1, 9, 12, 14)
    one_hot[:, 5] = 1                                                                  # tap (dy, dx) = (0, +1)
    moved = pixel_adaptive_warp(x[:1], one_hot, dilation=4)[0]
    assert torch.equal(moved[:, :, 4:], x[0, :, :, :-4])                               # 4 px right


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_the_unlearned_upsamplers_resize_the_lr_taps_and_dilate_them(mode):
    torch.manual_seed(0)
    m = CGM(tiny_cfg(method_options={"upsampler": mode}), total_steps=1)
    assert m.context is None and m.upsampler is None                                   # no CGMUL, no context
    maps = m.motion_maps(torch.randn(2, 3, 4, 32, 40))
    assert maps.lr.shape == (2, 9, 4, 8, 10) and maps.hr.shape == (2, 9, 4, 32, 40) and maps.hr_dilation == 4
    lr = per_frame(maps.lr)
    expected = F.interpolate(lr, scale_factor=4, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    assert torch.allclose(per_frame(maps.hr), expected)
    if mode == "nearest":
        assert torch.equal(per_frame(maps.hr)[:, :, 5, 9], lr[:, :, 1, 2])              # the LR cell's own filter
    # the loss warps frames with the dilated filters: it differs from CGMUL's
    batch = {"views": [{"rgb": torch.randn(2, 3, 5, 32, 32)}]}
    out = m(batch, step=0)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in m.decoder.parameters())


@pytest.mark.parametrize("scale, k_hr, lr_side", [(2, 5, 16), (4, 9, 8), (8, 17, 4)])
def test_the_scale_sets_the_lr_grid_the_context_stride_and_k_hr(scale, k_hr, lr_side):
    assert reach_k_hr(3, scale) == k_hr and reach_k_hr(5, 4) == 17
    m = CGM(tiny_cfg(method_options={"scale": scale}), total_steps=1)
    assert m.k_hr == k_hr and m.upsampler.scale == scale
    maps = m.motion_maps(torch.randn(1, 3, 4, 32, 32))
    assert maps.lr.shape[-2:] == (lr_side, lr_side) and maps.hr.shape[1:] == (k_hr ** 2, 4, 32, 32)
    assert m.context(torch.randn(1, 3, 32, 32)).shape[-1] == 32 // scale
    assert CGM(tiny_cfg(method_options={"scale": scale, "k_hr": 5}), total_steps=1).k_hr == 5  # Table 8's count
    keys = {k: v.shape for k, v in ContextExtractor(width=8, stride=scale).state_dict().items()}
    assert keys == {k: v.shape for k, v in ContextExtractor(width=8).state_dict().items()}  # same weights at any scale


def test_pretrain_runs_every_upsampler_and_scale(cgm_store, tmp_path):
    for i, options in enumerate([["upsampler=nearest"], ["upsampler=bilinear", "scale=8"], ["scale=2"]]):
        run = tmp_path / f"r{i}"
        r = cli("pretrain", "--method", "cgm", cgm_store, "-o", run, *TINY, "--steps", "2", "--batch-size", "3",
                "--log-every", "1", *(a for o in options for a in ("--option", o)))
        assert r.exit_code == 0, r.output
        assert len(read_log(run)) == 2 and all(np.isfinite(row["loss"]) for row in read_log(run))
        saved = checkpoint.load(run / "checkpoint.pt")
        assert all(f"{o.split('=')[0]}" in saved["config"]["method_options"] for o in options)
        has_cgmul = any(k.startswith("upsampler.") for k in saved["method"])
        assert has_cgmul == ("upsampler=nearest" not in options and "upsampler=bilinear" not in options)
    for extra, message in [("scale=3", "choose one of 2, 4, 8"), ("upsampler=bicubic", "choose one of cgmul")]:
        r = cli("pretrain", "--method", "cgm", cgm_store, "-o", tmp_path / "bad", *TINY, "--steps", "1",
                "--batch-size", "2", "--option", extra)
        assert r.exit_code == 2 and message in r.stderr, r.output


@pytest.mark.parametrize("k, scale", [(3, 2), (3, 4), (5, 4), (3, 8)])
def test_hr_filters_reach_as_far_as_lr_filters(k, scale):
    """The reach rule: the farthest tap of an HR filter moves content at least as far, in frame pixels, as the
    farthest tap of an LR filter (scale frame pixels per LR pixel), and one size less would not."""
    def reach(size: int) -> float:
        corner = torch.zeros(1, size * size, 1, 1)
        corner[0, 0] = 1.0
        return float(filter_displacement(corner).abs().max())

    k_hr = reach_k_hr(k, scale)
    assert reach(k_hr) >= scale * reach(k) > reach(k_hr - 2)
