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
    ColorParams, SpatialParams, apply_color, crop_resize_frames, crop_resize_motion, draw_color,
    draw_spatial, eval_crops, normalize, to_clip_tensor,
)
from motionssl.train.sampling import evenly_spaced_clips, random_clip

CLIP_MODALITIES = ("rgb", "mv", "flow", "boundary", "edges")
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
class Needs:
    """What an objective asks of each sample.

    modalities: per-frame arrays aligned with each clip (rgb, mv, flow, boundary, edges; mv brings mv_valid).
    views: clips of the same video, each at its own random time with its own spatial and colour draw.
    future_mv: frames of mv after view 0's last frame, on its stride, with its spatial draw (CMD's target).
    iframe: the I-frame at or before view 0's first frame, with view 0's spatial and colour draw.
    motion_stats: each view's mean motion magnitude over its frames (whole frame, before augmentation).
    """

    modalities: tuple[str, ...] = ("rgb",)
    clip_len: int = 16
    stride: int = 4
    views: int = 1
    future_mv: int = 0
    iframe: bool = False
    motion_stats: bool = False

    def __post_init__(self):
        unknown = [m for m in self.modalities if m not in CLIP_MODALITIES]
        if unknown:
            raise ValueError(f"unknown clip modalities {unknown}; known: {list(CLIP_MODALITIES)}")
        if self.clip_len < 1 or self.stride < 1 or self.views < 1 or self.future_mv < 0:
            raise ValueError(f"need clip_len, stride, views >= 1 and future_mv >= 0: {self}")


def _required(store: Store, needs: Needs) -> list[str]:
    """Store modalities (spec names) that `needs` reads, in a stable order."""
    want = list(needs.modalities)
    want += ["mv"] * (needs.future_mv > 0) + ["iframes"] * needs.iframe
    if needs.motion_stats:
        want.append("boundary" if "boundary" in store.spec.modalities else "mv")
    return list(dict.fromkeys(want))


