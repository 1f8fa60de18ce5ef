"""Pictures, one home for every command that draws: frame panels and videos of a store (`frames`, `show`), training
curves of one run or many (`curves`: the run directory's curves.png, `plot`), and evaluation figures (`figures`).

Every picture is an RGB uint8 array, written by `write_png`. Charts with axes are drawn by matplotlib on its Agg
canvas (no display, no pyplot state); image grids and panels by OpenCV. Nothing here reads a run directory or
trains: callers hand over arrays, log rows and store readers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 100


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB (H, W, 3) uint8 image as PNG, creating the folder; one-line error when it cannot."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise ValueError(f"could not write {path} (is the extension an image format OpenCV knows, e.g. .png?)")
    return path


def figure(width_px: int, height_px: int):
    """A matplotlib Figure of exactly this many pixels, on the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def rendered(fig) -> np.ndarray:
    """The figure as an RGB uint8 array of its pixel size."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
