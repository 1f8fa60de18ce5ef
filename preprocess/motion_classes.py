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

import cv2
import numpy as np

from motionssl.preprocess.synthetic import encode, texture

DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
# Each class is one kind of motion of the object: (dx, dy) translation direction, rotation sense (+1 clockwise on
# screen), and growth sense (+1 growing). Mirror pairs (right/left, cw/ccw) differ only by a horizontal flip.
MOTIONS = {
    "right": ((1, 0), 0, 0), "left": ((-1, 0), 0, 0), "down": ((0, 1), 0, 0), "up": ((0, -1), 0, 0),
    "rotate_cw": ((0, 0), 1, 0), "rotate_ccw": ((0, 0), -1, 0), "grow": ((0, 0), 0, 1), "shrink": ((0, 0), 0, -1),
}
CLASS_SETS = {"directions": tuple(DIRECTIONS), "motions": tuple(MOTIONS)}


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


def affine_motion_frames(motion: tuple[tuple[int, int], int, int], rng: np.random.Generator, *, frames: int = 12,
                         size: tuple[int, int] = (48, 48), speed: tuple[float, float] = (0.02, 0.04),
                         spin: tuple[float, float] = (8.0, 14.0), growth: tuple[float, float] = (1.04, 1.07)
                         ) -> list[np.ndarray]:
    """(H, W, 3) uint8 frames of a textured square over a static textured background, moving as `motion` says
    (an entry of MOTIONS): translating at `speed` frame heights per frame, spinning at `spin` degrees per frame
    about its centre, or scaling by `growth` (or its inverse) per frame. Every object starts at a random angle,
    size (a sixth to two fifths of the frame height) and place, so no single frame tells the class; all magnitudes
    come from `rng`. The defaults move an edge of the object by about a pixel a frame at 48 px or more: slower
    motion, seen at a few dozen pixels, is below what a small network resolves in a short training run."""
    (dx, dy), turn, grow = motion
    w, h = size
    background = texture(h, w, seed=int(rng.integers(2**31))) * rng.uniform(0.5, 1.0, 3)
    tex_side = h
    square = texture(tex_side, tex_side, seed=int(rng.integers(2**31))) * rng.uniform(0.5, 1.0, 3) \
        + rng.uniform(20, 80, 3)
    lo_side, hi_side = h / 6, h / 2.5
    if grow:
        rate = rng.uniform(*growth) ** grow
        span = rate ** (frames - 1)
        first = rng.uniform(lo_side, hi_side / span) if grow > 0 else rng.uniform(lo_side / span, hi_side)
        sides = first * rate ** np.arange(frames)
    else:
        sides = np.full(frames, rng.uniform(lo_side, hi_side))
    angles = rng.uniform(0, 90) + turn * rng.uniform(*spin) * np.arange(frames)
    v = rng.uniform(*speed) * h * np.array([dx, dy], float)
    reach = sides.max() * np.sqrt(2) / 2  # the rotated square's half extent, at most
    travel = v[None, :] * np.arange(frames)[:, None]
    lo = reach - travel.min(0)
    hi = np.array([w, h]) - reach - travel.max(0)
    if (hi < lo).any():
        raise ValueError(f"the object leaves a {w}x{h} frame in {frames} frames; use fewer frames or a larger size")
    centres = rng.uniform(lo, hi) + travel
    mask_src = np.full((tex_side, tex_side), 255, np.uint8)
    out = []
    for t in range(frames):
        # screen y points down, so a clockwise turn on screen is a negative angle for OpenCV
        m = cv2.getRotationMatrix2D((tex_side / 2, tex_side / 2), -angles[t], sides[t] / tex_side)
        m[:, 2] += centres[t] - tex_side / 2
        obj = cv2.warpAffine(square.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(mask_src, m, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32)[..., None] / 255
        f = background * (1 - alpha) + obj * alpha
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out


def write_motion_classes(out: Path, *, per_class: int = 12, test_per_class: int = 4, frames: int = 20,
                         size: tuple[int, int] = (96, 64), seed: int = 0, kind: str = "x264-nob",
                         classes: str = "directions") -> Path:
    """Encode `per_class` videos of each class into OUT/<class>/; the last `test_per_class` of each class are
    the test split. Writes OUT/labels.csv (video_id,label,split) and returns its path. Existing videos are kept.

    `classes`: "directions" (right, left, down, up: a square sliding) or "motions" (those four, rotation each way,
    growing and shrinking: MOTIONS)."""
    out = Path(out)
    rows = []
    names = CLASS_SETS[classes]
    for c, name in enumerate(names):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            vid = f"{name}/{name}_{i:03d}"
            path = out / f"{vid}.mp4"
            if not path.exists():
                rng = np.random.default_rng([seed, c * per_class + i])  # the draws never see the class
                if classes == "directions":
                    frames_ = motion_class_frames(DIRECTIONS[name], rng, frames=frames, size=size)
                else:
                    frames_ = affine_motion_frames(MOTIONS[name], rng, frames=frames, size=size)
                encode(path, frames_, kind)
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
    parser.add_argument("--classes", choices=sorted(CLASS_SETS), default="directions",
                        help="directions: a square sliding 4 ways; motions: 8 classes (4 translations, rotation each "
                             "way, growing, shrinking)")
    a = parser.parse_args()
    width, height = (int(x) for x in a.size.split("x"))
    labels = write_motion_classes(a.out, per_class=a.per_class, test_per_class=a.test_per_class, frames=a.frames,
                                  size=(width, height), seed=a.seed, classes=a.classes)
    print(f"motion classes {', '.join(CLASS_SETS[a.classes])}: {a.per_class} videos each in {a.out}; labels {labels}")


if __name__ == "__main__":
    main()
