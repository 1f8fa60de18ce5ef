"""Truncation is judged from what the decoder and demuxer say, not from a container's frame count: valid files
of many codecs and containers are `ok` with their true frame counts, and files cut in the middle fail, or keep
their good frames with `--keep-partial`. Real Dask extract, real encoders."""
import json

import av
import numpy as np
import pytest

from conftest import write_spec
from motionssl.preprocess.synthetic import encode, encode_codec, translating_frames
from motionssl.stores import open_store
from test_extract import extract, motionssl, report_of

FRAMES = 40
# (file name, encoder, pixel format, ms timestamps): each container with several codecs PyAV encodes here.
VALID = [
    ("avi_cinepak_vfr.avi", "cinepak", "rgb24", True),  # declares 1600 frames (its empty filler chunks), holds 40
    ("avi_cinepak.avi", "cinepak", "rgb24", False),
    ("avi_mjpeg.avi", "mjpeg", "yuvj420p", False),
    ("avi_mpeg4.avi", "mpeg4", "yuv420p", False),
    ("avi_x264.avi", "libx264", "yuv420p", False),
    ("avi_ffv1.avi", "ffv1", "yuv420p", False),
    ("mkv_x264.mkv", "libx264", "yuv420p", False),
    ("mkv_ffv1.mkv", "ffv1", "yuv420p", False),
    ("mkv_mjpeg.mkv", "mjpeg", "yuvj420p", False),
    ("mkv_mpeg2.mkv", "mpeg2video", "yuv420p", False),
    ("mp4_x264.mp4", "libx264", "yuv420p", False),
    ("mp4_mpeg4.mp4", "mpeg4", "yuv420p", False),
    ("mp4_mjpeg.mp4", "mjpeg", "yuvj420p", False),
]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return write_spec(tmp_path_factory.mktemp("spec") / "s.yaml", modalities=["rgb", "mv"],
                      resolution={"short_side": 48})


def test_valid_videos_of_every_container_and_codec_are_ok(tmp_path, spec):
    d = tmp_path / "in"
    d.mkdir()
    frames = translating_frames(FRAMES, size=(64, 48), velocity=(2, 0))
    for name, codec, pix, ms in VALID:
        assert codec in av.codecs_available
        encode_codec(d / name, frames, codec, pix, ms_timestamps=ms)
    with av.open(str(d / "avi_cinepak_vfr.avi")) as c:
        assert c.streams.video[0].frames == 1600  # what failed these videos as "decoded 40 of 1600"
    store = tmp_path / "s.zarr"
    extract(d, store, spec)
    rec = {r["id"]: r for r in report_of(store)["videos"]}
    assert {vid: (r["status"], r["frames"]) for vid, r in rec.items()} == \
        {name.rsplit(".", 1)[0]: ("ok", FRAMES) for name, *_ in VALID}
    assert "the container declares 1600 frames; 40 decoded" in rec["avi_cinepak_vfr"]["notes"]  # a note, not a failure
    assert not any(r["partial"] for r in rec.values())
    s = open_store(store)
    assert all(s.read(vid, "rgb").shape == (FRAMES, 48, 64, 3) for vid in rec)
    motionssl("verify", store, check=0)


def cut(src, dst, fraction: float):
    dst.write_bytes(src.read_bytes()[: int(src.stat().st_size * fraction)])


def test_a_cut_file_fails_or_keeps_its_good_frames_with_keep_partial(tmp_path, spec):
    full, d = tmp_path / "full", tmp_path / "in"
    full.mkdir()
    d.mkdir()
    frames = translating_frames(FRAMES, size=(64, 48), velocity=(2, 0), seed=7)
    sources = {
        "mjpeg.avi": encode_codec(full / "mjpeg.avi", frames, "mjpeg", "yuvj420p"),   # a packet cut short
        "h264.mkv": encode_codec(full / "h264.mkv", frames, "libx264"),               # Matroska stops silently
        "mp4.mp4": encode(full / "mp4.mp4", frames, "mpeg4", faststart=True),         # index points past the end
        "tail.avi": encode_codec(full / "tail.avi", frames, "ffv1"),                  # only the index is lost
    }
    for name, src in sources.items():
        cut(src, d / name, 0.999 if name == "tail.avi" else 0.6)
    # By default each fails, with a one-line reason that says how to keep the good frames.
    strict = tmp_path / "strict.zarr"
    extract(d, strict, spec, check=3)
    rec = {r["id"]: r for r in report_of(strict)["videos"]}
    assert all(r["status"] == "failed" and r["error"].startswith("truncated or corrupt after ")
               and "--keep-partial" in r["error"] and "\n" not in r["error"] for r in rec.values()), rec
    assert "Matroska segment runs to" in rec["h264"]["error"] and "RIFF" in rec["tail"]["error"]
    assert not open_store(strict).videos
    # --keep-partial: the full videos beside them for reference.
    for src in sources.values():
        src.rename(d / f"full_{src.name}")
    kept = tmp_path / "kept.zarr"
    out = extract(d, kept, spec, "--keep-partial").stdout
    report = report_of(kept)
    rec = {r["id"]: r for r in report["videos"]}
    assert sorted(report["summary"]["partial"]) == ["h264", "mjpeg", "mp4", "tail"] and "4 partial" in out
    s = open_store(kept)
    for name in sources:
        vid = name.rsplit(".", 1)[0]
        n = rec[vid]["frames"]
        assert rec[vid]["status"] == "ok" and rec[vid]["partial"].startswith(f"truncated or corrupt after {n} ")
        assert rec[f"full_{vid}"]["frames"] == FRAMES and not rec[f"full_{vid}"]["partial"]
        assert (0 < n < FRAMES) if vid != "tail" else n == FRAMES
        # The kept frames are the full video's first n, bit for bit.
        np.testing.assert_array_equal(s.read(vid, "rgb"), s.read(f"full_{vid}", "rgb", 0, n), err_msg=vid)
        assert s.meta(vid)["partial"] == rec[vid]["partial"]
    info = json.loads(motionssl("info", kept, "--json", check=0).stdout)
    assert info["totals"]["partial"] == 4
    assert {v["id"] for v in info["videos"] if v["partial"]} == {"h264", "mjpeg", "mp4", "tail"}
    assert "4 partial" in motionssl("info", kept, check=0).stdout
    motionssl("verify", kept, check=0)
