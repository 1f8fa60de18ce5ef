"""The 8 motion classes of bench_science move as their names say, measured on the encoded videos by optical flow,
and no single frame tells them apart."""
import av
import cv2
import numpy as np
import pytest

from motionssl.preprocess.motion_classes import CLASS_SETS, MOTIONS, write_motion_classes


def read_gray(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray") for f in c.decode(video=0)]


def object_motion(frames: list[np.ndarray]) -> dict[str, float]:
    """Mean over frame pairs of the moving pixels' flow (Farneback): its mean (dx, dy, x right, y down), and about
    the moving region's centroid r: mean r x f (> 0: clockwise on screen) and mean r . f (> 0: growing)."""
    out = {"dx": [], "dy": [], "turn": [], "grow": []}
    for a, b in zip(frames, frames[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 2, 9, 3, 5, 1.1, 0)
        moving = np.abs(a.astype(int) - b.astype(int)) > 12
        if moving.sum() < 10:
            continue
        ys, xs = np.nonzero(moving)
        fx, fy = flow[ys, xs, 0], flow[ys, xs, 1]
        rx, ry = xs - xs.mean(), ys - ys.mean()
        out["dx"].append(fx.mean()), out["dy"].append(fy.mean())
        out["turn"].append((rx * fy - ry * fx).mean()), out["grow"].append((rx * fx + ry * fy).mean())
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.fixture(scope="module")
def motion_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("motions")
    write_motion_classes(root, per_class=2, test_per_class=1, frames=12, size=(48, 48), classes="motions")
    return root


@pytest.mark.parametrize("name", list(MOTIONS))
def test_each_class_moves_as_named(motion_videos, name):
    (dx, dy), turn, grow = MOTIONS[name]
    for i in range(2):
        m = object_motion(read_gray(motion_videos / name / f"{name}_{i:03d}.mp4"))
        if dx or dy:  # about a pixel a frame along the direction, little across it
            along, across = m["dx"] * dx + m["dy"] * dy, m["dx"] * dy - m["dy"] * dx
            assert along > 0.5 and abs(across) < 0.5 * along, (name, m)
        if turn:
            assert m["turn"] * turn > 0.5 and abs(m["grow"]) < abs(m["turn"]), (name, m)
        if grow:
            assert m["grow"] * grow > 0.3 and abs(m["turn"]) < abs(m["grow"]), (name, m)


def test_single_frames_say_nothing_of_the_class(motion_videos):
    """Frame statistics (mean, contrast) overlap across classes: the draws never see the class."""
    means = {name: [read_gray(motion_videos / name / f"{name}_{i:03d}.mp4")[0].mean() for i in range(2)]
             for name in CLASS_SETS["motions"]}
    lows, highs = min(min(v) for v in means.values()), max(max(v) for v in means.values())
    assert all(min(v) < highs and max(v) > lows for v in means.values())
    with open(motion_videos / "labels.csv") as f:
        rows = f.read().splitlines()
    assert rows[0] == "video_id,label,split" and len(rows) == 1 + 8 * 2
