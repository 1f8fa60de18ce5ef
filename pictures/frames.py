"""`motionssl show`: a figure (or an animation) of what a store holds for one video.

One row per chosen time step t, columns RGB | motion vectors | flow | motion map | flow edges;
columns whose arrays the video lacks are left out. Drawn with OpenCV and NumPy only.

Colour conventions (the legend under every panel repeats them):
- motion vectors and flow share one HSV convention and one scale: hue = direction (right = red,
  down = yellow-green, left = cyan, up = violet; y points down as in the image), saturation =
  magnitude / max_motion clipped to 1, value = 1. Zero motion is white; a cell with no motion
  vector (intra block, I-frame) is dark grey `INVALID_RGB`. `colour_wheel` draws the key: the
  colour at each point of the wheel is the colour of motion in that direction.
- motion map (MCL boundary) and flow edges: INFERNO colormap; the motion map from 0 to the 99th
  percentile of the frames shown, flow edges on their fixed range [0, edges_clamp] (10).
- I-frames: an orange border and an "I" badge on the RGB tile, and "I" in the row label.
- learned motion (`learned=`, e.g. a CGM-Net checkpoint's `eval.motion.LearnedMotion`): one more column, its
  per-pixel displacement (dx, dy) t -> t+1 in the mv/flow colours and scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

INVALID_RGB = (72, 72, 72)          # no motion vector here: distinct from white (= zero motion)
IFRAME_RGB = (255, 140, 0)          # border and badge of I-frame rows
BACKGROUND_RGB = (24, 24, 24)
TEXT_RGB = (235, 235, 235)
DIM_TEXT_RGB = (170, 170, 170)

# (array name, column title), in display order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("rgb", "RGB"),
    ("mv", "motion vectors (t-1 -> t)"),
    ("flow", "flow (t -> t+1)"),
    ("boundary", "motion map (MCL)"),
    ("edges", "flow edges (MoDist)"),
    ("learned", "learned motion (t -> t+1)"),  # not a store array: drawn when render_panel gets `learned`
)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.42
_LINE = 16        # text line height in px
_GAP = 4          # between tiles
_MARGIN = 8
_WHEEL = 88       # legend colour wheel diameter
_NICE = (1, 1.5, 2, 3, 4, 5, 6, 8)
MOTION_PERCENTILE = 95  # default mv/flow saturation: larger motions saturate (their hue still shows direction)


# -- colour convention --------------------------------------------------------------------------
def motion_to_rgb(vectors: np.ndarray, valid: np.ndarray | None = None, *, max_motion: float) -> np.ndarray:
    """(..., 2) motion (dx, dy) in px -> (..., 3) uint8 RGB; hue = direction, saturation = |v| / max_motion."""
    v = np.nan_to_num(np.asarray(vectors, np.float32))
    if v.shape[-1] != 2:
        raise ValueError(f"expected (..., 2) motion vectors, got shape {v.shape}")
    if max_motion <= 0:
        raise ValueError(f"max_motion must be > 0, got {max_motion}")
    dx, dy = v[..., 0], v[..., 1]
    hue = np.degrees(np.arctan2(dy, dx)) % 360.0
    sat = np.clip(np.hypot(dx, dy) / max_motion, 0.0, 1.0)
    hsv = np.stack([hue, sat, np.ones_like(sat)], axis=-1).astype(np.float32).reshape(-1, 1, 3)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(v.shape[:-1] + (3,))
    out = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    if valid is not None:
        out[~np.asarray(valid, bool)] = INVALID_RGB
    return out


def colour_wheel(size: int, *, background: tuple[int, int, int] = BACKGROUND_RGB) -> np.ndarray:
    """(size, size, 3) uint8 key of `motion_to_rgb`: the rim is motion of max_motion in that direction."""
    r = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    vec = np.stack([(xx - r) / r, (yy - r) / r], axis=-1)
    img = motion_to_rgb(vec, max_motion=1.0)
    img[np.hypot(vec[..., 0], vec[..., 1]) > 1.0] = background
    return img


def scalar_to_rgb(values: np.ndarray, *, vmax: float) -> np.ndarray:
    """(H, W) non-negative map -> (H, W, 3) uint8 RGB with the INFERNO colormap over [0, vmax]."""
    v = np.nan_to_num(np.asarray(values, np.float32))
    u8 = np.clip(np.rint(v / max(vmax, 1e-12) * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


# -- choosing what to show ----------------------------------------------------------------------
def choose_steps(n_frames: int, *, count: int = 4) -> list[int]:
    """`count` evenly spaced frame indices; skips t=0 (mv[0] is always invalid) and the last
    frame (no t+1 for flow) when there are enough frames, else every frame."""
    if n_frames <= 0 or count <= 0:
        return []
    if n_frames <= count:
        return list(range(n_frames))
    if count == 1:
        return [n_frames // 2]
    hi = n_frames - 2 if n_frames - 2 >= count else n_frames - 1
    return sorted({int(round(x)) for x in np.linspace(1, hi, count)})


def panel_columns(store, video_id: str) -> list[str]:
    """Array names of the columns drawn for this video (those of COLUMNS the video holds)."""
    _check_video(store, video_id)
    have = store.arrays(video_id)
    return [name for name, _ in COLUMNS if name in have]


def _check_video(store, video_id: str) -> None:
    if video_id not in store:
        some = ", ".join(store.videos[:3]) + (", ..." if len(store) > 3 else "")
        raise ValueError(f"video {video_id!r} is not in store {store.path} ({len(store)} videos: {some or 'none'})")


def _check_steps(steps: list[int], n_frames: int, video_id: str) -> None:
    bad = [t for t in steps if not 0 <= t < n_frames]
    if bad:
        raise ValueError(f"step {bad[0]} is out of range for video {video_id!r} with {n_frames} frames (0..{n_frames - 1})")


def _n_frames(store, video_id: str, columns: list[str]) -> int:
    frames = store.meta(video_id).get("frames")
    return int(frames) if frames is not None else int(store.arrays(video_id)[columns[0]][0][0])


def _nice_ceil(x: float) -> float:
    """The smallest 'nice' number (1, 1.5, 2, 3, 4, 5, 6, 8 times a power of ten) >= x."""
    if x <= 0:
        return 1.0
    p = 10.0 ** math.floor(math.log10(x))
    return next((n * p for n in _NICE if n * p >= x * (1 - 1e-9)), 10 * p)


def _frame_types(store, video_id: str, n_frames: int, have: dict) -> np.ndarray:
    if "frame_type" in have:
        return np.array([chr(c) for c in store.read(video_id, "frame_type")])
    types = np.full(n_frames, "?")
    if "iframe_index" in have:
        types[store.read(video_id, "iframe_index")] = "I"
    return types


# -- the per-step data and the scales -----------------------------------------------------------
@dataclass
class _Scales:
    motion: float           # px at which mv and flow saturate
    motion_from: str        # how `motion` was chosen, for the legend
    boundary: float         # motion map value at the top of its colormap
    edges: float            # flow edges value at the top of its colormap (fixed)
    over: str               # which frames the data-driven scales come from, for the legend


def _read_steps(store, video_id: str, columns: list[str], steps: list[int], learned=None) -> dict[str, np.ndarray]:
    data = {name: store.read_at(video_id, name, steps) for name in columns if name != "learned"}
    if learned is not None:
        data["learned"] = learned.displacement(store, video_id, steps)
    if "mv" in columns:
        have = store.arrays(video_id)
        data["mv_valid"] = (store.read_at(video_id, "mv_valid", steps) if "mv_valid" in have
                            else np.ones(data["mv"].shape[:-1], bool))
    return data


def _scales(store, data: dict[str, np.ndarray], max_motion: float | None, *, over: str = "the frames shown") -> _Scales:
    if max_motion is None:
        mags = []
        if "mv" in data:
            mags.append(np.hypot(*np.moveaxis(data["mv"].astype(np.float32), -1, 0))[data["mv_valid"]])
        for name in ("flow", "learned"):
            if name in data:
                mags.append(np.hypot(*np.moveaxis(data[name].astype(np.float32), -1, 0)).ravel())
        mags = np.concatenate(mags) if mags else np.zeros(0)
        mags = mags[np.isfinite(mags)]
        max_motion = _nice_ceil(float(np.percentile(mags, MOTION_PERCENTILE))) if mags.size else 1.0
        motion_from = f"{MOTION_PERCENTILE}th percentile of |motion| over {over}, rounded up"
    else:
        motion_from = "set by the caller"
    boundary = 1.0
    if "boundary" in data:
        b = np.nan_to_num(data["boundary"].astype(np.float32))
        boundary = float(np.percentile(b, 99)) if b.size else 1.0
        boundary = boundary if boundary > 0 else 1.0
    edges = float(getattr(getattr(store.spec, "flow", None), "edges_clamp", 10.0) or 10.0)
    return _Scales(float(max_motion), motion_from, boundary, edges, over)


def _upsample_grid(grid: np.ndarray, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Nearest-neighbour (Gh, Gw, ...) -> (H, W, ...): cell (i, j) covers [i*cell, (i+1)*cell)."""
    h, w = shape
    if grid.shape[0] * cell >= h and grid.shape[1] * cell >= w:
        return np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)[:h, :w]
    iy = np.minimum(np.arange(h) * grid.shape[0] // h, grid.shape[0] - 1)
    ix = np.minimum(np.arange(w) * grid.shape[1] // w, grid.shape[1] - 1)
    return grid[iy][:, ix]


def _tiles(data: dict[str, np.ndarray], i: int, columns: list[str], size: tuple[int, int], cell: int,
           scales: _Scales) -> dict[str, np.ndarray]:
    """RGB tiles (at the stored size) of step number i for every column."""
    out = {}
    for name in columns:
        x = data[name][i]
        if name == "rgb":
            out[name] = np.ascontiguousarray(x, np.uint8)
        elif name == "mv":
            vec = _upsample_grid(x.astype(np.float32), size, cell)
            ok = _upsample_grid(data["mv_valid"][i], size, cell)
            out[name] = motion_to_rgb(vec, ok, max_motion=scales.motion)
        elif name in ("flow", "learned"):
            out[name] = motion_to_rgb(x, max_motion=scales.motion)
        else:
            out[name] = scalar_to_rgb(x, vmax=scales.boundary if name == "boundary" else scales.edges)
        if out[name].shape[:2] != size:
            out[name] = cv2.resize(out[name], size[::-1], interpolation=cv2.INTER_NEAREST)
    return out


# -- drawing ------------------------------------------------------------------------------------
def _text_width(text: str) -> int:
    return cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0]


def _put(img: np.ndarray, text: str, x: int, y: int, colour=TEXT_RGB) -> None:
    """Text with its baseline at y."""
    cv2.putText(img, text, (x, y), _FONT, _FONT_SCALE, colour, 1, cv2.LINE_AA)


def _mark_iframe(tile: np.ndarray) -> np.ndarray:
    tile = tile.copy()
    h, w = tile.shape[:2]
    t = max(2, min(h, w) // 40)
    cv2.rectangle(tile, (0, 0), (w - 1, h - 1), IFRAME_RGB, t)
    side = min(18, h - 2 * t, w - 2 * t)
    if side >= 8:
        cv2.rectangle(tile, (t, t), (t + side, t + side), IFRAME_RGB, -1)
        cv2.putText(tile, "I", (t + side // 2 - 3, t + side - 4), _FONT, _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def _colorbar(width: int, height: int) -> np.ndarray:
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    return scalar_to_rgb(ramp, vmax=1.0)


def _legend_lines(columns: list[str], scales: _Scales, any_iframe: bool) -> list[tuple[str, str]]:
    """(kind, text) lines; kind 'boundary'/'edges' get a colorbar drawn before the text."""
    lines = []
    if {"mv", "flow", "learned"} & set(columns):
        which = " and ".join(t for n, t in (("mv", "motion vectors"), ("flow", "flow"), ("learned", "learned motion"))
                             if n in columns)
        lines += [
            ("text", f"{which}: hue = direction (wheel; red = rightward, y points down), saturation = magnitude"),
            ("text", f"saturates at {scales.motion:g} px per frame, stored pixels ({scales.motion_from})"),
            ("text", "white = zero motion" + (", dark grey = no motion vector (intra block / I-frame)"
                                              if "mv" in columns else "")),
        ]
    if "learned" in columns:
        lines.append(("text", "learned motion: centroid of each pixel's CGM-Net filter (its positive taps), in pixels"))
    if "boundary" in columns:
        lines.append(("boundary", f"motion map: 0 .. {scales.boundary:.3g} (99th percentile over {scales.over})"))
    if "edges" in columns:
        lines.append(("edges", f"flow edges: 0 .. {scales.edges:g} (fixed range)"))
    if any_iframe:
        lines.append(("iframe", "I-frame (orange border, 'I' badge)"))
    return lines


def _legend(columns: list[str], scales: _Scales, any_iframe: bool) -> np.ndarray:
    lines = _legend_lines(columns, scales, any_iframe)
    wheel = bool({"mv", "flow", "learned"} & set(columns))
    bar_w = 60
    x0 = (_WHEEL + 2 * _MARGIN) if wheel else 0
    width = x0 + max([_text_width(t) + bar_w + 8 for _, t in lines] + [0]) + _MARGIN
    height = max(_WHEEL + 2 * _LINE if wheel else 0, len(lines) * (_LINE + 4) + 8)
    img = np.full((height, width, 3), BACKGROUND_RGB, np.uint8)
    if wheel:
        img[_LINE: _LINE + _WHEEL, _MARGIN: _MARGIN + _WHEEL] = colour_wheel(_WHEEL)
        c = _MARGIN + _WHEEL // 2
        _put(img, "up", c - 7, _LINE - 4, DIM_TEXT_RGB)
        _put(img, "down", c - 15, _LINE + _WHEEL + 13, DIM_TEXT_RGB)
    for k, (kind, text) in enumerate(lines):
        y = 6 + (k + 1) * (_LINE + 4) - 4
        x = x0
        if kind in ("boundary", "edges"):
            img[y - 10: y, x: x + bar_w] = _colorbar(bar_w, 10)
            x += bar_w + 8
        elif kind == "iframe":
            cv2.rectangle(img, (x, y - 11), (x + 14, y), IFRAME_RGB, 2)
            x += 22
        _put(img, text, x, y)
    return img


def _stack(parts: list[np.ndarray], *, axis: int, gap: int = 0) -> np.ndarray:
    """Stack images along axis 0 (rows) or 1 (columns), padding the other side with background."""
    other = 1 - axis
    size = max(p.shape[other] for p in parts)
    padded = []
    for k, p in enumerate(parts):
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[other] = (0, size - p.shape[other])
        padded.append(_pad(p, pad))
        if gap and k < len(parts) - 1:
            shape = [0, 0, 3]
            shape[axis], shape[other] = gap, size
            padded.append(np.full(shape, BACKGROUND_RGB, np.uint8))
    return np.concatenate(padded, axis=axis)


def _pad(img: np.ndarray, pad) -> np.ndarray:
    out = np.empty((img.shape[0] + sum(pad[0]), img.shape[1] + sum(pad[1]), 3), np.uint8)
    out[:] = BACKGROUND_RGB
    out[pad[0][0]: pad[0][0] + img.shape[0], pad[1][0]: pad[1][0] + img.shape[1]] = img
    return out


def _text_band(lines: list[str], width: int, *, colour=TEXT_RGB) -> np.ndarray:
    width = max([width] + [_text_width(t) + 2 * _MARGIN for t in lines])
    band = np.full((len(lines) * _LINE + 6, width, 3), BACKGROUND_RGB, np.uint8)
    for k, t in enumerate(lines):
        _put(band, t, _MARGIN, (k + 1) * _LINE, colour)
    return band


def _zoom(short_side: int) -> int:
    """Integer nearest-neighbour zoom so the short side reaches ~128 px (at most 4x)."""
    return 1 if short_side >= 128 else min(4, math.ceil(128 / max(short_side, 1)))


@dataclass
class _Video:
    """What every frame of one video's figure shares."""

    video_id: str
    columns: list[str]
    types: np.ndarray
    size: tuple[int, int]   # stored (H, W)
    cell: int
    zoom: int
    n_frames: int
    edges_gap: int


def _video(store, video_id: str, learned=None) -> _Video:
    _check_video(store, video_id)
    columns = panel_columns(store, video_id) + (["learned"] if learned is not None else [])
    if not columns:
        raise ValueError(f"video {video_id!r} holds none of the arrays show draws ({', '.join(n for n, _ in COLUMNS)})")
    have = store.arrays(video_id)
    n = _n_frames(store, video_id, columns)
    meta = store.meta(video_id)
    pixel = next((c for c in columns if c not in ("mv", "learned")), None)
    if pixel is not None:
        size = tuple(int(s) for s in have[pixel][0][1:3])
    else:
        size = (int(meta["stored_height"]), int(meta["stored_width"]))
    cell = int(getattr(getattr(store.spec, "mv", None), "cell", 4))
    gap = int(getattr(getattr(store.spec, "flow", None), "edges_gap", 5))
    return _Video(video_id, columns, _frame_types(store, video_id, n, have), size, cell, _zoom(min(size)), n, gap)


def _grid(v: _Video, data: dict[str, np.ndarray], steps: list[int], scales: _Scales,
          ) -> tuple[np.ndarray, dict[tuple[int, str], tuple[int, int, int, int]]]:
    """Column headers and one row per step; boxes[(t, column)] = (y0, x0, y1, x1) of each tile."""
    th, tw = v.size[0] * v.zoom, v.size[1] * v.zoom
    labels = [f"t={t} {v.types[t]}" for t in steps]
    label_w = max(_text_width(s) for s in labels + ["t=0000 P"]) + 2 * _MARGIN
    header_h = _LINE + 8
    width = label_w + len(v.columns) * (tw + _GAP)
    height = header_h + len(steps) * (th + _GAP)
    img = np.full((height, width, 3), BACKGROUND_RGB, np.uint8)
    titles = {**dict(COLUMNS), "edges": f"flow edges (t -> t-{v.edges_gap})"}
    for j, name in enumerate(v.columns):
        title = titles[name]
        while _text_width(title) > tw and len(title) > 3:  # narrow tiles: shorten, do not overflow
            title = title[:-2] + "."
        _put(img, title, label_w + j * (tw + _GAP), header_h - 8)
    boxes = {}
    for i, t in enumerate(steps):
        y = header_h + i * (th + _GAP)
        colour = IFRAME_RGB if v.types[t] == "I" else TEXT_RGB
        _put(img, labels[i], _MARGIN, y + th // 2 + 5, colour)
        tiles = _tiles(data, i, v.columns, v.size, v.cell, scales)
        for j, name in enumerate(v.columns):
            tile = tiles[name]
            if v.zoom > 1:
                tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_NEAREST)
            if name == "rgb" and v.types[t] == "I":
                tile = _mark_iframe(tile)
            x = label_w + j * (tw + _GAP)
            img[y: y + th, x: x + tw] = tile
            boxes[(t, name)] = (y, x, y + th, x + tw)
    return img, boxes


def _title(store, v: _Video, steps: list[int]) -> list[str]:
    meta = store.meta(v.video_id)
    fps = meta.get("fps")
    bits = [f"{v.n_frames} frames"] + ([f"{fps:.4g} fps"] if fps else []) + \
           ([str(meta["codec"])] if meta.get("codec") else []) + [f"stored {v.size[1]}x{v.size[0]}"]
    if v.zoom > 1:
        bits.append(f"shown {v.zoom}x (nearest)")
    kinds = ", ".join(f"t={t} {v.types[t]}" for t in steps)
    return [f"{v.video_id}  ({', '.join(bits)})", f"rows: {kinds}"]


def _compose(store, v: _Video, data: dict[str, np.ndarray], steps: list[int], scales: _Scales, *,
             iframe_key: bool | None = None) -> tuple[np.ndarray, dict[tuple[int, str], tuple[int, int, int, int]]]:
    grid, boxes = _grid(v, data, steps, scales)
    title = _text_band(_title(store, v, steps), grid.shape[1])
    if iframe_key is None:
        iframe_key = any(v.types[t] == "I" for t in steps)
    legend = _legend(v.columns, scales, iframe_key)
    image = _stack([title, grid, legend], axis=0, gap=_GAP)
    dy = title.shape[0] + _GAP
    return image, {k: (y0 + dy, x0, y1 + dy, x1) for k, (y0, x0, y1, x1) in boxes.items()}


# -- public entry points ------------------------------------------------------------------------
def render_panel_with_boxes(store, video_id: str, *, steps: list[int] | None = None, count: int = 4,
                            max_motion: float | None = None, learned=None,
                            ) -> tuple[np.ndarray, dict[tuple[int, str], tuple[int, int, int, int]]]:
    """`render_panel`, plus where each tile is: boxes[(t, array name)] = (y0, x0, y1, x1)."""
    v = _video(store, video_id, learned)
    steps = choose_steps(v.n_frames, count=count) if steps is None else [int(t) for t in steps]
    if not steps:
        raise ValueError(f"no time steps to show for video {video_id!r} ({v.n_frames} frames)")
    _check_steps(steps, v.n_frames, video_id)
    data = _read_steps(store, video_id, v.columns, steps, learned)
    return _compose(store, v, data, steps, _scales(store, data, max_motion))


def render_panel(store, video_id: str, *, steps: list[int] | None = None, count: int = 4,
                 max_motion: float | None = None, learned=None) -> np.ndarray:
    """(H, W, 3) uint8 RGB figure: one row per step, one column per modality the video holds, a legend.

    steps default to `choose_steps(frames, count=count)`; max_motion (px) defaults to the 99th
    percentile of the mv and flow magnitudes shown, rounded up to a nice number. `learned`: an object whose
    `displacement(store, video_id, steps)` gives (len(steps), H, W, 2) motion t -> t+1, drawn as one more column.
    """
    return render_panel_with_boxes(store, video_id, steps=steps, count=count, max_motion=max_motion,
                                   learned=learned)[0]


def write_video(store, video_id: str, path: str | Path, *, fps: float | None = None,
                max_motion: float | None = None, block: int = 64, learned=None) -> int:
    """An H.264 mp4 with one frame per time step t (one row, the panel's columns); returns T.

    The scales are fixed for the whole video: max_motion and the motion map's top come from up
    to 64 evenly spaced frames.
    """
    import av

    v = _video(store, video_id, learned)
    if v.n_frames == 0:
        raise ValueError(f"video {video_id!r} has no frames")
    sample = choose_steps(v.n_frames, count=min(64, v.n_frames))
    scales = _scales(store, _read_steps(store, video_id, v.columns, sample, learned), max_motion,
                     over=f"{len(sample)} frames sampled from the video")
    fps = fps or store.meta(video_id).get("fps") or 25.0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = None
        for start in range(0, v.n_frames, block):
            steps = list(range(start, min(start + block, v.n_frames)))
            data = _read_steps(store, video_id, v.columns, steps, learned)
            for i, t in enumerate(steps):
                one = {k: a[i: i + 1] for k, a in data.items()}
                image = _compose(store, v, one, [t], scales, iframe_key=bool((v.types == "I").any()))[0]
                if stream is None:
                    h, w = image.shape[0] + image.shape[0] % 2, image.shape[1] + image.shape[1] % 2
                    stream = container.add_stream("libx264", rate=Fraction(float(fps)).limit_denominator(1001))
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                    stream.options = {"crf": "20"}
                image = image[:h, :w]  # every frame has the same layout; never let one grow the video
                image = _pad(image, [(0, h - image.shape[0]), (0, w - image.shape[1]), (0, 0)])
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return v.n_frames
