"""Backbones out of checkpoints, loaded strictly, and their per-clip outputs on every video of a split.

Loading goes through an explicit key mapping (checkpoint prefix -> model prefix). A checkpoint key that no rule maps,
or that maps to no parameter of the model, is unexpected and fails the load; a model key the checkpoint lacks is
missing and is reported back. A shape mismatch fails too. Nothing is loaded partially without saying so.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from motionssl.stores import Store
from motionssl.train import checkpoint
from motionssl.train.backbones import BACKBONES
from motionssl.train.checkpoint import CheckpointError
from motionssl.train.collate import collate
from motionssl.train.datasets import ClipDataset, Needs, finish_batch, seed_worker
from motionssl.train.loop import to_device


@dataclass(frozen=True)
class LoadReport:
    loaded: list[str]   # model keys taken from the checkpoint
    missing: list[str]  # model keys the checkpoint does not provide (left at their initial values)


def map_keys(state: Mapping[str, torch.Tensor], key_map: Mapping[str, str]) -> tuple[dict, list[str]]:
    """Rename keys by the longest matching source prefix; returns (renamed state, keys no rule matches)."""
    rules = sorted(key_map.items(), key=lambda kv: -len(kv[0]))
    renamed, unmatched = {}, []
    for key, value in state.items():
        rule = next(((src, dst) for src, dst in rules if key.startswith(src)), None)
        if rule is None:
            unmatched.append(key)
        else:
            renamed[rule[1] + key[len(rule[0]):]] = value
    return renamed, unmatched


def load_mapped(model: nn.Module, state: Mapping[str, torch.Tensor], *, key_map: Mapping[str, str],
                source: str) -> LoadReport:
    """Load `state` into `model` through `key_map` (see the module docstring); raise CheckpointError on any
    unexpected key or shape mismatch, before changing anything."""
    renamed, unmatched = map_keys(state, key_map)
    target = model.state_dict()
    unexpected = unmatched + [k for k in renamed if k not in target]
    if unexpected:
        raise CheckpointError(f"{source}: {len(unexpected)} unexpected key(s) for {type(model).__name__} through "
                              f"the mapping {dict(key_map)}: {', '.join(unexpected[:10])}"
                              + (" ..." if len(unexpected) > 10 else ""))
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in renamed.items()
             if v.shape != target[k].shape]
    if wrong:
        raise CheckpointError(f"{source}: shape mismatch (checkpoint vs model): {'; '.join(wrong[:10])}")
    model.load_state_dict(renamed, strict=False)
    return LoadReport(loaded=sorted(renamed), missing=sorted(k for k in target if k not in renamed))


def backbone_entry(payload: dict, *, source: str) -> dict:
    """The checkpoint's {"name", "kwargs", "state_dict"} backbone, checked."""
    entry = payload.get("backbone")
    if not isinstance(entry, dict) or not {"name", "kwargs", "state_dict"} <= set(entry):
        raise CheckpointError(f"{source} holds no backbone entry (name, kwargs, state_dict); "
                              f"pass a checkpoint written by `motionssl pretrain` or `finetune`")
    if entry["name"] not in BACKBONES:
        raise CheckpointError(f"{source}: unknown backbone {entry['name']!r}; known: {', '.join(BACKBONES)}")
    return entry


def load_backbone(path: Path) -> tuple[nn.Module, dict, LoadReport]:
    """(backbone with the checkpoint's weights, the checkpoint payload, the load report). Every backbone key must
    be present: a backbone missing weights is not the pretrained one."""
    payload = checkpoint.load(path)
    entry = backbone_entry(payload, source=str(path))
    backbone = BACKBONES[entry["name"]](**entry["kwargs"])
    report = load_mapped(backbone, entry["state_dict"], key_map={"": ""}, source=str(path))
    if report.missing:
        raise CheckpointError(f"{path}: the backbone lacks {len(report.missing)} key(s): "
                              f"{', '.join(report.missing[:10])}")
    return backbone, payload, report


def clip_dataset(store: Store, videos: Sequence[str], labels: Sequence[int], *, clip_len: int, stride: int,
                 size: int, views: int = 10, crops: int = 1, modalities: Sequence[str] = ("rgb",)) -> ClipDataset:
    """`views` evenly spaced clips per video, each cut into `crops` short-side squares (1: the centre), no jitter
    (the test-time protocol); `modalities` the views hold (a motion stream's: mv or flow)."""
    needs = Needs(modalities=tuple(modalities), clip_len=clip_len, stride=stride, views=views)
    return ClipDataset(store, needs, size=size, train=False, videos=videos, labels=labels, crops=crops)


@torch.no_grad()
def clip_outputs(model: nn.Module, dataset: ClipDataset, *, batch_size: int = 8, workers: int = 0,
                 device: torch.device | str = "cpu", modality: str = "rgb") -> np.ndarray:
    """(videos, views, D) float32: `model` (in eval mode) on every clip of every video, in dataset order; its
    input is each view's `modality`."""
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        worker_init_fn=seed_worker, collate_fn=collate)
    out = []
    for batch in loader:
        batch = finish_batch(to_device(batch, torch.device(device)))
        clips = torch.stack([view[modality] for view in batch["views"]], dim=1)  # (B, V, C, T, H, W)
        b, v = clips.shape[:2]
        y = model(clips.flatten(0, 1))
        out.append(y.float().reshape(b, v, -1).cpu().numpy())
    return np.concatenate(out)
