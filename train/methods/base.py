"""The thin base every method builds on.

A method is an `nn.Module` holding all of its networks (encoders, heads, momentum copies, queues as buffers).
`forward(batch, step=)` returns `{"loss": Tensor, "logs": {name: float}}`; `after_step` runs after each optimiser
step (momentum updates). `needs` tells the dataset what each sample must hold, and `defaults` are the paper's
settings for the generic config fields (clip length, optimiser, ...), overridable by YAML and CLI.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from motionssl.train.backbones import BACKBONES
from motionssl.train.config import ConfigError, PretrainConfig
from motionssl.stores import Store
from motionssl.train.datasets import ClipDataset, Needs


def parse_options(options_cls: type, raw: dict, *, method: str) -> Any:
    known = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"method {method}: unknown method_options {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return options_cls(**raw)


def backbone_kwargs(name: str, *, in_channels: int, width: int | None) -> dict:
    """Builder kwargs; `width` is the base channel count (64 at full size). S3D takes it as a multiplier of 64."""
    kwargs: dict = {"in_channels": in_channels}
    if width is not None:
        if name == "s3d":
            kwargs["width_mult"] = width / 64
        else:
            kwargs["width"] = width
    return kwargs


def build_backbone(name: str, *, in_channels: int, width: int | None) -> tuple[nn.Module, dict]:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    kwargs = backbone_kwargs(name, in_channels=in_channels, width=width)
    return BACKBONES[name](**kwargs), kwargs


class Method(nn.Module):
    defaults: ClassVar[dict] = {}
    Options: ClassVar[type]

    def __init__(self, cfg: PretrainConfig, *, total_steps: int):
        super().__init__()
        self.cfg = cfg
        self.opts = parse_options(self.Options, cfg.method_options, method=cfg.method)
        self.total_steps = total_steps
        self.backbone_spec: dict = {}  # {"name", "kwargs"} of the backbone that `finetune` takes over

    @classmethod
    def needs(cls, cfg: PretrainConfig) -> Needs:
        raise NotImplementedError

    @classmethod
    def dataset(cls, cfg: PretrainConfig, store: Store) -> ClipDataset:
        """The training data: every video of the store, unlabelled (supervised objectives override this)."""
        return ClipDataset(store, cls.needs(cfg), size=cfg.size, seed=cfg.seed, flip_p=cfg.flip_p)

    def forward(self, batch: dict, *, step: int) -> dict:
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Runs after every optimiser step; momentum encoders update here."""

    def schedule_restarts(self) -> tuple[int, ...]:
        """Steps where the learning-rate schedule starts again (without warmup): stages that the paper ran as
        separate runs, each with its own schedule."""
        return ()

    def encoder(self) -> nn.Module:
        """The backbone that the representation lives in (what `finetune` and `evaluate` use)."""
        return self.backbone

    def export_backbone(self) -> dict:
        return {**self.backbone_spec, "state_dict": self.encoder().state_dict()}
