"""`motionssl extract` end to end: real Dask LocalCluster, real codecs, real Zarr and HDF5 files."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import write_spec
from motionssl.stores import open_store
from motionssl.stores.layout import scan_videos
from motionssl.stores.verify import verify_store
from motionssl.preprocess.synthetic import encode, translating_frames

SYNTHETIC_IDS = {"moving/right_b", "moving/down_nob", "square_mpeg4", "hevc"}


def motionssl(*args, env=None, check=None):
    proc = subprocess.run([sys.executable, "-m", "motionssl.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def extract(videos, store, spec, *extra, check=0, env=None):
    return motionssl("extract", videos, "-o", store, "--spec", spec, "--workers", 2, "--no-progress", *extra,
                     env=env, check=check)


def report_of(store: Path) -> dict:
    return json.loads(store.with_name(store.name + ".report.json").read_text())


@pytest.fixture(scope="module")
def stores(synthetic_dir, tmp_path_factory):
    """The synthetic videos extracted once into each backend, with a 2-worker LocalCluster."""
    d = tmp_path_factory.mktemp("stores")
    spec = write_spec(d / "tiny.yaml")
    out = {}
    for fmt in ("zarr", "hdf5"):
        store = d / f"s.{fmt}"
        extract(synthetic_dir, store, spec, "--format", fmt)
        out[fmt] = store
    return out


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_extract_writes_every_modality(stores, fmt):
    store = stores[fmt]
    rep = report_of(store)
    assert {v["id"] for v in rep["videos"]} == SYNTHETIC_IDS
    assert all(v["status"] == "ok" and v["error"] is None for v in rep["videos"])
    assert rep["summary"]["no_motion_vectors"] == ["hevc"]
    s = open_store(store)
    assert set(s.videos) == SYNTHETIC_IDS
    assert s.format == fmt and s.spec.name == "tiny"
    arrays = s.arrays("moving/right_b")
    assert arrays["rgb"] == ((20, 64, 96, 3), np.uint8)
    assert arrays["mv"][0] == (20, 16, 24, 2) and arrays["mv_valid"][0] == (20, 16, 24)
    assert arrays["pts"][0] == (20,)
    pts = s.read("moving/right_b", "pts")
    np.testing.assert_allclose(np.diff(pts), 1 / 25, atol=1e-6)  # presentation order, seconds
    # Known motion: 4 coded px/frame to the right = 2 stored px (192x128 -> 96x64).
    mv, valid = s.read("moving/right_b", "mv"), s.read("moving/right_b", "mv_valid")
    types = bytes(s.read("moving/right_b", "frame_type")).decode()
    assert "B" in types
    for t in range(1, 20):
        if types[t] != "I":
            np.testing.assert_allclose(np.median(mv[t][valid[t]], axis=0), [2, 0], atol=0.26)
    mv = s.read("moving/down_nob", "mv")
    np.testing.assert_allclose(np.median(mv[5].reshape(-1, 2), axis=0), [0, 2], atol=0.26)
    # I-frames: stored at the same size, with their indices, identical to the RGB frame.
    idx = s.read("moving/right_b", "iframe_index")
    assert idx[0] == 0 and types[idx[0]] == "I"
    np.testing.assert_array_equal(s.read("moving/right_b", "iframes")[0], s.read("moving/right_b", "rgb", 0, 1)[0])
    assert not s.read("moving/right_b", "mv_valid", 0, 1).any()  # I-frame: invalid
    # HEVC: not an error, all invalid, and said so.
    meta = s.meta("hevc")
    assert meta["codec"] == "hevc" and not meta["has_mv"]
    assert "no motion vectors for codec hevc" in meta["notes"][0]
    assert not s.read("hevc", "mv_valid").any()


def test_backends_hold_identical_data(stores):
    z, h = open_store(stores["zarr"]), open_store(stores["hdf5"])
    for vid in SYNTHETIC_IDS:
        assert z.arrays(vid).keys() == h.arrays(vid).keys()
        for name in z.arrays(vid):
            np.testing.assert_array_equal(z.read(vid, name), h.read(vid, name), err_msg=f"{vid}/{name}")


def test_info_verify_dump(stores, tmp_path):
    store = stores["zarr"]
    info = json.loads(motionssl("info", store, "--json", check=0).stdout)
    assert {v["id"] for v in info["videos"]} == SYNTHETIC_IDS
    assert info["totals"]["frames"] == 72
    assert info["videos"][0]["arrays"]["rgb"]["dtype"] == "uint8"
    text = motionssl("info", store, check=0).stdout
    assert "no motion vectors for codec hevc" in text
    assert "verify: 4 videos complete" in motionssl("verify", store, check=0).stdout
    out = tmp_path / "mv.npy"
    motionssl("dump", store, "moving/right_b", "mv", "-o", out, check=0)
    np.testing.assert_array_equal(np.load(out), open_store(store).read("moving/right_b", "mv"))
    assert "unknown modality" in motionssl("dump", store, "hevc", "nope", "-o", out, check=2).stderr
    assert "not in" in motionssl("dump", store, "missing", "rgb", "-o", out, check=2).stderr


def test_rerun_skips_and_overwrite_redoes(synthetic_dir, tmp_path, tiny_spec):
    store = tmp_path / "s.zarr"
    extract(synthetic_dir, store, tiny_spec)
    before = open_store(store).read("square_mpeg4", "rgb")
    extract(synthetic_dir, store, tiny_spec)
    assert {v["status"] for v in report_of(store)["videos"]} == {"skipped"}
    extract(synthetic_dir, store, tiny_spec, "--overwrite")
    assert {v["status"] for v in report_of(store)["videos"]} == {"ok"}
    np.testing.assert_array_equal(open_store(store).read("square_mpeg4", "rgb"), before)
    assert not scan_videos(store, "zarr")[1]  # no temporaries left behind


def test_killed_run_resumes_to_identical_store(synthetic_dir, tmp_path, tiny_spec):
    """SIGKILL the whole process group of a running extract while a video is half written (it decodes at 0.3 s
    per frame), then rerun the same command: exit 0, the finished videos skipped, the stale lock taken over, and
    a store identical to one that was never interrupted. The half-written video is never visible."""
    store = tmp_path / "killed.zarr"
    env = {**os.environ, "MOTIONSSL_FAULT": "slow:right_b"}
    proc = subprocess.Popen([sys.executable, "-m", "motionssl.cli", "extract", str(synthetic_dir), "-o", str(store),
                             "--spec", str(tiny_spec), "--workers", "2", "--no-progress"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (len(scan_videos(store, "zarr")[0]) == 3
                                               and list((store / "videos" / "moving").glob(".right_b.tmp-*"))):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before, partial = scan_videos(store, "zarr")
    assert len(done_before) == 3 and "moving/right_b" not in done_before
    assert [p.name.split(".tmp-")[0] for p in partial] == [".right_b"]  # half written, under a temporary name
    assert "moving/right_b" not in open_store(store).videos
    assert all(p.startswith(("partial: ", "index.json is missing")) for p in verify_store(open_store(store)))
    assert (store / ".extract.lock").exists()  # its holder is dead: the rerun takes it over
    extract(synthetic_dir, store, tiny_spec)
    statuses = {v["id"]: v["status"] for v in report_of(store)["videos"]}
    assert {vid for vid, st in statuses.items() if st == "skipped"} == set(done_before)
    assert statuses["moving/right_b"] == "ok"
    motionssl("verify", store, check=0)
    assert not scan_videos(store, "zarr")[1] and not (store / ".extract.lock").exists()
    clean = tmp_path / "clean.zarr"
    extract(synthetic_dir, clean, tiny_spec)
    a, b = open_store(store), open_store(clean)
    for vid in SYNTHETIC_IDS:
        for name in a.arrays(vid):
            np.testing.assert_array_equal(a.read(vid, name), b.read(vid, name), err_msg=f"{vid}/{name}")


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return path


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_bad_inputs_fail_alone(tmp_path, fmt):
    d = tmp_path / "in"
    d.mkdir()
    good = encode(d / "good.mp4", translating_frames(12), "x264-b")
    (d / "empty.mp4").write_bytes(b"")
    (d / "notavideo.avi").write_text("this is a text file\n" * 50)
    data = good.read_bytes()
    for name, faststart in (("truncated_index", False), ("truncated_data", True)):
        full = encode(tmp_path / f"{name}.mp4", translating_frames(60, seed=3), "x264-nob", faststart=faststart)
        (d / full.name).write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    audio_only(d / "audio.m4a").rename(d / "audio.mp4")
    encode(d / "huge.mp4", translating_frames(4, size=(320, 240)), "x264-nob")
    (d / "crash.mp4").write_bytes(data)
    (d / "hang.mp4").write_bytes(data)
    spec = write_spec(tmp_path / "s.yaml", decode={"max_pixels": 200 * 200})
    store = tmp_path / f"s.{fmt}"
    proc = extract(d, store, spec, "--format", fmt, "--timeout", 8, check=3,
                   env={"MOTIONSSL_FAULT": "crash:crash"} if fmt == "zarr" else {"MOTIONSSL_FAULT": "hang:hang"})
    rec = {v["id"]: v for v in report_of(store)["videos"]}
    assert rec["good"]["status"] == "ok"
    reasons = {vid: r["error"] for vid, r in rec.items() if r["status"] == "failed"}
    assert "0 bytes" in reasons["empty"]
    assert "cannot open as video" in reasons["notavideo"]
    assert "cannot open as video" in reasons["truncated_index"]  # MP4 index lost with the tail
    assert "truncated or corrupt" in reasons["truncated_data"]
    assert "no video stream" in reasons["audio"]
    assert "exceeds decode.max_pixels" in reasons["huge"]
    if fmt == "zarr":
        assert "crashed (signal SIGSEGV)" in reasons["crash"] and "hang" not in reasons
        assert rec["crash"]["attempts"] == 2 and rec["crash"]["quarantined"]  # a fresh decoder, then quarantined
    else:
        assert "timed out: no progress for 8s" in reasons["hang"] and "crash" not in reasons
        assert rec["hang"]["attempts"] == 1 and rec["hang"]["quarantined"]  # a hang is not retried
        assert rec["hang"]["seconds"] < 16
    assert all(not r.get("quarantined") for vid, r in rec.items() if vid not in ("crash", "hang"))
    assert all("\n" not in r for r in reasons.values())
    assert "failed: good" not in proc.stdout
    s = open_store(store)
    assert set(s.videos) == {"good"} | ({"hang"} if fmt == "zarr" else {"crash"})
    assert not scan_videos(store, fmt)[1]  # nothing half-written
    motionssl("verify", store, check=0)


def test_timeout_is_for_hangs_not_for_slow_videos(tmp_path, tiny_spec):
    """0.3 s per frame over 20 frames (6 s) under a 2 s timeout: progress keeps it alive."""
    d = tmp_path / "in"
    d.mkdir()
    encode(d / "slow.mp4", translating_frames(20), "x264-nob")
    extract(d, tmp_path / "s.zarr", tiny_spec, "--timeout", 2, env={"MOTIONSSL_FAULT": "slow:slow"})
    assert report_of(tmp_path / "s.zarr")["videos"][0]["seconds"] > 5


def test_fatal_errors_before_any_work(tmp_path, tiny_spec, synthetic_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no video files found" in extract(empty, tmp_path / "a.zarr", tiny_spec, check=2).stderr
    assert "does not exist" in extract(tmp_path / "nope", tmp_path / "a.zarr", tiny_spec, check=2).stderr
    assert "does not exist" in extract(synthetic_dir, tmp_path / "no" / "dir" / "s.zarr", tiny_spec, check=2).stderr
    assert "unknown spec" in extract(synthetic_dir, tmp_path / "a.zarr", "bogus", check=2).stderr
    assert "cannot write the report" in extract(synthetic_dir, tmp_path / "a.zarr", tiny_spec, "--report",
                                                tmp_path / "no" / "r.json", check=2).stderr
    bad = write_spec(tmp_path / "v9.yaml", spec_version=9)
    assert "spec_version 9 is not known" in extract(synthetic_dir, tmp_path / "a.zarr", bad, check=2).stderr
    assert not (tmp_path / "a.zarr").exists()
    store = tmp_path / "b.zarr"
    extract(synthetic_dir, store, tiny_spec)
    other = write_spec(tmp_path / "other.yaml", resolution={"short_side": 32})
    assert "was made with spec" in extract(synthetic_dir, store, other, check=2).stderr
    assert "is a zarr store" in extract(synthetic_dir, store, tiny_spec, "--format", "hdf5", check=2).stderr


def test_reencode_gives_motion_vectors_for_hevc(tmp_path, tiny_spec):
    d = tmp_path / "in"
    d.mkdir()
    encode(d / "pan.mkv", translating_frames(16, velocity=(4, 0)), "x265")
    store = tmp_path / "s.zarr"
    extract(d, store, tiny_spec, "--reencode")
    s = open_store(store)
    meta = s.meta("pan")
    assert meta["reencoded"] and meta["has_mv"] and meta["frames"] == 16
    mv, valid = s.read("pan", "mv"), s.read("pan", "mv_valid")
    types = bytes(s.read("pan", "frame_type")).decode()
    assert types.startswith("IPPPPPPPPPPPI")  # GOP 12, no B-frames
    for t in range(1, 12):
        np.testing.assert_allclose(np.median(mv[t][valid[t]], axis=0), [2, 0], atol=0.3)


def test_info_of_a_zarr_store_matches_what_zarr_reads(stores):
    """`info` reads a Zarr video's arrays from their documents and file sizes, not through zarr: same shapes, dtypes
    and bytes as zarr's own view of each array and a walk of its files."""
    from motionssl.stores.summary import _array_bytes, summarize

    store = open_store(stores["zarr"])
    rows = {v["id"]: v for v in summarize(store)["videos"]}
    assert set(rows) == SYNTHETIC_IDS
    for vid, row in rows.items():
        reader = store._open(vid)
        expected = {name: {"shape": list(shape), "dtype": str(dtype), "bytes": _array_bytes(store, reader, name, None)}
                    for name, (shape, dtype) in sorted(reader.arrays().items())}
        assert row["arrays"] == expected and len(expected) >= 7
        assert row["bytes"] > sum(a["bytes"] for a in expected.values())  # and the group's own zarr.json
