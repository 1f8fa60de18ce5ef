"""tvl1-torch against OpenCV's DualTVL1: each building block, then the flow on real and synthetic clips."""
import av
import cv2
import numpy as np
import pytest
import torch

from motionssl.preprocess.flow import TVL1TorchFlow
from motionssl.preprocess.synthetic import encode, translating_frames
from motionssl.preprocess.tvl1_torch import (
    TVL1Params,
    centered_gradient,
    median_filter,
    median_filter_torch,
    pyramid_sizes,
    resize_linear,
    rgb_to_gray,
    tvl1_flow,
    warp_bicubic,
)

SIZE = (96, 72)  # (w, h): real frames downscaled, so OpenCV's TV-L1 takes ~0.3 s a pair here


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small tensors on a shared 2-core machine: a second OpenMP thread spins more than it helps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def decode(path, size=None, start=0, count=None) -> np.ndarray:
    """RGB frames [start, start + count) of a video, resized with INTER_AREA to size = (w, h) if given."""
    out = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i < start:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            out.append(rgb if size is None else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
            if count is not None and len(out) == count:
                break
    return np.stack(out)


def opencv_tvl1(src: np.ndarray, dst: np.ndarray, **params) -> np.ndarray:
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(**params)
    gray = lambda f: cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)  # noqa: E731
    return np.stack([tvl1.calc(gray(a), gray(b), None) for a, b in zip(src, dst)])


def endpoint_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1)


@pytest.fixture(scope="module")
def real_pairs(clips):
    """Two consecutive pairs from each of two real clips (a bike race, an animation), at SIZE."""
    frames = [decode(clips[name], SIZE, start=40, count=3) for name in ("bikes", "bigbuckbunny")]
    return np.concatenate([f[:-1] for f in frames]), np.concatenate([f[1:] for f in frames])


@pytest.fixture(scope="module")
def opencv_flow(real_pairs):
    return opencv_tvl1(*real_pairs)


# ---------------------------------------------------------------- building blocks, one at a time

