"""Clip augmentation against naive references: crop boxes, resampling, motion units, flip, colour."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

from motionssl.data_specs import hflip_motion
from motionssl.train.augment import (
    ColorParams, SpatialParams, apply_color, center_params, crop_resize_frames, crop_resize_motion, draw_color,
    blur_by_convolution, color_params, color_vector, draw_spatial, eval_crops, finish_rgb, gaussian_blur, normalize,
    to_clip_tensor, to_clip_uint8,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only waits on a busy 2-core machine (ms per op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bilinear_ref(img: np.ndarray, box, out_hw, nearest=False) -> np.ndarray:
    """(H, W, C) sampled at output pixel centres mapped into `box` (x0, y0, w, h in pixel units), borders
    replicated: the definition, one output pixel at a time."""
    h_in, w_in = img.shape[:2]
    x0, y0, w, h = box
    oh, ow = out_hw
    out = np.zeros((oh, ow, img.shape[2]))
    for i in range(oh):
        for j in range(ow):
            sx, sy = x0 + (j + 0.5) * w / ow, y0 + (i + 0.5) * h / oh  # continuous coordinates
            if nearest:
                out[i, j] = img[min(int(sy), h_in - 1), min(int(sx), w_in - 1)]
                continue
            sx, sy = min(max(sx - 0.5, 0), w_in - 1), min(max(sy - 0.5, 0), h_in - 1)  # pixel-centre coordinates
            xa, ya = int(sx), int(sy)
            xb, yb = min(xa + 1, w_in - 1), min(ya + 1, h_in - 1)
            fx, fy = sx - xa, sy - ya
            out[i, j] = ((1 - fy) * ((1 - fx) * img[ya, xa] + fx * img[ya, xb])
                         + fy * ((1 - fx) * img[yb, xa] + fx * img[yb, xb]))
    return out


def smooth_field(rng, t, h, w, c) -> np.ndarray:
    """Low-frequency random values: bilinear sampling error of OpenCV's 1/32-px grid stays tiny."""
    coarse = rng.normal(size=(t, h // 4 + 2, w // 4 + 2, c)).astype(np.float32)
    return np.stack([np.stack([np.kron(f[..., k], np.ones((4, 4)))[:h, :w] for k in range(c)], -1)
                     for f in coarse]).astype(np.float32)


# -- spatial draws --------------------------------------------------------------------------------

def test_draw_spatial_follows_random_resized_crop():
    rng = np.random.default_rng(0)
    aspect = 1.6  # a 128 x 205 frame
    areas, flips = [], []
    for _ in range(2000):
        p = draw_spatial(rng, aspect=aspect, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
        assert 0 <= p.x0 and p.x0 + p.w <= 1 + 1e-9 and 0 <= p.y0 and p.y0 + p.h <= 1 + 1e-9
        pixel_ratio = p.w * aspect / p.h  # width / height in pixels
        assert 3 / 4 - 1e-9 <= pixel_ratio <= 4 / 3 + 1e-9
        areas.append(p.w * p.h)
        flips.append(p.flip)
    areas = np.array(areas)
    assert areas.min() >= 0.2 - 1e-9 and areas.max() <= 1 + 1e-9
    assert 0.47 < np.mean(flips) < 0.53
    torch.manual_seed(0)  # torchvision's own draws on a 128 x 205 image: the same distribution of areas
    ref = [np.prod(RandomResizedCrop.get_params(torch.zeros(3, 128, 205), [0.2, 1.0], [3 / 4, 4 / 3])[2:]) / (128 * 205)
           for _ in range(2000)]
    assert abs(np.median(areas) - np.median(ref)) < 0.03 and abs(areas.mean() - np.mean(ref)) < 0.02


def test_draw_spatial_falls_back_to_the_centre_crop():
    """No box of the whole area has a ratio in [1, 1] on a 2:1 frame: the centre square, as torchvision."""
    p = draw_spatial(np.random.default_rng(0), aspect=2.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    assert (p.x0, p.y0, p.w, p.h, p.flip) == (0.25, 0.0, 0.5, 1.0, False)


def test_flip_probability_changes_nothing_else():
    a = draw_spatial(np.random.default_rng(5), aspect=1.3, flip_p=0.0)
    b = draw_spatial(np.random.default_rng(5), aspect=1.3, flip_p=1.0)
    assert (a.x0, a.y0, a.w, a.h) == (b.x0, b.y0, b.w, b.h) and not a.flip and b.flip


def test_center_params_is_the_short_side_square():
    p = center_params(aspect=2.0)
    assert (p.x0, p.y0, p.w, p.h, p.flip) == (0.25, 0.0, 0.5, 1.0, False)
    assert p.pixel_box(64, 128) == (32, 0, 64, 64)
    p = center_params(aspect=0.5)
    assert p.pixel_box(128, 64) == (0, 32, 64, 64)


def test_eval_crops_are_the_papers_test_crops():
    assert eval_crops(1, 2.0) == [center_params(2.0)]
    boxes = [c.pixel_box(64, 128) for c in eval_crops(3, 2.0)]
    assert boxes == [(0, 0, 64, 64), (32, 0, 64, 64), (64, 0, 64, 64)]  # left, centre, right squares
    boxes = [c.pixel_box(128, 64) for c in eval_crops(3, 0.5)]
    assert boxes == [(0, 0, 64, 64), (0, 32, 64, 64), (0, 64, 64, 64)]  # portrait: top, centre, bottom
    ten = eval_crops(10, 2.0)  # 128 x 64 frame: centred 64-px square at x = 32, crops of 56 px
    assert [c.pixel_box(64, 128) for c in ten[:5]] == [(32, 0, 56, 56), (40, 0, 56, 56), (32, 8, 56, 56),
                                                        (40, 8, 56, 56), (36, 4, 56, 56)]
    assert [c.flip for c in ten] == [False] * 5 + [True] * 5
    assert [c.pixel_box(64, 128) for c in ten[5:]] == [c.pixel_box(64, 128) for c in ten[:5]]
    with pytest.raises(ValueError):
        eval_crops(2)


# -- resampling -----------------------------------------------------------------------------------

def test_crop_resize_frames_matches_bilinear_reference():
    rng = np.random.default_rng(0)
    frames = smooth_field(rng, 3, 64, 96, 3) * 40 + 128
    p = SpatialParams(0.21, 0.13, 0.55, 0.6)
    box = p.pixel_box(64, 96)
    assert box == (20, 8, 53, 39)
    out = crop_resize_frames(frames, p, 24)
    assert out.shape == (3, 24, 24, 3) and out.dtype == np.float32
    for t in range(3):
        np.testing.assert_allclose(out[t], bilinear_ref(frames[t], box, (24, 24)), atol=1e-3)
    u8 = np.clip(frames, 0, 255).astype(np.uint8)
    out8 = crop_resize_frames(u8, p, 24)
    assert out8.dtype == np.uint8
    assert np.abs(out8[0].astype(float) - bilinear_ref(u8[0].astype(float), box, (24, 24))).max() <= 1.0 + 1e-6


def test_flip_mirrors_frames():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    p = SpatialParams(0.1, 0.2, 0.7, 0.5)
    flipped = crop_resize_frames(frames, SpatialParams(p.x0, p.y0, p.w, p.h, flip=True), 16)
    np.testing.assert_array_equal(flipped, crop_resize_frames(frames, p, 16)[:, :, ::-1])
    maps = rng.random((3, 32, 48, 1), dtype=np.float32)  # boundary, edges: one channel, float
    flipped = crop_resize_frames(maps, SpatialParams(p.x0, p.y0, p.w, p.h, flip=True), 16)
    assert flipped.shape == (3, 16, 16, 1)
    np.testing.assert_array_equal(flipped, crop_resize_frames(maps, p, 16)[:, :, ::-1])


def test_motion_values_are_rescaled_to_output_pixels():
    """A uniform (4, 2) stored px/frame field, cropped to 64 x 16 stored px and resized to 32 x 32 output px,
    reads (4 * 32 / 64, 2 * 32 / 16) = (2, 4) output px/frame, on the flow grid and on the 4-px MV grid."""
    field = np.broadcast_to(np.float32([4, 2]), (2, 64, 128, 2)).copy()
    p = SpatialParams(0.25, 0.5, 0.5, 0.25)  # pixel box (32, 32, 64, 16) of a 64 x 128 frame
    flow = crop_resize_motion(field, p, (32, 32), frame_hw=(64, 128))
    assert flow.shape == (2, 32, 32, 2)
    np.testing.assert_allclose(flow[..., 0], 2.0, rtol=1e-6)
    np.testing.assert_allclose(flow[..., 1], 4.0, rtol=1e-6)
    grid = field[:, ::4, ::4]  # (2, 16, 32, 2)
    mv, valid = crop_resize_motion(grid, p, (8, 8), frame_hw=(64, 128), cell=4, valid=np.ones((2, 16, 32), bool))
    assert mv.shape == (2, 8, 8, 2) and valid.shape == (2, 8, 8) and valid.all()
    np.testing.assert_allclose(mv[..., 0], 2.0, rtol=1e-6)
    np.testing.assert_allclose(mv[..., 1], 4.0, rtol=1e-6)
    flipped = crop_resize_motion(field, SpatialParams(0.25, 0.5, 0.5, 0.25, flip=True), (32, 32), frame_hw=(64, 128))
    np.testing.assert_allclose(flipped[..., 0], -2.0, rtol=1e-6)
    np.testing.assert_allclose(flipped[..., 1], 4.0, rtol=1e-6)


def test_motion_grid_resamples_the_same_box_on_its_own_grid():
    """The MV grid's box is the frame's pixel box divided by the cell: fractional cells, bilinear (no mask) or
    nearest (with a mask) at output cell centres; values times the output/crop pixel ratio."""
    rng = np.random.default_rng(2)
    grid = smooth_field(rng, 2, 16, 24, 2)
    valid = rng.random((2, 16, 24)) < 0.7
    p = SpatialParams(0.3, 0.15, 0.5, 0.7)
    x0, y0, w, h = p.pixel_box(64, 96)  # (29, 10, 48, 45) stored px: 7.25 cells in
    box = (x0 / 4, y0 / 4, w / 4, h / 4)
    scale = np.float32([10 * 4 / w, 10 * 4 / h])
    dense = crop_resize_motion(grid, p, (10, 10), frame_hw=(64, 96), cell=4)
    mv, mask = crop_resize_motion(grid, p, (10, 10), frame_hw=(64, 96), cell=4, valid=valid)
    for t in range(2):
        np.testing.assert_allclose(dense[t], bilinear_ref(grid[t], box, (10, 10)) * scale, atol=0.03)
        np.testing.assert_allclose(mv[t], bilinear_ref(grid[t], box, (10, 10), nearest=True) * scale, atol=1e-5)
        np.testing.assert_array_equal(mask[t], bilinear_ref(valid[t, ..., None].astype(float), box, (10, 10),
                                                            nearest=True)[..., 0] > 0.5)


def test_motion_and_mask_sample_the_same_cells_for_any_crop():
    """On the compressed spec's grid (128 x 228 stored px, 4-px cells) under random crops to 28 x 28 cells, the
    vectors and the mask both take the stored cell each output centre falls in: a valid output cell always holds a
    measured vector. (OpenCV's one-channel nearest warp, which sampled the mask before, picked other cells than the
    two-channel one: 19 of 784 on one of these crops.)"""
    rng = np.random.default_rng(5)
    for _ in range(40):
        grid = rng.normal(size=(1, 32, 57, 2)).astype(np.float16)
        valid = rng.random((1, 32, 57)) < 0.6
        p = draw_spatial(rng, aspect=228 / 128)
        x0, y0, w, h = p.pixel_box(128, 228)
        box, scale = (x0 / 4, y0 / 4, w / 4, h / 4), np.float32([28 * 4 / w, 28 * 4 / h])
        mv, mask = crop_resize_motion(grid, p, (28, 28), frame_hw=(128, 228), cell=4, valid=valid)
        expected = bilinear_ref(grid[0].astype(np.float32), box, (28, 28), nearest=True) * scale
        expected_mask = bilinear_ref(valid[0, ..., None].astype(float), box, (28, 28), nearest=True)[..., 0] > 0.5
        if p.flip:
            expected, expected_mask = hflip_motion(expected, expected_mask)
        np.testing.assert_allclose(mv[0], expected, rtol=1e-6)
        np.testing.assert_array_equal(mask[0], expected_mask)


def test_hflip_motion_mirrors_the_width_axis():
    field = np.zeros((2, 3, 4, 2), np.float32)
    field[:, 0, 0] = (1, 2)
    valid = np.zeros((2, 3, 4), bool)
    valid[:, 0, 0] = True
    out, mask = hflip_motion(field, valid)
    np.testing.assert_array_equal(out[:, 0, 3], [[-1, 2], [-1, 2]])
    assert mask[:, 0, 3].all() and mask.sum() == 2 and np.abs(out).sum() == 6


def test_flip_mirrors_motion_and_negates_dx_with_its_mask():
    rng = np.random.default_rng(3)
    grid = rng.normal(size=(2, 16, 24, 2)).astype(np.float32)
    valid = rng.random((2, 16, 24)) < 0.5
    p = SpatialParams(0.1, 0.1, 0.8, 0.8)
    mv, mask = crop_resize_motion(grid, p, (12, 12), frame_hw=(64, 96), cell=4, valid=valid)
    fmv, fmask = crop_resize_motion(grid, SpatialParams(0.1, 0.1, 0.8, 0.8, flip=True), (12, 12), frame_hw=(64, 96),
                                    cell=4, valid=valid)
    np.testing.assert_array_equal(fmask, mask[:, :, ::-1])
    np.testing.assert_array_equal(fmv[..., 0], -mv[:, :, ::-1, 0])
    np.testing.assert_array_equal(fmv[..., 1], mv[:, :, ::-1, 1])


def test_rgb_and_motion_grid_cover_the_same_scene():
    """A square marked in the frame and in the MV mask lands on the same output pixels after any crop."""
    frame = np.zeros((1, 64, 96, 3), np.uint8)
    frame[:, 24:40, 48:72] = 255  # rows 24..39, columns 48..71: whole 4-px cells
    valid = np.zeros((1, 16, 24), bool)
    valid[:, 6:10, 12:18] = True
    field = np.zeros((1, 16, 24, 2), np.float32)
    rng = np.random.default_rng(4)
    for _ in range(20):
        p = draw_spatial(rng, aspect=1.5, scale=(0.5, 1.0))
        rgb = crop_resize_frames(frame, p, 32)[0, ..., 0] > 127
        _, mask = crop_resize_motion(field, p, (8, 8), frame_hw=(64, 96), cell=4, valid=valid)
        cells = rgb.reshape(8, 4, 8, 4).mean(axis=(1, 3))  # fraction of each output cell inside the square
        assert (mask[0] == (cells > 0.5))[(cells < 0.25) | (cells > 0.75)].all()


# -- colour ---------------------------------------------------------------------------------------

def clip(seed=0, t=3, h=20, w=24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, t, h, w, generator=g)


def per_frame(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply a torchvision image function to each frame of (3, T, H, W): the naive reference."""
    return torch.stack([fn(x[:, t]) for t in range(x.shape[1])], dim=1)


@pytest.mark.parametrize("op, params, ref", [
    ("brightness", ColorParams(brightness=1.3), lambda im: TF.adjust_brightness(im, 1.3)),
    ("contrast", ColorParams(contrast=0.7), lambda im: TF.adjust_contrast(im, 0.7)),
    ("contrast up", ColorParams(contrast=1.4), lambda im: TF.adjust_contrast(im, 1.4)),
    ("saturation", ColorParams(saturation=1.35), lambda im: TF.adjust_saturation(im, 1.35)),
    ("grayscale", ColorParams(grayscale=True), lambda im: TF.rgb_to_grayscale(im, num_output_channels=3)),
    ("in order", ColorParams(brightness=0.8, contrast=1.3, saturation=0.6, order=(2, 0, 1, 3)),
     lambda im: TF.adjust_contrast(TF.adjust_brightness(TF.adjust_saturation(im, 0.6), 0.8), 1.3)),
])
def test_color_ops_equal_torchvision_frame_by_frame(op, params, ref):
    x = clip()
    np.testing.assert_allclose(apply_color(x.clone(), params), per_frame(x, ref), atol=1e-5, err_msg=op)


def yiq_hue_ref(x: torch.Tensor, hue: float) -> torch.Tensor:
    """Hue as a rotation of the (I, Q) chroma plane by hue turns, per pixel, in float64."""
    rgb = x.double().permute(1, 2, 3, 0).reshape(-1, 3).numpy()
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    y, i, q = (rgb @ yiq.T).T
    a = 2 * math.pi * hue
    i, q = i * math.cos(a) - q * math.sin(a), i * math.sin(a) + q * math.cos(a)
    out = np.clip(np.stack([y, i, q], 1) @ np.linalg.inv(yiq).T, 0, 1)
    return torch.from_numpy(out.reshape(*x.shape[1:], 3)).permute(3, 0, 1, 2).float()


def test_hue_rotates_chroma_and_keeps_luma():
    x = clip(1) * 0.5 + 0.25  # away from the clamp
    np.testing.assert_allclose(apply_color(x.clone(), ColorParams(hue=0.1)), yiq_hue_ref(x, 0.1), atol=1e-5)
    y0 = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    out = apply_color(x.clone(), ColorParams(hue=-0.07))
    np.testing.assert_allclose(0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2], y0, atol=1e-5)
    assert (out - x).abs().max() > 0.01


def test_blur_equals_reflect_padded_convolution():
    x = clip(2, h=23, w=30)
    for sigma in (0.3, 1.1, 2.0):
        r = math.ceil(3 * sigma)
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
        k2 = (k[:, None] * k[None, :]) / k.sum() ** 2
        planes = F.pad(x.double().reshape(-1, 1, 23, 30), (r, r, r, r), mode="reflect")
        ref = F.conv2d(planes, k2.view(1, 1, 2 * r + 1, 2 * r + 1)).view(x.shape)
        np.testing.assert_allclose(gaussian_blur(x.clone(), sigma), ref.float(), atol=1e-5)
        np.testing.assert_allclose(blur_by_convolution(x, sigma), ref.float(), atol=1e-5)  # the GPU path
        np.testing.assert_allclose(apply_color(x.clone(), ColorParams(blur_sigma=sigma)), ref.float(), atol=1e-5)


def test_color_is_the_same_for_every_frame():
    """One draw per clip: each frame of the jittered clip equals that frame jittered alone."""
    x = clip(3, t=4)
    params = draw_color(np.random.default_rng(7), jitter_p=1.0, grayscale_p=0.0, blur_p=1.0)
    whole = apply_color(x.clone(), params)
    for t in range(4):
        np.testing.assert_allclose(whole[:, t:t + 1], apply_color(x[:, t:t + 1].clone(), params), atol=1e-6)


def test_draw_color_ranges_and_probabilities():
    rng = np.random.default_rng(0)
    draws = [draw_color(rng) for _ in range(3000)]
    jittered = [d for d in draws if (d.brightness, d.contrast, d.saturation, d.hue) != (1.0, 1.0, 1.0, 0.0)]
    assert abs(len(jittered) / 3000 - 0.8) < 0.03
    assert abs(np.mean([d.grayscale for d in draws]) - 0.2) < 0.03
    blurred = [d.blur_sigma for d in draws if d.blur_sigma > 0]
    assert abs(len(blurred) / 3000 - 0.5) < 0.03 and 0.1 <= min(blurred) and max(blurred) <= 2.0
    for d in jittered:
        assert 0.6 <= d.brightness <= 1.4 and 0.6 <= d.contrast <= 1.4 and 0.6 <= d.saturation <= 1.4
        assert -0.1 <= d.hue <= 0.1 and sorted(d.order) == [0, 1, 2, 3]
    none = draw_color(np.random.default_rng(1), jitter_p=0, grayscale_p=0, blur_p=0)
    x = clip(4)
    np.testing.assert_array_equal(apply_color(x.clone(), none), x)


def test_normalize_and_clip_tensor():
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    x = to_clip_tensor(frames)
    assert x.shape == (3, 2, 5, 6) and x.is_contiguous()
    np.testing.assert_allclose(x[1, 0], frames[0, ..., 1] / 255, atol=1e-7)
    out = normalize(x.clone())
    np.testing.assert_allclose(out[2], (x[2] - 0.406) / 0.225, atol=1e-6)


def test_finish_rgb_is_the_per_sample_colour_and_normalisation():
    """The dataset ships uint8 and a colour vector; finish_rgb, alone or batched, gives what applying the colour
    and the normalisation to the float clip gives."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (4, 9, 11, 3), dtype=np.uint8) for _ in range(3)]
    params = [draw_color(np.random.default_rng(s), jitter_p=1.0, grayscale_p=g, blur_p=1.0)
              for s, g in ((0, 0.0), (1, 1.0))] + [None]
    for p in params[:2]:
        assert color_params(color_vector(p)) == p
    refs = [normalize(apply_color(to_clip_tensor(f), p) if p else to_clip_tensor(f)) for f, p in zip(frames, params)]
    vectors = torch.stack([color_vector(p) for p in params])
    batch = finish_rgb(torch.stack([to_clip_uint8(f) for f in frames]), vectors)
    assert batch.dtype == torch.float32 and batch.shape == (3, 3, 4, 9, 11)
    for b, (f, ref) in enumerate(zip(frames, refs)):
        np.testing.assert_allclose(batch[b], ref, atol=1e-5)
        np.testing.assert_allclose(finish_rgb(to_clip_uint8(f), vectors[b]), ref, atol=1e-5)
