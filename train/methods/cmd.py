"""`cmd`: context matching and motion prediction from compressed video (Huang et al., CVPR 2021; paper 000).

Three networks. The V-network (the chosen backbone) sees an RGB clip; the I-network (R2D-10) one I-frame near the
clip; the M-network (R3D-10, stem unstrided) motion-vector maps. Two tasks share the V-network:
- context matching (eq. 1): the global averages of the clip map and of the I-frame map, each through its own
  two-layer MLP head, compared by InfoNCE over the batch on cosine similarity / tau (the clip of video i against
  the I-frames of every video k of the batch, the positive k = i);
- motion prediction (eq. 2, `motion_prediction.MotionPrediction`): from the clip map, predict the M-network's
  features of the motion vectors after the clip at every (t, y, x), pointwise InfoNCE against every position of
  every video, plus `negatives` more motion clips of each video from other times (hard negatives).
The loss is J = (1 - alpha) J_I + alpha J_M (eq. 3). Logged: context_top1 (the clip's I-frame ranks first among the
batch's I-frames) and motion_top1 (the true target ranks first among all keys), the pretext accuracies of Table 7.

Settings where the paper is silent follow the authors' code: tau 0.1; the future window starts 2 frames after the
clip's last frame (8 consecutive frames, the paper's "next 8 frames"); the I-frame is a random one within 5 frames
of the clip, with its own crop, flip and colour (the motion target shares the clip's crop and flip, as the paper
says); heads Linear-BN-ReLU-Linear-BN. Different from the authors' code: the clip map is the backbone's last map
(they add the time-folded third stage to the upsampled fourth for ResNets), vectors are rescaled to output pixels
and negated by flips (data_specs/README.md), and negatives are those of each process's batch (they gather the
targets of every GPU). Defaults are the paper's UCF101 run: C3D, 16 frames at stride 4, 112 px, batch 64, SGD
lr 0.0005 x 64 with momentum 0.9 and weight decay 0.005, cosine over 120 epochs.

Ablations of Table 1: `period=current` predicts the motion of the clip's own time (the same number of frames,
centred in the clip) instead of the future; `predictor=convgru` swaps the Transformer for a ConvGRU.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from motionssl.train.backbones import r2d_10
from motionssl.train.config import ConfigError, PretrainConfig
from motionssl.train.contrastive import info_nce, similarities
from motionssl.train.datasets import Needs
from motionssl.train.methods.base import Method, build_backbone, parse_options
from motionssl.train.motion_prediction import PREDICTORS, MotionPrediction, bn_head
from motionssl.train.sampling import clip_span

PERIODS = ("future", "current")


@dataclass
class CMDOptions:
    alpha: float = 0.5          # J = (1 - alpha) J_I + alpha J_M
    tau: float = 0.1            # both InfoNCE losses (the authors' code)
    dim: int = 512              # head outputs
    head_hidden: int = 2048     # head hidden layers
    predictor: str = "transformer"  # transformer | convgru (Table 1)
    period: str = "future"      # future | current (Table 1): the motion to predict
    hidden: int = 512           # predictor width
    heads: int = 8
    encoder_layers: int = 2
    decoder_layers: int = 4
    dropout: float = 0.1        # in the Transformer
    future_frames: int = 8      # consecutive motion-vector frames of the target
    future_gap: int = 2         # frames skipped between the clip's last frame and the target (authors' code)
    negatives: int = 3          # hard-negative motion clips per video
    iframe_window: int = 5      # the I-frame lies within this many frames of the clip
    mv_clamp: float = 10.0      # vectors clamped to +-mv_clamp output px and divided by it
    net_width: int | None = None  # I- and M-network base channels; None: --backbone-width, else 64


def motion_needs(needs: Needs, o: CMDOptions) -> Needs:
    """`needs` plus the motion target and hard negatives of CMD's motion prediction with the settings `o` (for
    `cmd` and `finetune --aux-motion`): `future_frames` consecutive frames `future_gap` frames after the clip's
    last one, or (period=current) as many frames centred on the clip's span."""
    if o.period not in PERIODS:
        raise ConfigError(f"period must be one of {', '.join(PERIODS)}, got {o.period!r}")
    if o.future_frames < 1 or o.future_gap < 0 or o.negatives < 0:
        raise ConfigError("need future_frames >= 1, future_gap >= 0 and negatives >= 0")
    offset = 1 + o.future_gap
    if o.period == "current":
        clip = clip_span(needs.clip_len, needs.stride)
        if o.future_frames > clip:
            raise ConfigError(f"period=current: {o.future_frames} frames do not fit in a clip spanning {clip} frames")
        offset = -(clip - 1) + (clip - o.future_frames) // 2
    return dataclasses.replace(needs, future_mv=o.future_frames, future_stride=1, future_offset=offset,
                               mv_negatives=o.negatives)


