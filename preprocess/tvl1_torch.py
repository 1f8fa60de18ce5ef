"""Batched TV-L1 optical flow in PyTorch: OpenCV contrib's DualTVL1 on (N, H, W) tensors, CUDA or CPU.

The method is Zach, Pock and Bischof (2007), "A duality based approach for realtime TV-L1 optical
flow", in the discretisation of Sanchez, Meinhardt-Llopis and Facciolo (IPOL 2013) that OpenCV's
`cv::optflow::DualTVL1OpticalFlow` implements. Every step below follows OpenCV's CPU code
(modules/optflow/src/tvl1flow.cpp), with the same parameters and defaults:

- input: grayscale intensities in [0, 255] as float32, not normalised, not pre-smoothed
  (`rgb_to_gray` is OpenCV's fixed-point RGB2GRAY, so uint8 frames give the same gray image);
- pyramid: up to `nscales` levels, each `cv::resize(prev, fx=fy=scale_step, INTER_LINEAR)` of the
  level before (sizes rounded, source coordinates mapped with 1 / scale_step, edges clamped; no
  anti-aliasing), stopping before the first level whose side is under 16 px;
- flow starts at 0 on the coarsest level; after each level it is resized (INTER_LINEAR) to the next
  finer size and multiplied by 1 / scale_step (the third, illumination channel is not scaled);
- per level: the centred gradient of I1 (one-sided halves at the borders: replicate padding), the
  dual variables p set to 0 once per level; then `warps` times: I1 and its gradient are warped
  by the current flow with bicubic interpolation (A = -0.75, as `cv::remap(INTER_CUBIC)`; outside
  the image is 0, `BORDER_CONSTANT`), and
  rho_c = I1w - I1w_x u1 - I1w_y u2 - I0 is frozen; then up to `outer_iterations` rounds of a
  median filter of (u1, u2) (5x5, replicate borders) followed by up to `inner_iterations` steps:
    v = u + clamp(-rho(u) / |grad I1w|^2, -lambda theta, lambda theta) grad I1w   (thresholding)
    u = v + theta div p        (div: backward differences, p taken as 0 left of / above the image)
    p = (p + tau/theta grad u) / (1 + tau/theta |grad u|)   (forward differences, 0 on the last
                                                               column / row; one p per flow channel)
  A warp ends as soon as the sum over the image of the squared update of u is at most
  epsilon^2 * H * W (checked after every step), or after outer x inner steps.
- gamma > 0 adds OpenCV's illumination channel u3 (data term rho + gamma u3, its own dual
  variable, not median filtered).

Batching. Every tensor holds N pairs; each op runs on all pairs still iterating. The stopping rule
is per pair, as OpenCV applies it to one pair: a pair whose update falls under the threshold leaves
the batch for the rest of that warp (its u and p are written back, the others go on without it), so
a batch costs what its slowest pair costs and computes what N separate calls compute: on CPU bit
for bit (every op is per pair or per pixel; tested). The test is one device-to-host copy of N norms
per step, the only synchronisation in the loop.

Differences from OpenCV are float rounding: the update norm is summed in another order, resize
weights and grid_sample's normalised coordinates round differently (1e-5 relative), theta p is
stored instead of p, and the clamp differs from OpenCV's three-way branch by at most 1e-5 px where
|grad I1w|^2 < FLT_EPSILON. They can move a warp's stop by a step and grow where TV-L1 itself is
ill-posed; on real frames the flows agree to a median endpoint difference of 0.003 px
(tests/test_tvl1_torch.py; benchmarks/README.md, "TV-L1 in PyTorch"). The median filter runs as
cv2.medianBlur on CPU tensors and as a min/max network elsewhere; both select OpenCV's values.
Warping samples at full float precision, as OpenCV 5's remap does (OpenCV 4 rounded to 1/32 px).

Not supported: an initial flow (OpenCV's useInitialFlow, default false).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

_FLT_EPSILON = float(np.finfo(np.float32).eps)
_MIN_LEVEL_SIDE = 16  # OpenCV stops the pyramid before a level with a side under 16 px


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV DualTVL1OpticalFlow's parameters, with its defaults (names as its getters, snake_case)."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5  # 0 or 1: off; 3 or 5: the window side (OpenCV's float medianBlur allows these)

    def __post_init__(self) -> None:
        if not (self.tau > 0 and self.lambda_ > 0 and self.theta > 0 and self.epsilon >= 0 and self.gamma >= 0):
            raise ValueError(f"TV-L1 needs tau, lambda, theta > 0 and epsilon, gamma >= 0; got {self}")
        if min(self.nscales, self.warps, self.inner_iterations, self.outer_iterations) < 1:
            raise ValueError(f"TV-L1 needs nscales, warps, inner and outer iterations >= 1; got {self}")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"TV-L1 scale_step must lie in (0, 1), got {self.scale_step}")
        if self.median_filtering not in (0, 1, 3, 5):
            raise ValueError(f"TV-L1 median_filtering must be 0, 1 (off), 3 or 5, got {self.median_filtering}")


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) uint8 RGB -> (...) float32 gray in [0, 255], bit-equal to cv2.cvtColor(RGB2GRAY) on uint8.

    OpenCV 5's 8-bit conversion is fixed point, (9798 R + 19235 G + 3735 B + 2^14) >> 15 (OpenCV 4
    used 14 bits, which differs by 1 on about 0.004 % of pixels)."""
    x = rgb.to(torch.int32)
    y = (x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + 16384) >> 15
    return y.to(torch.float32)


