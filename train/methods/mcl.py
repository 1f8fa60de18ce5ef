"""`mcl`: Motion-Focused Contrastive Learning (Li et al., ICCV 2021; ../shared/seeds/001).

MoCo on RGB tubelets chosen by motion, plus a motion alignment loss (MAL) that pulls the network's gradient maps
towards the clip's motion map. The motion map is the store's `boundary` (MCL eq. 1, data_specs/README.md).

Augmentation (§3.2, `MotionFocusedClips`, samplers in `train/motion_sampling.py`): each view is a clip drawn among
the video's candidate clips (every start whose clip fits) whose mean T-motion is above the median over them (TA),
cropped by a RandomResizedCrop box that holds at least 80% of the pixels above the 90th percentile of the clip's
S-motion (SA), the same box on every frame; then colour jitter, grayscale, blur and mirror (MoCo v2's, as
`rgb-moco`). The two views are two such tubelets of the same video at their own times.

MAL (§3.3): with h the output of the backbone's last convolution(s) (`Backbone.last_convs`, before the final
BatchNorm, residual and ReLU, where the authors' code hooks `layer4.2.conv3`) and g = d(q.k+)/dh, computed with
create_graph so that the loss on g trains the network, w_c = mean of g_c over (T, H, W), and the map is
    v1: sum_c h_c,   v2: ReLU(sum_c w_c h_c),   v3 (default): ReLU(sum_c w_c g_c).
Against the clip's motion map average-pooled to the map's (T', H', W'), eq. 7:
    L_st = ||<map> - <m_ST>||^2,  L_s = ||<P_t map> - <m_S>||^2,  L_t = ||<P_s map> - <m_T>||^2,
<.> the L2 normalisation of each sample's map, each term averaged over the batch; L = L_NCE + mal_weight * L_MAL.
Table 1's switches are options: temporal_aug (TA), spatial_aug (SA), l_t, l_s, l_st.

Choices where the paper is silent, or differs from the authors' code, are in README.md ("MCL").
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motionssl.stores import Store
from motionssl.train.augment import SpatialParams
from motionssl.train.config import ConfigError, PretrainConfig
from motionssl.train.contrastive import info_nce
from motionssl.train.datasets import ClipDataset, Needs
from motionssl.train.distributed import gather
from motionssl.train.methods.base import parse_options
from motionssl.train.methods.rgb_moco import MoCoOptions, RGBMoCo
from motionssl.train.motion_sampling import FrameMeans, motion_crop, motion_focused_clip

VARIANTS = ("v1", "v2", "v3")


@dataclass
class MCLOptions(MoCoOptions):
    queue_size: int = 131072
    tau: float = 0.1
    variant: str = "v3"           # MAL on v1 the feature map, v2 the Grad-CAM-weighted map, v3 the weighted gradient
    l_st: bool = True             # eq. 7 terms
    l_s: bool = True
    l_t: bool = True
    mal_weight: float = 1.0
    temporal_aug: bool = True     # TA: clips above the video's median motion (else uniform in time)
    spatial_aug: bool = True      # SA: crops holding the clip's hottest pixels (else RandomResizedCrop anywhere)
    hot_percentile: float = 90.0
    crop_cover: float = 0.8

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"mcl: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not 0 < self.crop_cover <= 1 or not 0 <= self.hot_percentile < 100:
            raise ConfigError("mcl: crop_cover must be in (0, 1] and hot_percentile in [0, 100)")


# -- motion alignment loss: pure functions ------------------------------------------------------------------------

def alignment_map(grad: Tensor, feat: Tensor, variant: str = "v3") -> Tensor:
    """(B, C, T, H, W) gradient and feature maps -> the (B, T, H, W) map that MAL aligns (eqs. 4-6)."""
    if variant == "v1":
        return feat.sum(dim=1)
    weights = grad.mean(dim=(2, 3, 4), keepdim=True)  # w_c, Grad-CAM's channel weights
    return F.relu((weights * (feat if variant == "v2" else grad)).sum(dim=1))


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.flatten(1).float(), dim=1)


def alignment_losses(pred: Tensor, motion: Tensor, *, st: bool = True, s: bool = True, t: bool = True) -> dict:
    """Eq. 7 between a (B, T, H, W) map and the motion map at the same size: {"st", "s", "t"} for the terms asked
    for, each the batch mean of a squared distance between L2-normalised maps (0 when proportional, 2 when
    orthogonal; a map that is 0 everywhere normalises to 0)."""
    def dist(a: Tensor, b: Tensor) -> Tensor:
        return (_unit(a) - _unit(b)).square().sum(dim=1).mean()

    out = {}
    if st:
        out["st"] = dist(pred, motion)
    if s:
        out["s"] = dist(pred.mean(dim=1), motion.mean(dim=1))       # temporal pooling P_t -> (B, H, W)
    if t:
        out["t"] = dist(pred.mean(dim=(2, 3)), motion.mean(dim=(2, 3)))  # spatial pooling P_s -> (B, T)
    return out


def motion_target(boundary: Tensor, size: tuple[int, int, int]) -> Tensor:
    """(B, 1, T, S, S) motion maps of the clip -> (B, T', H', W'): average-pooled to the aligned map's size."""
    return F.adaptive_avg_pool3d(boundary.float(), size)[:, 0]


@contextmanager
def capture_outputs(modules: list[nn.Module]):
    """Collects each module's forward output, in module order, while the block runs."""
    outputs: dict[int, Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, i=i: outputs.__setitem__(i, out))
             for i, m in enumerate(modules)]
    captured: list[Tensor] = []
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()
    captured.extend(outputs[i] for i in range(len(modules)))


