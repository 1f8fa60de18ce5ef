"""A labelled set whose classes are defined by motion alone: a smoke test of the whole chain.

Each video is a textured square sliding over a textured static background; its class is the direction the square
moves. Backgrounds, square textures, tints, sizes, start positions and speeds are drawn per video independently of
the class, so a single frame says nothing about the label: only a representation of motion can classify it. The set
is a pure function of its arguments (fixed seed).

    python -m motionssl.preprocess.motion_classes OUT_DIR    # OUT_DIR/<class>/<class>_NNN.mp4, OUT_DIR/labels.csv
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from motionssl.preprocess.synthetic import encode, texture

DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def motion_class_frames(direction: tuple[int, int], rng: np.random.Generator, *, frames: int = 20,
                        size: tuple[int, int] = (96, 64), speed: tuple[float, float] = (1.0, 2.0)) -> list[np.ndarray]:
    """(H, W, 3) uint8 frames: a square moving `direction` (dx, dy) at a random speed in px/frame, over a static
    background; everything but the direction comes from `rng`."""
    w, h = size
    side = int(rng.integers(h // 3, h // 2))
    background = texture(h, w, seed=int(rng.integers(2**31))) * rng.uniform(0.5, 1.0, 3)
    square = texture(side, side, seed=int(rng.integers(2**31))) * rng.uniform(0.5, 1.0, 3) + rng.uniform(20, 80, 3)
    v = rng.uniform(*speed) * np.array(direction, float)
    travel = np.abs(v) * (frames - 1)
    lo = np.where(v < 0, travel, 0.0)
    hi = np.array([w - side, h - side]) - np.where(v > 0, travel, 0.0)
    if (hi < lo).any():
        raise ValueError(f"a {side}px square at {np.abs(v).max():.1f} px/frame leaves a {w}x{h} frame in {frames} "
                         f"frames; use fewer frames or a lower speed")
    start = rng.uniform(lo, hi)
    out = []
    for t in range(frames):
        x, y = np.round(start + v * t).astype(int)
        f = background.copy()
        f[y:y + side, x:x + side] = square
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out


def write_motion_classes(out: Path, *, per_class: int = 12, test_per_class: int = 4, frames: int = 20,
                         size: tuple[int, int] = (96, 64), seed: int = 0, kind: str = "x264-nob") -> Path:
    """Encode `per_class` videos of each direction into OUT/<class>/; the last `test_per_class` of each class are
    the test split. Writes OUT/labels.csv (video_id,label,split) and returns its path. Existing videos are kept."""
    out = Path(out)
    rows = []
    for c, (name, direction) in enumerate(DIRECTIONS.items()):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            vid = f"{name}/{name}_{i:03d}"
            path = out / f"{vid}.mp4"
            if not path.exists():
                rng = np.random.default_rng([seed, c * per_class + i])  # the draws never see the class
                encode(path, motion_class_frames(direction, rng, frames=frames, size=size), kind)
            rows.append((vid, name, "test" if i >= per_class - test_per_class else "train"))
    labels = out / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "label", "split"])
        writer.writerows(rows)
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--test-per-class", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", default="96x64", help="WIDTHxHEIGHT in pixels")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    width, height = (int(x) for x in a.size.split("x"))
    labels = write_motion_classes(a.out, per_class=a.per_class, test_per_class=a.test_per_class, frames=a.frames,
                                  size=(width, height), seed=a.seed)
    print(f"motion classes {', '.join(DIRECTIONS)}: {a.per_class} videos each in {a.out}; labels {labels}")


if __name__ == "__main__":
    main()
