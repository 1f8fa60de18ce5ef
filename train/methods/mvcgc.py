"""`mvcgc`: motion-vector cross-guidance contrastive learning (Huo et al., IJCAI 2021; paper 003).

Two streams, RGB clips and motion-vector clips, each with its own encoder (S3D by default), non-linear projection
head, momentum (key) copy and MoCo queue. A sample is two clips of one video at different times; the query encoders
see clip 0, the key encoders clip 1, so a pair is "RGB of one clip and motion vectors of another clip".

Stage 1 (initialisation, eq. 1): each stream alone, InfoNCE of its query against its own key and its queue. The
streams share nothing, so both train at once; that is the same as one after the other.
Stage 2 (cross guidance, eqs. 2-5): for query i the positives in the other stream are its own pair's key and the
queue entries S_i = top-k(q_i^rgb . queue^rgb) ∩ top-k(q_i^mv . queue^mv) (the queues are filled in lockstep, so
entry j of both comes from one clip pair); multi-instance InfoNCE (the positives summed inside the log) of the RGB
query against the MV key and queue, plus the MV query against the RGB key and queue. In both stages, queue entries
from the query's own video are not negatives (and not candidates for S_i).

The stage is a function of the step (stage 2 from `init_steps`, default `init_fraction` of the run), so a resumed
run continues in its stage. Each stage has its own learning-rate schedule (`stage_schedule`, default on): stage 2
starts again at --lr, as the paper's "continually train the cross guidance for another 200 epochs" at Adam 1e-4
and CoCLR's code (one run per stage) do. With one cosine over both stages, stage 2 ran at under 35% of --lr, and
in bench_science its cross task stayed at chance (README.md, "MVCGC's schedule"). Logged in both stages: rgb_top1
and mv_top1 (the own key ranks first among the stream's queue, stage 1's task), cross_top1 (a positive of the
other stream ranks first, both directions averaged, stage 2's task) and positives (mean |S_i|).

Settings: tau 0.07, m 0.999, queue 2048 (use 16384 for Kinetics-400), k 5, Adam lr 1e-4 with weight decay 1e-5;
UCF101 ran 300 epochs of stage 1 and 200 of stage 2 (init_fraction 0.6 of 500 epochs), input 32 x 128 px.
Where the paper is silent: projection heads are MoCo v2's (2048 hidden, 128 out); the top-k similarities use the
detached queries; motion vectors are clamped to +-10 output px and divided by 10 (as CMD), and their grid is resampled
(nearest) to the clip's pixel size, so both encoders see the same geometry.

`positives=union` (Table 3's "union" row) takes S_i = top-k(RGB) ∪ top-k(MV) instead of the intersection.
`mv_encoder` rebuilds the MV stream's encoder from a checkpoint, and `MVInput` feeds it the store's vectors as
training does, for `finetune` and `evaluate` with `--stream mv|both` (Tables 2, 4, 5).

`mv_source=decode` (`pretrain --mv-source decode`) decodes the motion vectors from each video's source file with
PyAV while loading instead of reading the store's (`train/decoded_motion.py`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motionssl.stores import Store
from motionssl.train.config import ConfigError, PretrainConfig
from motionssl.train.contrastive import (MoCoQueue, info_nce, momentum_keys, momentum_update, projection_head,
                                         similarities)
from motionssl.train.datasets import ClipDataset, Needs
from motionssl.train.distributed import gather
from motionssl.train.methods.base import Method, backbone_kwargs, build_backbone, parse_options
from motionssl.train.motion_prediction import scale_motion
from motionssl.train.shuffle_bn import group_batch_norms

MV_SOURCES = ("store", "decode")
POSITIVES = ("intersection", "union")
STREAMS = ("rgb", "mv", "both")  # what `finetune` and `evaluate` read: the RGB encoder, the MV encoder, or both


def topk_intersection(sim_a: Tensor, sim_b: Tensor, k: int, *, exclude: Tensor | None = None) -> Tensor:
    """(B, K) bool: True at j when j is among the k largest of sim_a[i] and among the k largest of sim_b[i].
    Entries where `exclude` (B, K) is True are never chosen (nor counted among the k)."""
    if exclude is not None:
        sim_a, sim_b = sim_a.masked_fill(exclude, float("-inf")), sim_b.masked_fill(exclude, float("-inf"))
    k = min(k, sim_a.shape[1])

    def top(sim: Tensor) -> Tensor:
        chosen = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, sim.topk(k, dim=1).indices, True)
        return chosen & torch.isfinite(sim)

    return top(sim_a) & top(sim_b)


def topk_union(sim_a: Tensor, sim_b: Tensor, k: int, *, exclude: Tensor | None = None) -> Tensor:
    """(B, K) bool: True at j when j is among the k largest of sim_a[i] or among the k largest of sim_b[i] (the
    intersection of a top-k with itself is that top-k); `exclude` as in `topk_intersection`."""
    return topk_intersection(sim_a, sim_a, k, exclude=exclude) | topk_intersection(sim_b, sim_b, k, exclude=exclude)


def mv_clip_input(mv: Tensor, *, size: int, clamp: float) -> Tensor:
    """(B, 2, T, g, g) motion vectors in output px -> the MV encoder's input: clamped to +-clamp, divided by it and
    resampled (nearest) to T x size x size, the clip's pixel grid."""
    mv = scale_motion(mv, clamp)
    return F.interpolate(mv, size=(mv.shape[2], size, size), mode="nearest")


