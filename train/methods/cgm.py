"""`cgm`: CGM-Net, motion maps learned by reconstructing frames, upsampled under context guidance (paper 004).

The network reads a clip of T frames and returns T motion maps. Map t holds, at every pixel, a k x k filter that
turns frame t into frame t+1 (eq. 1); maps 0..T-2 reconstruct the clip's next frames and map T-1 predicts the frame
after the clip, which the network never sees (§3.5). So a sample is T+1 frames: the first T are the input.

    clip (B,3,T,H,W) -> video encoder (3D backbone) -> LR motion decoder -> F_motion (B,C,T,H/4,W/4), M_LR (k*k taps)
    frame t          -> context extractor (ResNet-18 to conv3_x, no max-pool) -> F_context (C,H/4,W/4)
    CGMUL(F_context, F_motion, M_LR): S (eq. 2), S*F (eq. 3), concat (eq. 4), 3x3 conv, periodic shuffle (eq. 5)
                     -> M_HR (k_hr*k_hr taps, H, W)
    loss = Charbonnier(M_HR (x) X_t, X_t+1) + lambda1 Charbonnier(M_LR (x) X_t/4, X_t+1/4) [+ lambda2 CE]  (eqs. 6-7)

Conventions (tests/test_cgm.py):
- A motion map is (N, k*k, H, W), taps row-major over the displacement (dy, dx) in [-r, r]^2, r = (k-1)/2:
      X~[y, x] = sum_{dy, dx} M[(dy+r)*k + (dx+r), y, x] * X[y-dy, x-dx]        (eq. 1, the paper's (m, n) = (dx, dy))
  so a one-hot tap at (dy, dx) moves content by (+dx, +dy) from t to t+1, the direction of `flow[t]`
  (data_specs/README.md). Frames are replicate-padded at the border.
- Frames are reconstructed in [-1, 1] (Table 1's normalisation), recovered from the loader's ImageNet-normalised
  clip; the video encoder and the context extractor see the ImageNet-normalised clip, as every backbone does.

Where the paper is silent (its code was not released), the choices are:
- k = 3, and k_hr by the reach rule: the HR filters reach at least as far as the LR filters, in frame pixels. An LR
  tap is r HR pixels, so k x k LR filters reach r(k - 1)/2 and k_hr = r(k - 1) + 1: 9 at the paper's r = 4 (5 and
  17 at r = 2 and 8). The paper only says k_hr > k so that HR maps can follow fast motion; with k_hr = 5 they would
  reach +-2 px against the LR's +-4 px. Table 8's count (2.39M parameters from LR to HR; the context extractor
  holds 0.68M, leaving 1.71M for the CGMUL conv, 513 x 9 x 16 x k_hr^2) implies k_hr = 5 (1.85M): `--option
  k_hr=5` gives that model at any scale.
- Scale r = 4, the paper's choice (§4.3), which is also the stride of ResNet-18's conv3_x without the max-pool.
  Figure 6's other scales (option `scale`): 2 with conv1 unstrided, 8 with ResNet-18's max-pool kept.
- Table 6's nearest and bilinear upsamplers (option `upsampler`) resize each tap channel of the LR map by r and
  dilate its filters by r with zero holes (§4.4): a tap keeps its displacement, r HR pixels per LR tap. No context
  extractor or CGMUL is built then.
- LR motion decoder: 3 stages of trilinear upsampling (doubling towards (T, H/4, W/4)) + 3x3x3 conv + BN + ReLU,
  channels halving from the backbone's down to C = the context's conv3_x channels; then a 3x3x3 conv to the taps.
  No skip connections (the paper: "directly following an encoder-decoder paradigm").
- Taps are softmax-normalised over each pixel's filter (option `softmax`, default on): a filter is a convex
  combination of the k x k neighbours, which moves content by sub-pixel amounts and blends, but cannot scale
  brightness as raw taps (eq. 1 taken unconstrained, `softmax=False`) can. Raw taps are unstable at the paper's
  Adam lr 1e-3 at full width: Adam's first steps move each of the CGMUL conv's 4617 inputs' weights by lr in a
  coherent direction, and on a tiny synthetic store the loss went from 0.31 to 32 at step 2 (r3d10, width 64,
  32 px; 0.85 after 30 steps), while softmax taps went from 0.30 down to 0.26 without a spike.
- Both tap-producing convs start near the identity filter (weights N(0, 1e-3), the centre tap at weight 1/2), so
  the first reconstructions are close to copying frame t; the context extractor and decoder use torchvision's init.
- Context extractor width = --backbone-width (64 = ResNet-18's), random init, never pretrained weights.
- LR supervision on frames average-pooled by r (the LR map's grid). Losses are means over pixels, channels and maps
  (eq. 6 sums over t: a constant factor).
- Augmentation: random resized crop of area 0.4-1 of the frame (the paper's 112 px crops of frames of short side
  128 cover 0.43-0.77 of the frame) and flips; no colour jitter, grayscale or blur (the paper lists crops and
  flips only).
- Adam at lr 1e-3 and batch 64 as the paper; the loop's cosine schedule instead of a step decay every 50 epochs;
  100 epochs (the paper does not say how long it pretrains).
- lambda2 (eq. 7): a linear head on the pooled backbone features, cross-entropy on the labels of the train part of
  `labels` (files as `finetune --labels` takes). Off by default (pretraining, lambda2 = 0); the paper's
  supervised runs use lambda2 = 10.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torchvision.models.resnet import BasicBlock, conv1x1

from motionssl.stores import Store, open_store
from motionssl.train.augment import IMAGENET_MEAN, IMAGENET_STD
from motionssl.train.config import ConfigError, PretrainConfig
from motionssl.train.datasets import ClipDataset, Needs
from motionssl.train.methods.base import Method, build_backbone, parse_options

SCALE = 4                      # HR / LR resolution; the context extractor's stride (the paper's; option `scale`)
SCALES = (2, 4, 8)             # Figure 6's scale factors that a context extractor from ResNet-18 gives
UPSAMPLERS = ("cgmul", "nearest", "bilinear")  # Table 6
CROP_SCALE = (0.4, 1.0)        # RandomResizedCrop area (see the module docstring)


# -- pure functions ---------------------------------------------------------------------------------------------

def _kernel_size(taps: int) -> int:
    k = math.isqrt(taps)
    if k * k != taps or k % 2 == 0:
        raise ValueError(f"a motion map has k*k taps with k odd, got {taps} channels")
    return k


def pixel_adaptive_warp(x: Tensor, filters: Tensor, *, dilation: int = 1) -> Tensor:
    """Eq. 1: (N, C, H, W) frames or features and (N, k*k, H, W) per-pixel filters -> (N, C, H, W), in the dtype
    the two promote to.

    The same filter applies to every channel of a pixel; borders are replicated (module docstring). With
    `dilation` d, tap (dy, dx) reads X[y - d*dy, x - d*dx]: the filter of `dilate_filters(filters, d)`."""
    _kernel_size(filters.shape[1])
    if x.dim() != 4 or filters.dim() != 4 or x.shape[0] != filters.shape[0] or x.shape[2:] != filters.shape[2:]:
        raise ValueError(f"warp of {tuple(x.shape)} frames by {tuple(filters.shape)} filters: need (N, C, H, W) "
                         f"and (N, k*k, H, W)")
    return _PixelAdaptiveWarp.apply(x, filters, dilation)


class _PixelAdaptiveWarp(torch.autograd.Function):
    """Eq. 1 as k*k shifted multiply-adds with a hand-written backward: autograd through `F.unfold` keeps a k*k
    times larger copy of the input and was most of a CGM-Net step on CPU (benchmarks/README.md, "Science")."""

    @staticmethod
    def forward(ctx, x: Tensor, filters: Tensor, dilation: int) -> Tensor:
        dtype = torch.promote_types(x.dtype, filters.dtype)
        k = math.isqrt(filters.shape[1])
        r, p = k // 2, k // 2 * dilation
        h, w = x.shape[-2:]
        padded = F.pad(x.to(dtype), (p, p, p, p), mode="replicate")
        weights = filters.to(dtype)
        out = padded.new_zeros(x.shape)
        for tap, (oy, ox) in enumerate(_tap_offsets(k, r, p, dilation)):
            out.addcmul_(padded[:, :, oy:oy + h, ox:ox + w], weights[:, tap:tap + 1])
        ctx.save_for_backward(padded, weights)
        ctx.geometry = (k, r, p, dilation, x.shape, x.dtype, filters.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        padded, weights = ctx.saved_tensors
        k, r, p, dilation, shape, x_dtype, f_dtype = ctx.geometry
        h, w = shape[-2:]
        grad = grad.to(padded.dtype)
        grad_f = torch.empty_like(weights) if ctx.needs_input_grad[1] else None
        grad_padded = torch.zeros_like(padded) if ctx.needs_input_grad[0] else None
        for tap, (oy, ox) in enumerate(_tap_offsets(k, r, p, dilation)):
            if grad_f is not None:
                grad_f[:, tap] = (grad * padded[:, :, oy:oy + h, ox:ox + w]).sum(1)
            if grad_padded is not None:
                grad_padded[:, :, oy:oy + h, ox:ox + w].addcmul_(grad, weights[:, tap:tap + 1])
        grad_x = None
        if grad_padded is not None:  # the replicated border's gradient goes back to the edge it copies
            grad_x = torch.ops.aten.replication_pad2d_backward(grad_padded, padded[:, :, p:p + h, p:p + w],
                                                               [p, p, p, p]).to(x_dtype)
        return grad_x, None if grad_f is None else grad_f.to(f_dtype), None


def _tap_offsets(k: int, r: int, p: int, dilation: int) -> list[tuple[int, int]]:
    """Row-major taps (dy, dx) -> where X[y - d*dy, x - d*dx] starts in the input padded by p."""
    return [(p - dilation * (i - r), p - dilation * (j - r)) for i in range(k) for j in range(k)]


def dilate_filters(filters: Tensor, dilation: int) -> Tensor:
    """(N, k*k, H, W) -> (N, K*K, H, W), K = dilation*(k-1) + 1: tap (dy, dx) moved to (dilation*dy, dilation*dx),
    zeros between (a dilated convolution's kernel; CGM-Net §4.4's "zero holes")."""
    k = _kernel_size(filters.shape[1])
    big = dilation * (k - 1) + 1
    out = filters.new_zeros(filters.shape[0], big, big, *filters.shape[2:])
    out[:, ::dilation, ::dilation] = filters.view(filters.shape[0], k, k, *filters.shape[2:])
    return out.flatten(1, 2)


def upsample_filters(lr_map: Tensor, scale: int, mode: str) -> tuple[Tensor, int]:
    """Table 6's unlearned upsamplers: each tap channel of (N, k*k, h, w) resized by `scale` ("nearest" or
    "bilinear"), the filter dilated by `scale` so that a tap keeps its displacement in input pixels. Returns the
    (N, k*k, scale*h, scale*w) taps and the dilation to warp them with (pixel_adaptive_warp)."""
    return F.interpolate(lr_map, scale_factor=scale, mode=mode, **({} if mode == "nearest" else
                                                                     {"align_corners": False})), scale


def reach_k_hr(k: int, scale: int) -> int:
    """The smallest HR filter size whose reach, (k_hr - 1)/2 HR pixels, is at least that of k x k filters on the
    grid `scale` times coarser: scale (k - 1)/2 HR pixels (module docstring). 9 for k = 3 at scale 4."""
    return scale * (k - 1) + 1


def periodic_shuffle(x: Tensor, r: int) -> Tensor:
    """Eq. 5: (N, r*r*C, h, w) -> (N, C, r*h, r*w), out[c, y, x] = in[C*r*(y mod r) + C*(x mod r) + c, y//r, x//r].

    The same values as `torch.pixel_shuffle` up to a fixed permutation of the input channels (whose index there
    is c*r*r + (y mod r)*r + (x mod r)), which the learned conv before it absorbs."""
    n, ch, h, w = x.shape
    if ch % (r * r):
        raise ValueError(f"periodic shuffle by {r} needs a multiple of {r * r} channels, got {ch}")
    return x.view(n, r, r, ch // (r * r), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, ch // (r * r), h * r, w * r)


def context_correlation(context: Tensor, motion: Tensor, lr_map: Tensor) -> Tensor:
    """Eq. 2: S (N, 1, h, w) = channel mean of F_motion times F_context moved by the LR motion map."""
    return (motion * pixel_adaptive_warp(context, lr_map)).mean(1, keepdim=True)


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean of rho(pred - target), rho(x) = sqrt(x^2 + eps^2) (eq. 6), in float32."""
    return torch.sqrt((pred.float() - target.float()) ** 2 + eps ** 2).mean()


def filter_displacement(filters: Tensor) -> Tensor:
    """(N, k*k, H, W) -> (N, 2, H, W): (dx, dy), the centroid of each filter's positive taps, for drawing a motion
    map like flow (a one-hot tap at (dy, dx) gives exactly (dx, dy)); a filter without positive taps gives 0."""
    k = _kernel_size(filters.shape[1])
    r = k // 2
    d = torch.arange(-r, r + 1, dtype=torch.float32, device=filters.device)
    dy, dx = d.repeat_interleave(k), d.repeat(k)  # row-major (dy, dx) taps
    weights = filters.float().clamp(min=0)
    total = weights.sum(1).clamp(min=1e-12)
    return torch.stack([torch.einsum("nkhw,k->nhw", weights, dx) / total,
                        torch.einsum("nkhw,k->nhw", weights, dy) / total], dim=1)


def to_signed_unit(rgb: Tensor) -> Tensor:
    """ImageNet-normalised (B, 3, ...) -> the same frames in [-1, 1]."""
    shape = (1, 3) + (1,) * (rgb.dim() - 2)
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(shape)
    return (rgb * std + mean) * 2 - 1


def per_frame(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    return x.transpose(1, 2).flatten(0, 1)


# -- modules ----------------------------------------------------------------------------------------------------

def identity_filter_init(conv: nn.Module, taps: int, *, softmax: bool) -> None:
    """Output channels in groups of `taps` (eq. 5's order): each group starts near the identity filter, the
    centre tap at weight 1/2 (softmax: logit log(taps - 1) against 0) or at 1 (raw taps)."""
    nn.init.normal_(conv.weight, std=1e-3)
    with torch.no_grad():
        conv.bias.zero_()
        conv.bias.view(-1, taps)[:, taps // 2] = math.log(taps - 1) if softmax and taps > 1 else 1.0


class ContextExtractor(nn.Module):
    """ResNet-18's conv1, conv2_x and conv3_x without the max-pool (§3.3): (N, 3, H, W) -> (N, 2*width, H/4, W/4).

    torchvision's blocks and module names, so at width 64 the keys and shapes are those of `resnet18()`'s first
    layers; random init as torchvision's."""

    def __init__(self, *, width: int = 64, stride: int = SCALE):
        super().__init__()
        if stride not in SCALES:
            raise ValueError(f"a context extractor of stride {stride}: choose one of {SCALES}")
        # stride 2: conv1 unstrided; 8: ResNet-18's max-pool kept (no parameters, so the keys are the same)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=1 if stride == 2 else 2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stride == 8 else nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        down = nn.Sequential(conv1x1(width, 2 * width, 2), nn.BatchNorm2d(2 * width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2, down), BasicBlock(2 * width, 2 * width))
        self.out_dim = 2 * width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))


class MotionDecoder(nn.Module):
    """Backbone feature map -> (F_motion (B, out_dim, T, h, w), M_LR (B, taps, T, h, w)).

    Each stage: trilinear upsampling (never deconvolution, §3.3) towards the target size, doubling per stage,
    then a 3x3x3 conv, BN, ReLU."""

    def __init__(self, in_dim: int, out_dim: int, *, taps: int, softmax: bool, stages: int = 3):
        super().__init__()
        dims = [in_dim] + [max(out_dim, in_dim // 2 ** (i + 1)) for i in range(stages - 1)] + [out_dim]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv3d(a, b, kernel_size=3, padding=1, bias=False), nn.BatchNorm3d(b),
                          nn.ReLU(inplace=True))
            for a, b in zip(dims, dims[1:]))
        self.taps = nn.Conv3d(out_dim, taps, kernel_size=3, padding=1)
        for m in self.stages.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        identity_filter_init(self.taps, taps, softmax=softmax)
        self.softmax = softmax

    def forward(self, features: Tensor, size: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
        x, n = features, len(self.stages)
        for i, stage in enumerate(self.stages):
            step = tuple(min(s, max(now, math.ceil(s / 2 ** (n - 1 - i)))) for s, now in zip(size, x.shape[2:]))
            x = stage(F.interpolate(x, size=step, mode="trilinear", align_corners=False))
        taps = self.taps(x)
        return x, taps.softmax(1) if self.softmax else taps


class CGMUL(nn.Module):
    """Context Guided Motion Upsampling Layer (§3.2, Fig. 2): (F_context, F_motion (N, C, h, w), M_LR (N, k*k, h, w))
    -> M_HR (N, k_hr*k_hr, scale*h, scale*w)."""

    def __init__(self, channels: int, *, taps_hr: int, softmax: bool, scale: int = SCALE):
        super().__init__()
        self.scale, self.softmax = scale, softmax
        self.conv = nn.Conv2d(4 * channels + 1, scale * scale * taps_hr, kernel_size=3, padding=1)
        identity_filter_init(self.conv, taps_hr, softmax=softmax)

    def forward(self, context: Tensor, motion: Tensor, lr_map: Tensor) -> Tensor:
        s = context_correlation(context, motion, lr_map)                          # eq. 2
        fused = torch.cat([context, motion, s, s * context, s * motion], dim=1)   # eqs. 3-4
        # channels-last: oneDNN's faster layout for this conv, the largest of a CGM-Net step (benchmarks/README.md)
        fused = fused.contiguous(memory_format=torch.channels_last)
        hr = periodic_shuffle(self.conv(fused), self.scale)                       # eq. 5
        return hr.softmax(1) if self.softmax else hr


class MotionMaps(NamedTuple):
    pooled: Tensor  # (B, D) backbone features (the classification input)
    lr: Tensor      # (B, k*k, T, H/4, W/4)
    hr: Tensor      # (B, k_hr*k_hr, T, H, W)
    hr_dilation: int = 1  # warp `hr` with this dilation (the unlearned upsamplers' dilated LR filters)


# -- the method -------------------------------------------------------------------------------------------------

@dataclass
class CGMOptions:
    k: int = 3                  # LR filter size (module docstring: why 3 and 5)
    k_hr: int | None = None     # HR filter size; None: the reach rule, scale (k - 1) + 1 (module docstring)
    softmax: bool = True        # taps softmax-normalised per pixel; False: raw conv outputs (module docstring)
    lambda1: float = 1.0        # weight of the LR reconstruction loss (paper: 1)
    lambda2: float = 0.0        # weight of the classification loss; > 0 needs `labels` (paper: 10 when supervised)
    eps: float = 1e-6           # Charbonnier epsilon (paper)
    labels: list[str] = field(default_factory=list)  # label files, as `finetune --labels`: train on their train part
    split: int = 1              # UCF101 / HMDB51 split number of `labels`
    upsampler: str = "cgmul"    # Table 6: cgmul | nearest | bilinear (LR taps resized, filters dilated by scale)
    scale: int = SCALE          # Figure 6: HR / LR resolution, 2 | 4 | 8


def _split(store: Store, opts: CGMOptions):
    from motionssl.train.labels import load_split

    return load_split([Path(p) for p in opts.labels], store.videos, split=opts.split)


class CGM(Method):
    defaults = {"backbone": "r3d18", "clip_len": 16, "stride": 1, "size": 112, "batch_size": 64, "epochs": 100,
                "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0}
    Options = CGMOptions

    def __init__(self, cfg: PretrainConfig, *, total_steps: int, num_classes: int | None = None):
        super().__init__(cfg, total_steps=total_steps)
        o = self.opts
        _check(cfg, o)
        self.backbone, kwargs = build_backbone(cfg.backbone, in_channels=3, width=cfg.backbone_width)
        self.backbone_spec = {"name": cfg.backbone, "kwargs": kwargs}
        self.scale, self.k_hr = o.scale, o.k_hr or reach_k_hr(o.k, o.scale)
        self.context = ContextExtractor(width=cfg.backbone_width or 64, stride=o.scale)
        self.decoder = MotionDecoder(self.backbone.out_dim, self.context.out_dim, taps=o.k ** 2, softmax=o.softmax)
        self.upsampler = None
        if o.upsampler == "cgmul":
            self.upsampler = CGMUL(self.context.out_dim, taps_hr=self.k_hr ** 2, softmax=o.softmax, scale=o.scale)
        else:  # no context is needed: the decoder keeps its C output channels, the extractor is left out
            self.context = None
        self.head = None
        if o.lambda2 > 0:
            if num_classes is None:
                num_classes = len(_split(open_store(cfg.store), o).classes)
            self.head = nn.Linear(self.backbone.out_dim, num_classes)

    @classmethod
    def needs(cls, cfg: PretrainConfig) -> Needs:
        return Needs(modalities=("rgb",), clip_len=cfg.clip_len + 1, stride=cfg.stride, views=1)

    @classmethod
    def dataset(cls, cfg: PretrainConfig, store: Store) -> ClipDataset:
        opts = parse_options(cls.Options, cfg.method_options, method=cfg.method)
        _check(cfg, opts)
        labelled = {}
        if opts.labels:
            videos, labels = _split(store, opts).part("train")
            labelled = {"videos": videos, "labels": labels}
        return ClipDataset(store, cls.needs(cfg), size=cfg.size, seed=cfg.seed, flip_p=cfg.flip_p, scale=CROP_SCALE,
                           color_jitter=False, **labelled)

    def motion_maps(self, clip: Tensor) -> MotionMaps:
        """(B, 3, T, H, W) ImageNet-normalised clip, H and W multiples of 4 -> its T LR and HR motion maps."""
        b, _, t, h, w = clip.shape
        s = self.scale
        if h % s or w % s:
            raise ValueError(f"frames of {h}x{w}: CGM-Net needs sides that are multiples of {s}")
        features = self.backbone.forward_features(clip)
        motion, lr = self.decoder(features, (t, h // s, w // s))
        if self.upsampler is None:
            hr, dilation = upsample_filters(per_frame(lr), s, self.opts.upsampler)
            return MotionMaps(features.mean(dim=(2, 3, 4)), lr, hr.view(b, t, -1, h, w).transpose(1, 2), dilation)
        hr = self.upsampler(self.context(per_frame(clip)), per_frame(motion), per_frame(lr))
        return MotionMaps(features.mean(dim=(2, 3, 4)), lr, hr.view(b, t, -1, h, w).transpose(1, 2))

    def forward(self, batch: dict, *, step: int) -> dict:
        o = self.opts
        rgb = batch["views"][0]["rgb"]                       # (B, 3, T+1, H, W): the clip and the frame after it
        b, t = rgb.shape[0], rgb.shape[2] - 1
        maps = self.motion_maps(rgb[:, :, :t])
        frames = to_signed_unit(rgb)
        source, target = per_frame(frames[:, :, :t]), per_frame(frames[:, :, 1:])
        hr_pred = pixel_adaptive_warp(source, per_frame(maps.hr).float(), dilation=maps.hr_dilation)
        lr_pred = pixel_adaptive_warp(F.avg_pool2d(source, self.scale), per_frame(maps.lr).float())
        loss_hr = charbonnier(hr_pred, target, o.eps)
        loss_lr = charbonnier(lr_pred, F.avg_pool2d(target, self.scale), o.eps)
        loss = loss_hr + o.lambda1 * loss_lr
        with torch.no_grad():
            err = (hr_pred - target).abs().view(b, t, -1).mean(2)       # (B, T), l1 on [-1, 1]
            copy = (source - target).abs().view(b, t, -1).mean(2)
        # l1_recon against l1_copy: the in-clip reconstructions against copying frame t; l1_future: the prediction
        logs = {"loss_hr": loss_hr.item(), "loss_lr": loss_lr.item(), "l1_recon": err[:, :-1].mean().item(),
                "l1_copy": copy[:, :-1].mean().item(), "l1_future": err[:, -1].mean().item()}
        if self.head is not None:
            logits = self.head(maps.pooled)
            ce = F.cross_entropy(logits, batch["label"])
            loss = loss + o.lambda2 * ce
            logs |= {"loss_cls": ce.item(), "acc": (logits.argmax(1) == batch["label"]).float().mean().item()}
        return {"loss": loss, "logs": logs}


def _check(cfg: PretrainConfig, o: CGMOptions) -> None:
    if o.scale not in SCALES:
        raise ConfigError(f"cgm: option scale={o.scale}: choose one of {', '.join(map(str, SCALES))}")
    if o.upsampler not in UPSAMPLERS:
        raise ConfigError(f"cgm: option upsampler={o.upsampler!r}: choose one of {', '.join(UPSAMPLERS)}")
    if cfg.size % o.scale:
        raise ConfigError(f"cgm: --size {cfg.size} must be a multiple of {o.scale} (the LR motion map's scale)")
    if cfg.clip_len < 2:
        raise ConfigError(f"cgm: --clip-len {cfg.clip_len}: needs at least 2 frames (one reconstructed, one predicted)")
    for name in ("k", "k_hr"):
        value = getattr(o, name)
        if value is None and name == "k_hr":
            continue
        if value < 1 or value % 2 == 0:
            raise ConfigError(f"cgm: option {name}={value} must be a positive odd filter size")
    if o.lambda2 > 0 and not o.labels:
        raise ConfigError("cgm: lambda2 > 0 trains a classifier: give the label files with --option labels=[FILE]")