def clip_map_shape(backbone: nn.Module, *, clip_len: int, size: int) -> tuple[int, int, int, int]:
    """(C, T', H', W') of the backbone's last feature map for one clip, from a dry run in eval mode."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        shape = tuple(backbone.forward_features(torch.zeros(1, 3, clip_len, size, size)).shape[1:])
    backbone.train(was_training)
    return shape


def build_motion_prediction(backbone: nn.Module, cfg: PretrainConfig, o: CMDOptions) -> MotionPrediction:
    """CMD's motion-prediction part, with the settings `o`, for a video backbone trained on `cfg`'s clips."""
    if o.predictor not in PREDICTORS:
        raise ConfigError(f"predictor must be one of {', '.join(PREDICTORS)}, got {o.predictor!r}")
    return MotionPrediction(clip_map_shape(backbone, clip_len=cfg.clip_len, size=cfg.size),
                            future_frames=o.future_frames, crop=cfg.size, predictor=o.predictor, hidden=o.hidden,
                            heads=o.heads, encoder_layers=o.encoder_layers, decoder_layers=o.decoder_layers,
                            dropout=o.dropout, head_hidden=o.head_hidden, dim=o.dim,
                            m_width=o.net_width or cfg.backbone_width or 64, tau=o.tau, mv_clamp=o.mv_clamp)


class CMD(Method):
    defaults = {"backbone": "c3d", "clip_len": 16, "stride": 4, "size": 112, "batch_size": 64, "epochs": 120,
                "optimizer": "sgd", "lr": 0.0005 * 64, "weight_decay": 0.005}
    Options = CMDOptions

    def __init__(self, cfg: PretrainConfig, *, total_steps: int):
        super().__init__(cfg, total_steps=total_steps)
        o = self.opts
        if not 0.0 <= o.alpha <= 1.0:
            raise ConfigError(f"alpha must be within [0, 1], got {o.alpha}")
        self.backbone, kwargs = build_backbone(cfg.backbone, in_channels=3, width=cfg.backbone_width)
        self.backbone_spec = {"name": cfg.backbone, "kwargs": kwargs}
        width = o.net_width or cfg.backbone_width or 64
        self.i_network = r2d_10(in_channels=3, width=width)
        self.clip_head = bn_head(self.backbone.out_dim, o.head_hidden, o.dim)     # g^V
        self.iframe_head = bn_head(self.i_network.out_dim, o.head_hidden, o.dim)  # g^I
        self.motion = build_motion_prediction(self.backbone, cfg, o)

    @classmethod
    def needs(cls, cfg: PretrainConfig) -> Needs:
        o = parse_options(cls.Options, cfg.method_options, method=cfg.method)
        return motion_needs(Needs(modalities=("rgb",), clip_len=cfg.clip_len, stride=cfg.stride,
                                  iframe_window=o.iframe_window), o)

    def forward(self, batch: dict, *, step: int) -> dict:
        clip_map = self.backbone.forward_features(batch["views"][0]["rgb"])
        x = F.normalize(self.clip_head(clip_map.mean(dim=(2, 3, 4))), dim=1)
        z = F.normalize(self.iframe_head(self.i_network(batch["iframe"][:, :, None])), dim=1)
        context = info_nce(x, z, tau=self.opts.tau)  # eq. 1: clip i against the I-frames of the batch
        motion, motion_top1 = self.motion(clip_map, batch["future_mv"], batch["future_mv_valid"],
                                          batch.get("negative_mv"))
        loss = (1 - self.opts.alpha) * context + self.opts.alpha * motion
        with torch.no_grad():
            labels = torch.arange(x.shape[0], device=x.device)
            context_top1 = (similarities(x, z, 1.0).argmax(1) == labels).float().mean()
        return {"loss": loss, "logs": {"context_loss": context.item(), "motion_loss": motion.item(),
                                       "context_top1": context_top1.item(), "motion_top1": motion_top1.item()}}
