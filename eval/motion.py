"""`motionssl evaluate motion STORE`: how well each motion representation predicts the next frame (CGM-Net Table 1).

For every frame pair (t, t+1) of the chosen videos, each representation turns frame t into a prediction of frame
t+1, and the error is the mean absolute difference with the true frame t+1, frames normalised to [-1, 1]
(x / 127.5 - 1) as the paper does: over the whole frame (Table 1's l1), and over the interior, `margin` pixels
from each side left out, where content entering the frame cannot come from any warp of frame t. Every row is
measured on the same pairs, at the stored resolution. Each row also has Table 1 (right)'s PSNR and SSIM of the
prediction against the true frame t+1 (whole frame, range 2), means over the pairs.

How each representation predicts frame t+1 from frame t (warps sample bilinearly, coordinates clamped to the frame):
- identity: frame t itself, i.e. no motion. The baseline the others are read against.
- motion vectors: `mv[t+1]` is the displacement of content from t to t+1, on frame t+1's cells, which is exactly
  a backward warp: pred(p) = X_t(p - mv[t+1](p)), each cell's vector over its cell x cell pixels (the codec's own
  motion compensation, up to its residual). Invalid cells (intra blocks, I-frames) count as zero motion; the
  share of pixels with a valid vector is reported.
- flow (the store's, and each `--flow-store`'s, whichever method made it): `flow[t]` is the forward
  displacement t -> t+1 on frame t's pixels; taken at the target pixel, pred(p) = X_t(p - flow[t](p)). Exact for
  locally uniform motion, approximate at motion boundaries (stores hold no backward flow t+1 -> t).
- cgm (`--checkpoint`): CGM-Net's HR motion maps, pred = M_t (x) X_t (eq. 1). Clips of the checkpoint's clip
  length T at stride 1 start every T-1 frames, so that each pair lies inside exactly one clip and is reconstructed
  by an in-clip map (the last clip ends at the last frame); shorter videos repeat their last frame, as training
  clips do. Frames are replicate-padded to multiples of 4 for the network and the maps cropped back.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from motionssl.train.features import load_mapped
from motionssl.pictures import write_png
from motionssl.pictures.figures import motion_error_tiles, motion_l1_bars
from motionssl.stores import Store, open_store
from motionssl.train import checkpoint
from motionssl.train.augment import normalize
from motionssl.train.checkpoint import CheckpointError
from motionssl.train.config import config_from_dict
from motionssl.train.methods.cgm import CGM, dilate_filters, filter_displacement, pixel_adaptive_warp

BLOCK_PAIRS = 32  # pairs read at once when no checkpoint sets the clip length


# -- warps, pure functions ----------------------------------------------------------------------------------------

def to_signed(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1


def backward_warp(frames: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """pred[p] = frames[p - displacement[p]]: (N, C, H, W) and (N, 2, H, W) (dx, dy) in pixels, bilinear, with the
    sampling position clamped to the frame (border replicate)."""
    n, _, h, w = frames.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=frames.dtype, device=frames.device),
                            torch.arange(w, dtype=frames.dtype, device=frames.device), indexing="ij")
    gx = (xs - displacement[:, 0]) * (2 / max(w - 1, 1)) - 1
    gy = (ys - displacement[:, 1]) * (2 / max(h - 1, 1)) - 1
    return F.grid_sample(frames, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def cells_to_pixels(mv: np.ndarray, valid: np.ndarray, hw: tuple[int, int], cell: int) -> tuple[torch.Tensor, float]:
    """(N, Gh, Gw, 2) vectors and (N, Gh, Gw) validity on cells of `cell` px -> (N, 2, H, W) per-pixel displacement
    (invalid cells: 0) and the share of pixels with a valid vector."""
    h, w = hw
    v = np.where(valid[..., None], mv.astype(np.float32), 0)
    v = np.repeat(np.repeat(v, cell, axis=1), cell, axis=2)[:, :h, :w]
    ok = np.repeat(np.repeat(valid, cell, axis=1), cell, axis=2)[:, :h, :w]
    return torch.from_numpy(np.ascontiguousarray(v)).permute(0, 3, 1, 2), float(ok.mean()) if ok.size else 0.0


def clip_blocks(n_frames: int, clip_len: int) -> list[tuple[int, list[int]]]:
    """(first frame, pairs t) of consecutive clips of `clip_len` frames: every pair (t, t+1), t < n_frames - 1,
    lies in exactly one clip; clips start every clip_len - 1 frames, the last one ends at the last frame, and a
    video shorter than a clip is one clip from 0."""
    blocks, t = [], 0
    while t < n_frames - 1:
        start = min(t, max(n_frames - clip_len, 0))
        stop = min(start + clip_len - 1, n_frames - 1)
        blocks.append((start, list(range(t, stop))))
        t = stop
    return blocks


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per pair of (N, C, H, W) frames in [-1, 1]: 10 log10(peak^2 / MSE), peak = 2 (the range), MSE floored at
    1e-10 so that an exact prediction gives 106 dB instead of infinity."""
    mse = ((pred.double() - target.double()) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(4 / mse.clamp(min=1e-10))


def ssim(pred: torch.Tensor, target: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per pair of (N, C, H, W) frames in [-1, 1]: SSIM (Wang et al. 2004) with a Gaussian window (11 px,
    sigma 1.5), K1 0.01, K2 0.03, dynamic range 2, each channel on its own, the mean over channels and the
    positions where the window fits in the frame (scikit-image's `gaussian_weights=True`). A frame smaller than
    the window uses the largest odd window that fits."""
    window = min(window, *(d - (d + 1) % 2 for d in pred.shape[2:]))
    x, y = pred.double(), target.double()
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - window // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    rows, cols = g.view(1, 1, window, 1).expand(c, 1, window, 1), g.view(1, 1, 1, window).expand(c, 1, 1, window)

    def blur(z):  # the 2-D Gaussian as two 1-D passes (it is separable): window / 2 times fewer products
        return F.conv2d(F.conv2d(z, rows.to(z.device), groups=c), cols.to(z.device), groups=c)

    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    # the unbiased (co)variances, as scikit-image: the window's weights sum to 1, the sample count is its area
    n = window * window
    vx, vy, cxy = (v * n / (n - 1) for v in (vx, vy, cxy))
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def pair_errors(pred: torch.Tensor, target: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: (mean |pred - target| over the frame, the same over the interior `margin` px from each side)."""
    err = (pred - target).abs()
    inner = err[:, :, margin:err.shape[2] - margin, margin:err.shape[3] - margin]
    return err.mean(dim=(1, 2, 3)), inner.mean(dim=(1, 2, 3))


# -- the learned representation -------------------------------------------------------------------------------

def load_cgm(path: Path) -> CGM:
    """A `pretrain --method cgm` checkpoint's whole network (backbone, decoder, context extractor, CGMUL), strictly."""
    payload = checkpoint.load(path)
    config = payload.get("config", {})
    if config.get("method") != "cgm":
        raise CheckpointError(f"{path} is a {config.get('method')!r} checkpoint; --checkpoint takes one written by "
                              f"`motionssl pretrain --method cgm`")
    cfg = config_from_dict(config, source=str(path))
    state = payload["method"]
    model = CGM(cfg, total_steps=1, num_classes=state["head.weight"].shape[0] if "head.weight" in state else None)
    report = load_mapped(model, state, key_map={"": ""}, source=str(path))
    if report.missing:
        raise CheckpointError(f"{path}: the CGM-Net state lacks {', '.join(report.missing[:10])}")
    return model.eval()


class LearnedMotion:
    """A CGM-Net checkpoint applied to stored frames: HR motion maps, and their displacement centroids (for `show`)."""

    def __init__(self, path: Path, *, device: str | None = None):
        self.path = Path(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_cgm(self.path).to(self.device)
        self.clip_len = self.model.cfg.clip_len

    @torch.no_grad()
    def maps(self, frames: np.ndarray) -> torch.Tensor:
        """(n <= clip_len, H, W, 3) uint8 consecutive frames -> (n, k_hr^2, H, W) HR maps on the CPU: map i turns
        frame i into frame i+1 (the last one predicts the frame after them)."""
        n, h, w = frames.shape[:3]
        if n > self.clip_len:
            raise ValueError(f"{n} frames for a clip of {self.clip_len}")
        padded = np.concatenate([frames, np.repeat(frames[-1:], self.clip_len - n, axis=0)])
        clip = normalize(torch.from_numpy(padded).permute(3, 0, 1, 2).float().div_(255))
        ph, pw = -h % self.model.scale, -w % self.model.scale
        clip = F.pad(clip, (0, pw, 0, ph), mode="replicate")[None].to(self.device)
        maps = self.model.motion_maps(clip)
        hr = dilate_filters(maps.hr[0].transpose(0, 1)[:n], maps.hr_dilation)  # (n, k^2, H', W')
        return hr[:, :, :h, :w].float().cpu()

    def displacement(self, store: Store, video_id: str, steps: Sequence[int]) -> np.ndarray:
        """(len(steps), H, W, 2) (dx, dy): the centroid of each pixel's filter in map t, from a clip around t."""
        n = int(store.meta(video_id)["frames"])
        out = []
        for t in steps:
            start = min(max(t - (self.clip_len - 1) // 2, 0), max(n - self.clip_len, 0))
            hr = self.maps(store.read(video_id, "rgb", start, min(start + self.clip_len, n)))
            out.append(filter_displacement(hr[t - start: t - start + 1])[0].permute(1, 2, 0).numpy())
        return np.stack(out)


# -- the protocol -----------------------------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    how: str
    whole: list[float] = field(default_factory=list)     # per pair
    interior: list[float] = field(default_factory=list)
    per_video: dict[str, float] = field(default_factory=dict)
    valid: list[float] = field(default_factory=list)     # motion vectors: share of pixels with a vector, per block
    psnr: list[float] = field(default_factory=list)      # per pair, dB (Table 1, right)
    ssim: list[float] = field(default_factory=list)      # per pair


def _flow_name(store: Store, label: str | None = None) -> str:
    method = getattr(getattr(store.spec, "flow", None), "method", "?")
    return f"flow ({method}{', ' + label if label else ''})"


def _check_extra(extra: Store, base: Store, videos: Sequence[str]) -> None:
    if "flow" not in extra.spec.modalities:
        raise ValueError(f"--flow-store {extra.path} (spec {extra.spec.name!r}) holds no flow")
    for vid in videos:
        if vid not in extra:
            raise ValueError(f"--flow-store {extra.path} lacks video {vid!r}; extract the same videos into it")
        a, b = base.meta(vid), extra.meta(vid)
        if (a["frames"], a["stored_height"], a["stored_width"]) != (b["frames"], b["stored_height"], b["stored_width"]):
            raise ValueError(f"--flow-store {extra.path}: video {vid!r} has {b['frames']} frames of "
                             f"{b['stored_width']}x{b['stored_height']}, the store {a['frames']} of "
                             f"{a['stored_width']}x{a['stored_height']}; extract both at the same resolution")


def evaluate_motion(store_path: Path, out: Path, *, checkpoint_path: Path | None = None,
                    flow_stores: Sequence[Path] = (), videos: Sequence[str] | None = None,
                    max_videos: int | None = None, margin: int = 8, progress: bool = True) -> dict:
    """Writes motion.json, motion.md, motion_l1.png and motion_errors.png into `out`; returns the JSON."""
    store = open_store(store_path)
    chosen = list(videos) if videos else list(store.videos)
    missing = [v for v in chosen if v not in store]
    if missing:
        raise ValueError(f"videos not in {store_path}: {', '.join(missing[:5])}; `motionssl info` lists the ids")
    chosen = [v for v in chosen if int(store.meta(v)["frames"]) >= 2][:max_videos]
    if not chosen:
        raise ValueError(f"no video of {store_path} among those chosen has 2 frames or more")
    extras = [open_store(p) for p in flow_stores]
    for extra in extras:
        _check_extra(extra, store, chosen)
    has = set(store.spec.modalities)
    learned = LearnedMotion(checkpoint_path) if checkpoint_path is not None else None
    if not ({"mv", "flow"} & has or extras or learned):
        raise ValueError(f"store {store_path} holds neither mv nor flow: pass --checkpoint or --flow-store")

    rows = {"identity": Row("identity", "frame t itself (no motion)")}
    if "mv" in has:
        rows["mv"] = Row("motion vectors", "X_t(p - mv[t+1](cell of p)), invalid cells as 0")
    if "flow" in has:
        rows["flow"] = Row(_flow_name(store), "X_t(p - flow[t](p)), bilinear")
    for i, extra in enumerate(extras):
        rows[f"extra{i}"] = Row(_flow_name(extra, str(extra.path)), "X_t(p - flow[t](p)), bilinear")
    if learned is not None:
        rows["cgm"] = Row(f"cgm ({checkpoint_path})",
                          f"M_t (x) X_t (eq. 1), in-clip maps of {learned.clip_len}-frame clips")
    clip_len = learned.clip_len if learned is not None else BLOCK_PAIRS + 1
    cell = store.spec.mv.cell
    example: dict = {}
    frame_sizes = set()

    for vid in tqdm(chosen, desc="evaluate motion", unit="video", disable=not progress):
        n = int(store.meta(vid)["frames"])
        sums: dict[str, list[float]] = {key: [] for key in rows}
        for start, pairs in clip_blocks(n, clip_len):
            rgb = store.read(vid, "rgb", start, min(start + clip_len, n))
            h, w = rgb.shape[1:3]
            if 2 * margin >= min(h, w):
                raise ValueError(f"--margin {margin} leaves no interior in {vid!r} ({w}x{h}); lower it")
            frame_sizes.add((w, h))
            frames = to_signed(rgb)
            i = torch.tensor(pairs) - start
            source, target = frames[i], frames[i + 1]
            preds = {"identity": source}
            a, b = pairs[0], pairs[-1] + 1
            if "mv" in rows:
                mv, valid = cells_to_pixels(store.read(vid, "mv", a + 1, b + 1),
                                            store.read(vid, "mv_valid", a + 1, b + 1), (h, w), cell)
                preds["mv"] = backward_warp(source, mv)
                rows["mv"].valid.append(valid)
            if "flow" in rows:
                preds["flow"] = backward_warp(source, _flow(store, vid, a, b))
            for k, extra in enumerate(extras):
                preds[f"extra{k}"] = backward_warp(source, _flow(extra, vid, a, b))
            if learned is not None:
                hr = learned.maps(rgb)
                preds["cgm"] = pixel_adaptive_warp(source, hr[i])
            for key, pred in preds.items():
                whole, inner = pair_errors(pred, target, margin)
                rows[key].whole += whole.tolist()
                rows[key].interior += inner.tolist()
                rows[key].psnr += psnr(pred, target).tolist()
                rows[key].ssim += ssim(pred, target).tolist()
                sums[key] += whole.tolist()
            middle = (n - 1) // 2
            if not example and middle in pairs:
                j = pairs.index(middle)
                example = {"video": vid, "t": middle, "source": rgb[middle - start], "target": rgb[middle - start + 1],
                           "errors": {key: (pred[j] - target[j]).abs().mean(0).numpy() for key, pred in preds.items()}}
        for key, values in sums.items():
            rows[key].per_video[vid] = float(np.mean(values))

    return _report(rows, example, store_path=store_path, out=out, videos=chosen, margin=margin,
                   frame_sizes=sorted(frame_sizes), clip_len=learned.clip_len if learned else None)


def _flow(store: Store, vid: str, first: int, stop: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(store.read(vid, "flow", first, stop), np.float32)).permute(0, 3, 1, 2)


def _report(rows: dict[str, Row], example: dict, *, store_path: Path, out: Path, videos: list[str], margin: int,
            frame_sizes: list, clip_len: int | None) -> dict:
    identity = float(np.mean(rows["identity"].whole))
    table_rows = []
    for key, row in rows.items():
        l1, inner = float(np.mean(row.whole)), float(np.mean(row.interior))
        entry = {"key": key, "name": row.name, "how": row.how, "l1": l1, "l1_interior": inner,
                 "vs_identity": l1 / identity if identity > 0 else None, "pairs": len(row.whole),
                 "psnr": float(np.mean(row.psnr)), "ssim": float(np.mean(row.ssim)),
                 "per_video": row.per_video}
        if row.valid:
            entry["valid_pixels"] = float(np.mean(row.valid))
        table_rows.append(entry)
    out.mkdir(parents=True, exist_ok=True)
    bars = [(r["name"], r["l1"], r["l1_interior"]) for r in table_rows]
    pictures = {"l1_bars": write_png(motion_l1_bars(bars, margin=margin), out / "motion_l1.png")}
    if example:
        names = {r["key"]: r["name"] for r in table_rows}
        tiles = motion_error_tiles(example["source"], example["target"],
                                   {names[k]: e for k, e in example["errors"].items()},
                                   title=f"{example['video']}  t={example['t']} -> {example['t'] + 1}")
        pictures["error_maps"] = write_png(tiles, out / "motion_errors.png")
    result = {"protocol": "motion", "store": str(store_path), "videos": len(videos),
              "pairs": len(rows["identity"].whole), "margin": margin,
              "frame_sizes": [f"{w}x{h}" for w, h in frame_sizes], "cgm_clip_len": clip_len,
              "normalisation": "frames / 127.5 - 1, in [-1, 1]", "rows": table_rows,
              "pictures": {k: str(v) for k, v in pictures.items()}, "video_ids": videos}
    (out / "motion.json").write_text(json.dumps(result, indent=1))
    lines = [f"| representation | l1 (whole frame) | l1 (interior, {margin} px margin) | / identity | PSNR (dB) | SSIM "
             f"| how |", "|---|---|---|---|---|---|---|"]
    for r in table_rows:
        ratio = "-" if r["vs_identity"] is None else f"{r['vs_identity']:.2f}"
        valid = f"; valid vectors on {100 * r['valid_pixels']:.0f}% of pixels" if "valid_pixels" in r else ""
        lines.append(f"| {r['name']} | {r['l1']:.4f} | {r['l1_interior']:.4f} | {ratio} | {r['psnr']:.2f} "
                     f"| {r['ssim']:.4f} | {r['how']}{valid} |")
    table = "\n".join(lines) + f"\n\n{result['pairs']} frame pairs of {len(videos)} videos, frames in [-1, 1].\n"
    (out / "motion.md").write_text(table)
    result["table"] = table
    return result