def test_gray_is_opencvs(real_pairs):
    frames = real_pairs[0]
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]).astype(np.float32)
    np.testing.assert_array_equal(rgb_to_gray(torch.from_numpy(frames)).numpy(), expected)
    rgb = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)  # 1M random colours
    assert np.array_equal(rgb_to_gray(torch.from_numpy(rgb)).numpy(), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def test_pyramid_is_opencvs():
    rng = np.random.default_rng(0)
    img = (rng.random((256, 340)) * 255).astype(np.float32)
    levels, prev = [img], img
    while len(levels) < 5:
        prev = cv2.resize(prev, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
        levels.append(prev)
    assert pyramid_sizes(256, 340, TVL1Params()) == [lv.shape for lv in levels]
    mine = torch.from_numpy(img)[None]
    for lv in levels[1:]:
        mine = resize_linear(mine, lv.shape, scale=(1.25, 1.25))  # fx = 0.8: the source step is 1 / 0.8
        np.testing.assert_allclose(mine[0].numpy(), lv, atol=1e-3)  # 1e-5 relative: weights rounded apart
    # A level under 16 px ends the pyramid (OpenCV's rule), so small frames get fewer levels.
    assert pyramid_sizes(30, 40, TVL1Params()) == [(30, 40), (24, 32), (19, 26)]
    assert pyramid_sizes(30, 40, TVL1Params(nscales=1)) == [(30, 40)]


def test_flow_upscaling_is_opencvs_resize_to_a_size():
    flow = np.random.default_rng(1).normal(0, 3, (2, 41, 53)).astype(np.float32)
    expected = np.stack([cv2.resize(f, (67, 52), interpolation=cv2.INTER_LINEAR) for f in flow])
    np.testing.assert_allclose(resize_linear(torch.from_numpy(flow), (52, 67)).numpy(), expected, atol=1e-4)


def test_centered_gradient_halves_one_sided_differences_at_the_borders():
    img = np.random.default_rng(2).random((7, 9)).astype(np.float32) * 255
    padded = np.pad(img, 1, mode="edge")
    dx = 0.5 * (padded[1:-1, 2:] - padded[1:-1, :-2])
    dy = 0.5 * (padded[2:, 1:-1] - padded[:-2, 1:-1])
    np.testing.assert_array_equal(centered_gradient(torch.from_numpy(img)[None])[0].numpy(), np.stack([dx, dy]))
    assert dx[0, 0] == 0.5 * (img[0, 1] - img[0, 0])  # OpenCV's corner rule, here by the padding


def test_warp_is_opencv_remap_cubic_with_zero_outside(real_pairs):
    img = rgb_to_gray(torch.from_numpy(real_pairs[0][:1]))
    h, w = img.shape[1:]
    rng = np.random.default_rng(3)
    flow = cv2.GaussianBlur(rng.normal(0, 40, (h, w, 2)).astype(np.float32), (0, 0), 6) + np.float32([20, -8])
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    expected = cv2.remap(img[0].numpy(), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mine = warp_bicubic(img[:, None], torch.from_numpy(flow).permute(2, 0, 1)[None])[0, 0].numpy()
    assert (expected == 0).mean() > 0.1  # samples wholly outside the image
    np.testing.assert_allclose(mine, expected, atol=0.02)  # on [0, 255]: grid_sample's float round trip


@pytest.mark.parametrize("k", [3, 5])
def test_median_filters_select_opencvs_values(k):
    x = torch.from_numpy(np.random.default_rng(4).normal(0, 2, (2, 2, 19, 23)).astype(np.float32))
    x[0, 0, 3:9, 4:11] = 1.5  # ties
    expected = np.stack([[cv2.medianBlur(np.ascontiguousarray(x[i, c].numpy()), k) for c in range(2)]
                         for i in range(2)])
    np.testing.assert_array_equal(median_filter(x, k).numpy(), expected)  # the CPU path: cv2.medianBlur
    np.testing.assert_array_equal(median_filter_torch(x, k).numpy(), expected)  # the CUDA path's network


# ---------------------------------------------------------------- the whole method

def test_matches_opencv_on_real_frames(real_pairs, opencv_flow):
    """The issue's goal: median endpoint difference <= 0.3 px, 95th percentile <= 1.5 px."""
    mine = TVL1TorchFlow(batch=4, device="cpu")(*real_pairs)
    assert mine.shape == opencv_flow.shape and mine.dtype == np.float32
    diff = endpoint_difference(mine, opencv_flow)
    median, p95 = np.median(diff), np.percentile(diff, 95)
    assert median <= 0.3 and p95 <= 1.5, (median, p95)
    # What this implementation reaches (benchmarks/README.md), with a margin: a regression fails here first.
    assert median <= 0.02 and p95 <= 0.3, (median, p95)
    assert np.median(endpoint_difference(opencv_flow, 0 * opencv_flow)) > 0.1  # the clips do move


def test_batch_equals_one_pair_at_a_time(real_pairs):
    """Pairs converge after different numbers of steps; each leaves the batch on its own."""
    src, dst = (rgb_to_gray(torch.from_numpy(f)) for f in real_pairs)
    iterations = []
    batched = tvl1_flow(src, dst, iterations=iterations)
    counts = torch.stack(iterations)  # (levels x warps, pairs)
    assert (counts != counts[:, :1]).any(dim=1).float().mean() > 0.5  # stopping differs between pairs
    assert (counts < 300).all() and (counts >= 1).all()
    for n in range(len(src)):  # every op is per pair or per pixel: bit-equal, not just close
        assert torch.equal(batched[n:n + 1], tvl1_flow(src[n:n + 1], dst[n:n + 1])), n


def encoded_translation(tmp_path, velocity, size=(64, 48), n=3) -> np.ndarray:
    path = encode(tmp_path / "t.mp4", translating_frames(n, size=size, velocity=velocity), "x264-nob")
    return decode(path)


@pytest.mark.parametrize("velocity", [(2, 1), (-3, 2), (0, -2)])
def test_recovers_known_translation_of_an_encoded_clip(tmp_path, velocity):
    video = encoded_translation(tmp_path, velocity)
    flow = TVL1TorchFlow(device="cpu")(video[:-1], video[1:])
    inner = flow[:, 8:-8, 8:-8].reshape(-1, 2)  # content entering at the borders has no match
    np.testing.assert_allclose(np.median(inner, axis=0), velocity, atol=0.1)  # sign and direction included
    assert np.linalg.norm(inner - np.float32(velocity), axis=-1).mean() < 0.2
    ref = opencv_tvl1(video[:-1], video[1:])
    assert np.percentile(endpoint_difference(flow, ref), 95) < 0.1


def test_gamma_illumination_term_matches_opencv(real_pairs):
    src, dst = real_pairs[0][2:3], real_pairs[1][2:3]
    mine = TVL1TorchFlow(device="cpu", params=TVL1Params(gamma=0.2))(src, dst)
    diff = endpoint_difference(mine, opencv_tvl1(src, dst, gamma=0.2))
    assert np.median(diff) <= 0.02 and np.percentile(diff, 95) <= 0.3, (np.median(diff), np.percentile(diff, 95))


def test_bad_input_and_parameters_fail_clearly():
    a = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        TVL1TorchFlow(device="cpu")(a, a.astype(np.float32))
    with pytest.raises(ValueError, match="equal shape"):
        tvl1_flow(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))
    with pytest.raises(ValueError, match="at least 3x3"):
        tvl1_flow(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))
    for bad in ({"median_filtering": 7}, {"scale_step": 1.0}, {"warps": 0}, {"tau": 0}):
        with pytest.raises(ValueError, match="TV-L1"):
            TVL1Params(**bad)
    with pytest.raises(ValueError, match="batch"):
        TVL1TorchFlow(batch=0)