def pyramid_sizes(height: int, width: int, params: TVL1Params) -> list[tuple[int, int]]:
    """(H, W) of each pyramid level, finest first, as OpenCV sizes them (round(side * scale_step))."""
    sizes = [(height, width)]
    while len(sizes) < params.nscales:
        h, w = sizes[-1]
        nh, nw = round(h * params.scale_step), round(w * params.scale_step)  # cvRound: half to even, like round
        if nh < _MIN_LEVEL_SIDE or nw < _MIN_LEVEL_SIDE:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_taps(n_in: int, n_out: int, scale: float, device) -> tuple[torch.Tensor, ...]:
    """cv::resize INTER_LINEAR along one axis: source = (dst + 0.5) * scale - 0.5, clamped to the edges."""
    f = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0).astype(np.float32)
    low, high = i0 < 0, i0 >= n_in - 1
    i0[low], frac[low] = 0, 0
    i0[high], frac[high] = n_in - 1, 0
    i1 = np.minimum(i0 + 1, n_in - 1)
    as_t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return as_t(i0), as_t(i1), as_t(1 - frac), as_t(frac)


def resize_linear(x: torch.Tensor, size: tuple[int, int], *, scale: tuple[float, float] | None = None) -> torch.Tensor:
    """(..., H, W) -> (..., h, w), as cv::resize INTER_LINEAR: rows first, then columns.

    scale = (sy, sx), the source step per destination pixel; None: H / h and W / w (cv::resize
    with a dsize). cv::resize with fx = fy = f uses 1 / f instead, which differs once sizes are rounded."""
    h_in, w_in = x.shape[-2:]
    sy, sx = scale or (1.0 / (size[0] / h_in), 1.0 / (size[1] / w_in))
    c0, c1, wc0, wc1 = _linear_taps(w_in, size[1], sx, x.device)
    x = torch.addcmul(x.index_select(-1, c0) * wc0, x.index_select(-1, c1), wc1)
    r0, r1, wr0, wr1 = _linear_taps(h_in, size[0], sy, x.device)
    return torch.addcmul(x.index_select(-2, r0) * wr0[:, None], x.index_select(-2, r1), wr1[:, None])


def centered_gradient(img: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, 2, H, W) = (d/dx, d/dy): central differences / 2, replicate borders (OpenCV's)."""
    p = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = 0.5 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2])
    dy = 0.5 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1])
    return torch.stack([dx, dy], 1)