class MVInput(nn.Module):
    """A network on MVCGC's MV input (`mv_clip_input`): (B, 2, T, g, g) vectors in output px -> its output."""

    def __init__(self, network: nn.Module, *, size: int, clamp: float = 10.0):
        super().__init__()
        self.network, self.size, self.clamp = network, size, clamp

    def forward(self, mv: Tensor) -> Tensor:
        return self.network(mv_clip_input(mv, size=self.size, clamp=self.clamp))


def mv_encoder(payload: dict, *, source: str) -> tuple[nn.Module, dict]:
    """The MV stream's encoder of an `mvcgc` checkpoint (its query encoder, `mv.backbone.` of the method state)
    with its weights, and {"name", "kwargs", "size", "mv_clamp"}: the architecture and how its input is made."""
    from motionssl.train.backbones import BACKBONES
    from motionssl.train.checkpoint import CheckpointError
    from motionssl.train.features import load_mapped

    config = payload.get("config") or {}
    if config.get("method") != "mvcgc":
        raise CheckpointError(f"{source} is a {config.get('method')!r} checkpoint; the MV stream is that of one "
                              f"written by `motionssl pretrain --method mvcgc`")
    o = parse_options(MVCGCOptions, config.get("method_options") or {}, method="mvcgc")
    name = o.mv_backbone or config["backbone"]
    kwargs = backbone_kwargs(name, in_channels=2, width=config.get("backbone_width"))
    network = BACKBONES[name](**kwargs)
    prefix = "mv.backbone."
    state = {k: v for k, v in payload["method"].items() if k.startswith(prefix)}
    report = load_mapped(network, state, key_map={prefix: ""}, source=source)
    if report.missing:
        raise CheckpointError(f"{source}: the MV encoder lacks {', '.join(report.missing[:10])}")
    return network, {"name": name, "kwargs": kwargs, "size": config["size"], "mv_clamp": o.mv_clamp}