def check_store(store: Store, needs: Needs) -> None:
    """Raise MissingModality, naming the extract spec to use, when `store` lacks what `needs` reads."""
    have = store.spec.modalities
    for m in _required(store, needs):
        if m not in have:
            raise MissingModality(
                f"store {store.path} (spec {store.spec.name!r}: {', '.join(have)}) has no {m}; extract one that does "
                f"with `motionssl extract VIDEOS -o STORE` and {PROVIDED_BY[m]}")


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
        check_store(store, needs)
        if crops != 1 and (train or needs.future_mv or needs.iframe or needs.motion_stats):
            raise ValueError("crops > 1 is test-time cropping: train=False, and views of per-frame modalities only")
        self.store, self.needs, self.size, self.train, self.seed = store, needs, size, train, seed
        self.scale, self.flip_p, self.color_jitter = scale, flip_p, color_jitter
        self.crops = crops
        eval_crops(crops)  # fails early on an unknown count
        self.cell = store.spec.mv.cell
        if ("mv" in needs.modalities or needs.future_mv) and size % self.cell:
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
        self.stats_from = _required(store, Needs(modalities=(), motion_stats=True))[0] if needs.motion_stats else None
        self._iframe_index: dict[str, np.ndarray] = {}

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
        views, motion = [], []
        for v in range(n.views):
            length = n.clip_len + (n.future_mv if v == 0 else 0)  # view 0 reads its future frames too
            if self.train:
                idx = self.draw_clip(vid, frames_total, length, rng)
                spatial = self.draw_box(vid, idx, aspect, rng)
                color = draw_color(rng) if self.color_jitter else None
            else:
                idx = evenly_spaced_clips(frames_total, length, n.stride, n.views)[v]
                spatial, *others = eval_crops(self.crops, aspect)
                color = None
            view, raw = self._view(vid, idx, spatial, color, hw)
            views.append(view)
            if not self.train:
                for crop in others:  # the other test crops of the same frames
                    views.append(self._view(vid, idx, crop, None, hw, raw=raw)[0])
            if v == 0 and n.future_mv:
                unclamped = idx[0] + n.stride * np.arange(length)
                mv, valid = crop_resize_motion(raw["mv"][n.clip_len:], spatial, self._grid, frame_hw=hw,
                                               cell=self.cell, valid=raw["mv_valid"][n.clip_len:])
                valid &= (unclamped[n.clip_len:] < frames_total)[:, None, None]  # past the end: no target
                sample["future_mv"] = _channels_first(mv)
                sample["future_mv_valid"] = torch.from_numpy(valid[None]).float()
            if v == 0 and n.iframe:
                sample["iframe"] = self._iframe(vid, int(idx[0]), spatial, color)
            if n.motion_stats:
                motion.append(self._motion(raw))
        sample["views"] = views
        if n.motion_stats:
            sample["motion"] = torch.tensor(motion, dtype=torch.float32)
        return sample

    def draw_clip(self, vid: str, frames_total: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """A training view's frame indices; a method with its own temporal sampling overrides this (MCL)."""
        return random_clip(frames_total, length, self.needs.stride, rng)

    def draw_box(self, vid: str, idx: np.ndarray, aspect: float, rng: np.random.Generator) -> SpatialParams:
        """A training view's crop and flip, given its frames; a method with its own cropping overrides this (MCL)."""
        return draw_spatial(rng, aspect=aspect, scale=self.scale, flip_p=self.flip_p)

    @property
    def _grid(self) -> tuple[int, int]:
        g = self.size // self.cell
        return g, g

    def _read(self, vid: str, name: str, idx: np.ndarray) -> np.ndarray:
        """One read_at, of increasing unique indices (what both backends read fastest), then expanded."""
        uniq, inverse = np.unique(idx, return_inverse=True)
        arr = self.store.read_at(vid, name, uniq)
        return arr if len(uniq) == len(idx) else arr[inverse]

    def _view(self, vid: str, idx: np.ndarray, spatial: SpatialParams, color: ColorParams | None,
              hw: tuple[int, int], raw: dict[str, np.ndarray] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """The view's tensors, and the raw arrays read for it (mv and mv_valid over all of `idx`, which goes
        past the clip when view 0 carries future_mv); `raw` given: those arrays, not read again."""
        mods, frames = self.needs.modalities, idx[:self.needs.clip_len]
        names = set(mods) | {self.stats_from} - {None}
        if "mv" in names or len(idx) > len(frames):
            names |= {"mv", "mv_valid"}
        if raw is None:
            raw = {name: self._read(vid, name, idx if name in ("mv", "mv_valid") else frames)
                   for name in sorted(names)}
        view: dict = {"frames": torch.from_numpy(frames)}
        if "rgb" in mods:
            view["rgb"] = self._rgb(raw["rgb"], spatial, color)
        if "mv" in mods:
            t = len(frames)
            mv, valid = crop_resize_motion(raw["mv"][:t], spatial, self._grid, frame_hw=hw, cell=self.cell,
                                           valid=raw["mv_valid"][:t])
            view["mv"] = _channels_first(mv)
            view["mv_valid"] = torch.from_numpy(valid[None]).float()
        if "flow" in mods:
            flow = crop_resize_motion(raw["flow"], spatial, (self.size, self.size), frame_hw=hw)
            view["flow"] = _channels_first(flow)
        for name in ("boundary", "edges"):
            if name in mods:
                view[name] = _channels_first(crop_resize_frames(raw[name][..., None], spatial, self.size))
        return view, raw

    def _rgb(self, frames: np.ndarray, spatial: SpatialParams, color: ColorParams | None) -> torch.Tensor:
        x = to_clip_tensor(crop_resize_frames(frames, spatial, self.size))
        return normalize(apply_color(x, color) if color is not None else x)

    def _iframe(self, vid: str, first: int, spatial: SpatialParams, color: ColorParams | None) -> torch.Tensor:
        if vid not in self._iframe_index:
            self._iframe_index[vid] = self.store.read(vid, "iframe_index")
        iframe_index = self._iframe_index[vid]
        k = max(int(np.searchsorted(iframe_index, first, side="right")) - 1, 0)
        return self._rgb(self.store.read_at(vid, "iframes", [k]), spatial, color)[:, 0]

    def _motion(self, raw: dict[str, np.ndarray]) -> float:
        if self.stats_from == "boundary":
            return float(raw["boundary"].astype(np.float32).mean())
        t = self.needs.clip_len
        speed = np.linalg.norm(raw["mv"][:t][raw["mv_valid"][:t]].astype(np.float32), axis=-1)
        return float(speed.mean()) if speed.size else 0.0


def _channels_first(x: np.ndarray) -> torch.Tensor:
    """(T, H, W, C) -> contiguous (C, T, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))
