"""`modist`: Motion Distillation (Xiao, Tighe and Modolo, 2021; ../shared/seeds/002).

Two pathways: the visual one, the chosen 3D backbone on RGB clips (what `finetune` takes over), and a motion one, a
2D ResNet with 1/8 of the visual pathway's channels on clips of flow edges (the store's `edges`, data_specs/README.md),
used only in pretraining. Each has a momentum copy and a memory bank of negatives that stores video indices, so
entries of the query's own video are never negatives. With IN(query, positive, negatives) the InfoNCE of eq. 1,
    L_v = IN(v_q, v_k, V),   L_m = IN(m_q, m_k, M),   L_mv = IN(v_q, m_k, V) + IN(m_q, v_k, M)   (eq. 2),
    L = L_v + L_m + L_mv                                                                          (eq. 3),
queries from the online pathways, keys from the momentum ones, V and M the visual and motion banks.
`cross_negatives=key` takes L_mv's negatives from the key's bank instead, IN(v_q, m_k, M) + IN(m_q, v_k, V): a
task only the video's own motion solves. In bench_science it stayed at chance and taught the visual pathway less
than eq. 2 (README.md, "MoDist").

Sampling (§3.1, §4.1): the two visual clips are independent random clips of the video (crop, flip, colour as
`rgb-moco`). The two motion clips are drawn, independently of them (temporal jitter), among the clips whose mean
flow edge exceeds gamma; gamma is on the motion pathway's input scale, edges / edges_clamp in [0, 1], so the
stored-scale threshold is gamma * edges_clamp (0.02 * 10 = 0.2 with the shipped specs). Motion clips skip the other
augmentations: the centred square of the short side, resized. `sync` (Table 3c, "- temp. jitter") pairs them in
time and space instead: m_k covers v_q's time with v_q's crop and flip, m_q covers v_k's, and the visual clips start
where a motion clip may. `gamma=0` is Table 3c's "- motion thresh", `motion_loss=false` its "- L_m".

Table 3b, the motion input (`motion_signal`; `motion_input` was already the name of the frames/channels layout):
`edges` (default) the flow edges / edges_clamp; `flow` the store's raw flow (dx, dy) of t -> t+1 in output pixels
divided by FLOW_SCALE (the store keeps no t -> t-5 flow, from which the edges come); `frame_diff` the difference of
consecutive grayscale frames, X_t - X_{t-1} in [-1, 1] (X_{-1} = X_0). Every signal takes the same motion clips:
gamma thresholds the flow edges (so a store with `edges` is needed for each), and only the input changes.

Choices where the paper is silent are in README.md ("MoDist").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from motionssl.stores import Store
from motionssl.train.augment import SpatialParams, center_params, crop_resize_frames, crop_resize_motion
from motionssl.train.config import ConfigError, PretrainConfig
from motionssl.train.contrastive import MoCoQueue, info_nce, momentum_keys, momentum_update, projection_head
from motionssl.train.datasets import ClipDataset, Needs, check_store
from motionssl.train.distributed import gather
from motionssl.train.methods.base import build_backbone, parse_options
from motionssl.train.methods.rgb_moco import MoCoOptions, RGBMoCo
from motionssl.train.motion_sampling import FrameMeans, eligible_starts
from motionssl.train.sampling import clip_at
from motionssl.train.shuffle_bn import group_batch_norms

MOTION_INPUTS = ("frames", "channels")
CROSS_NEGATIVES = ("query", "key")
MOTION_SIGNALS = {"edges": 1, "flow": 2, "frame_diff": 1}  # Table 3b: the motion pathway's input, and its channels
FLOW_SCALE = 20.0  # raw flow in output px is divided by this (the uint8 store's bound) to be of order 1


@dataclass
class MoDistOptions(MoCoOptions):
    queue_size: int = 65536       # per modality
    tau: float = 0.1
    motion_clip_len: int = 16     # 16 motion frames at stride 4 span the visual 8 x 8 (§3.3)
    motion_stride: int = 4
    motion_backbone: str = "r2d18"
    motion_width: int = 0         # base channels; 0 = the visual pathway's / 8
    motion_input: str = "frames"  # frames: 2D convs per edge frame, pooled over time | channels: frames as channels
    gamma: float = 0.02           # motion threshold on edges / edges_clamp
    sync: bool = False
    motion_loss: bool = True      # L_m
    motion_signal: str = "edges"  # edges | flow | frame_diff (Table 3b; module docstring)
    cross_negatives: str = "query"  # query | key: L_mv's negatives from the query's bank (eq. 2) or the key's

    def __post_init__(self):
        if self.motion_signal not in MOTION_SIGNALS:
            raise ConfigError(f"modist: motion_signal must be one of {', '.join(MOTION_SIGNALS)}, "
                              f"got {self.motion_signal!r}")
        if self.cross_negatives not in CROSS_NEGATIVES:
            raise ConfigError(f"modist: cross_negatives must be one of {', '.join(CROSS_NEGATIVES)}, "
                              f"got {self.cross_negatives!r}")
        if self.motion_input not in MOTION_INPUTS:
            raise ConfigError(f"modist: motion_input must be one of {', '.join(MOTION_INPUTS)}, "
                              f"got {self.motion_input!r}")
        if self.motion_clip_len < 1 or self.motion_stride < 1:
            raise ConfigError("modist: motion_clip_len and motion_stride must be >= 1")


def modist_losses(v_q: Tensor, v_k: Tensor, m_q: Tensor, m_k: Tensor, bank_v: Tensor, bank_m: Tensor, tau: float, *,
                  mask_v: Tensor | None = None, mask_m: Tensor | None = None,
                  cross_negatives: str = "query") -> dict[str, Tensor]:
    """{"v", "m", "mv"}: eqs. 1-2 on L2-normalised (B, D) queries and keys and (N, D) banks; `mask_v`, `mask_m`
    (B, N) drop bank entries (same video) from query i's denominator. The negatives of a cross-modal term come from
    its query's bank, as eq. 2 writes them ("query"), or from its key's bank ("key": the query must pick its own
    video's key among other videos' keys of the same modality, CMC's cross-modal task)."""
    if cross_negatives == "key":
        mv = info_nce(v_q, m_k, bank_m, tau, queue_mask=mask_m) + info_nce(m_q, v_k, bank_v, tau, queue_mask=mask_v)
    else:
        mv = info_nce(v_q, m_k, bank_v, tau, queue_mask=mask_v) + info_nce(m_q, v_k, bank_m, tau, queue_mask=mask_m)
    return {"v": info_nce(v_q, v_k, bank_v, tau, queue_mask=mask_v),
            "m": info_nce(m_q, m_k, bank_m, tau, queue_mask=mask_m), "mv": mv}


class MoDistClips(ClipDataset):
    """Per sample: two visual views (`views`, ClipDataset's RGB views) and two motion views (`motion_views`: m_q then
    m_k, each {"edges": (1, L, S, S) in [0, 1], "frames": (L,)}); see the module docstring. The motion clips draw
    from their own stream, `default_rng([seed, epoch, index, 1])`, so the visual views are those of ClipDataset."""

    def __init__(self, store: Store, needs: Needs, *, size: int, seed: int, motion_clip_len: int, motion_stride: int,
                 gamma: float, sync: bool, flip_p: float = 0.5, signal: str = "edges"):
        check_store(store, ("rgb", "edges") + (("flow",) if signal == "flow" else ()))
        self.signal = signal
        super().__init__(store, needs, size=size, seed=seed, flip_p=flip_p)
        self.motion_clip_len, self.motion_stride, self.sync = motion_clip_len, motion_stride, sync
        self.clamp = float(store.spec.flow.edges_clamp)
        self.threshold = gamma * self.clamp
        self.edge_means = FrameMeans(store, "edges")
        self._visual: list[tuple[int, SpatialParams]] = []  # the sample being drawn: each visual view's start, crop

    def motion_starts(self, vid: str) -> np.ndarray:
        return eligible_starts(self.edge_means(vid), self.motion_clip_len, self.motion_stride, self.threshold)

    def draw_start(self, vid: str, frames_total: int, span: int, rng: np.random.Generator) -> int:
        if not self.sync:
            return super().draw_start(vid, frames_total, span, rng)
        starts = self.motion_starts(vid)
        return int(starts[rng.integers(len(starts))])

    def draw_box(self, vid: str, idx: np.ndarray, aspect: float, rng: np.random.Generator) -> SpatialParams:
        box = super().draw_box(vid, idx, aspect, rng)
        self._visual.append((int(idx[0]), box))
        return box

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        self._visual = []
        sample = super().__getitem__(key)
        epoch = int(key[1]) if isinstance(key, tuple) else 0
        index, vid = sample["index"], self.videos[sample["index"]]
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        meta = self.store.meta(vid)
        frames_total, aspect = meta["frames"], meta["stored_width"] / meta["stored_height"]
        starts = self.motion_starts(vid)
        sample["motion_views"] = []
        for v in range(2):  # m_q in sync with v_k, m_k with v_q: the pairs of eq. 2
            start, box = (self._visual[1 - v] if self.sync
                          else (int(starts[rng.integers(len(starts))]), center_params(aspect)))
            idx = clip_at(start, frames_total, self.motion_clip_len, self.motion_stride)
            if self.signal == "edges":
                edges = crop_resize_frames(self._read(vid, "edges", idx)[..., None], box, self.size)[..., 0]
                motion = torch.from_numpy(edges / np.float32(self.clamp))[None]
            else:
                motion = self.motion_signal(vid, idx, box, (meta["stored_height"], meta["stored_width"]))
            # "edges" is the motion pathway's input, whichever the signal
            sample["motion_views"].append({"edges": motion, "frames": torch.from_numpy(idx)})
        return sample

    def motion_signal(self, vid: str, idx: np.ndarray, box: SpatialParams, hw: tuple[int, int]) -> torch.Tensor:
        """(C, L, S, S) float32: Table 3b's `flow` (2 channels) or `frame_diff` (1) at the frames `idx`."""
        if self.signal == "flow":
            flow = crop_resize_motion(self._read(vid, "flow", idx), box, (self.size, self.size), frame_hw=hw)
            return torch.from_numpy(np.ascontiguousarray(flow.transpose(3, 0, 1, 2)) / np.float32(FLOW_SCALE))
        frames = self._read(vid, "rgb", np.concatenate([np.maximum(idx[:1] - 1, 0), idx]))
        gray = crop_resize_frames(frames, box, self.size).astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
        return torch.from_numpy(np.ascontiguousarray(np.diff(gray, axis=0) / np.float32(255)))[None]


class MoDist(RGBMoCo):
    # §3.3, §4.1: R3D-18 on 8 x 128^2 RGB at stride 8 (the paper's smaller model; its main one is R3D-50 at 224^2),
    # 600 epochs on Kinetics-400. The optimiser is not given: MoCo v2's SGD, lr 0.03 for 8 processes x 32 clips.
    defaults = {"backbone": "r3d18", "clip_len": 8, "stride": 8, "size": 128, "batch_size": 32, "epochs": 600,
                "optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4}
    Options = MoDistOptions

    def __init__(self, cfg: PretrainConfig, *, total_steps: int):
        super().__init__(cfg, total_steps=total_steps)  # the visual pathway: backbone, head, momentum copies, bank
        o = self.opts
        width = o.motion_width or max(1, (cfg.backbone_width or 64) // 8)
        channels = MOTION_SIGNALS[o.motion_signal]
        in_channels = channels if o.motion_input == "frames" else channels * o.motion_clip_len
        self.motion_backbone, _ = build_backbone(o.motion_backbone, in_channels=in_channels, width=width)
        group_batch_norms(self.motion_backbone, o.bn_groups)
        self.motion_head = projection_head(self.motion_backbone.out_dim, o.hidden or self.motion_backbone.out_dim,
                                           o.dim)
        self.motion_backbone_k = copy.deepcopy(self.motion_backbone).requires_grad_(False)
        self.motion_head_k = copy.deepcopy(self.motion_head).requires_grad_(False)
        self.motion_queue = MoCoQueue(o.dim, o.queue_size)

    @classmethod
    def needs(cls, cfg: PretrainConfig) -> Needs:
        """The visual views; the motion views (edges) are MoDistClips' own."""
        return Needs(modalities=("rgb",), clip_len=cfg.clip_len, stride=cfg.stride, views=2)

    @classmethod
    def dataset(cls, cfg: PretrainConfig, store: Store) -> MoDistClips:
        o = parse_options(cls.Options, cfg.method_options, method=cfg.method)
        return MoDistClips(store, cls.needs(cfg), size=cfg.size, seed=cfg.seed, flip_p=cfg.flip_p,
                           motion_clip_len=o.motion_clip_len,
                           motion_stride=o.motion_stride, gamma=o.gamma, sync=o.sync, signal=o.motion_signal)

    def motion_input(self, edges: Tensor) -> Tensor:
        """(B, C, L, S, S) -> the motion pathway's input: as is (frames), or (B, C*L, 1, S, S) (channels)."""
        return edges if self.opts.motion_input == "frames" else edges.flatten(1, 2).unsqueeze(2)

    def losses(self, batch: dict, *, step: int) -> dict[str, Tensor]:
        """`modist_losses` of the batch: {"v", "m", "mv"}; the keys join the banks. `forward` sums them."""
        (view_q, view_k), (motion_q, motion_k) = batch["views"], batch["motion_views"]
        videos = batch["video"]
        v_q = F.normalize(self.head(self.backbone(view_q["rgb"])), dim=1)
        m_q = F.normalize(self.motion_head(self.motion_backbone(self.motion_input(motion_q["edges"]))), dim=1)
        seed = self.cfg.seed * 1_000_003 + step
        v_k = momentum_keys(self.backbone_k, self.head_k, view_k["rgb"], seed=seed)
        m_k = momentum_keys(self.motion_backbone_k, self.motion_head_k, self.motion_input(motion_k["edges"]),
                            seed=seed)
        losses = modist_losses(v_q, v_k, m_q, m_k, self.queue.keys.clone(), self.motion_queue.keys.clone(),
                               self.opts.tau, mask_v=self.queue.negatives_mask(videos),
                               mask_m=self.motion_queue.negatives_mask(videos),
                               cross_negatives=self.opts.cross_negatives)
        self.queue.enqueue(gather(v_k.float()), gather(videos))
        self.motion_queue.enqueue(gather(m_k.float()), gather(videos))
        return losses

    def forward(self, batch: dict, *, step: int) -> dict:
        losses = self.losses(batch, step=step)
        loss = losses["v"] + losses["mv"] + (losses["m"] if self.opts.motion_loss else 0)
        return {"loss": loss, "logs": {f"loss_{name}": v.item() for name, v in losses.items()}}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        super().after_step(step)
        m = self.momentum_at(step)
        momentum_update(self.motion_backbone, self.motion_backbone_k, m)
        momentum_update(self.motion_head, self.motion_head_k, m)
