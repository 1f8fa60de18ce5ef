"""Clip augmentation: one spatial draw per clip view for every aligned modality, colour for RGB only.

Spatial parameters are a crop box relative to the frame ([0, 1] coordinates) and a flip, so the same draw
applies to the RGB frames and to the `cell`-times coarser motion-vector grid. The box is snapped to whole
stored pixels (as torchvision's RandomResizedCrop does) and the motion grid takes the same pixel box,
divided by its cell: both cover exactly the same part of the scene. Resampling is bilinear at output pixel
centres (OpenCV's convention); fields with a validity mask resample with nearest, so no measured vector is
blended with the zero of an unmeasured cell.

Colour parameters are drawn once per clip and applied to all its frames (temporally consistent, as CVRL and
MoCo video do), on the (3, T, H, W) float tensor in [0, 1]. The dataset draws them and hands the clip over as uint8
with its parameters as a vector (`color_vector`); `finish_rgb` applies them and the ImageNet normalisation where the
batch is consumed (the training device): a quarter of the bytes cross from the DataLoader workers, and the float work
leaves them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from motionssl.data_specs import hflip_motion

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


# -- spatial ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpatialParams:
    """A crop box relative to the frame (x0, y0, w, h in [0, 1]) and a horizontal flip after the resize."""

    x0: float
    y0: float
    w: float
    h: float
    flip: bool = False

    def pixel_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(x0, y0, w, h) in whole pixels of a `height` x `width` frame, at least 1 x 1."""
        x0, y0 = round(self.x0 * width), round(self.y0 * height)
        x1, y1 = round((self.x0 + self.w) * width), round((self.y0 + self.h) * height)
        x0, y0 = min(x0, width - 1), min(y0, height - 1)
        return x0, y0, max(min(x1, width) - x0, 1), max(min(y1, height) - y0, 1)


