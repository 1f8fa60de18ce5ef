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
    ColorParams, SpatialParams, center_params, color_vector, crop_resize_clip, crop_resize_motion, draw_color,
    draw_spatial, eval_crops, finish_rgb,
)
from motionssl.train.sampling import clip_at, clip_span, evenly_spaced_starts, random_start

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
    future_stride: the stride of the future_mv frames; 0 = the clip stride.
    future_offset: the first future_mv frame minus view 0's last frame; None = future_stride (the next one).
        Zero or negative puts the window inside the clip (CMD's "current motion" ablation).
    mv_negatives: more windows of mv from the same video, shaped like future_mv, not overlapping it where the video
        is long enough, each with its own crop and flip (CMD's hard negatives).
    iframe_window: the I-frame is a random one within [first - w, last + w] of view 0's frames (the last one at
        or before the first frame when there is none), with its own crop, flip and colour (CMD's code).
    """

    modalities: tuple[str, ...] = ("rgb",)
    clip_len: int = 16
    stride: int = 4
    views: int = 1
    future_mv: int = 0
    iframe: bool = False
    motion_stats: bool = False
    future_stride: int = 0
    future_offset: int | None = None
    mv_negatives: int = 0
    iframe_window: int | None = None

    def __post_init__(self):
        unknown = [m for m in self.modalities if m not in CLIP_MODALITIES]
        if unknown:
            raise ValueError(f"unknown clip modalities {unknown}; known: {list(CLIP_MODALITIES)}")
        if self.clip_len < 1 or self.stride < 1 or self.views < 1 or self.future_mv < 0:
            raise ValueError(f"need clip_len, stride, views >= 1 and future_mv >= 0: {self}")
        if self.future_stride < 0 or self.mv_negatives < 0 or (self.iframe_window or 0) < 0:
            raise ValueError(f"need future_stride, mv_negatives, iframe_window >= 0: {self}")
        if self.mv_negatives and not self.future_mv:
            raise ValueError("mv_negatives are shaped like future_mv: set future_mv > 0")
        if self.future_mv and self.future_window()[0] < 0:
            raise ValueError(f"the future_mv window starts before view 0's first frame: {self}")

    def future_window(self) -> np.ndarray:
        """(future_mv,) offsets of the future_mv frames from view 0's first frame."""
        step = self.future_stride or self.stride
        offset = step if self.future_offset is None else self.future_offset
        return self.stride * (self.clip_len - 1) + offset + step * np.arange(self.future_mv, dtype=np.int64)

    def view0_span(self) -> int:
        """Frames from view 0's first frame to its last frame read, future_mv included."""
        last = self.stride * (self.clip_len - 1)
        return max(last, int(self.future_window().max(initial=last))) + 1


def _required(store: Store, needs: Needs) -> list[str]:
    """Store modalities (spec names) that `needs` reads, in a stable order."""
    want = list(needs.modalities)
    want += ["mv"] * (needs.future_mv > 0) + ["iframes"] * (needs.iframe or needs.iframe_window is not None)
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


def finish_batch(batch):
    """Finish the RGB of a sample or collated batch, in place, on whatever device it now is: each uint8 tensor `X`
    that has a `X_color` beside it (views' `rgb`, `iframe`) becomes the float32 colour-augmented, ImageNet-normalised
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
            span = n.view0_span() if v == 0 else clip_span(n.clip_len, n.stride)  # view 0 reads its future too
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
            if v == 0 and n.future_mv:
                future = start + n.future_window()
                idx = np.concatenate([idx, np.minimum(future, frames_total - 1)])
            view, raw = self._view(vid, idx, spatial, color, hw)
            views.append(view)
            if not self.train:
                for crop in others:  # the other test crops of the same frames
                    views.append(self._view(vid, idx, crop, None, hw, raw=raw)[0])
            if v == 0 and n.future_mv:
                sample["future_mv"], sample["future_mv_valid"] = self._motion_window(
                    raw["mv"][n.clip_len:], raw["mv_valid"][n.clip_len:], future < frames_total, spatial, hw)
            if v == 0 and n.iframe:
                sample["iframe"], sample["iframe_color"] = self._iframe(vid, int(idx[0]), spatial, color)
            if n.motion_stats:
                motion.append(self._motion(raw))
        sample["views"] = views
        if n.motion_stats:
            sample["motion"] = torch.tensor(motion, dtype=torch.float32)
        first, last = int(views[0]["frames"][0]), int(views[0]["frames"][-1])
        if n.mv_negatives:
            sample["negative_mv"], sample["negative_mv_valid"], sample["negative_frames"] = self._negatives(
                vid, first + n.future_window(), frames_total, hw, aspect, rng)
        if n.iframe_window is not None:
            sample["iframe"], sample["iframe_color"], sample["iframe_frame"] = self._iframe_near(
                vid, first, last, hw, aspect, rng)
        return sample

    def draw_start(self, vid: str, frames_total: int, span: int, rng: np.random.Generator) -> int:
        """A training view's first frame, for `span` frames from it; a method with its own temporal sampling
        overrides this (MCL, MoDist)."""
        return random_start(frames_total, span, rng)

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
            view["rgb"], view["rgb_color"] = self._rgb(raw["rgb"], spatial, color)
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
                view[name] = torch.from_numpy(crop_resize_clip(raw[name][..., None], spatial, self.size))
        return view, raw

    def _rgb(self, frames: np.ndarray, spatial: SpatialParams,
             color: ColorParams | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, T, S, S) uint8 and its colour vector: `finish_batch` turns them into the normalised clip."""
        return torch.from_numpy(crop_resize_clip(frames, spatial, self.size)), color_vector(color)

    def _iframes_of(self, vid: str) -> np.ndarray:
        if vid not in self._iframe_index:
            self._iframe_index[vid] = self.store.read(vid, "iframe_index")
        return self._iframe_index[vid]

    def _iframe(self, vid: str, first: int, spatial: SpatialParams,
                color: ColorParams | None) -> tuple[torch.Tensor, torch.Tensor]:
        k = max(int(np.searchsorted(self._iframes_of(vid), first, side="right")) - 1, 0)
        rgb, vector = self._rgb(self.store.read_at(vid, "iframes", [k]), spatial, color)
        return rgb[:, 0], vector

    def _iframe_near(self, vid: str, first: int, last: int, hw: tuple[int, int], aspect: float,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """A random I-frame within [first - w, last + w] (train; eval: the middle one), its own crop and colour;
        and its frame index."""
        iframe_index, w = self._iframes_of(vid), self.needs.iframe_window
        near = np.flatnonzero((iframe_index >= first - w) & (iframe_index <= last + w))
        if not len(near):
            near = [max(int(np.searchsorted(iframe_index, first, side="right")) - 1, 0)]
        if self.train:
            k = int(near[rng.integers(len(near))])
            spatial = draw_spatial(rng, aspect=aspect, scale=self.scale, flip_p=self.flip_p)
            color = draw_color(rng)
        else:
            k, spatial, color = int(near[len(near) // 2]), center_params(aspect), None
        rgb, vector = self._rgb(self.store.read_at(vid, "iframes", [k]), spatial, color)
        return rgb[:, 0], vector, int(iframe_index[k])

    def _motion_window(self, mv: np.ndarray, valid: np.ndarray, inside: np.ndarray, spatial: SpatialParams,
                       hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(2, F, g, g) mv and (1, F, g, g) validity of raw (F, Gh, Gw, .) frames; frames not `inside` the video
        (read clamped to its last frame) are invalid."""
        mv, valid = crop_resize_motion(mv, spatial, self._grid, frame_hw=hw, cell=self.cell, valid=valid)
        valid &= inside[:, None, None]
        return _channels_first(mv), torch.from_numpy(valid[None]).float()

    def _negatives(self, vid: str, target: np.ndarray, frames_total: int, hw: tuple[int, int], aspect: float,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mv_negatives windows shaped like `target` (its frame indices, unclamped), each starting uniformly among
        the starts whose window fits and does not overlap the target's; any start that fits when none does.
        Returns mv (N, 2, F, g, g), mv_valid (N, 1, F, g, g) and the frames (N, F), unclamped."""
        offsets = target - target[0]
        span = int(offsets[-1]) + 1
        starts = np.arange(max(frames_total - span, 0) + 1)
        apart = starts[(starts + span <= target[0]) | (starts > target[-1])]
        starts = apart if len(apart) else starts
        mvs, valids, windows = [], [], []
        for _ in range(self.needs.mv_negatives):
            frames = int(starts[rng.integers(len(starts))]) + offsets
            windows.append(frames)
            spatial = draw_spatial(rng, aspect=aspect, scale=self.scale, flip_p=self.flip_p) if self.train \
                else center_params(aspect)
            read = np.minimum(frames, frames_total - 1)
            mv, valid = self._motion_window(self._read(vid, "mv", read), self._read(vid, "mv_valid", read),
                                            frames < frames_total, spatial, hw)
            mvs.append(mv)
            valids.append(valid)
        return torch.stack(mvs), torch.stack(valids), torch.from_numpy(np.stack(windows))

    def _motion(self, raw: dict[str, np.ndarray]) -> float:
        if self.stats_from == "boundary":
            return float(raw["boundary"].astype(np.float32).mean())
        t = self.needs.clip_len
        speed = np.linalg.norm(raw["mv"][:t][raw["mv_valid"][:t]].astype(np.float32), axis=-1)
        return float(speed.mean()) if speed.size else 0.0


def _channels_first(x: np.ndarray) -> torch.Tensor:
    """(T, H, W, C) -> contiguous (C, T, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))
