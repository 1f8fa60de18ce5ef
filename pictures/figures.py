"""Evaluation pictures (RGB images): the R@k curve and the motion l1 bars are charts (matplotlib); the retrieval
grid, the confusion matrix and the motion error maps are image grids (OpenCV)."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from motionssl.pictures import figure, rendered
from motionssl.stores import Store

BACKGROUND = (255, 255, 255)
AXIS = (90, 90, 90)
FONT = cv2.FONT_HERSHEY_SIMPLEX
HIT = (60, 170, 60)       # green: a neighbour of the query's class
MISS = (210, 50, 50)      # red
WHOLE, INTERIOR = "#1f77b4", "#aec7e8"  # dark and light blue bars


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.4, colour=(0, 0, 0)) -> None:
    cv2.putText(img, text, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def recall_curve(recall: dict[int, float], *, title: str = "retrieval R@k", size=(420, 300)) -> np.ndarray:
    """R@k against k (evenly spaced, labelled), recall from 0 to 1, each point labelled with its value."""
    fig = figure(*size)
    ax = fig.add_subplot(1, 1, 1)
    ks = sorted(recall)
    values = [recall[k] for k in ks]
    ax.plot(range(len(ks)), values, color=WHOLE, linewidth=2, marker="o")
    for i, v in enumerate(values):
        ax.annotate(f"{100 * v:.1f}", (i, v), textcoords="offset points", xytext=(0, -14 if v > 0.9 else 7),
                    ha="center", fontsize=8)
    ax.set_xticks(range(len(ks)), [f"R@{k}" for k in ks])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k nearest train videos", fontsize=9)
    ax.set_ylabel("recall (a same-class video in the top k)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.tick_params(labelsize=8)
    fig.tight_layout(pad=0.6)
    return rendered(fig)


def _frame(store: Store, vid: str, tile: int) -> np.ndarray:
    """The video's middle frame, resized to a tile-high image."""
    rgb = store.read_at(vid, "rgb", [store.meta(vid)["frames"] // 2])[0]
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, round(w * tile / h)), tile), interpolation=cv2.INTER_AREA)


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
    board = np.stack([board, board, np.full_like(board, 255)], axis=-1)  # white -> blue
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


def motion_l1_bars(rows: Sequence[tuple[str, float, float]], *, margin: int, width: int = 640) -> np.ndarray:
    """`evaluate motion`: one pair of horizontal bars per representation, l1 over the whole frame (dark) and over
    the interior (light), on one scale from 0, each bar labelled with its value."""
    height = 90 + 44 * len(rows)
    fig = figure(width, height)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rows))[::-1].astype(float)
    whole = [a for _, a, _ in rows]
    inner = [b for _, _, b in rows]
    bars = [ax.barh(y + 0.2, whole, height=0.38, color=WHOLE, label="whole frame"),
            ax.barh(y - 0.2, inner, height=0.38, color=INTERIOR, label=f"interior ({margin} px margin)")]
    for group in bars:
        ax.bar_label(group, fmt="%.4f", padding=3, fontsize=8)
    ax.set_yticks(y, [name[:40] for name, _, _ in rows], fontsize=8)
    ax.set_xlim(0, max(whole + inner + [1e-9]) * 1.25)
    ax.set_xlabel("l1 of the predicted next frame (frames in [-1, 1]); lower is better", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="x", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    fig.tight_layout(pad=0.6)
    return rendered(fig)


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

    cells = [cell(source, "frame t"), cell(target, "frame t+1")]
    for name, err in errors.items():
        u8 = np.clip(err / top * 255, 0, 255).astype(np.uint8)
        inferno = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
        cells.append(cell(inferno, f"{name}: {err.mean():.3f}"))
    per_row = 4
    cells += [np.full_like(cells[0], BACKGROUND)] * (-len(cells) % per_row)
    rows = [np.concatenate(cells[i:i + per_row], axis=1) for i in range(0, len(cells), per_row)]
    grid = np.concatenate(rows, axis=0)
    header = np.full((24, grid.shape[1], 3), BACKGROUND, np.uint8)
    _text(header, f"{title}   |error| of each prediction of frame t+1, black 0 .. yellow {top:.2f}", 4, 16, 0.42)
    return np.concatenate([header, grid], axis=0)
