"""Dense optical flow between frame pairs, and the motion maps two papers derive from it.

Flow convention (every method here): `flow[n, y, x] = (dx, dy)` is the forward displacement in
pixels of the content at (x, y) of `src[n]` to where it is in `dst[n]`, so that
`src(x) ≈ dst(x + flow(x))`; x points right, y down. Frames are (N, H, W, 3) uint8 RGB batches.

Derived maps:
- `motion_boundary`: MCL (Li et al. 2021, §3.1, eq. 1), sqrt(u_x² + u_y² + v_x² + v_y²) on TV-L1
  flow of consecutive frames; spatial derivatives of the flow cancel a global camera pan.
- `flow_edges`: MoDist (Xiao et al. 2021, §4.1), Sobel gradient magnitude of |flow| on RAFT flow
  from frame t to t-5, clamped to [0, 10].

OpenCV's thread count is global state: the caller pins it (cv2.setNumThreads), not this module.
torch and torchvision are imported only by the methods that run on them (RAFT, tvl1-torch): a decoder process of
an OpenCV flow (`fast`, `tvl1-opencv`) stays without them, about 0.8 GB less resident (benchmarks/README.md).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal
from urllib.parse import urlparse

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

    from motionssl.preprocess.tvl1_torch import TVL1Params

FlowMethod = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_pair(src: np.ndarray, dst: np.ndarray) -> None:
    if src.shape != dst.shape or src.ndim != 4 or src.shape[-1] != 3:
        raise ValueError(f"expected two (N, H, W, 3) batches of equal shape, got {src.shape} and {dst.shape}")
    if src.dtype != np.uint8 or dst.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB frames, got {src.dtype} and {dst.dtype}")


def _to_device(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    import torch

    # A copy, not ascontiguousarray: numpy calls a 1-frame slice with a negative stride
    # contiguous, and torch refuses negative strides.
    return torch.from_numpy(np.array(frames, copy=True)).to(device)


def _default_device(device: str | torch.device | None) -> torch.device:
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _per_pair(src: np.ndarray, dst: np.ndarray, flow_2d: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Run a grayscale two-frame OpenCV flow on every pair of the batch."""
    _check_pair(src, dst)
    out = np.empty(src.shape[:3] + (2,), np.float32)
    for n in range(len(src)):
        out[n] = flow_2d(_gray(src[n]), _gray(dst[n]))
    return out


class TVL1Flow:
    """OpenCV contrib Dual TV-L1 with its default parameters, as MCL used, on grayscale frames."""

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        # Built per call: OpenCV algorithm objects neither pickle (dask workers) nor share across threads.
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
        return _per_pair(src, dst, lambda a, b: tvl1.calc(a, b, None))


