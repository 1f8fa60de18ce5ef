"""Evaluation pictures drawn with OpenCV (BGR images, as `train.curves`): R@k curve, retrieval grid, confusion
matrix, and training curves of several runs overlaid."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from motionssl.stores import Store
from motionssl.pictures.curves import AXIS, BACKGROUND, FONT, GRID

HIT = (60, 170, 60)       # BGR green: a neighbour of the query's class
MISS = (50, 50, 210)      # BGR red
# Run colours of overlaid curves (BGR, the Tableau 10 palette).
PALETTE = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
           (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.4, colour=(0, 0, 0)) -> None:
    cv2.putText(img, text, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def recall_curve(recall: dict[int, float], *, title: str = "retrieval R@k", size=(420, 300)) -> np.ndarray:
    """R@k against k (evenly spaced), y from 0 to 1, each point labelled with its value."""
    w, h = size
    left, right, top, bottom = 44, 20, 28, 34
    img = np.full((h, w, 3), BACKGROUND, np.uint8)
    _text(img, title, left, 18, 0.5)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = int(top + (1 - frac) * (h - top - bottom))
        cv2.line(img, (left, y), (w - right, y), GRID, 1)
        _text(img, f"{frac:.2f}", 4, y + 4, 0.35)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), AXIS, 1)
    ks = sorted(recall)
    xs = [int(left + (i + 0.5) / len(ks) * (w - left - right)) for i in range(len(ks))]
    ys = [int(top + (1 - recall[k]) * (h - top - bottom)) for k in ks]
    cv2.polylines(img, [np.array(list(zip(xs, ys)), np.int32)], False, PALETTE[0], 2, cv2.LINE_AA)
    for k, x, y in zip(ks, xs, ys):
        cv2.circle(img, (x, y), 4, PALETTE[0], -1, cv2.LINE_AA)
        _text(img, f"{100 * recall[k]:.1f}", x - 14, y - 8 if y - 8 > top + 12 else y + 18, 0.35)
        _text(img, f"R@{k}", x - 14, h - bottom + 16, 0.4)
    return img


def _frame(store: Store, vid: str, tile: int) -> np.ndarray:
    """The video's middle frame, resized to a tile-high BGR image."""
    rgb = store.read_at(vid, "rgb", [store.meta(vid)["frames"] // 2])[0]
    h, w = rgb.shape[:2]
    return cv2.resize(rgb[..., ::-1], (max(1, round(w * tile / h)), tile), interpolation=cv2.INTER_AREA)


def _boxed(frame: np.ndarray, colour, label: str, width: int) -> np.ndarray:
    """The frame on a white cell `width` wide, a 3-px border of `colour`, the label under it."""
    h = frame.shape[0]
    cell = np.full((h + 26, width, 3), BACKGROUND, np.uint8)
    f = frame[:, :width - 6]
    cell[3:3 + h, 3:3 + f.shape[1]] = f
    cv2.rectangle(cell, (1, 1), (f.shape[1] + 4, h + 4), colour, 3)
    _text(cell, label[: max(4, width // 7)], 3, h + 19, 0.38)
    return cell


def retrieval_grid(store: Store, queries: Sequence[str], query_labels: Sequence[int], neighbours: np.ndarray,
                   gallery: Sequence[str], gallery_labels: Sequence[int], classes: Sequence[str], *,
                   rows: int = 8, top: int = 5, tile: int = 72) -> np.ndarray:
    """One row per query (evenly chosen among all): its frame (grey border) then its `top` nearest gallery videos'
    frames, green when of the query's class, red otherwise; class names under every frame."""
    chosen = np.unique(np.linspace(0, len(queries) - 1, min(rows, len(queries))).round().astype(int))
    width = max(_frame(store, queries[0], tile).shape[1] + 6, 90)
    lines = []
    for q in chosen:
        cells = [_boxed(_frame(store, queries[q], tile), AXIS, f"q: {classes[query_labels[q]]}", width)]
        for n in neighbours[q, :top]:
            hit = gallery_labels[n] == query_labels[q]
            cells.append(_boxed(_frame(store, gallery[n], tile), HIT if hit else MISS, classes[gallery_labels[n]],
                                width))
        lines.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(lines, axis=0)
    header = np.full((24, grid.shape[1], 3), BACKGROUND, np.uint8)
    _text(header, f"query | top-{top} train neighbours (green: same class)", 4, 16, 0.45)
    return np.concatenate([header, grid], axis=0)


def confusion_image(matrix: np.ndarray, classes: Sequence[str], *, side: int = 480) -> np.ndarray:
    """Rows = true class, columns = predicted, shaded by the row-normalised count; names when they fit."""
    c = len(classes)
    cell = max(2, side // c)
    named = cell >= 12
    margin = 110 if named else 8
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    shade = (255 - 200 * rates).astype(np.uint8)
    board = np.repeat(np.repeat(shade, cell, axis=0), cell, axis=1)
    board = np.stack([np.full_like(board, 255), board, board], axis=-1)  # white -> blue (BGR)
    img = np.full((margin + c * cell + 8, margin + c * cell + 8, 3), BACKGROUND, np.uint8)
    img[margin:margin + c * cell, margin:margin + c * cell] = board
    cv2.rectangle(img, (margin - 1, margin - 1), (margin + c * cell, margin + c * cell), AXIS, 1)
    _text(img, "true (rows) vs predicted (columns)", 4, 14, 0.4)
    if named:
        for i, name in enumerate(classes):
            y = margin + i * cell + cell // 2 + 4
            _text(img, name[:14], 4, y, 0.35)
            if cell >= 24:
                for j in range(c):
                    if matrix[i, j]:
                        colour = (255, 255, 255) if rates[i, j] > 0.5 else (0, 0, 0)
                        _text(img, str(matrix[i, j]), margin + j * cell + 3, y, 0.35, colour)
        for j, name in enumerate(classes):  # column names, written upwards
            label = np.full((14, margin - 24, 3), BACKGROUND, np.uint8)
            _text(label, name[:14], 2, 11, 0.35)
            rotated = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
            x = margin + j * cell + (cell - 14) // 2
            img[22:22 + rotated.shape[0], x:x + 14] = rotated
    return img


def overlay_runs(logs: Sequence[tuple[str, list[dict[str, float]]]], *, keys=("loss", "lr", "clips_per_s"),
                 size=(480, 300)) -> np.ndarray:
    """One panel per key with every run's series (`logs`: (run name, log rows)) in its own colour (raw, thin), and
    a legend of run names."""
    w, h = size
    keys = [k for k in keys if any(k in r for _, rows in logs for r in rows)]
    if not keys:
        raise ValueError(f"none of {', '.join(name for name, _ in logs)} logged any of the keys")
    left, right, top, bottom = 56, 12, 26, 30
    panels = []
    for key in keys:
        img = np.full((h, w, 3), BACKGROUND, np.uint8)
        _text(img, key, left, 18, 0.5)
        series = []
        for _, rows in logs:
            pts = np.array([(r["step"], r[key]) for r in rows if key in r and np.isfinite(r[key])], float)
            series.append(pts.reshape(-1, 2))
        values = np.concatenate([s[:, 1] for s in series]) if series else np.zeros(0)
        steps = np.concatenate([s[:, 0] for s in series]) if series else np.zeros(0)
        cv2.rectangle(img, (left, top), (w - right, h - bottom), AXIS, 1)
        if len(values):
            lo, hi = float(values.min()), float(values.max())
            lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-12 else (lo, hi)
            s0, s1 = float(steps.min()), float(max(steps.max(), steps.min() + 1))
            for i, pts in enumerate(series):
                if len(pts):
                    x = left + (pts[:, 0] - s0) / (s1 - s0) * (w - left - right)
                    y = top + (hi - pts[:, 1]) / (hi - lo) * (h - top - bottom)
                    xy = np.stack([x, y], 1).round().astype(np.int32)
                    colour = PALETTE[i % len(PALETTE)]
                    cv2.polylines(img, [xy], False, colour, 2, cv2.LINE_AA)
                    if len(pts) == 1:  # a polyline of one point draws nothing
                        cv2.circle(img, tuple(int(c) for c in xy[0]), 4, colour, -1, cv2.LINE_AA)
            _text(img, f"{hi:.3g}", 4, top + 10)
            _text(img, f"{lo:.3g}", 4, h - bottom)
            _text(img, f"{int(s0)}", left, h - 10)
            _text(img, f"step {int(s1)}", w - right - 70, h - 10)
        panels.append(img)
    row = np.concatenate(panels, axis=1)
    legend = np.full((18 * len(logs) + 8, row.shape[1], 3), BACKGROUND, np.uint8)
    for i, (d, _) in enumerate(logs):
        y = 16 + 18 * i
        cv2.line(legend, (8, y - 4), (32, y - 4), PALETTE[i % len(PALETTE)], 3)
        _text(legend, str(d), 40, y)
    return np.concatenate([row, legend], axis=0)


def write_png(image: np.ndarray, path: Path) -> Path:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
    return Path(path)


def motion_l1_bars(rows: Sequence[tuple[str, float, float]], *, margin: int, width: int = 640) -> np.ndarray:
    """`evaluate motion`: one pair of horizontal bars per representation, l1 over the whole frame (dark) and over
    the interior (light), on one scale from 0, each bar labelled with its value."""
    label_w, bar_h, top = 250, 14, 40
    height = top + len(rows) * (2 * bar_h + 14) + 10
    img = np.full((height, width, 3), BACKGROUND, np.uint8)
    _text(img, "l1 of the predicted next frame (frames in [-1, 1]); lower is better", 8, 16, 0.45)
    _text(img, f"dark: whole frame   light: interior ({margin} px margin)", 8, 32, 0.38, AXIS)
    top_value = max([max(a, b) for _, a, b in rows] + [1e-9])
    span = width - label_w - 70
    for i, (name, whole, inner) in enumerate(rows):
        y = top + i * (2 * bar_h + 14)
        _text(img, name[:40], 8, y + bar_h + 4, 0.38)
        for j, (value, colour) in enumerate(((whole, PALETTE[0]), (inner, (232, 199, 174)))):
            y0 = y + j * bar_h
            x1 = label_w + max(1, round(value / top_value * span))
            cv2.rectangle(img, (label_w, y0), (x1, y0 + bar_h - 2), colour, -1)
            _text(img, f"{value:.4f}", x1 + 4, y0 + bar_h - 3, 0.35)
    cv2.line(img, (label_w, top - 4), (label_w, height - 6), AXIS, 1)
    return img


def motion_error_tiles(source: np.ndarray, target: np.ndarray, errors: dict[str, np.ndarray], *, title: str,
                       tile: int = 160) -> np.ndarray:
    """`evaluate motion`: frame t and frame t+1 (RGB), then |prediction - frame t+1| of each representation (mean
    over channels), all on one INFERNO scale from 0 to the largest 99th percentile among them."""
    h, w = source.shape[:2]
    size = (max(1, round(w * tile / h)), tile)
    top = max([float(np.percentile(e, 99)) for e in errors.values()] + [1e-6])

    def cell(image: np.ndarray, label: str) -> np.ndarray:
        out = np.full((tile + 22, size[0] + 6, 3), BACKGROUND, np.uint8)
        out[:tile, 3:3 + size[0]] = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
        _text(out, label[: max(6, size[0] // 7)], 3, tile + 16, 0.38)
        return out

    cells = [cell(source[..., ::-1], "frame t"), cell(target[..., ::-1], "frame t+1")]
    for name, err in errors.items():
        u8 = np.clip(err / top * 255, 0, 255).astype(np.uint8)
        cells.append(cell(cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO), f"{name}: {err.mean():.3f}"))
    per_row = 4
    cells += [np.full_like(cells[0], BACKGROUND)] * (-len(cells) % per_row)
    rows = [np.concatenate(cells[i:i + per_row], axis=1) for i in range(0, len(cells), per_row)]
    grid = np.concatenate(rows, axis=0)
    header = np.full((24, grid.shape[1], 3), BACKGROUND, np.uint8)
    _text(header, f"{title}   |error| of each prediction of frame t+1, black 0 .. yellow {top:.2f}", 4, 16, 0.42)
    return np.concatenate([header, grid], axis=0)