# -- data ---------------------------------------------------------------------------------------------------------

class MotionFocusedClips(ClipDataset):
    """ClipDataset whose training views are MCL tubelets (TA and SA, each switchable); see the module docstring.

    The T-motion of every frame of a video is read once per dataset copy (per DataLoader worker) and kept; the clip's
    boundary maps read for its crop are kept for the view that reads them next."""

    def __init__(self, store: Store, needs: Needs, *, size: int, seed: int, temporal: bool = True,
                 spatial: bool = True, percentile: float = 90.0, cover: float = 0.8, flip_p: float = 0.5):
        super().__init__(store, needs, size=size, seed=seed, flip_p=flip_p)
        self.temporal, self.spatial, self.percentile, self.cover = temporal, spatial, percentile, cover
        self.frame_motion = FrameMeans(store, "boundary")
        self._last_maps: tuple[str, np.ndarray, np.ndarray] | None = None

    def draw_start(self, vid: str, frames_total: int, span: int, rng: np.random.Generator) -> int:
        if not self.temporal:
            return super().draw_start(vid, frames_total, span, rng)
        return int(motion_focused_clip(self.frame_motion(vid), self.needs.clip_len, self.needs.stride, rng)[0])

    def draw_box(self, vid: str, idx: np.ndarray, aspect: float, rng: np.random.Generator) -> SpatialParams:
        if not self.spatial:
            return super().draw_box(vid, idx, aspect, rng)
        maps = self._read(vid, "boundary", idx)
        self._last_maps = (vid, idx, maps)
        return motion_crop(maps.mean(axis=0), rng, percentile=self.percentile, cover=self.cover, scale=self.scale,
                           flip_p=self.flip_p)

    def _read_arrays(self, vid: str, names: list[str], idx: np.ndarray) -> dict[str, np.ndarray]:
        last = self._last_maps
        if "boundary" in names and last is not None and last[0] == vid and np.array_equal(last[1], idx):
            return {**super()._read_arrays(vid, [n for n in names if n != "boundary"], idx), "boundary": last[2]}
        return super()._read_arrays(vid, names, idx)


# -- method -------------------------------------------------------------------------------------------------------

class MCL(RGBMoCo):
    # §4.2: 16 x 224^2 tubelets at stride 2, batch 64, SGD lr 0.01 with cosine decay, 200 epochs on UCF101
    # (400 on Kinetics-400). R(2+1)D-18 stands in for the paper's ResNet-50-based R(2+1)D.
    defaults = {"backbone": "r2plus1d18", "clip_len": 16, "stride": 2, "size": 224, "batch_size": 64, "epochs": 200,
                "optimizer": "sgd", "lr": 0.01, "weight_decay": 1e-4}
    Options = MCLOptions

    @classmethod
    def needs(cls, cfg: PretrainConfig) -> Needs:
        return Needs(modalities=("rgb", "boundary"), clip_len=cfg.clip_len, stride=cfg.stride, views=2)

    @classmethod
    def dataset(cls, cfg: PretrainConfig, store: Store) -> MotionFocusedClips:
        o = parse_options(cls.Options, cfg.method_options, method=cfg.method)
        return MotionFocusedClips(store, cls.needs(cfg), size=cfg.size, seed=cfg.seed, flip_p=cfg.flip_p, temporal=o.temporal_aug,
                                  spatial=o.spatial_aug, percentile=o.hot_percentile, cover=o.crop_cover)

    def losses(self, batch: dict, *, step: int) -> dict[str, Tensor]:
        """{"nce", and the MAL terms switched on: "mal_st", "mal_s", "mal_t"}, with `pos_sim` (no gradient); the
        keys join the queue. `forward` sums them."""
        o = self.opts
        view_q, view_k = batch["views"]
        videos = batch["video"]
        with capture_outputs(self.backbone.last_convs()) as feats:
            pooled = self.backbone(view_q["rgb"])
        q = F.normalize(self.head(pooled), dim=1)
        k = self.encode_keys(view_k["rgb"], step=step)
        queue_mask = self.queue.negatives_mask(videos)
        out = {"nce": info_nce(q, k, self.queue.keys.clone(), o.tau, queue_mask=queue_mask)}
        positive = (q.float() * k.float()).sum(dim=1)
        if o.l_st or o.l_s or o.l_t:
            grads = feats if o.variant == "v1" else torch.autograd.grad(positive.sum(), feats, create_graph=True)
            pred = alignment_map(torch.cat(grads, dim=1), torch.cat(feats, dim=1), o.variant)
            terms = alignment_losses(pred, motion_target(view_q["boundary"], pred.shape[1:]), st=o.l_st, s=o.l_s,
                                     t=o.l_t)
            out |= {f"mal_{name}": v for name, v in terms.items()}
        out["pos_sim"] = positive.detach().mean()
        self.queue.enqueue(gather(k.float()), gather(videos))
        return out

    def forward(self, batch: dict, *, step: int) -> dict:
        out = self.losses(batch, step=step)
        mal = [v for name, v in out.items() if name.startswith("mal_")]
        loss = out["nce"] + self.opts.mal_weight * sum(mal) if mal else out["nce"]
        logs = {name: v.item() for name, v in out.items()} | ({"mal": sum(mal).item()} if mal else {})
        return {"loss": loss, "logs": logs}
