"""Optimisers by name, and the learning rate as a pure function of the step (nanoGPT style)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 over `warmup_steps`, then cosine from base_lr down to min_lr at total_steps.

    `step` counts optimiser steps already taken, so step 0 is the first update (lr = base_lr / warmup_steps).
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def schedule_segment(step: int, restarts: tuple[int, ...], total_steps: int) -> tuple[int, int]:
    """(first step, end step) of the schedule segment holding `step`: the run cut at `restarts`, the steps where a
    multi-stage method's schedule starts again (`Method.schedule_restarts`)."""
    cuts = [0] + sorted(r for r in restarts if 0 < r < total_steps) + [total_steps]
    for first, end in zip(cuts, cuts[1:]):
        if step < end:
            return first, end
    return cuts[-2], cuts[-1]


def param_groups(model: torch.nn.Module, weight_decay: float, *, decay_biases_and_norms: bool = False) -> list[dict]:
    """Weight decay on the weights of convs and linears; on biases and normalisation parameters (every parameter of
    one dimension or none) only with `decay_biases_and_norms`. The default keeps decay from shrinking BatchNorm's
    scales, as timm and MoCo v3 do; the five papers' PyTorch code (MoCo v2's recipe) decays every parameter."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 and not decay_biases_and_norms else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(groups: Iterable[dict], *, name: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: sgd, adam or adamw")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
