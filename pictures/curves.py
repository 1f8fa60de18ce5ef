"""Training curves: one run's (RUN_DIR/curves.png) and several runs overlaid (`motionssl plot`), with matplotlib.

One panel per logged metric, side by side, each `PANEL` pixels: the step on x, the metric on y with its name,
ticks on both axes. Losses that span more than a decade are drawn on a log scale. One run: the raw series thin and
light, its trailing moving average dark. Several runs: one colour per run, named in a legend under the panels.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from motionssl.pictures import figure, rendered

PANEL = (480, 300)            # pixels per metric panel
LEGEND_ROW = 22               # pixels per legend row under overlaid runs
RAW, SMOOTHED = "#9ecae1", "#08519c"  # light and dark blue
RUN_KEYS = ("loss", "lr", "clips_per_s", "context_top1", "motion_top1", "cross_top1")
LABELS = {"loss": "loss", "lr": "learning rate", "clips_per_s": "clips / s", "acc": "train accuracy",
          "context_top1": "context top-1", "motion_top1": "motion top-1", "cross_top1": "cross top-1"}


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return (csum[idx] - csum[start]) / (idx - start)


def _series(rows: list[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = np.array([(r["step"], r[key]) for r in rows if key in r and np.isfinite(r[key])], float).reshape(-1, 2)
    return pts[:, 0], pts[:, 1]


def _log_scale(key: str, series: Sequence[np.ndarray]) -> bool:
    """Log y where a linear axis would flatten curves: a positive loss spanning more than a decade (its early drop),
    and learning rates of runs whose peaks differ by more than 10x (one run's schedule would lie on zero)."""
    series = [s for s in series if len(s)]
    if not series:
        return False
    values = np.concatenate(series)
    if "loss" in key:
        return len(values) > 1 and values.min() > 0 and values.max() / values.min() > 10
    peaks = [s.max() for s in series]
    return key == "lr" and min(peaks) > 0 and max(peaks) / min(peaks) > 10


def _style(ax, key: str, series: Sequence[np.ndarray]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    log = _log_scale(key, series)
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel(LABELS.get(key, key), fontsize=9)
    ax.set_title(LABELS.get(key, key) + (" (log scale)" if log else ""), fontsize=10)
    if log:
        ax.set_yscale("log", nonpositive="mask")  # a schedule's final 0 is left out, not clipped
        positive = np.concatenate(series)[np.concatenate(series) > 0]
        decades = np.log10(positive.max() / positive.min())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,), numticks=8))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.0001, not an offset label
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.tick_params(labelsize=8)


def run_curves(rows: list[dict[str, float]], *, keys: Sequence[str] = RUN_KEYS) -> np.ndarray | None:
    """One run's log rows as curves (an RGB image); None when nothing is logged yet."""
    keys = [k for k in keys if any(k in r and np.isfinite(r[k]) for r in rows)]
    if not keys:
        return None
    fig = figure(PANEL[0] * len(keys), PANEL[1])
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        steps, values = _series(rows, key)
        smoothed = key != "lr" and len(values) >= 5
        ax.plot(steps, values, color=RAW if smoothed else SMOOTHED, linewidth=1, marker="o" if len(values) == 1 else None)
        if smoothed:
            ax.plot(steps, smooth(values, max(2, len(values) // 10)), color=SMOOTHED, linewidth=2)
        _style(ax, key, [values])
    fig.tight_layout(pad=0.6)
    return rendered(fig)


def overlay_runs(logs: Sequence[tuple[str, list[dict[str, float]]]], *,
                 keys: Sequence[str] = ("loss", "lr", "clips_per_s")) -> np.ndarray:
    """Several runs' curves (`logs`: (run name, log rows)), one panel per key any run logged, one colour per run,
    a legend naming the runs under the panels (an RGB image)."""
    keys = [k for k in keys if any(k in r for _, rows in logs for r in rows)]
    if not keys:
        raise ValueError(f"none of {', '.join(name for name, _ in logs)} logged any of the keys")
    legend_h = LEGEND_ROW * (len(logs) + 1)
    fig = figure(PANEL[0] * len(keys), PANEL[1] + legend_h)
    bottom = legend_h / (PANEL[1] + legend_h)
    colours = [f"C{i % 10}" for i in range(len(logs))]  # matplotlib's Tableau 10 cycle
    handles = []
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        every = []
        for (name, rows), colour in zip(logs, colours):
            steps, values = _series(rows, key)
            every.append(values)
            (line,) = ax.plot(steps, values, color=colour, linewidth=1.6, marker="o" if len(values) == 1 else None,
                              label=name)
            if i == 0:
                handles.append(line)
        _style(ax, key, every)
    fig.tight_layout(pad=0.6, rect=(0, bottom, 1, 1))
    fig.legend(handles=handles, labels=[name for name, _ in logs], loc="lower left", ncol=1, fontsize=9,
               frameon=False, bbox_to_anchor=(0.01, 0.0))
    return rendered(fig)
