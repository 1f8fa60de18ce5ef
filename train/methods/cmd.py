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
centred in the clip) instead of the future; `predictor=convgru` swaps the Transformer for a ConvGRU;
`motion_loss=mse|ce` predicts the motion values themselves instead of M-network features: each target position
regresses (mse) or classifies into `motion_bins` equal bins of [-mv_clamp, mv_clamp] (ce) the scaled vectors of its
4 x 4 cells of the target window (`motion_prediction.MotionValuePrediction`; no M-network and no hard negatives).
Table 4: `motion_source=flow` reads the store's optical flow instead of motion vectors as the M-network's input and
target: `flow[j - 1]` (forward, j-1 -> j) stands for `mv[j]` (content motion j-1 -> j on frame j), resampled
bilinearly onto the same grid of mv cells, in output pixels, every cell valid. Table 5: `cmd_network` rebuilds the
I-network or the M-network from a checkpoint for `evaluate retrieve --network i|m`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from motionssl.stores import Store
from motionssl.train.augment import ColorParams, SpatialParams, center_params, draw_color, draw_spatial
from motionssl.train.backbones import r2d_10
from motionssl.train.config import ConfigError, PretrainConfig
from motionssl.train.contrastive import info_nce, similarities
from motionssl.train.datasets import ClipDataset, Needs, View0, check_store
from motionssl.train.methods.base import Method, build_backbone, parse_options
from motionssl.train.motion_prediction import (
    MOTION_LOSSES, PREDICTORS, MotionPrediction, MotionValuePrediction, bn_head, m_network, scale_motion,
)
from motionssl.train.sampling import clip_span

PERIODS = ("future", "current")
MOTION_SOURCES = ("mv", "flow")


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
    motion_loss: str = "nce"    # nce | mse | ce (Table 1): InfoNCE on M-network features, or the values themselves
    motion_bins: int = 16       # ce: bins of the quantised vectors
    motion_source: str = "mv"   # mv | flow (Table 4): the M-network's input and target


@dataclass(frozen=True)
class MotionTarget:
    """Where the motion target lies, relative to the clip (view 0), and how many hard negatives come with it.

    frames: motion-vector frames of the target. stride: between them; 0 = the clip stride. offset: the first target
    frame minus the clip's last frame; None = stride (the next one); zero or negative puts the window inside the clip
    (period=current). negatives: more windows like it from the same video, apart from it where the video is long
    enough, each with its own crop and flip."""
    frames: int
    stride: int = 0
    offset: int | None = None
    negatives: int = 0

    def window(self, needs: Needs) -> np.ndarray:
        """(frames,) offsets of the target frames from the clip's first frame."""
        step = self.stride or needs.stride
        offset = step if self.offset is None else self.offset
        return needs.stride * (needs.clip_len - 1) + offset + step * np.arange(self.frames, dtype=np.int64)


def motion_target(needs: Needs, o: CMDOptions) -> MotionTarget:
    """The motion target and hard negatives of CMD's motion prediction with the settings `o` (for `cmd` and
    `finetune --aux-motion`): `future_frames` consecutive frames `future_gap` frames after the clip's last one, or
    (period=current) as many frames centred on the clip's span."""
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
    return MotionTarget(frames=o.future_frames, stride=1, offset=offset, negatives=o.negatives)