def cross_guidance_nce(q: Tensor, k: Tensor, queue: Tensor, positives: Tensor, tau: float, *,
                       exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One direction of eq. 4: queries q (B, D) against their own pair's keys k (B, D) and a queue (K, D).

    The positives of q_i are k_i and the queue rows where `positives` (B, K) is True; the negatives the other queue
    rows, except where `exclude` (B, K) is True (dropped from the sum). With s = q . key / tau,
        loss_i = -log( sum_{p positive} exp(s_ip) / sum_{n positive or negative} exp(s_in) ).
    Returns (mean loss, correct (B,) bool: a positive has the largest similarity).
    """
    with torch.autocast(q.device.type, enabled=False):
        own = (q.float() * k.float()).sum(dim=1, keepdim=True) / tau
    logits = torch.cat([own, similarities(q, queue, tau)], dim=1)
    pos = torch.cat([torch.ones_like(own, dtype=torch.bool), positives], dim=1)
    if exclude is not None:
        keep = torch.cat([torch.ones_like(pos[:, :1]), ~exclude | positives], dim=1)
        logits = logits.masked_fill(~keep, float("-inf"))
    loss = torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    correct = pos.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)
    return loss.mean(), correct


@dataclass
class MVCGCOptions:
    dim: int = 128              # embedding size
    hidden: int = 2048          # projection MLP hidden size; 0 = backbone width
    queue_size: int = 2048
    tau: float = 0.07
    momentum: float = 0.999     # key encoders' EMA coefficient
    k: int = 5                  # top-k of each stream for the positive set
    init_fraction: float = 0.6  # stage 1's share of the steps (UCF101: 300 of 500 epochs)
    init_steps: int | None = None  # stage 1 length in steps; overrides init_fraction
    mv_backbone: str | None = None  # the MV encoder; None: the RGB one's architecture
    mv_source: str = "store"    # store | decode (PyAV from each video's source file)
    mv_clamp: float = 10.0      # vectors clamped to +-mv_clamp output px and divided by it
    positives: str = "intersection"  # intersection | union of the two streams' top-k (Table 3)
    stage_schedule: bool = True  # stage 2 starts its own cosine from --lr, as a separate run would (module docstring)
    bn_groups: int = 8          # shuffling BN in one process: up to this many BatchNorm groups (train/shuffle_bn.py)


class Stream(nn.Module):
    """One view: encoder and head, their momentum copies, and the queue of its keys."""

    def __init__(self, backbone: nn.Module, o: MVCGCOptions):
        super().__init__()
        self.backbone = group_batch_norms(backbone, o.bn_groups)
        self.head = projection_head(backbone.out_dim, o.hidden or backbone.out_dim, o.dim)
        self.backbone_k = copy.deepcopy(backbone).requires_grad_(False)
        self.head_k = copy.deepcopy(self.head).requires_grad_(False)
        self.queue = MoCoQueue(o.dim, o.queue_size)

    def query(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)

    @torch.no_grad()
    def key(self, x: Tensor, *, seed: int) -> Tensor:
        return momentum_keys(self.backbone_k, self.head_k, x, seed=seed)

    @torch.no_grad()
    def update(self, m: float) -> None:
        momentum_update(self.backbone, self.backbone_k, m)
        momentum_update(self.head, self.head_k, m)


class MVCGC(Method):
    defaults = {"backbone": "s3d", "clip_len": 32, "stride": 1, "size": 128, "batch_size": 32, "epochs": 500,
                "optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5}
    Options = MVCGCOptions

    def __init__(self, cfg: PretrainConfig, *, total_steps: int):
        super().__init__(cfg, total_steps=total_steps)
        o = self.opts
        rgb, kwargs = build_backbone(cfg.backbone, in_channels=3, width=cfg.backbone_width)
        self.backbone_spec = {"name": cfg.backbone, "kwargs": kwargs}
        mv, _ = build_backbone(o.mv_backbone or cfg.backbone, in_channels=2, width=cfg.backbone_width)
        self.rgb, self.mv = Stream(rgb, o), Stream(mv, o)
        if o.init_steps is not None and o.init_steps < 0 or not 0.0 <= o.init_fraction <= 1.0:
            raise ConfigError(f"need init_steps >= 0 and init_fraction within [0, 1], got {o.init_steps}, "
                              f"{o.init_fraction}")
        self.init_steps = o.init_steps if o.init_steps is not None else round(o.init_fraction * total_steps)
        if o.positives not in POSITIVES:
            raise ConfigError(f"mvcgc: positives must be one of {', '.join(POSITIVES)}, got {o.positives!r}")
        self.positive_set = topk_intersection if o.positives == "intersection" else topk_union

    @classmethod
    def needs(cls, cfg: PretrainConfig) -> Needs:
        return Needs(modalities=("rgb", "mv"), clip_len=cfg.clip_len, stride=cfg.stride, views=2)

    @classmethod
    def dataset(cls, cfg: PretrainConfig, store: Store) -> ClipDataset:
        o = parse_options(cls.Options, cfg.method_options, method=cfg.method)
        if o.mv_source not in MV_SOURCES:
            raise ConfigError(f"mv_source must be one of {', '.join(MV_SOURCES)}, got {o.mv_source!r}")
        if o.mv_source == "decode":
            from motionssl.train.decoded_motion import DecodedMotionStore

            store = DecodedMotionStore(store)
        return ClipDataset(store, cls.needs(cfg), size=cfg.size, seed=cfg.seed, flip_p=cfg.flip_p)

    def encoder(self) -> nn.Module:
        return self.rgb.backbone

    def schedule_restarts(self) -> tuple[int, ...]:
        return (self.init_steps,) if self.opts.stage_schedule else ()

    def stage(self, step: int) -> int:
        return 1 if step < self.init_steps else 2

    def mv_input(self, view: dict) -> Tensor:
        return mv_clip_input(view["mv"], size=self.cfg.size, clamp=self.opts.mv_clamp)

    def losses(self, batch: dict, *, step: int) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The terms of both stages, {"rgb", "mv"} (stage 1) and {"cross_rgb", "cross_mv"} (stage 2, the RGB or MV
        query against the other stream), with every accuracy for the log; the keys join the queues. `forward` sums
        the terms of the step's stage."""
        view_q, view_k = batch["views"]
        videos, tau, seed = batch["video"], self.opts.tau, self.cfg.seed * 1_000_003 + step
        q_r, q_m = self.rgb.query(view_q["rgb"]), self.mv.query(self.mv_input(view_q))
        k_r, k_m = self.rgb.key(view_k["rgb"], seed=seed), self.mv.key(self.mv_input(view_k), seed=seed + 1)
        queue_r, queue_m = self.rgb.queue.keys.clone(), self.mv.queue.keys.clone()
        same_video = self.rgb.queue.negatives_mask(videos)  # both queues hold the same videos, in lockstep
        with torch.no_grad():
            positives = self.positive_set(q_r @ queue_r.T, q_m @ queue_m.T, self.opts.k, exclude=same_video)
        terms = {"rgb": info_nce(q_r, k_r, queue_r, tau, queue_mask=same_video),
                 "mv": info_nce(q_m, k_m, queue_m, tau, queue_mask=same_video)}
        terms["cross_rgb"], correct_r = cross_guidance_nce(q_r, k_m, queue_m, positives, tau, exclude=same_video)
        terms["cross_mv"], correct_m = cross_guidance_nce(q_m, k_r, queue_r, positives, tau, exclude=same_video)
        with torch.no_grad():  # every accuracy in both stages, so log.csv keeps its columns
            logs = {"stage": float(self.stage(step)), "rgb_top1": own_key_top1(q_r, k_r, queue_r, same_video),
                    "mv_top1": own_key_top1(q_m, k_m, queue_m, same_video),
                    "cross_top1": torch.cat([correct_r, correct_m]).float().mean().item(),
                    "positives": positives.sum(1).float().mean().item()}
        all_videos = gather(videos)
        self.rgb.queue.enqueue(gather(k_r.float()), all_videos)
        self.mv.queue.enqueue(gather(k_m.float()), all_videos)
        return terms, logs

    def forward(self, batch: dict, *, step: int) -> dict:
        terms, logs = self.losses(batch, step=step)
        active = ("rgb", "mv") if self.stage(step) == 1 else ("cross_rgb", "cross_mv")
        return {"loss": terms[active[0]] + terms[active[1]], "logs": logs}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        self.rgb.update(self.opts.momentum)
        self.mv.update(self.opts.momentum)


def own_key_top1(q: Tensor, k: Tensor, queue: Tensor, exclude: Tensor) -> float:
    """Fraction of queries whose own key is more similar than every queue entry they are contrasted with."""
    own = (q * k).sum(1)
    others = (q @ queue.T).masked_fill(exclude, float("-inf")).max(dim=1).values
    return (own > others).float().mean().item()
