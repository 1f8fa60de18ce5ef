"""A damaged store: verify names every broken video and array, HDF5 files left open for writing say so, and the
trainer's start-up check refuses broken videos or leaves them out."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from motionssl.stores import StoreError, open_store
from motionssl.stores.verify import broken_videos, verify_store
from motionssl.train.faults import usable_store
from test_store import build_store


@pytest.mark.filterwarnings("ignore:Object at frame_type is not recognized")  # zarr, on the deleted zarr.json
def test_verify_names_every_broken_array_of_a_zarr_store(tmp_path):
    s = build_store(tmp_path / "s", "zarr")  # rgb: 40 frames in shards of 16 -> files c/0, c/1, c/2
    a, b = s.path / "videos" / "a", s.path / "videos" / "nested" / "b"
    for shard in (1, 2):
        (a / "rgb" / "c" / str(shard) / "0" / "0" / "0").unlink()
    pts = a / "pts" / "c" / "0"
    pts.write_bytes(pts.read_bytes()[:-9])  # truncated: the shard index at its end is cut
    (b / "frame_type" / "zarr.json").unlink()
    problems = verify_store(open_store(s.path))
    assert any(p.startswith("a: rgb: chunk files missing or empty (2): videos/a/rgb/c/1/0/0/0, "
                            "videos/a/rgb/c/2/0/0/0") for p in problems), problems
    assert any(p.startswith("a: pts: unreadable") for p in problems), problems
    assert any(p.startswith("nested/b: missing arrays ['frame_type']") for p in problems), problems
    assert len(problems) == 3, problems
    # What shows without decoding: the missing files and array, not the truncated shard.
    quick = broken_videos(open_store(s.path))
    assert set(quick) == {"a", "nested/b"} and "rgb: chunk files missing" in quick["a"] and "pts" not in quick["a"]
    proc = subprocess.run([sys.executable, "-m", "motionssl.cli", "verify", str(s.path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout.count("\n") == 3 and "3 problem(s)" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "motionssl.cli", "dump", str(s.path), "a", "pts", "-o",
                           str(tmp_path / "pts.npy")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot read pts of video 'a' in ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_verify_names_a_corrupt_chunk_and_a_truncated_file_of_an_hdf5_store(tmp_path):
    s = build_store(tmp_path / "s", "hdf5")
    a, b = s.path / "videos" / "a.h5", s.path / "videos" / "nested" / "b.h5"
    with h5py.File(a, "r") as f:
        info = f["rgb"].id.get_chunk_info(3)  # where chunk 3 of rgb lies in the file
    with open(a, "r+b") as f:
        f.seek(info.byte_offset)
        f.write(b"\xff" * info.size)
    b.write_bytes(b.read_bytes()[: b.stat().st_size // 2])
    problems = verify_store(open_store(s.path))
    assert [p.split(" (")[0] for p in problems] == ["a: rgb: unreadable", f"nested/b: cannot open {b}: it is truncated"]
    assert "delete it and rerun `motionssl extract`" in problems[1]
    with pytest.raises(StoreError, match=r"cannot read rgb of video 'a' .*motionssl verify"):
        open_store(s.path).read("a", "rgb", 10, 14)
    assert open_store(s.path).read("a", "rgb", 0, 4).shape == (4, 8, 12, 3)  # the sound chunks still read


def test_the_start_up_check_finds_the_same_damage_from_the_recorded_lengths_and_from_the_documents(tmp_path):
    """The start-up check of a Zarr store takes each array's length and shard from the index (`arrays`, recorded at
    commit) or, for older stores, from the array's document: both name the same files. Damage: a missing shard file
    of three, an empty array document, a video directory gone."""
    from motionssl.stores import read_video_meta, write_index

    s = build_store(tmp_path / "s", "zarr", ids=("a", "b", "c", "d"))  # rgb: 40 frames in shards of 16
    recorded = {vid: read_video_meta(s.path, "zarr", vid) for vid in s.videos}
    assert all(m["arrays"]["rgb"] == {"frames": 40, "shard": 16, "ndim": 4} for m in recorded.values())
    (s.path / "videos" / "a" / "rgb" / "c" / "1" / "0" / "0" / "0").unlink()
    (s.path / "videos" / "b" / "pts" / "zarr.json").write_bytes(b"")
    import shutil

    shutil.rmtree(s.path / "videos" / "c")
    expected = {"a": "rgb: chunk file videos/a/rgb/c/1/0/0/0 is missing or empty; delete videos/a and rerun "
                     "`motionssl extract` with the same arguments to redo it",
                "b": "missing arrays ['pts']; delete videos/b and rerun `motionssl extract` with the same arguments "
                     "to redo it",
                "c": "videos/c is missing; rerun `motionssl extract` with the same arguments"}
    old = {vid: {k: v for k, v in m.items() if k != "arrays"} for vid, m in recorded.items()}
    for index in (recorded, old):
        write_index(s.path, index)
        assert broken_videos(open_store(s.path)) == expected
    (s.path / "videos" / "b" / "pts" / "zarr.json").write_text("{not json")  # older stores read the document
    assert "missing arrays ['pts']" in broken_videos(open_store(s.path))["b"]


HOLD_OPEN = """
import sys, time, h5py
f = h5py.File(sys.argv[1], "r+")
f.attrs["touched"] = 1
f.flush()
print("open", flush=True)
time.sleep(600)
"""


def test_an_hdf5_file_left_open_for_writing_says_so(tmp_path):
    """A real writer holds a video file open (then is SIGKILLed with it open): readers say which, and what to do."""
    s = build_store(tmp_path / "s", "hdf5")
    path = s.path / "videos" / "a.h5"
    writer = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "open\n"
        with pytest.raises(StoreError, match="it is open for writing in another process"):
            open_store(s.path).read("a", "rgb", 0, 1)
    finally:
        writer.kill()
        writer.wait()
    problems = verify_store(open_store(s.path))
    assert len(problems) == 1 and problems[0].startswith(f"a: cannot open {path}: it is marked open for writing "
                                                         f"(a writer crashed or was killed with it open)"), problems
    with pytest.raises(StoreError, match="h5clear --status"):
        open_store(s.path).read("a", "rgb", 0, 1)
    assert "\n" not in problems[0]


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_the_trainer_refuses_broken_videos_or_leaves_them_out(tmp_path, fmt, capsys):
    s = build_store(tmp_path / "s", fmt, ids=("a", "b", "c"))
    if fmt == "zarr":
        (s.path / "videos" / "b" / "rgb" / "c" / "0" / "0" / "0" / "0").unlink()
    else:
        (s.path / "videos" / "b.h5").write_bytes(b"")
    with pytest.raises(StoreError) as e:
        usable_store(open_store(s.path), skip_broken=False)
    message = str(e.value)
    assert "has 1 broken video(s): b (" in message and "pass --skip-broken to train without them" in message
    assert ("rgb: chunk file" if fmt == "zarr" else "cannot open") in message and "\n" not in message
    kept, broken = usable_store(open_store(s.path), skip_broken=True)
    assert kept.videos == ["a", "c"] and list(broken) == ["b"]
    assert "skipping 1 broken video(s)" in capsys.readouterr().err
    np.testing.assert_array_equal(kept.read("c", "rgb", 3, 4)[0, 0, 0], [3, 3, 3])
    sound = build_store(tmp_path / "t", fmt)
    assert usable_store(sound, skip_broken=False) == (sound, {})


def flip_inside_chunk(store, fmt: str, vid: str, name: str, chunk: int) -> None:
    """Flip one bit in the middle of chunk `chunk` of one array, where its bytes lie on disk."""
    if fmt == "zarr":
        shard = store / "videos" / vid / name / "c" / "0" / "0" / "0" / "0"  # chunks of 4 frames, shards of 16
        raw = shard.read_bytes()
        offset, size = np.frombuffer(raw[-(16 * 4 + 4):-4], "<u8").reshape(-1, 2)[chunk]
    else:
        shard = store / "videos" / f"{vid}.h5"
        with h5py.File(shard, "r") as f:
            if f[name].dtype.kind == "O":  # H.264: one variable-length entry per chunk, in the file's heap
                entry = f[name][chunk].tobytes()
                offset, size = shard.read_bytes().find(entry), len(entry)
            else:
                info = f[name].id.get_chunk_info(chunk)
                offset, size = info.byte_offset, info.size
    with open(shard, "r+b") as f:
        f.seek(int(offset + size // 2))
        byte = f.read(1)[0]
        f.seek(int(offset + size // 2))
        f.write(bytes([byte ^ 0x10]))


@pytest.mark.parametrize("codec", ["blosc", "h264"])
@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_flipped_bytes_inside_a_chunk_fail_the_read_naming_video_and_array(tmp_path, fmt, codec):
    """A real clip's store with one bit flipped inside an rgb chunk: without checksums (stores before them) the read
    returns silently changed pixels; with them (the default) it fails naming video and array, and verify names it."""
    from conftest import TINY_SPEC, extract_in_process
    from motionssl.preprocess.synthetic import encode, translating_frames

    videos = tmp_path / "videos"
    videos.mkdir()
    encode(videos / "clip.mp4", translating_frames(24, size=(96, 64), velocity=(3, 1), seed=9), "x264-nob")
    stores = {}
    for checksums in (False, True):
        spec = {**TINY_SPEC, "storage": {**TINY_SPEC["storage"], "checksums": checksums, "rgb_codec": codec}}
        stores[checksums] = extract_in_process(videos, tmp_path / f"{checksums}.{fmt}", spec, fmt)
    clean = open_store(stores[True]).read("clip", "rgb")
    unflipped = open_store(stores[False]).read("clip", "rgb")  # its own: two encodes need not match bit for bit
    for path in stores.values():
        flip_inside_chunk(path, fmt, "clip", "rgb", 1)
    garbage = open_store(stores[False]).read("clip", "rgb")  # the fault: no error, different pixels
    assert (garbage != unflipped).any() and (garbage[:4] == unflipped[:4]).all()
    s = open_store(stores[True])
    with pytest.raises(StoreError, match=r"cannot read rgb of video 'clip' .*checksum.*motionssl verify"):
        s.read("clip", "rgb", 4, 8)
    with pytest.raises(StoreError, match="checksum"):
        s.read_at("clip", "rgb", [2, 5])  # a clip's gather, the trainer's read
    np.testing.assert_array_equal(s.read("clip", "rgb", 8, 24), clean[8:])  # the sound chunks still read
    problems = verify_store(s)
    assert len(problems) == 1 and problems[0].startswith("clip: rgb: unreadable") and "checksum" in problems[0]
