"""Supervised training on a labelled split: full fine-tuning, a linear probe, or from scratch.

`Finetune` is an objective for the pretrain loop (`train.loop.train(cfg, method_cls=Finetune)`), so fine-tuning
has pretrain's checkpoints, exact resume, logs and DDP. `linear_probe_on_features` is the fast path of the linear
protocol: the frozen backbone sees each training video's evenly spaced centre clips once, and the classifier trains
on those cached features.

A linear probe freezes the backbone entirely: no gradients, and BatchNorm in eval mode so its running statistics
stay those of pretraining.

`aux_motion` W > 0 (`--aux-motion W`) adds CMD's motion prediction (paper 000, Table 6: W = 0.2) to the cross
entropy: loss = CE + W * J_M, J_M predicted from the classifier backbone's last feature map by a fresh M-network,
Transformer and heads at CMD's paper settings (`train/motion_prediction.py`); the data then carry CMD's future
motion vectors and hard negatives, so the store needs `mv`. Logged: ce, motion_loss, motion_top1. The regulariser's
networks are saved in the checkpoint (so a resume continues exactly) but are not part of the classifier.

`classifier` svm (`--linear-probe --classifier svm`, MCL's linear protocol on UCF101): a linear SVM (scikit-learn's
LinearSVC, one-vs-rest, squared hinge, C = `svm_c`) on the standardised video-level features, the mean of `--views`
clip features per video; the fitted SVM (standardisation folded in) becomes the linear head, so that `evaluate
classify` runs it, ranking by the decision values averaged over clips, i.e. the SVM on the mean feature.

`stream` (`--stream`, MVCGC's Tables 2, 4 and 5): `rgb` (default) classifies RGB clips with the checkpoint's backbone;
`mv` classifies the store's motion vectors with the MV encoder of an `mvcgc` checkpoint (`mvcgc.mv_encoder`, its
input made as in pretraining); `both` trains the two classifiers side by side (loss = CE_rgb + CE_mv) and predicts by
late fusion, the mean of their softmax probabilities (the paper's "R+MV"). The MV classifier's backbone travels in
the checkpoint's backbone entry under `mv_stream`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motionssl.stores import Store, open_store
from motionssl.train import checkpoint
from motionssl.train.backbones import BACKBONES
from motionssl.train.checkpoint import CheckpointError
from motionssl.train.config import ConfigError, PretrainConfig, write_yaml
from motionssl.train.datasets import ClipDataset, Needs
from motionssl.train.methods.base import Method, build_backbone
from motionssl.train.methods.cmd import CMDClips, CMDOptions, build_motion_prediction, motion_target
from motionssl.train.methods.mvcgc import STREAMS, MVInput, mv_clip_input, mv_encoder
from motionssl.train.optim import lr_at
from motionssl.train.run_log import RunLog
from motionssl.train.features import backbone_entry, clip_dataset, clip_outputs, load_mapped
from motionssl.train.labels import Split, load_split


AUX_MOTION = "aux_motion."  # state_dict prefix of the --aux-motion networks
MV_MODEL = "mv_model."      # state_dict prefix of the MV classifier of `--stream both`
MV_CLAMP = 10.0             # MVCGC's default, for MV encoders trained from scratch


class VideoClassifier(nn.Module):
    """backbone -> dropout -> linear. The head lives here, never in the backbone."""

    def __init__(self, backbone: nn.Module, *, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.backbone(x)))


@dataclass
class FinetuneOptions:
    checkpoint: str | None = None   # a pretrain (or finetune) checkpoint; its backbone is the starting point
    labels: list[str] = field(default_factory=list)  # label files (see train.labels.load_split)
    split: int = 1                  # UCF101 / HMDB51 split number
    linear_probe: bool = False      # frozen backbone (BN statistics included), train the linear head only
    from_scratch: bool = False      # the checkpoint's (or --backbone's) architecture, random initialisation
    dropout: float = 0.3            # before the classifier, full fine-tuning only (CMD)
    aux_motion: float = 0.0         # weight of CMD's motion prediction as a regulariser (paper 000 Table 6: 0.2)
    stream: str = "rgb"             # rgb | mv | both: which of an MVCGC run's encoders classify (module docstring)
    classifier: str = "softmax"     # softmax | svm: the linear probe's classifier (svm: MCL's protocol)
    svm_c: float = 1.0              # the SVM's C


def read_split(cfg: PretrainConfig, store: Store) -> Split:
    o = cfg.method_options
    if not o.get("labels"):
        raise ConfigError("no labels given: pass --labels FILE (generic CSV, Kinetics CSVs, UCF101 or HMDB51 lists)")
    return load_split([Path(p) for p in o["labels"]], store.videos, split=o.get("split", 1))


def starting_backbone(opts: FinetuneOptions, cfg: PretrainConfig) -> tuple[nn.Module, dict]:
    """(backbone, {"name", "kwargs"}): the checkpoint's, with its weights unless from_scratch; without a
    checkpoint, --backbone at random (from_scratch only)."""
    if opts.checkpoint is None:
        if not opts.from_scratch:
            raise ConfigError("pass --checkpoint CKPT (a pretrain run's checkpoint.pt), or --from-scratch")
        backbone, kwargs = build_backbone(cfg.backbone, in_channels=3, width=cfg.backbone_width)
        return backbone, {"name": cfg.backbone, "kwargs": kwargs}
    entry = backbone_entry(checkpoint.load(opts.checkpoint), source=opts.checkpoint)
    backbone = BACKBONES[entry["name"]](**entry["kwargs"])
    if not opts.from_scratch:
        report = load_mapped(backbone, entry["state_dict"], key_map={"": ""}, source=opts.checkpoint)
        if report.missing:
            raise CheckpointError(f"{opts.checkpoint}: the backbone lacks {', '.join(report.missing[:10])}")
    return backbone, {"name": entry["name"], "kwargs": entry["kwargs"]}


def starting_mv_backbone(opts: FinetuneOptions, cfg: PretrainConfig) -> tuple[nn.Module, dict]:
    """(MV encoder, {"name", "kwargs", "mv_clamp"}): an `mvcgc` checkpoint's, with its weights unless from_scratch;
    without a checkpoint, --backbone on 2 input channels at random (from_scratch only)."""
    if opts.checkpoint is None:
        if not opts.from_scratch:
            raise ConfigError("pass --checkpoint CKPT (an mvcgc run's checkpoint.pt), or --from-scratch")
        backbone, kwargs = build_backbone(cfg.backbone, in_channels=2, width=cfg.backbone_width)
        return backbone, {"name": cfg.backbone, "kwargs": kwargs, "mv_clamp": MV_CLAMP}
    backbone, spec = mv_encoder(checkpoint.load(opts.checkpoint), source=opts.checkpoint)
    if opts.from_scratch:
        backbone = BACKBONES[spec["name"]](**spec["kwargs"])
    return backbone, {"name": spec["name"], "kwargs": spec["kwargs"], "mv_clamp": spec["mv_clamp"]}


class Finetune(Method):
    """Cross-entropy on one augmented clip per training video (random time, crop, flip, colour jitter).

    Defaults are CMD's UCF101 fine-tuning (paper 000 §4.1): SGD, lr 1e-4 x batch 8, weight decay 0.003, cosine,
    120 epochs, dropout 0.3; on HMDB51 it uses --lr 1.6e-3 and weight decay 0.002. Clip length, stride and size
    default to the pretrain run's (CMD: 16 frames at stride 4, 112 px)."""

    defaults = {"backbone": "r3d18", "clip_len": 16, "stride": 4, "size": 112, "batch_size": 8, "epochs": 120,
                "optimizer": "sgd", "lr": 8e-4, "weight_decay": 3e-3}
    Options = FinetuneOptions

    def __init__(self, cfg: PretrainConfig, *, total_steps: int, num_classes: int | None = None):
        super().__init__(cfg, total_steps=total_steps)
        if num_classes is None:
            num_classes = len(read_split(cfg, open_store(cfg.store)).classes)
        stream = self.opts.stream
        if stream not in STREAMS:
            raise ConfigError(f"--stream must be one of {', '.join(STREAMS)}, got {stream!r}")
        backbone, self.backbone_spec = (starting_mv_backbone if stream == "mv" else starting_backbone)(self.opts, cfg)
        dropout = 0.0 if self.opts.linear_probe else self.opts.dropout
        self.model = VideoClassifier(backbone, num_classes=num_classes, dropout=dropout)
        self.mv_model = None
        if stream == "both":
            mv_backbone, self.mv_spec = starting_mv_backbone(self.opts, cfg)
            self.mv_model = VideoClassifier(mv_backbone, num_classes=num_classes, dropout=dropout)
        self.mv_clamp = (self.mv_spec if stream == "both" else self.backbone_spec).get("mv_clamp", MV_CLAMP)
        if self.opts.linear_probe:
            self.model.backbone.requires_grad_(False)
            if self.mv_model is not None:
                self.mv_model.backbone.requires_grad_(False)
        self.aux_motion = None
        if self.opts.aux_motion:
            if self.opts.aux_motion < 0 or self.opts.linear_probe or stream != "rgb":
                raise ConfigError("--aux-motion takes a weight >= 0 and trains the RGB backbone: not with "
                                  "--linear-probe or --stream mv|both")
            self.aux_motion = build_motion_prediction(backbone, cfg, CMDOptions())  # the paper's settings

    @classmethod
    def needs(cls, cfg: PretrainConfig) -> Needs:
        modalities = {"mv": ("mv",), "both": ("rgb", "mv")}.get(cfg.method_options.get("stream"), ("rgb",))
        return Needs(modalities=modalities, clip_len=cfg.clip_len, stride=cfg.stride, views=1)

    @classmethod
    def dataset(cls, cfg: PretrainConfig, store: Store) -> ClipDataset:
        videos, labels = read_split(cfg, store).part("train")
        needs = cls.needs(cfg)
        if cfg.method_options.get("aux_motion"):  # CMD's motion target and hard negatives, at the paper's settings
            return CMDClips(store, needs, target=motion_target(needs, CMDOptions()), size=cfg.size, seed=cfg.seed,
                            flip_p=cfg.flip_p, videos=videos, labels=labels)
        return ClipDataset(store, needs, size=cfg.size, seed=cfg.seed, flip_p=cfg.flip_p, videos=videos,
                           labels=labels)

    def train(self, mode: bool = True) -> "Finetune":
        super().train(mode)
        if self.opts.linear_probe:
            self.model.backbone.eval()  # running statistics stay pretraining's
            if self.mv_model is not None:
                self.mv_model.backbone.eval()
        return self

    def export_backbone(self) -> dict:
        entry = super().export_backbone()
        if self.opts.stream != "rgb":  # how the MV input is made, and (both) the MV classifier's backbone
            entry["mv_clamp"] = self.mv_clamp
        if self.mv_model is not None:
            entry["mv_stream"] = {**self.mv_spec, "state_dict": self.mv_model.backbone.state_dict()}
        return entry

    def stream_logits(self, model: VideoClassifier, x: Tensor) -> Tensor:
        """A stream classifier's logits (the frozen backbone without gradients under --linear-probe)."""
        if self.opts.linear_probe:
            with torch.no_grad():
                features = model.backbone(x)
            return model.head(features)
        return model(x)

    def encoder(self) -> nn.Module:
        return self.model.backbone

    def forward(self, batch: dict, *, step: int) -> dict:
        if self.opts.stream != "rgb":
            return self.forward_streams(batch)
        x, y = batch["views"][0]["rgb"], batch["label"]
        if self.opts.linear_probe:
            with torch.no_grad():
                features = self.model.backbone(x)
            logits = self.model.head(features)
        elif self.aux_motion is not None:
            clip_map = self.model.backbone.forward_features(x)
            logits = self.model.head(self.model.dropout(clip_map.mean(dim=(2, 3, 4))))
        else:
            logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        logs = {"acc": (logits.argmax(1) == y).float().mean().item()}
        if self.aux_motion is not None:
            motion, motion_top1 = self.aux_motion(clip_map, batch["future_mv"], batch["future_mv_valid"],
                                                  batch.get("negative_mv"))
            logs.update(ce=loss.item(), motion_loss=motion.item(), motion_top1=motion_top1.item())
            loss = loss + self.opts.aux_motion * motion
        return {"loss": loss, "logs": logs}

    def forward_streams(self, batch: dict) -> dict:
        """--stream mv (the MV classifier alone) or both (CE of each; accuracy of the fused probabilities)."""
        view, y = batch["views"][0], batch["label"]
        mv = mv_clip_input(view["mv"], size=self.cfg.size, clamp=self.mv_clamp)
        if self.mv_model is None:
            logits = self.stream_logits(self.model, mv)
            return {"loss": F.cross_entropy(logits, y), "logs": {"acc": (logits.argmax(1) == y).float().mean().item()}}
        rgb_logits = self.stream_logits(self.model, view["rgb"])
        mv_logits = self.stream_logits(self.mv_model, mv)
        ce_rgb, ce_mv = F.cross_entropy(rgb_logits, y), F.cross_entropy(mv_logits, y)
        fused = (rgb_logits.softmax(1) + mv_logits.softmax(1)) / 2
        return {"loss": ce_rgb + ce_mv, "logs": {"acc": (fused.argmax(1) == y).float().mean().item(),
                                                 "ce_rgb": ce_rgb.item(), "ce_mv": ce_mv.item()}}