def warp_bicubic(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """images (N, C, H, W) sampled at (x + u, y + v): cv::remap(INTER_CUBIC, BORDER_CONSTANT 0).

    flow (N, 2, H, W). Taps outside the image read 0; grid_sample's bicubic kernel is OpenCV's
    (A = -0.75). OpenCV 5 samples float maps at full precision (OpenCV 4 rounded them to 1/32 px)."""
    n, _, h, w = images.shape
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype)
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype)[:, None]
    gx = (flow[:, 0] + xs) * (2.0 / (w - 1)) - 1.0
    gy = (flow[:, 1] + ys) * (2.0 / (h - 1)) - 1.0
    grid = torch.stack([gx, gy], -1)
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort of n = 2^k wires, in order."""
    pairs, p = [], 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def _median_network(m: int) -> tuple[list[tuple[str, int, int, int]], int]:
    """A min/max network whose output is the median of m (odd) inputs: Batcher's sort on the next
    power of two, the extra wires held at +inf (their comparators fold away), pruned to what the
    median depends on. Inputs are values 0..m-1; ops (fn, out, a, b) make values m, m+1, ...
    m = 9: 40 ops, m = 25: 202 ops."""
    n = 1 << (m - 1).bit_length()
    wire: list[int | None] = list(range(m)) + [None] * (n - m)  # None: +inf
    ops, fresh = [], m
    for i, j in _batcher_pairs(n):
        a, b = wire[i], wire[j]
        if b is None:
            continue  # min(a, inf) = a stays on i
        if a is None:
            wire[i], wire[j] = b, None
            continue
        ops += [("min", fresh, a, b), ("max", fresh + 1, a, b)]
        wire[i], wire[j] = fresh, fresh + 1
        fresh += 2
    needed, kept = {wire[m // 2]}, []
    for op in reversed(ops):
        if op[1] in needed:
            kept.append(op)
            needed.update(op[2:])
    return kept[::-1], wire[m // 2]


_NETWORKS = {k: _median_network(k * k) for k in (3, 5)}


def median_filter_torch(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k median of (N, C, H, W) with replicate borders, as min/max ops on shifted views (any device)."""
    h, w = x.shape[-2:]
    r = k // 2
    p = F.pad(x, (r, r, r, r), mode="replicate")
    values = {dy * k + dx: p[..., dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)}
    ops, out = _NETWORKS[k]
    last_use = {v: i for i, op in enumerate(ops) for v in op[2:]}
    for i, (fn, dst, a, b) in enumerate(ops):
        values[dst] = (torch.minimum if fn == "min" else torch.maximum)(values[a], values[b])
        for v in (a, b):
            if last_use[v] == i and v >= k * k:
                del values[v]  # keep at most the live intermediates
    return values[out]


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k median of (N, C, H, W), replicate borders: cv::medianBlur on float, k = 3 or 5.

    On CPU, cv2.medianBlur per image (one cache-friendly pass, where the 212-op network is far slower;
    benchmarks/README.md); elsewhere `median_filter_torch`. Both select the same values."""
    if x.device.type != "cpu":
        return median_filter_torch(x, k)
    out = torch.empty_like(x)
    src, dst = x.contiguous().numpy(), out.numpy()
    for idx in np.ndindex(*x.shape[:2]):
        cv2.medianBlur(src[idx], k, dst=dst[idx])
    return out


class _Warp:
    """The iteration state of one warp for the pairs still iterating, compacted as pairs converge.

    u (n, C, H, W): flow (+ illumination); q (n, 2, C, H, W): theta * p, the dual variables of the
    x and y derivatives; grad (n, C, H, W): the warped image gradient (+ gamma); rho_c (n, H, W);
    neg_inv_grad2 = -1 / max(|grad I1w|^2, FLT_EPSILON). Until a pair converges, u and q are the
    batch's own tensors, updated in place; afterwards compacted copies, written back as pairs leave.
    """

    def __init__(self, u, q, grad, rho_c, neg_inv_grad2):
        self.index = torch.arange(len(u), device=u.device)  # batch row of each active pair
        self.u, self.q, self.grad, self.rho_c, self.neg_inv_grad2 = u, q, grad, rho_c, neg_inv_grad2
        self.du = torch.zeros_like(q)  # forward differences; the last column / row stay 0
        self.home = True
        self._views()

    def _views(self) -> None:
        """Scratch buffers and the views the step reads and writes (slicing costs more than some ops)."""
        u, q, du, g = self.u, self.q, self.du, self.grad
        self.rho, self.update, self.norm = torch.empty_like(self.rho_c), torch.empty_like(u), torch.empty_like(u)
        self.rho_terms = [(g[:, c], u[:, c]) for c in range(u.shape[1])]
        self.qx, self.qy = q[:, 0], q[:, 1]
        self.qx_left, self.qy_up = q[:, 0, ..., :-1], q[:, 1, ..., :-1, :]
        self.update_right, self.update_down = self.update[..., 1:], self.update[..., 1:, :]
        self.update_flat = self.update.flatten(1)
        self.u_right, self.u_left, self.u_down, self.u_up = u[..., 1:], u[..., :-1], u[..., 1:, :], u[..., :-1, :]
        self.dux, self.duy = du[:, 0], du[:, 1]
        self.dux_inner, self.duy_inner = du[:, 0, ..., :-1], du[:, 1, ..., :-1, :]
        self.norm_b = self.norm[:, None]
        self.coef_b = self.rho[:, None]

    def step(self, lt: float, taut: float, tau: float) -> list[float]:
        """One inner iteration, in place (no allocation); each pair's norm of the update of u."""
        (g0, u0), *rest = self.rho_terms
        rho = torch.addcmul(self.rho_c, g0, u0, out=self.rho)
        for gc, uc in rest:
            rho.addcmul_(gc, uc)
        rho.mul_(self.neg_inv_grad2).clamp_(-lt, lt)  # the thresholding coefficient: v = u + coef grad
        update = torch.add(self.qx, self.qy, out=self.update)  # theta div p, p = 0 left of / above the image
        self.update_right.sub_(self.qx_left)
        self.update_down.sub_(self.qy_up)
        update.addcmul_(self.coef_b, self.grad)  # u_new - u = (v - u) + theta div p
        norms = torch.linalg.vector_norm(self.update_flat, dim=1).tolist()
        self.u.add_(update)
        torch.sub(self.u_right, self.u_left, out=self.dux_inner)
        torch.sub(self.u_down, self.u_up, out=self.duy_inner)
        # |du| as sqrt(dux^2 + duy^2): a fifth faster on CPU than torch.hypot's overflow-safe kernel.
        torch.mul(self.dux, self.dux, out=self.norm).addcmul_(self.duy, self.duy).sqrt_().mul_(taut).add_(1.0)
        self.q.add_(self.du, alpha=tau).div_(self.norm_b)  # theta p = (theta p + tau du) / (1 + tau/theta |du|)
        return norms

    def retire(self, done: torch.Tensor, u_home: torch.Tensor, q_home: torch.Tensor) -> bool:
        """Take the converged pairs out (their state is final for this warp); False when none is left."""
        if not self.home:
            u_home.index_copy_(0, self.index[done], self.u[done])
            q_home.index_copy_(0, self.index[done], self.q[done])
        keep = (~done).nonzero().squeeze(1)
        if len(keep) == 0:
            return False
        self.index = self.index[keep]
        for name in ("u", "q", "grad", "rho_c", "neg_inv_grad2", "du"):
            setattr(self, name, getattr(self, name).index_select(0, keep))
        self._views()
        self.home = False
        return True

    def finish(self, u_home: torch.Tensor, q_home: torch.Tensor) -> None:
        if not self.home:
            u_home.index_copy_(0, self.index, self.u)
            q_home.index_copy_(0, self.index, self.q)


