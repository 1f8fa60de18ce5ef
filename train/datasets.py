"""Map-style clip datasets over the store reader API (Zarr or HDF5).

A sample is a pure function of (seed, epoch, index): every random choice comes from
`np.random.default_rng([seed, epoch, index])`, whichever worker draws it, so a resumed run sees the same clips.

    needs = Needs(modalities=("rgb", "mv"), clip_len=16, stride=4, views=2)
    ds = ClipDataset(open_store("ucf101.zarr"), needs, size=112)
    loader = DataLoader(ds, batch_size=32, sampler=..., num_workers=8, worker_init_fn=seed_worker)

Clip layout is (C, T, H, W); units and flip conventions are in data_specs/README.md ("Training clips").
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from motionssl.stores import Store
from motionssl.train.augment import (
    ColorParams, SpatialParams, color_vector, crop_resize_clip, crop_resize_motion, draw_color,
    draw_spatial, eval_crops, finish_rgb,
)
from motionssl.train.sampling import clip_at, clip_span, evenly_spaced_starts, random_start

CLIP_MODALITIES = ("rgb", "mv", "boundary", "edges", "flow")
# The extract spec that provides each store modality, for the error message.
PROVIDED_BY = {
    "rgb": "`--spec compressed` (or any built-in spec)",
    "iframes": "`--spec compressed` (or any built-in spec)",
    "mv": "`--spec compressed` (or any built-in spec)",
    "flow": "`--spec default` (TV-L1), `--spec fast` (DIS) or `--spec raft`",
    "boundary": "`--spec default` (TV-L1), `--spec fast` (DIS) or `--spec raft`",
    "edges": "`--spec default` (TV-L1), `--spec fast` (DIS) or `--spec raft`",
}


class MissingModality(Exception):
    """An objective asks for a modality its store does not hold; the message names the spec that does."""


@dataclass(frozen=True)
class View0:
    """View 0's draw, handed to `ClipDataset.add_to_sample`: its first frame, frame indices, crop and colour."""
    start: int
    frames: np.ndarray
    spatial: SpatialParams
    color: ColorParams | None


@dataclass(frozen=True)
class Needs:
    """Which views each sample holds.

    modalities: per-frame arrays aligned with each clip (rgb, mv, boundary, edges; mv brings mv_valid; flow comes
    on the grid of mv cells, as `flow_tensor`).
    views: clips of the same video, each at its own random time with its own spatial and colour draw.
    Whatever a single method reads beyond these views, its own dataset subclass adds, in the method's file.
    """

    modalities: tuple[str, ...] = ("rgb",)
    clip_len: int = 16
    stride: int = 4
    views: int = 1

    def __post_init__(self):
        unknown = [m for m in self.modalities if m not in CLIP_MODALITIES]
        if unknown:
            raise ValueError(f"unknown clip modalities {unknown}; known: {list(CLIP_MODALITIES)}")
        if self.clip_len < 1 or self.stride < 1 or self.views < 1:
            raise ValueError(f"need clip_len, stride, views >= 1: {self}")


def check_store(store: Store, modalities: Sequence[str]) -> None:
    """Raise MissingModality, naming the extract spec to use, when `store` lacks one of the store `modalities`."""
    have = store.spec.modalities
    for m in dict.fromkeys(modalities):
        if m not in have:
            raise MissingModality(
                f"store {store.path} (spec {store.spec.name!r}: {', '.join(have)}) has no {m}; extract one that does "
                f"with `motionssl extract VIDEOS -o STORE` and {PROVIDED_BY[m]}")