class DISFlow:
    """OpenCV DIS (Kroeger et al. 2016) on grayscale frames: much faster than TV-L1, a little coarser."""

    def __init__(self, *, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> None:
        self.preset = preset

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        dis = cv2.DISOpticalFlow_create(self.preset)  # per call, for the same reasons as TVL1Flow
        return _per_pair(src, dst, lambda a, b: dis.calc(a, b, None))


class MissingWeights(FileNotFoundError):
    """No local RAFT checkpoint: we never download at run time (compute nodes are often offline)."""


def _raft(model: str):
    """(builder, the checkpoint looked for by default). MoDist distils from RAFT "trained on synthetic data only":
    the C_T checkpoints (FlyingChairs + FlyingThings), not C_T_SKHT (also fine-tuned on Sintel, KITTI and HD1K, the
    one torchvision's `DEFAULT` names); another checkpoint is a spec's `flow.raft_weights`."""
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small

    return {"large": (raft_large, Raft_Large_Weights.C_T_V2),
            "small": (raft_small, Raft_Small_Weights.C_T_V2)}[model]


# RAFT's correlation pyramid needs feature maps (input / 8) of at least 16 px: torchvision's min_size.
_RAFT_MIN_SIDE = 128


def raft_cache_path(model: Literal["large", "small"]) -> Path:
    """Where torchvision's pretrained builder caches the checkpoint: torch hub dir / checkpoints / url name."""
    import torch

    url = _raft(model)[1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def find_raft_weights(*, model: Literal["large", "small"], weights: str | Path | None) -> Path:
    """The given checkpoint path, else torchvision's hub cache file; MissingWeights if absent."""
    tried = [Path(weights)] if weights is not None else [raft_cache_path(model)]
    for path in tried:
        if path.is_file():
            return path
    raise MissingWeights(
        f"RAFT-{model} weights not found; tried: {', '.join(str(p) for p in tried)}. "
        f"Download {_raft(model)[1].url} and put it at {raft_cache_path(model)} or pass weights=PATH."
    )


def _pad_to_raft(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad (N, C, H, W) centred, as RAFT's InputPadder does, to sides divisible by 8 and >= 128."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph = max(-(-h // 8) * 8, _RAFT_MIN_SIDE) - h
    pw = max(-(-w // 8) * 8, _RAFT_MIN_SIDE) - w
    top, left = ph // 2, pw // 2
    return F.pad(x, (left, pw - left, top, ph - top), mode="replicate"), (top, left)


class RAFTFlow:
    """torchvision RAFT, weights loaded from a local file only; batched, on CUDA when available.

    `weights`: a state-dict file; None looks for the file torchvision would have cached
    (see `raft_cache_path`). RAFT's output is already forward flow image1 -> image2 in pixels.
    """

    def __init__(
        self,
        *,
        model: Literal["large", "small"] = "large",
        weights: str | Path | None = None,
        device: str | torch.device | None = None,
        iters: int = 12,
        batch: int = 8,
    ) -> None:
        import torch

        net = _raft(model)[0](weights=None, progress=False)  # weights=None: never download
        state = torch.load(find_raft_weights(model=model, weights=weights), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        self._setup(net, device=device, iters=iters, batch=batch)

    @classmethod
    def with_random_weights(
        cls,
        *,
        model: Literal["large", "small"] = "small",
        seed: int = 0,
        device: str | torch.device | None = None,
        iters: int = 12,
        batch: int = 8,
    ) -> RAFTFlow:
        """FOR TESTS AND TIMING ONLY: an untrained RAFT whose flow is meaningless."""
        import torch

        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            net = _raft(model)[0](weights=None, progress=False)
        obj = cls.__new__(cls)
        obj._setup(net, device=device, iters=iters, batch=batch)
        return obj

    def _setup(self, net: torch.nn.Module, *, device: str | torch.device | None, iters: int, batch: int) -> None:
        self.device = _default_device(device)
        self.net = net.eval().to(self.device)
        self.iters, self.batch = iters, batch

    def _to_input(self, frames: np.ndarray) -> torch.Tensor:
        # torchvision's OpticalFlow transform: uint8 -> [0, 1] -> normalise(0.5, 0.5) = [-1, 1].
        return _to_device(frames, self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        import torch

        _check_pair(src, dst)
        n, h, w = src.shape[:3]
        out = np.empty((n, h, w, 2), np.float32)
        with torch.inference_mode():
            for i in range(0, n, self.batch):
                a, (top, left) = _pad_to_raft(self._to_input(src[i:i + self.batch]))
                b, _ = _pad_to_raft(self._to_input(dst[i:i + self.batch]))
                flow = self.net(a, b, num_flow_updates=self.iters)[-1]  # last refinement is the estimate
                flow = flow[:, :, top:top + h, left:left + w].permute(0, 2, 3, 1)
                out[i:i + self.batch] = flow.float().cpu().numpy()
        return out


class TVL1TorchFlow:
    """TV-L1 as OpenCV's DualTVL1 with its defaults, batched in PyTorch (preprocess/tvl1_torch.py).

    `batch` pairs go through the solver together; on CUDA when available (device=None), else CPU.
    Frames become gray as cv2.cvtColor(RGB2GRAY) does. On real frames at 340x256 the result is
    within 0.003 px (median) and 0.07 px (p95) of OpenCV's TV-L1 (benchmarks/README.md)."""

    def __init__(self, *, batch: int = 8, device: str | torch.device | None = None,
                 params: TVL1Params | None = None) -> None:
        from motionssl.preprocess.tvl1_torch import TVL1Params

        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.device, self.batch, self.params = _default_device(device), batch, params or TVL1Params()

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        import torch

        from motionssl.preprocess.tvl1_torch import rgb_to_gray, tvl1_flow

        _check_pair(src, dst)
        out = np.empty(src.shape[:3] + (2,), np.float32)
        with torch.inference_mode():
            for i in range(0, len(src), self.batch):
                a = rgb_to_gray(_to_device(src[i:i + self.batch], self.device))
                b = rgb_to_gray(_to_device(dst[i:i + self.batch], self.device))
                out[i:i + self.batch] = tvl1_flow(a, b, self.params).permute(0, 2, 3, 1).cpu().numpy()
        return out


FLOW_METHODS: dict[str, type] = {"tvl1-opencv": TVL1Flow, "dis": DISFlow, "raft": RAFTFlow, "tvl1-torch": TVL1TorchFlow}


def flow_pairs(
    frames: np.ndarray,
    method: FlowMethod,
    *,
    gap: int = 1,
    direction: Literal["forward", "backward"] = "forward",
) -> np.ndarray:
    """(T, H, W, 2) float32 flow, one field per frame, from (T, H, W, 3) uint8 RGB frames.

    forward (MCL, gap 1): flow[t] = flow from frame t to frame t+gap, for t < T-gap; the last
        `gap` frames have no partner and copy flow[T-gap-1] (MCL: "the last frame copies the
        previous flow").
    backward (MoDist, gap 5): flow[t] = flow from frame t to frame t-gap, for t >= gap; the first
        `gap` frames copy flow[gap].
    All T-gap pairs go to `method` in one call, so batched methods (RAFT) see full batches.
    """
    t = len(frames)
    if gap < 1 or t <= gap:
        raise ValueError(f"need gap >= 1 and more than gap frames, got gap={gap} and {t} frames")
    if direction == "forward":
        computed = method(frames[:t - gap], frames[gap:])
        return np.concatenate([computed, np.repeat(computed[-1:], gap, axis=0)])
    if direction == "backward":
        computed = method(frames[gap:], frames[:t - gap])
        return np.concatenate([np.repeat(computed[:1], gap, axis=0), computed])
    raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")


# 3x3 derivative operators as separable (smoothing across, difference along) 1-D kernels. Each is
# normalised so the derivative of a unit ramp f(x) = x is exactly 1: difference [-1, 0, 1] / 2,
# smoothing summing to 1. Hence Prewitt = [[-1, 0, 1]] * 3 / 6 and Sobel = [[-1, 0, 1], [-2, 0, 2],
# [-1, 0, 1]] / 8; "central" is the plain central difference (f(x+1) - f(x-1)) / 2.
_DIFF = np.array([-0.5, 0.0, 0.5], np.float32)
_SMOOTH = {
    "prewitt": np.array([1, 1, 1], np.float32) / 3,
    "sobel": np.array([1, 2, 1], np.float32) / 4,
    "central": np.array([0, 1, 0], np.float32),
}


def _as_images(x: np.ndarray, trailing: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Collapse the leading dims so OpenCV can filter one image at a time."""
    lead = x.shape[:x.ndim - trailing]
    return np.ascontiguousarray(x, np.float32).reshape((-1,) + x.shape[x.ndim - trailing:]), lead


def motion_boundary(flow: np.ndarray, *, operator: Literal["prewitt", "sobel", "central"] = "prewitt") -> np.ndarray:
    """MCL motion map (eq. 1): sqrt(u_x² + u_y² + v_x² + v_y²) of (..., H, W, 2) flow -> (..., H, W) float32.

    Derivatives in px of flow per px, from the unit-ramp-normalised 3x3 operator above (default
    Prewitt, as the MCL authors' code); borders replicate, so a constant flow (global pan) gives 0
    everywhere and a moving object's outline lights up.
    """
    if flow.shape[-1] != 2:
        raise ValueError(f"expected (..., H, W, 2) flow, got {flow.shape}")
    smooth = _SMOOTH[operator]
    flat, lead = _as_images(flow, 3)
    out = np.empty(flat.shape[:3], np.float32)
    for n, f in enumerate(flat):
        # sepFilter2D correlates: kernelX runs along rows (x), kernelY along columns (y).
        dx = cv2.sepFilter2D(f, cv2.CV_32F, _DIFF, smooth, borderType=cv2.BORDER_REPLICATE)  # (u_x, v_x)
        dy = cv2.sepFilter2D(f, cv2.CV_32F, smooth, _DIFF, borderType=cv2.BORDER_REPLICATE)  # (u_y, v_y)
        out[n] = np.sqrt((dx * dx).sum(-1) + (dy * dy).sum(-1))
    return out.reshape(lead + out.shape[1:])


def flow_edges(flow: np.ndarray, *, clamp: float | None = 10.0, normalize: bool = False) -> np.ndarray:
    """MoDist flow edge map: Sobel gradient magnitude of |flow|, clamped to [0, clamp]; (..., H, W) float32.

    The Sobel kernel is OpenCV's raw one, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] (what cv2.Sobel on
    the magnitude gives, our reading of the paper's "Sobel filter"): a unit ramp gives 8, a step of
    s px in |flow| gives 4s at the step, so the paper's clamp of 10 saturates on steps >= 2.5 px.
    normalize=True divides by 8 (unit ramp -> 1, as kornia's normalised Sobel) for a clamp in px/px.
    Borders replicate. clamp=None leaves the map unclamped.
    """
    if flow.shape[-1] != 2:
        raise ValueError(f"expected (..., H, W, 2) flow, got {flow.shape}")
    flat, lead = _as_images(flow, 3)
    out = np.empty(flat.shape[:3], np.float32)
    for n, f in enumerate(flat):
        mag = np.sqrt((f * f).sum(-1))
        gx = cv2.Sobel(mag, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
        gy = cv2.Sobel(mag, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
        out[n] = np.sqrt(gx * gx + gy * gy)
    if normalize:
        out /= 8.0
    if clamp is not None:
        np.clip(out, 0.0, clamp, out=out)
    return out.reshape(lead + out.shape[1:])


def quantize_flow(flow: np.ndarray, *, bound: float = 20.0) -> np.ndarray:
    """Flow to uint8 as denseflow / mmaction2's flow JPEGs: round(255 * (f + bound) / (2 * bound)), clipped.

    [-bound, bound] maps linearly onto [0, 255]; values beyond saturate; zero flow becomes 128
    (127.5 rounded half to even). Round-trip error is at most bound / 255 inside the range.
    """
    q = np.rint((np.asarray(flow, np.float32) + bound) * (255.0 / (2 * bound)))
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize_flow(q: np.ndarray, *, bound: float = 20.0) -> np.ndarray:
    """Inverse of `quantize_flow` (up to its rounding): q * 2 * bound / 255 - bound, float32."""
    return (q.astype(np.float32) * np.float32(2 * bound / 255.0) - np.float32(bound)).astype(np.float32)