def _iterate(s: _Warp, u: torch.Tensor, q: torch.Tensor, prm: TVL1Params, threshold: float) -> torch.Tensor:
    """OpenCV's outer (median filter, then inner steps) loops of one warp, stopping each pair on its
    own; returns the steps each pair ran."""
    lt, taut = prm.lambda_ * prm.theta, prm.tau / prm.theta
    steps = torch.full((len(u),), prm.outer_iterations * prm.inner_iterations, device=u.device)
    limit = math.sqrt(threshold)  # on the norm of the update: one sync per step, no more ops
    done_steps = 0
    for _outer in range(prm.outer_iterations):
        if prm.median_filtering > 1:
            s.u[:, :2] = median_filter(s.u[:, :2], prm.median_filtering)
        for _inner in range(prm.inner_iterations):
            norms = s.step(lt, taut, prm.tau)
            done_steps += 1
            if min(norms) <= limit:
                done = torch.tensor([e <= limit for e in norms], device=u.device)
                steps[s.index[done]] = done_steps
                if not s.retire(done, u, q):
                    return steps
    s.finish(u, q)
    return steps


def _one_scale(i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, prm: TVL1Params,
               iterations: list | None) -> torch.Tensor:
    """Refine u (N, C, H, W) in place on one pyramid level."""
    n, channels, h, w = u.shape
    threshold = float(np.float32(prm.epsilon * prm.epsilon * h * w))
    source = torch.cat([i1[:, None], centered_gradient(i1)], 1)  # I1, I1_x, I1_y: warped together
    q = torch.zeros(n, 2, channels, h, w, device=u.device, dtype=u.dtype)  # p = 0 once per level
    for _ in range(prm.warps):
        warped = warp_bicubic(source, u[:, :2])
        grad = warped[:, 1:].contiguous()
        rho_c = warped[:, 0] - (grad * u[:, :2]).sum(1) - i0
        neg_inv_grad2 = grad.square().sum(1).clamp_min_(_FLT_EPSILON).reciprocal_().neg_()
        if channels == 3:
            grad = torch.cat([grad, torch.full_like(grad[:, :1], prm.gamma)], 1)
        steps = _iterate(_Warp(u, q, grad, rho_c, neg_inv_grad2), u, q, prm, threshold)
        if iterations is not None:
            iterations.append(steps)
    return u