class CMDClips(ClipDataset):
    """ClipDataset plus what CMD reads beyond the views, all placed by view 0 (the clip):
    - `future_mv` (2, F, g, g), `future_mv_valid` (1, F, g, g): the motion target, with the clip's crop and flip;
      frames past the video's end (read clamped to its last frame) are invalid;
    - `negative_mv` (N, 2, F, g, g), `negative_mv_valid`, `negative_frames` (N, F, unclamped): the hard negatives;
    - with `iframe_window` w: `iframe` (3, S, S) uint8 and `iframe_color` (finished with the views), `iframe_frame`:
      a random I-frame within [first - w, last + w] of the clip's frames (the last one at or before its first frame
      when there is none), with its own crop, flip and colour (train; eval: the middle one, centre crop).
    Its random draws follow the views' from the same generator: negatives, then the I-frame."""

    def __init__(self, store: Store, needs: Needs, *, target: MotionTarget, iframe_window: int | None = None,
                 source: str = "mv", **kwargs):
        if target.frames < 1 or target.stride < 0 or target.negatives < 0 or (iframe_window or 0) < 0:
            raise ValueError(f"need target frames >= 1, stride, negatives and iframe_window >= 0: {target}")
        if target.window(needs)[0] < 0:
            raise ValueError(f"the motion target starts before the clip's first frame: {target}")
        check_store(store, [source] + ["iframes"] * (iframe_window is not None))
        self.source = source
        super().__init__(store, needs, **kwargs)
        if self.crops != 1:
            raise ValueError("CMD's clips take no test crops")
        if self.size % self.cell:
            raise ValueError(f"size {self.size} is not a multiple of the store's mv cell {self.cell}")
        self.target, self.iframe_window = target, iframe_window
        self._iframe_index: dict[str, np.ndarray] = {}

    def view_span(self, v: int) -> int:
        span = super().view_span(v)
        return max(span, int(self.target.window(self.needs).max()) + 1) if v == 0 else span

    def add_to_sample(self, sample: dict, *, vid: str, view0: View0, frames_total: int, hw: tuple[int, int],
                      rng: np.random.Generator) -> None:
        aspect = hw[1] / hw[0]
        window = self.target.window(self.needs)
        sample["future_mv"], sample["future_mv_valid"] = self._motion_window(vid, view0.start + window, frames_total,
                                                                             view0.spatial, hw)
        if self.target.negatives:
            sample["negative_mv"], sample["negative_mv_valid"], sample["negative_frames"] = self._negatives(
                vid, int(view0.frames[0]) + window, frames_total, hw, aspect, rng)
        if self.iframe_window is not None:
            sample["iframe"], sample["iframe_color"], sample["iframe_frame"] = self._iframe_near(
                vid, int(view0.frames[0]), int(view0.frames[-1]), aspect, rng)

    def _motion_window(self, vid: str, frames: np.ndarray, frames_total: int, spatial: SpatialParams,
                       hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        read = np.minimum(frames, frames_total - 1)
        if self.source == "flow":
            return self._flow_window(vid, frames, frames_total, spatial, hw)
        mv, valid = self.motion_tensors(self._read(vid, "mv", read), self._read(vid, "mv_valid", read), spatial, hw)
        return mv, valid * torch.from_numpy(frames < frames_total).float()[None, :, None, None]

    def _flow_window(self, vid: str, frames: np.ndarray, frames_total: int, spatial: SpatialParams,
                     hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`_motion_window` from `flow`: flow[j - 1] for mv[j] (module docstring), on the mv grid, output pixels."""
        read = np.clip(frames - 1, 0, max(frames_total - 2, 0))
        valid = torch.from_numpy(frames < frames_total).float()[None, :, None, None].expand(1, -1, *self._grid)
        return self.flow_tensor(self._read(vid, "flow", read), spatial, hw), valid.contiguous()

    def _negatives(self, vid: str, target: np.ndarray, frames_total: int, hw: tuple[int, int], aspect: float,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`negatives` windows shaped like `target` (its frame indices, unclamped), each starting uniformly among
        the starts whose window fits and does not overlap the target's; any start that fits when none does."""
        offsets = target - target[0]
        span = int(offsets[-1]) + 1
        starts = np.arange(max(frames_total - span, 0) + 1)
        apart = starts[(starts + span <= target[0]) | (starts > target[-1])]
        starts = apart if len(apart) else starts
        mvs, valids, windows = [], [], []
        for _ in range(self.target.negatives):
            frames = int(starts[rng.integers(len(starts))]) + offsets
            windows.append(frames)
            spatial = draw_spatial(rng, aspect=aspect, scale=self.scale, flip_p=self.flip_p) if self.train \
                else center_params(aspect)
            mv, valid = self._motion_window(vid, frames, frames_total, spatial, hw)
            mvs.append(mv)
            valids.append(valid)
        return torch.stack(mvs), torch.stack(valids), torch.from_numpy(np.stack(windows))

    def _iframe_near(self, vid: str, first: int, last: int, aspect: float,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        if vid not in self._iframe_index:
            self._iframe_index[vid] = self.store.read(vid, "iframe_index")
        iframe_index, w = self._iframe_index[vid], self.iframe_window
        near = np.flatnonzero((iframe_index >= first - w) & (iframe_index <= last + w))
        if not len(near):
            near = [max(int(np.searchsorted(iframe_index, first, side="right")) - 1, 0)]
        color: ColorParams | None
        if self.train:
            k = int(near[rng.integers(len(near))])
            spatial = draw_spatial(rng, aspect=aspect, scale=self.scale, flip_p=self.flip_p)
            color = draw_color(rng)
        else:
            k, spatial, color = int(near[len(near) // 2]), center_params(aspect), None
        rgb, vector = self._rgb(self.store.read_at(vid, "iframes", [k]), spatial, color)
        return rgb[:, 0], vector, int(iframe_index[k])


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


def build_motion_values(backbone: nn.Module, cfg: PretrainConfig, o: CMDOptions) -> MotionValuePrediction:
    """Table 1's motion prediction by the values themselves (`motion_loss` mse or ce), the predictor as `o` says."""
    if o.predictor not in PREDICTORS:
        raise ConfigError(f"predictor must be one of {', '.join(PREDICTORS)}, got {o.predictor!r}")
    return MotionValuePrediction(clip_map_shape(backbone, clip_len=cfg.clip_len, size=cfg.size), loss=o.motion_loss,
                                 bins=o.motion_bins, future_frames=o.future_frames, crop=cfg.size,
                                 predictor=o.predictor, hidden=o.hidden, heads=o.heads,
                                 encoder_layers=o.encoder_layers, decoder_layers=o.decoder_layers,
                                 dropout=o.dropout, m_width=o.net_width or cfg.backbone_width or 64,
                                 mv_clamp=o.mv_clamp)


def check_table_options(o: CMDOptions) -> None:
    if o.motion_loss not in MOTION_LOSSES:
        raise ConfigError(f"cmd: motion_loss must be one of {', '.join(MOTION_LOSSES)}, got {o.motion_loss!r}")
    if o.motion_source not in MOTION_SOURCES:
        raise ConfigError(f"cmd: motion_source must be one of {', '.join(MOTION_SOURCES)}, got {o.motion_source!r}")
    if o.motion_bins < 2:
        raise ConfigError(f"cmd: motion_bins must be at least 2, got {o.motion_bins}")


class MotionNetworkFeatures(nn.Module):
    """The M-network as a retrieval backbone: (B, 2, T, g, g) motion in output pixels -> (B, D), the input scaled
    and resampled to T x S/2 x S/2 as in training (`MotionPrediction.motion_features`)."""

    def __init__(self, network: nn.Module, *, crop: int, mv_clamp: float):
        super().__init__()
        self.network, self.side, self.mv_clamp = network, max(crop // 2, 1), mv_clamp

    def forward(self, mv: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(scale_motion(mv, self.mv_clamp), size=(mv.shape[2], self.side, self.side), mode="nearest")
        return self.network(x)


CMD_NETWORKS = ("v", "i", "m")


def cmd_network(payload: dict, which: str, *, source: str) -> tuple[nn.Module, dict]:
    """CMD's I-network (`i`, on RGB frames) or M-network (`m`, on motion vectors) with a checkpoint's weights, for
    retrieval (Table 5). Returns the network and the protocol defaults it needs: the I-network sees single frames
    (clip_len 1, as it saw I-frames), the M-network `future_frames` consecutive vectors (stride 1), and the
    modality its input comes from."""
    from motionssl.train.checkpoint import CheckpointError
    from motionssl.train.features import load_mapped

    config = payload.get("config") or {}
    if config.get("method") != "cmd":
        raise CheckpointError(f"{source} is a {config.get('method')!r} checkpoint; --network i or m takes one written "
                              f"by `motionssl pretrain --method cmd`")
    o = parse_options(CMDOptions, config.get("method_options") or {}, method="cmd")
    if which == "m" and o.motion_loss != "nce":
        raise CheckpointError(f"{source} was trained with motion_loss={o.motion_loss}, which has no M-network")
    width = o.net_width or config.get("backbone_width") or 64
    if which == "i":
        net, prefix, protocol = r2d_10(in_channels=3, width=width), "i_network.", {"clip_len": 1, "stride": 1}
        modality = "rgb"
    elif which == "m":
        net = MotionNetworkFeatures(m_network(width=width), crop=config["size"], mv_clamp=o.mv_clamp)
        prefix, protocol = "motion.m_network.", {"clip_len": o.future_frames, "stride": 1}
        modality = o.motion_source
    else:
        raise ValueError(f"network must be one of {', '.join(CMD_NETWORKS)}, got {which!r}")
    state = {k: v for k, v in payload["method"].items() if k.startswith(prefix)}
    target = "network." if which == "m" else ""
    report = load_mapped(net, state, key_map={prefix: target}, source=source)
    if report.missing:
        raise CheckpointError(f"{source}: the {which.upper()}-network lacks {', '.join(report.missing[:10])}")
    return net, {**protocol, "modality": modality}


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
        check_table_options(o)
        self.motion = build_motion_prediction(self.backbone, cfg, o) if o.motion_loss == "nce" \
            else build_motion_values(self.backbone, cfg, o)

    @classmethod
    def needs(cls, cfg: PretrainConfig) -> Needs:
        return Needs(modalities=("rgb",), clip_len=cfg.clip_len, stride=cfg.stride)

    @classmethod
    def dataset(cls, cfg: PretrainConfig, store: Store) -> CMDClips:
        o = parse_options(cls.Options, cfg.method_options, method=cfg.method)
        check_table_options(o)
        needs = cls.needs(cfg)
        target = motion_target(needs, o)
        if o.motion_loss != "nce":  # the values themselves: no hard negatives to contrast with
            target = dataclasses.replace(target, negatives=0)
        return CMDClips(store, needs, target=target, iframe_window=o.iframe_window, size=cfg.size,
                        seed=cfg.seed, flip_p=cfg.flip_p, source=o.motion_source)

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