def fit_linear(head: nn.Linear, x: Tensor, y: Tensor, *, steps: int, lr: float, weight_decay: float = 0.0,
               log_every: int = 0, log=None) -> float:
    """Train `head` on features x (N, D) and labels y (N,): `steps` full-batch Adam steps, cosine lr from `lr`.
    `log(step, {"loss", "lr", "acc"})` every `log_every` steps and at the end. Returns the last loss."""
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for step in range(steps):
        step_lr = lr_at(step, base_lr=lr, warmup_steps=0, total_steps=steps)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        logits = head(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            log(step + 1, {"loss": loss.item(), "lr": step_lr, "acc": (logits.argmax(1) == y).float().mean().item()})
    return loss.item()


CLASSIFIERS = ("softmax", "svm")


def fit_svm(head: nn.Linear, x: Tensor, y: Tensor, *, c: float = 1.0) -> dict:
    """Fit a linear SVM (LinearSVC: one-vs-rest, squared hinge, C = c) on features x (N, D), standardised per
    dimension, and labels y (N,); write it into `head` so that head(x) gives its decision values (two classes:
    -s/2 and s/2). Returns {"loss": mean squared hinge over samples and classes, "acc": training accuracy}."""
    from sklearn.svm import LinearSVC

    xs = x.double().cpu().numpy()
    mean, std = xs.mean(0), xs.std(0)
    std[std == 0] = 1.0
    svm = LinearSVC(C=c, max_iter=10000).fit((xs - mean) / std, y.cpu().numpy())
    w, b = svm.coef_ / std, svm.intercept_ - (svm.coef_ / std) @ mean   # on the raw features
    if len(svm.classes_) == 2:
        w, b = np.concatenate([-w, w]) / 2, np.concatenate([-b, b]) / 2
    weight, bias = np.zeros((head.out_features, xs.shape[1])), np.full(head.out_features, -1e4)
    weight[svm.classes_], bias[svm.classes_] = w, b          # classes absent from training are never predicted
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    labels = y.cpu().numpy()
    scores = svm.decision_function((xs - mean) / std).reshape(len(xs), -1)  # one column per binary problem
    positive = svm.classes_[None, :] if len(svm.classes_) > 2 else svm.classes_[None, 1:]
    signs = np.where(labels[:, None] == positive, 1.0, -1.0)
    loss = float(np.mean(np.maximum(0.0, 1 - signs * scores) ** 2))
    return {"loss": loss, "acc": float((svm.predict((xs - mean) / std) == labels).mean())}


def linear_probe_on_features(cfg: PretrainConfig, *, views: int = 10, batch_size: int = 8,
                             device: str = "cpu") -> dict:
    """The linear protocol's fast path: features of `views` evenly spaced centre clips of every training video,
    computed once by the frozen backbone; then `cfg.steps` (or `cfg.epochs`) full-batch Adam steps on the linear
    head, cosine lr. Writes the same checkpoint layout as the loop."""
    run_dir = Path(cfg.out)
    if (run_dir / checkpoint.LAST).exists():
        raise ConfigError(f"{run_dir} already holds a run; pass a new -o RUN_DIR")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    store = open_store(cfg.store)
    cfg.store_version = store.version
    split = read_split(cfg, store)
    videos, labels = split.part("train")
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs
    method = Finetune(cfg, total_steps=total_steps, num_classes=len(split.classes))
    if not method.opts.linear_probe:
        raise ConfigError("cached features are for --linear-probe only")
    if method.opts.classifier not in CLASSIFIERS:
        raise ConfigError(f"--classifier must be one of {', '.join(CLASSIFIERS)}, got {method.opts.classifier!r}")
    t0 = time.perf_counter()
    modality = method.opts.stream  # rgb or mv: a stream reads the modality of its name
    if modality == "both":
        raise ConfigError("--cached-features probes one stream: --stream rgb or mv (both: leave --cached-features out)")
    encoder = method.model.backbone if modality == "rgb" else MVInput(method.model.backbone, size=cfg.size,
                                                                      clamp=method.mv_clamp)
    dataset = clip_dataset(store, videos, labels, clip_len=cfg.clip_len, stride=cfg.stride, size=cfg.size,
                           views=views, modalities=(modality,))
    features = torch.from_numpy(clip_outputs(encoder, dataset, batch_size=batch_size,
                                             workers=cfg.workers, device=device, modality=modality))
    x, y = features.flatten(0, 1), torch.tensor(labels).repeat_interleave(views)
    seconds_features = time.perf_counter() - t0
    log = RunLog(run_dir, resume_step=None, tensorboard=False)
    write_yaml(cfg, run_dir / "config.yaml")
    head = method.model.head.to(device)
    if method.opts.classifier == "svm":  # on the video-level features: the mean of each video's clips (MCL)
        fitted = fit_svm(head, features.mean(1), torch.tensor(labels), c=method.opts.svm_c)
        log.log(1, {"loss": fitted["loss"], "lr": 0.0, "acc": fitted["acc"]})
        loss = fitted["loss"]
    else:
        loss = fit_linear(head, x.to(device), y.to(device), steps=total_steps, lr=cfg.lr,
                          weight_decay=cfg.weight_decay, log_every=cfg.log_every, log=log.log)
    log.close()
    method.cpu()
    checkpoint.save(run_dir / checkpoint.LAST, {
        "step": total_steps, "epoch": total_steps, "config": cfg.to_dict(), "method": method.state_dict(),
        "backbone": method.export_backbone(), "world_size": 1, "rng": [checkpoint.rng_state()]})
    summary = {"method": cfg.method, "run_dir": str(run_dir), "store": cfg.store, "store_version": cfg.store_version,
               "steps": total_steps, "total_steps": total_steps, "finished": True, "train_clips": len(y), "classes": list(split.classes),
               "seconds_features": seconds_features, "seconds": time.perf_counter() - t0, "final_loss": loss}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def load_classifier(path: Path) -> tuple[VideoClassifier, dict]:
    """A `finetune` checkpoint's classifier (backbone and head), loaded strictly through {"model.": ""}."""
    payload = checkpoint.load(path)
    entry = backbone_entry(payload, source=str(path))
    # the --aux-motion regulariser's networks are not part of the classifier
    state = {k: v for k, v in payload.get("method", {}).items() if not k.startswith((AUX_MOTION, MV_MODEL))}
    if payload.get("config", {}).get("method") != "finetune" or "model.head.weight" not in state:
        raise CheckpointError(f"{path} is not a finetune checkpoint (no classifier head); "
                              f"`motionssl evaluate retrieve` takes pretrain checkpoints")
    model = VideoClassifier(BACKBONES[entry["name"]](**entry["kwargs"]),
                            num_classes=state["model.head.weight"].shape[0])
    report = load_mapped(model, state, key_map={"model.": ""}, source=str(path))
    if report.missing:
        raise CheckpointError(f"{path}: the classifier lacks {', '.join(report.missing[:10])}")
    return model, payload


def load_stream_classifiers(path: Path, stream: str | None = None) -> tuple[list[tuple[nn.Module, str]], dict]:
    """The classifiers that `evaluate classify --stream` averages, each with the modality it reads, and the payload.
    `stream` None is the one the run was fine-tuned on; a `both` run also classifies with either stream alone."""
    model, payload = load_classifier(path)
    trained = (payload.get("config", {}).get("method_options") or {}).get("stream", "rgb")
    stream = stream or trained
    if stream not in STREAMS:
        raise ValueError(f"--stream must be one of {', '.join(STREAMS)}, got {stream!r}")
    if stream != trained and trained != "both":
        raise CheckpointError(f"{path} was fine-tuned with --stream {trained}: it classifies that stream only")
    entry, size = payload["backbone"], payload["config"]["size"]
    clamp = entry.get("mv_clamp", MV_CLAMP)
    if trained != "both":
        return [(model if stream == "rgb" else MVInput(model, size=size, clamp=clamp), stream)], payload
    mv_entry = entry["mv_stream"]
    mv = VideoClassifier(BACKBONES[mv_entry["name"]](**mv_entry["kwargs"]), num_classes=model.head.out_features)
    state = {k: v for k, v in payload["method"].items() if k.startswith(MV_MODEL)}
    report = load_mapped(mv, state, key_map={MV_MODEL: ""}, source=str(path))
    if report.missing:
        raise CheckpointError(f"{path}: the MV classifier lacks {', '.join(report.missing[:10])}")
    streams = {"rgb": (model, "rgb"), "mv": (MVInput(mv, size=size, clamp=clamp), "mv")}
    return ([streams["rgb"], streams["mv"]] if stream == "both" else [streams[stream]]), payload