def tvl1_flow(i0: torch.Tensor, i1: torch.Tensor, params: TVL1Params = TVL1Params(), *,
              iterations: list | None = None) -> torch.Tensor:
    """Forward TV-L1 flow (N, 2, H, W) from I0 to I1, (N, H, W) float32 gray in [0, 255].

    flow[:, 0] is dx, flow[:, 1] is dy, in pixels: I0(x) ~ I1(x + flow(x)). `iterations`, if a
    list, receives one (N,) int64 tensor per level and warp (coarsest first): inner steps run."""
    if i0.shape != i1.shape or i0.ndim != 3:
        raise ValueError(f"expected two (N, H, W) gray batches of equal shape, got {tuple(i0.shape)} "
                         f"and {tuple(i1.shape)}")
    if min(i0.shape[1:]) < 3:
        raise ValueError(f"TV-L1 needs frames of at least 3x3 px, got {tuple(i0.shape[1:])}")
    i0, i1 = i0.float(), i1.float()
    sizes = pyramid_sizes(i0.shape[1], i0.shape[2], params)
    step = 1.0 / params.scale_step
    levels = [(i0, i1)]
    for size in sizes[1:]:
        a, b = levels[-1]
        levels.append((resize_linear(a, size, scale=(step, step)), resize_linear(b, size, scale=(step, step))))
    channels = 3 if params.gamma > 0 else 2
    u = torch.zeros(i0.shape[0], channels, *sizes[-1], device=i0.device, dtype=torch.float32)
    for s in range(len(sizes) - 1, -1, -1):
        u = _one_scale(*levels[s], u, params, iterations)
        if s > 0:
            u = resize_linear(u, sizes[s - 1])
            u[:, :2] *= step
    return u[:, :2]
