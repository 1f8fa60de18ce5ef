"""`rgb-moco`: MoCo v2 on RGB clips, the baseline every paper compares against.

Two clips of the same video at different times, each with its own crop, flip and colour jitter. The query
encoder sees one, the momentum encoder the other; negatives come from a queue of past keys, minus any key of
the query's own video. Keys are encoded in MoCo's shuffled-BN order: across ranks under DDP, across BatchNorm groups
in one process (`bn_groups`, train/shuffle_bn.py).
Settings follow MVCGC §4.1 (its RGB stream, the CoCLR-style baseline): S3D, tau 0.07,
m 0.999, a 2048-key queue (UCF101 scale; use 16384 for Kinetics-400), 128-d embeddings, Adam lr 1e-4 with weight
decay 1e-5, 300 epochs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from motionssl.train.contrastive import (MoCoQueue, info_nce, momentum_at, momentum_keys, momentum_update,
                                         projection_head)
from motionssl.train.distributed import gather
from motionssl.train.config import PretrainConfig
from motionssl.train.datasets import Needs
from motionssl.train.methods.base import Method, build_backbone
from motionssl.train.shuffle_bn import group_batch_norms


@dataclass
class MoCoOptions:
    dim: int = 128              # embedding size
    hidden: int = 2048          # projection MLP hidden size; 0 = backbone width
    queue_size: int = 2048
    tau: float = 0.07
    momentum: float = 0.999     # key encoder EMA coefficient at step 0
    momentum_cosine: bool = False  # raise m to 1 along a cosine over training (BYOL), instead of constant
    bn_groups: int = 8          # shuffling BN in one process: up to this many BatchNorm groups (train/shuffle_bn.py)


class RGBMoCo(Method):
    defaults = {"backbone": "s3d", "clip_len": 16, "stride": 2, "size": 112, "batch_size": 32, "epochs": 300,
                "optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5}
    Options = MoCoOptions

    def __init__(self, cfg: PretrainConfig, *, total_steps: int):
        super().__init__(cfg, total_steps=total_steps)
        o = self.opts
        self.backbone, kwargs = build_backbone(cfg.backbone, in_channels=3, width=cfg.backbone_width)
        group_batch_norms(self.backbone, o.bn_groups)
        self.backbone_spec = {"name": cfg.backbone, "kwargs": kwargs}
        self.head = projection_head(self.backbone.out_dim, o.hidden or self.backbone.out_dim, o.dim)
        self.backbone_k = copy.deepcopy(self.backbone).requires_grad_(False)
        self.head_k = copy.deepcopy(self.head).requires_grad_(False)
        self.queue = MoCoQueue(o.dim, o.queue_size)

    @classmethod
    def needs(cls, cfg: PretrainConfig) -> Needs:
        return Needs(modalities=("rgb",), clip_len=cfg.clip_len, stride=cfg.stride, views=2)

    def forward(self, batch: dict, *, step: int) -> dict:
        view_q, view_k = batch["views"]
        videos = batch["video"]
        q = F.normalize(self.head(self.backbone(view_q["rgb"])), dim=1)
        k = self.encode_keys(view_k["rgb"], step=step)
        queue_mask = self.queue.negatives_mask(videos)
        loss = info_nce(q, k, self.queue.keys.clone(), self.opts.tau, queue_mask=queue_mask)
        with torch.no_grad():
            positive = (q * k).sum(1).mean()
        self.queue.enqueue(gather(k.float()), gather(videos))
        return {"loss": loss, "logs": {"pos_sim": positive.item(), "masked": queue_mask.float().sum(1).mean().item()}}

    def encode_keys(self, clips: torch.Tensor, *, step: int) -> torch.Tensor:
        return momentum_keys(self.backbone_k, self.head_k, clips, seed=self.cfg.seed * 1_000_003 + step)

    def momentum_at(self, step: int) -> float:
        o = self.opts
        return momentum_at(step, self.total_steps, base=o.momentum) if o.momentum_cosine else o.momentum

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        m = self.momentum_at(step)
        momentum_update(self.backbone, self.backbone_k, m)
        momentum_update(self.head, self.head_k, m)