def draw_spatial(rng: np.random.Generator, *, aspect: float = 1.0, scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> SpatialParams:
    """RandomResizedCrop's box for a frame of `aspect` = width / height: area a fraction in `scale` of the
    frame, width/height in pixels log-uniform in `ratio`; 10 tries, then the centre crop closest to `ratio`.
    The flip is drawn whatever `flip_p` is, so that changing it changes nothing else."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        area = rng.uniform(*scale)
        r = math.exp(rng.uniform(*log_ratio))
        w, h = math.sqrt(area * r / aspect), math.sqrt(area * aspect / r)
        if w <= 1 and h <= 1:
            box = (rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h)
            break
    if box is None:
        r = min(max(aspect, ratio[0]), ratio[1])  # the frame's own aspect, clamped into `ratio`
        w, h = min(1.0, r / aspect), min(1.0, aspect / r)
        box = ((1 - w) / 2, (1 - h) / 2, w, h)
    return SpatialParams(*box, flip=bool(rng.random() < flip_p))


def center_params(aspect: float = 1.0, position: float = 0.5) -> SpatialParams:
    """The square of side the frame's short side (evaluation), unflipped, centred by default; `position` slides it
    along the long side from 0 (left or top edge) to 1 (right or bottom edge)."""
    w, h = min(1.0, 1 / aspect), min(1.0, aspect)
    return SpatialParams((1 - w) * position, (1 - h) * position, w, h)


def eval_crops(crops: int, aspect: float = 1.0) -> list[SpatialParams]:
    """The test-time crops of a frame of width / height `aspect`:
    1: the centred short-side square;
    3: three short-side squares, at both ends of the long side and the centre (SlowFast's and MoDist's 10 x 3 views);
    10: ten-crop as CoCLR and MVCGC test: the four corners and the centre of the centred short-side square, each
       7/8 of its side (112 of 128 px), and the same five flipped."""
    if crops == 1:
        return [center_params(aspect)]
    if crops == 3:
        return [center_params(aspect, p) for p in (0.0, 0.5, 1.0)]
    if crops == 10:
        sq, side = center_params(aspect), 7 / 8
        w, h = sq.w * side, sq.h * side
        boxes = [SpatialParams(sq.x0 + fx * (sq.w - w), sq.y0 + fy * (sq.h - h), w, h)
                 for fx, fy in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5))]
        return boxes + [replace(b, flip=True) for b in boxes]
    raise ValueError(f"test-time crops must be 1, 3 or 10, got {crops}")


def _resample(arr: np.ndarray, box: tuple[float, float, float, float], out_hw: tuple[int, int]) -> np.ndarray:
    """(T, H, W, C) -> (T, oh, ow, C), bilinear: the box (x0, y0, w, h, in units of arr's pixels) resampled with
    output pixel centres mapped to box positions; integer boxes go through cv2.resize (faster than warpAffine)."""
    oh, ow = out_hw
    t, c = arr.shape[0], arr.shape[3]
    out = np.empty((t, oh, ow, c), arr.dtype)
    if all(float(v).is_integer() for v in box):
        x0, y0, w, h = map(int, box)
        for i in range(t):
            out[i] = cv2.resize(arr[i, y0:y0 + h, x0:x0 + w], (ow, oh), interpolation=cv2.INTER_LINEAR).reshape(
                oh, ow, c)
        return out
    x0, y0, w, h = box
    sx, sy = w / ow, h / oh  # source pixels per output pixel; src = x0 + (j + 0.5) * sx - 0.5
    matrix = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]], np.float64)
    for i in range(t):
        out[i] = cv2.warpAffine(arr[i], matrix, (ow, oh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE).reshape(oh, ow, c)
    return out


def nearest_indices(start: float, length: float, out: int, size: int) -> np.ndarray:
    """(out,) source pixels of `out` output pixels spread over [start, start + length) of an axis of `size`
    pixels: the pixel each output centre falls in, clamped to the axis (borders replicated)."""
    centres = start + (np.arange(out) + 0.5) * length / out
    return np.clip(np.floor(centres), 0, size - 1).astype(np.intp)


def crop_resize_clip(frames: np.ndarray, params: SpatialParams, size: int) -> np.ndarray:
    """(T, H, W, C) -> (C, T, size, size), the pixel box of `params` resized bilinearly, flipped if `params.flip`.
    For RGB (uint8) and for scalar maps (boundary, edges as (T, H, W, 1) float32), whose values are kept: see
    data_specs/README.md. Written channels first plane by plane (cv2.split into the output), and flipped in one
    cv2.flip over all planes: a clip costs half of resizing frame-major and transposing."""
    if frames.dtype == np.float16:
        frames = frames.astype(np.float32)
    t, c = frames.shape[0], frames.shape[3]
    x0, y0, w, h = params.pixel_box(*frames.shape[1:3])
    out = np.empty((c, t, size, size), frames.dtype)
    frame = np.empty((size, size, c), frames.dtype)
    for i in range(t):
        crop = frames[i, y0:y0 + h, x0:x0 + w]
        if c == 1:  # OpenCV's one-channel images are 2-D
            cv2.resize(crop[..., 0], (size, size), dst=out[0, i], interpolation=cv2.INTER_LINEAR)
            continue
        cv2.resize(crop, (size, size), dst=frame, interpolation=cv2.INTER_LINEAR)
        cv2.split(frame, [out[k, i] for k in range(c)])
    if params.flip:
        rows = out.reshape(-1, size)  # every row of every plane, mirrored in place
        cv2.flip(rows, 1, dst=rows)
    return out


def crop_resize_frames(frames: np.ndarray, params: SpatialParams, size: int) -> np.ndarray:
    """(T, H, W, C) -> (T, size, size, C): `crop_resize_clip` frame-major."""
    return np.ascontiguousarray(crop_resize_clip(frames, params, size).transpose(1, 2, 3, 0))


def crop_resize_motion(field: np.ndarray, params: SpatialParams, out_hw: tuple[int, int], *,
                       frame_hw: tuple[int, int], cell: int = 1, valid: np.ndarray | None = None):
    """A motion field (T, h, w, 2) in stored pixels -> (T, *out_hw, 2) float32 in output pixels.

    The field lies on a grid of `cell` x `cell` stored pixels over a stored frame of `frame_hw` (flow:
    cell 1; motion vectors: spec.mv.cell); it is cropped to the frame's pixel box divided by `cell` and
    resized to `out_hw` cells of `cell` output pixels each. Values are rescaled from stored pixels to output
    pixels (dx * out_w * cell / crop_w_px, dy likewise) and, on flip, mirrored with dx negated. With `valid`
    (T, h, w) the field resamples with nearest and the mask comes back resized alike: (field, valid).
    """
    x0, y0, w, h = params.pixel_box(*frame_hw)
    scale = np.array([out_hw[1] * cell / w, out_hw[0] * cell / h], np.float32)
    if valid is None:
        out = _resample(field.astype(np.float32, copy=False), (x0 / cell, y0 / cell, w / cell, h / cell), out_hw)
        out *= scale
        return hflip_motion(out) if params.flip else out
    # Nearest is a gather: one fancy index for all frames, the flip folded into the column order.
    rows = nearest_indices(y0 / cell, h / cell, out_hw[0], field.shape[1])[:, None]
    cols = nearest_indices(x0 / cell, w / cell, out_hw[1], field.shape[2])
    if params.flip:
        cols, scale = cols[::-1], scale * np.float32([-1, 1])  # hflip_motion's mirror and negated dx
    out = field[:, rows, cols].astype(np.float32)
    out *= scale
    return out, valid[:, rows, cols]


# -- colour ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ColorParams:
    """Colour jitter factors (identity: 1, 1, 1, 0) applied in `order` (0 brightness, 1 contrast,
    2 saturation, 3 hue), then grayscale, then a Gaussian blur of `blur_sigma` pixels (0: none)."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    order: tuple[int, ...] = (0, 1, 2, 3)
    grayscale: bool = False
    blur_sigma: float = 0.0


def draw_color(rng: np.random.Generator, *, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
               hue: float = 0.1, jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5,
               blur_sigma: tuple[float, float] = (0.1, 2.0)) -> ColorParams:
    """MoCo v2's colour augmentation, once per clip. Every draw happens whatever the probabilities, so that
    a sample's other parameters do not depend on them."""
    factors = [rng.uniform(1 - brightness, 1 + brightness), rng.uniform(1 - contrast, 1 + contrast),
               rng.uniform(1 - saturation, 1 + saturation), rng.uniform(-hue, hue)]
    order = tuple(int(i) for i in rng.permutation(4))
    jitter, gray, blur = rng.random(3) < (jitter_p, grayscale_p, blur_p)
    sigma = rng.uniform(*blur_sigma)
    if not jitter:
        factors = [1.0, 1.0, 1.0, 0.0]
    return ColorParams(*map(float, factors), order=order, grayscale=bool(gray),
                       blur_sigma=float(sigma) if blur else 0.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(3, ...) -> (1, ...) luma."""
    return torch.tensordot(torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device), x, dims=1).unsqueeze(0)


def _hue_matrix(hue: float) -> np.ndarray:
    """RGB -> RGB rotation of the chroma plane of YIQ by `hue` turns (luma kept)."""
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    a = 2 * math.pi * hue
    rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    return np.linalg.inv(yiq) @ rot @ yiq


def _mix_channels(x: torch.Tensor, m: np.ndarray) -> torch.Tensor:
    """x[c] = sum_j m[c, j] x[j], in place: a new clip-sized tensor is a fresh mmap that page-faults in, which
    costs more than the arithmetic (benchmarks/README.md, "Figures moved out of docstrings")."""
    r, g, b = x[0].clone(), x[1].clone(), x[2]
    for c in range(3):  # b is overwritten last
        torch.mul(b, m[c, 2], out=x[c]).add_(r, alpha=m[c, 0]).add_(g, alpha=m[c, 1])
    return x


def _blend(x: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1], in place on x."""
    return x.mul_(factor).add_(other, alpha=1 - factor).clamp_(0, 1)


def blur_radius(sigma: float) -> int:
    return math.ceil(3 * sigma)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, T, H, W) float32 blurred in place per frame by a Gaussian of `sigma` px truncated at radius
    ceil(3 sigma), borders reflected without repeating the edge (torch's "reflect"). OpenCV's separable
    filter: several times faster than a one-channel conv2d on the CPU."""
    r = blur_radius(sigma)
    if x.device.type != "cpu":
        return x.copy_(blur_by_convolution(x, sigma))
    x = x.contiguous()
    for plane in x.numpy().reshape(-1, *x.shape[-2:]):  # in place: see _mix_channels
        cv2.GaussianBlur(plane, (2 * r + 1, 2 * r + 1), sigma, dst=plane, borderType=cv2.BORDER_REFLECT_101)
    return x


def blur_by_convolution(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """`gaussian_blur`'s filter as two separable torch convolutions, for tensors on a GPU; a new tensor."""
    r = blur_radius(sigma)
    taps = torch.from_numpy(cv2.getGaussianKernel(2 * r + 1, sigma, cv2.CV_32F).ravel()).to(x.device, x.dtype)
    planes = x.reshape(-1, 1, *x.shape[-2:])
    planes = F.conv2d(F.pad(planes, (r, r, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, r, r), mode="reflect"), taps.view(1, 1, -1, 1))
    return planes.reshape(x.shape)


def apply_color(x: torch.Tensor, params: ColorParams) -> torch.Tensor:
    """(3, T, H, W) float in [0, 1] -> the same, jittered as torchvision's functional ops would do frame by
    frame with these factors (contrast uses each frame's mean luma), except hue: a YIQ rotation. Works in
    place: x is overwritten."""
    for op in params.order:
        if op == 0 and params.brightness != 1:
            x = x.mul_(params.brightness).clamp_(0, 1)
        elif op == 1 and params.contrast != 1:
            x = _blend(x, _gray(x).mean(dim=(-2, -1), keepdim=True), params.contrast)
        elif op == 2 and params.saturation != 1:
            x = _blend(x, _gray(x), params.saturation)
        elif op == 3 and params.hue != 0:
            x = _mix_channels(x, _hue_matrix(params.hue)).clamp_(0, 1)
    if params.grayscale:
        x.copy_(_gray(x).expand_as(x))
    if params.blur_sigma > 0:
        x = gaussian_blur(x, params.blur_sigma)
    return x


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(3, ...) in [0, 1] -> ImageNet-normalised, in place."""
    shape = (3,) + (1,) * (x.dim() - 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(shape)
    return x.sub_(mean).div_(std)


COLOR_VECTOR = 10  # brightness, contrast, saturation, hue, order (4), grayscale, blur sigma
IDENTITY_COLOR = ColorParams()


def color_vector(params: ColorParams | None) -> torch.Tensor:
    """(COLOR_VECTOR,) float64 (exact) of `params` (None: no colour change), what a sample carries beside its rgb."""
    p = params or IDENTITY_COLOR
    return torch.tensor([p.brightness, p.contrast, p.saturation, p.hue, *p.order, float(p.grayscale), p.blur_sigma],
                        dtype=torch.float64)


def color_params(vector: torch.Tensor) -> ColorParams:
    """The inverse of `color_vector`."""
    v = [float(x) for x in vector.tolist()]
    return ColorParams(v[0], v[1], v[2], v[3], order=tuple(int(i) for i in v[4:8]), grayscale=v[8] > 0.5,
                       blur_sigma=v[9])


def finish_rgb(rgb: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """uint8 (3, ...) clips or (B, 3, ...) batches, with their `color_vector`s (COLOR_VECTOR,) or (B, COLOR_VECTOR),
    -> float32 in [0, 1], colour-augmented, ImageNet-normalised, on rgb's device: what the dataset used to do per
    sample, done where the batch is consumed."""
    batched = colors.dim() == 2
    x = rgb.float().div_(255)
    for clip, vector in zip(x if batched else [x], colors.cpu() if batched else [colors.cpu()]):
        params = color_params(vector)
        if params != IDENTITY_COLOR:
            apply_color(clip, params)  # in place: each clip is a contiguous slice of x
    normalize(x.transpose(0, 1) if batched else x)  # in place, channels first
    return x


def to_clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> contiguous (3, T, H, W) float32 in [0, 1]."""
    t, h, w, c = frames.shape
    return torch.empty((c, t, h, w)).copy_(torch.from_numpy(frames).permute(3, 0, 1, 2)).div_(255)


def to_clip_uint8(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> contiguous (3, T, H, W) uint8."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(3, 0, 1, 2)))
