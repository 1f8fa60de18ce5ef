"""Training curves as a PNG (RUN_DIR/curves.png), drawn with OpenCV so no plotting library is needed."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

BACKGROUND = (255, 255, 255)
AXIS = (90, 90, 90)
GRID = (225, 225, 225)
LINE = (230, 160, 110)    # BGR light blue: the raw series
SMOOTH = (140, 60, 20)     # BGR dark blue: its moving average
FONT = cv2.FONT_HERSHEY_SIMPLEX


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return (csum[idx] - csum[start]) / (idx - start)


def draw_series(steps: np.ndarray, values: np.ndarray, *, title: str, smoothed: bool = True,
                size=(480, 300)) -> np.ndarray:
    """One panel: the raw series, its moving average if `smoothed`, axes with min/max labels. Returns a BGR image."""
    w, h = size
    left, right, top, bottom = 56, 12, 26, 30
    img = np.full((h, w, 3), BACKGROUND, np.uint8)
    cv2.putText(img, title, (left, 18), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    finite = np.isfinite(values)
    steps, values = steps[finite], values[finite]
    if len(values) == 0:
        cv2.putText(img, "no data", (left, h // 2), FONT, 0.5, AXIS, 1, cv2.LINE_AA)
        return img
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    s0, s1 = float(steps.min()), float(max(steps.max(), steps.min() + 1))

    def xy(s: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = left + (s - s0) / (s1 - s0) * (w - left - right)
        y = top + (hi - v) / (hi - lo) * (h - top - bottom)
        return np.stack([x, y], axis=1).round().astype(np.int32)

    for frac in (0.25, 0.5, 0.75):
        y = int(top + frac * (h - top - bottom))
        cv2.line(img, (left, y), (w - right, y), GRID, 1)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), AXIS, 1)
    cv2.polylines(img, [xy(steps, values)], False, LINE, 1, cv2.LINE_AA)
    if smoothed and len(values) >= 5:
        cv2.polylines(img, [xy(steps, smooth(values, max(2, len(values) // 10)))], False, SMOOTH, 2, cv2.LINE_AA)
    for text, y in ((f"{hi:.3g}", top + 10), (f"{lo:.3g}", h - bottom)):
        cv2.putText(img, text, (4, y), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for text, x in ((f"{int(s0)}", left), (f"step {int(s1)}", w - right - 70)):
        cv2.putText(img, text, (x, h - 10), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def run_panels(rows: list[dict[str, float]], *, keys=("loss", "lr", "clips_per_s", "context_top1", "motion_top1",
                                                  "cross_top1")) -> np.ndarray | None:
    """One panel per logged key, side by side (a BGR image). None when nothing is logged yet."""
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows], dtype=np.float64)
    panels = [draw_series(steps, np.array([r.get(k, np.nan) for r in rows], dtype=np.float64), title=k,
                          smoothed=k != "lr")
              for k in keys if any(k in r for r in rows)]
    return np.concatenate(panels, axis=1)