def finish_batch(batch):
    """Finish the RGB of a sample or collated batch, in place, on whatever device it now is: each uint8 tensor `X`
    that has a `X_color` beside it (views' `rgb`, and any other such pair a subclass adds) becomes the float32 colour-augmented, ImageNet-normalised
    clip (`augment.finish_rgb`), and `X_color` goes. The trainer and the evaluation call it after moving a batch to
    the device, so DataLoader workers ship uint8 (a quarter of the bytes) and leave the float work to the device."""
    if isinstance(batch, dict):
        for key in [k for k in batch if f"{k}_color" in batch]:
            batch[key] = finish_rgb(batch[key], batch.pop(f"{key}_color"))
        for value in batch.values():
            finish_batch(value)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            finish_batch(value)
    return batch


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: numpy and random seeded from the worker's torch seed.

    It leaves OpenCV's thread count alone: in a worker forked after the parent used OpenCV, cv2.setNumThreads
    waits forever on the parent's pool threads, which do not exist in the child."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ClipDataset(Dataset):
    """One item per video; `ds[i]` or `ds[(i, epoch)]` draws clips of video i (see the module docstring).

    train=False: clips evenly spaced in time (the centre one for a single view), centre crop of the short
    side, no flip, no colour jitter (ImageNet normalisation only); with `crops` = 3 or 10, each clip is cut into
    those test crops (`augment.eval_crops`), so a sample holds views x crops views, clip-major.
    `labels` align with `videos` (default: every video of the store, in store order). `scale` and `flip_p` are
    RandomResizedCrop's and the flip's.
    color_jitter=False: no colour jitter, grayscale or blur in training either (methods that reconstruct frames).
    """

    def __init__(self, store: Store, needs: Needs, *, size: int = 112, train: bool = True,
                 videos: Sequence[str] | None = None, labels: Sequence[int] | None = None, seed: int = 0,
                 scale: tuple[float, float] = (0.2, 1.0), flip_p: float = 0.5, crops: int = 1,
                 color_jitter: bool = True):
        check_store(store, needs.modalities)
        if crops != 1 and train:
            raise ValueError("crops > 1 is test-time cropping: train=False")
        self.store, self.needs, self.size, self.train, self.seed = store, needs, size, train, seed
        self.scale, self.flip_p, self.color_jitter = scale, flip_p, color_jitter
        self.crops = crops
        eval_crops(crops)  # fails early on an unknown count
        self.cell = store.spec.mv.cell
        if {"mv", "flow"} & set(needs.modalities) and size % self.cell:
            raise ValueError(f"size {size} is not a multiple of the store's mv cell {self.cell}")
        position = {v: i for i, v in enumerate(store.videos)}
        self.videos = list(store.videos if videos is None else videos)
        missing = [v for v in self.videos if v not in position]
        if missing:
            raise KeyError(f"videos not in store {store.path}: {missing[:5]}")
        self.positions = [position[v] for v in self.videos]
        if labels is not None and len(labels) != len(self.videos):
            raise ValueError(f"{len(labels)} labels for {len(self.videos)} videos")
        self.labels = None if labels is None else [int(x) for x in labels]

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), 0)
        rng = np.random.default_rng([self.seed, epoch, index])
        n, vid = self.needs, self.videos[index]
        meta = self.store.meta(vid)
        frames_total, hw = meta["frames"], (meta["stored_height"], meta["stored_width"])
        aspect = hw[1] / hw[0]
        sample: dict = {"index": index, "video": self.positions[index],
                        "label": -1 if self.labels is None else self.labels[index]}
        views, first = [], None
        for v in range(n.views):
            span = self.view_span(v)
            if self.train:
                start = self.draw_start(vid, frames_total, span, rng)
                idx = clip_at(start, frames_total, n.clip_len, n.stride)
                spatial = self.draw_box(vid, idx, aspect, rng)
                color = draw_color(rng) if self.color_jitter else None
            else:
                start = int(evenly_spaced_starts(frames_total, span, n.views)[v])
                idx = clip_at(start, frames_total, n.clip_len, n.stride)
                spatial, *others = eval_crops(self.crops, aspect)
                color = None
            view, raw = self._view(vid, idx, spatial, color, hw)
            views.append(view)
            if not self.train:
                for crop in others:  # the other test crops of the same frames
                    views.append(self._view(vid, idx, crop, None, hw, raw=raw)[0])
            if v == 0:
                first = View0(start=start, frames=idx, spatial=spatial, color=color)
        sample["views"] = views
        self.add_to_sample(sample, vid=vid, view0=first, frames_total=frames_total, hw=hw, rng=rng)
        return sample

    def view_span(self, v: int) -> int:
        """Frames view `v`'s time draw must fit; a method that reads past a view overrides this."""
        return clip_span(self.needs.clip_len, self.needs.stride)

    def add_to_sample(self, sample: dict, *, vid: str, view0: "View0", frames_total: int, hw: tuple[int, int],
                      rng: np.random.Generator) -> None:
        """Add what a method reads beyond the views (after every view's draw, from the same `rng`); nothing here."""

    def draw_start(self, vid: str, frames_total: int, span: int, rng: np.random.Generator) -> int:
        """A training view's first frame, for `span` frames from it; a method with its own temporal sampling
        overrides this."""
        return random_start(frames_total, span, rng)

    def draw_box(self, vid: str, idx: np.ndarray, aspect: float, rng: np.random.Generator) -> SpatialParams:
        """A training view's crop and flip, given its frames; a method with its own cropping overrides this."""
        return draw_spatial(rng, aspect=aspect, scale=self.scale, flip_p=self.flip_p)

    @property
    def _grid(self) -> tuple[int, int]:
        g = self.size // self.cell
        return g, g

    def _read(self, vid: str, name: str, idx: np.ndarray) -> np.ndarray:
        return self._read_arrays(vid, [name], idx)[name]

    def _read_arrays(self, vid: str, names: list[str], idx: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays at the same frames, read at increasing unique indices (what both backends read fastest), then
        expanded; from object storage all in one round of requests (`Store.read_arrays`)."""
        uniq, inverse = np.unique(idx, return_inverse=True)
        arrays = self.store.read_arrays(vid, names, uniq)
        return arrays if len(uniq) == len(idx) else {name: a[inverse] for name, a in arrays.items()}

    def _view(self, vid: str, idx: np.ndarray, spatial: SpatialParams, color: ColorParams | None,
              hw: tuple[int, int], raw: dict[str, np.ndarray] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """The view's tensors, and the raw arrays read for it; `raw` given: those arrays, not read again."""
        mods = self.needs.modalities
        names = set(mods) | ({"mv_valid"} if "mv" in mods else set())
        if raw is None:
            raw = self._read_arrays(vid, sorted(names), idx)
        view: dict = {"frames": torch.from_numpy(idx)}
        if "rgb" in mods:
            view["rgb"], view["rgb_color"] = self._rgb(raw["rgb"], spatial, color)
        if "mv" in mods:
            view["mv"], view["mv_valid"] = self.motion_tensors(raw["mv"], raw["mv_valid"], spatial, hw)
        if "flow" in mods:
            view["flow"] = self.flow_tensor(raw["flow"], spatial, hw)
        for name in ("boundary", "edges"):
            if name in mods:
                view[name] = torch.from_numpy(crop_resize_clip(raw[name][..., None], spatial, self.size))
        return view, raw

    def motion_tensors(self, mv: np.ndarray, valid: np.ndarray, spatial: SpatialParams,
                       hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(2, T, g, g) mv in output pixels and (1, T, g, g) float validity of raw (T, Gh, Gw, .) frames, cropped,
        resized and flipped by `spatial` (data_specs/README.md, "Training clips")."""
        mv, valid = crop_resize_motion(mv, spatial, self._grid, frame_hw=hw, cell=self.cell, valid=valid)
        return _channels_first(mv), torch.from_numpy(valid[None]).float()

    def flow_tensor(self, flow: np.ndarray, spatial: SpatialParams, hw: tuple[int, int]) -> torch.Tensor:
        """(2, T, g, g) flow of raw (T, H, W, 2) frames on the grid of mv cells (bilinear), in output pixels,
        cropped and flipped like `motion_tensors`: flow standing in for motion vectors (CMD Table 4, MVCGC)."""
        return _channels_first(crop_resize_motion(flow, spatial, self._grid, frame_hw=hw) * self.cell)

    def _rgb(self, frames: np.ndarray, spatial: SpatialParams,
             color: ColorParams | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, T, S, S) uint8 and its colour vector: `finish_batch` turns them into the normalised clip."""
        return torch.from_numpy(crop_resize_clip(frames, spatial, self.size)), color_vector(color)


def _channels_first(x: np.ndarray) -> torch.Tensor:
    """(T, H, W, C) -> contiguous (C, T, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))
