"""The reader API over both backends, store metadata checks, verify on damaged stores, and specs."""
import ast
import hashlib
import json
import multiprocessing as mp
import pickle
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import TINY_SPEC
from motionssl.data_specs import SpecError, load_spec, mv_grid, spec_from_dict, stored_size
from motionssl.stores import StoreError, init_store, make_writer, open_store, write_index
from motionssl.stores.layout import ROOT_META, scan_videos
from motionssl.stores.verify import verify_store


def build_store(path, fmt, n_frames=40, ids=("a", "nested/b"), **storage):
    """A store written through the real writer, with frame t filled with value t."""
    spec = spec_from_dict({**TINY_SPEC, "modalities": ["rgb"], "storage": {**TINY_SPEC["storage"], **storage}})
    init_store(path, fmt, spec)
    metas = {}
    for vid in ids:
        w = make_writer(path, fmt, vid, spec)
        w.add_array("rgb", (8, 12, 3), np.uint8)
        w.add_array("pts", (), np.float64, chunk=4096, shard=4096)
        w.add_array("frame_type", (), np.uint8, chunk=4096, shard=4096)
        for t in range(n_frames):
            w.append("frame_type", np.uint8(ord("P")))
            w.append("rgb", np.full((8, 12, 3), t, np.uint8))
            w.append("pts", np.float64(t / 25))
        meta = {"id": vid, "frames": n_frames, "spec_digest": spec.digest}
        w.commit(meta)
        metas[vid] = meta
    write_index(path, metas)
    return open_store(path)


@pytest.mark.parametrize("chunk_frames", [4, 1])  # 1: zarr's one-frame chunks decode straight into the output
@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_reader_slices_and_gathers(tmp_path, fmt, chunk_frames):
    s = build_store(tmp_path / "s", fmt, chunk_frames=chunk_frames)
    assert s.videos == ["a", "nested/b"] and len(s) == 2 and "nested/b" in s
    clip = s.read("nested/b", "rgb", 10, 26)
    assert clip.shape == (16, 8, 12, 3)
    np.testing.assert_array_equal(clip[:, 0, 0, 0], np.arange(10, 26))
    got = s.read_at("a", "rgb", [33, 2, 2, 39])  # unsorted, repeated, across shards
    np.testing.assert_array_equal(got[:, 0, 0, 0], [33, 2, 2, 39])
    got = s.read_at("a", "rgb", [33, 2, 17, 39, 0])  # unsorted, distinct, across shards
    np.testing.assert_array_equal(got, np.broadcast_to(np.uint8([33, 2, 17, 39, 0])[:, None, None, None], got.shape))
    np.testing.assert_allclose(s.read("a", "pts")[-1], 39 / 25)
    with pytest.raises(KeyError, match="not in store"):
        s.read("zzz", "rgb")
    # Pickles without open handles (DataLoader workers, Dask tasks) and reads again after.
    s2 = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(s2.read("a", "rgb", 0, 3), s.read("a", "rgb", 0, 3))


def test_hdf5_chunk_frames_chunks_per_frame_arrays_only(tmp_path):
    """storage.hdf5_chunk_frames: 1 chunks rgb by single frames (a strided clip decodes only its frames), leaves
    arrays with their own chunking (pts) alone, and reads back the same values."""
    one = build_store(tmp_path / "one", "hdf5", hdf5_chunk_frames=1)
    four = build_store(tmp_path / "four", "hdf5")
    with h5py.File(tmp_path / "one" / "videos" / "a.h5", "r") as f:
        assert f["rgb"].chunks == (1, 8, 12, 3) and f["pts"].chunks == (4096,)
    with h5py.File(tmp_path / "four" / "videos" / "a.h5", "r") as f:
        assert f["rgb"].chunks == (4, 8, 12, 3)  # chunk_frames
    idx = [0, 4, 8, 12, 39, 3]
    np.testing.assert_array_equal(one.read_at("a", "rgb", idx), four.read_at("a", "rgb", idx))
    assert one.spec.digest != four.spec.digest


def test_hdf5_blosc_is_the_standard_filter(tmp_path):
    """hdf5_compression: blosc writes HDF5 filter 32001 with the spec's Blosc compressor and level, which any
    h5py with hdf5plugin imported reads; the values match an lzf store."""
    blosc = build_store(tmp_path / "blosc", "hdf5", hdf5_compression="blosc", zarr_codec="lz4", zarr_level=5)
    lzf = build_store(tmp_path / "lzf", "hdf5")
    code = (f"import h5py, hdf5plugin; f = h5py.File({str(tmp_path / 'blosc' / 'videos' / 'a.h5')!r}, 'r'); "
            "print(dict(f['rgb']._filters), int(f['rgb'][:].sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    filters, total = out.rsplit(" ", 1)
    lz4 = 1  # Blosc's compressor code for lz4
    filters = ast.literal_eval(filters)
    assert filters["32001"][:3] == (2, 2, 1) and filters["32001"][-3:] == (5, 1, lz4)
    assert list(filters) == ["32001", "fletcher32"]  # storage.checksums: after compression, over the stored bytes
    assert int(total) == sum(t * 8 * 12 * 3 for t in range(40))
    np.testing.assert_array_equal(blosc.read("nested/b", "rgb"), lzf.read("nested/b", "rgb"))


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_quantized_arrays_read_back_in_pixels(tmp_path, fmt):
    """uint8 flow over [-20, 20] (the denseflow layout) reads back as float32 pixels, both backends."""
    from motionssl.preprocess.flow import quantize_flow

    spec = spec_from_dict({**TINY_SPEC, "modalities": ["rgb"]})
    init_store(tmp_path / "s", fmt, spec)
    w = make_writer(tmp_path / "s", fmt, "v", spec)
    w.add_array("flow", (4, 6, 2), np.uint8, attrs={"quantization": {"kind": "linear", "bound": 20.0}})
    truth = np.random.default_rng(0).uniform(-25, 25, (10, 4, 6, 2)).astype(np.float32)
    for f in truth:
        w.append("flow", quantize_flow(f, bound=20.0))
    w.commit({"id": "v", "frames": 10})
    write_index(tmp_path / "s", {"v": {"id": "v", "frames": 10}})
    s = open_store(tmp_path / "s")
    assert s.arrays("v")["flow"][1] == np.uint8  # stored 8-bit
    got = s.read("v", "flow")
    assert got.dtype == np.float32
    inside = np.abs(truth) <= 20
    assert np.abs(got - truth)[inside].max() <= 20 / 255 + 1e-5  # half a step
    np.testing.assert_allclose(got[~inside], np.sign(truth[~inside]) * 20, atol=1e-5)  # saturates
    np.testing.assert_array_equal(s.read_at("v", "flow", [3, 1]), got[[3, 1]])


def test_one_frame_chunk_with_a_wrong_size_is_damage(tmp_path):
    """A one-frame Blosc chunk that decodes to fewer bytes than a frame would leave part of the output unset
    where it is decoded in place: the read fails and points at verify instead. (Without chunk checksums, as in
    stores written before them: with them, the checksum catches the change first.)"""
    from numcodecs import blosc
    from numcodecs.checksum32 import CRC32C

    s = build_store(tmp_path / "s", "zarr", chunk_frames=1, checksums=False)
    shard = tmp_path / "s" / "videos" / "a" / "rgb" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(raw[-(16 * 16 + 4):-4]), "<u8").reshape(-1, 2).copy()
    short = blosc.compress(bytes(8 * 12 * 3 - 1), b"lz4", 5, blosc.SHUFFLE)  # a valid chunk, one byte short
    assert len(short) <= index[5, 1]
    raw[int(index[5, 0]):int(index[5, 0]) + len(short)] = short
    index[5, 1] = len(short)
    raw[-(16 * 16 + 4):] = bytes(CRC32C().encode(index.astype("<u8").tobytes()))  # the index and its crc32c
    shard.write_bytes(bytes(raw))
    np.testing.assert_array_equal(s.read_at("a", "rgb", [4, 6])[:, 0, 0, 0], [4, 6])
    with pytest.raises(StoreError, match="verify"):
        s.read_at("a", "rgb", [4, 5, 6])


def test_zarr_writer_writes_what_zarr_python_writes(tmp_path):
    """The writer's files (shards with a short last one, unsharded chunks, one-frame chunks, attrs)
    are byte for byte what zarr-python writes for the same arrays, and read back through zarr."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    from motionssl.stores.zarr_writer import write_group

    spec = spec_from_dict(TINY_SPEC)  # chunks of 4 frames, shards of 16
    rng = np.random.default_rng(0)
    arrays = {  # name: (data, chunk, shard, attrs)
        "rgb": (rng.integers(0, 40, (37, 8, 12, 3), dtype=np.uint8), None, None, None),
        "mv": (rng.normal(0, 3, (37, 2, 3, 2)).astype(np.float16), None, None, None),
        "mv_valid": (rng.random((37, 2, 3)) > 0.3, None, None, None),
        "pts": (np.arange(37) / 25, 4096, 4096, None),
        "iframes": (rng.integers(0, 255, (3, 8, 12, 3), dtype=np.uint8), 1, None, {"note": [1, "x"]}),
    }
    w = make_writer(tmp_path, "zarr", "ours", spec)
    for name, (data, chunk, shard, attrs) in arrays.items():
        w.add_array(name, data.shape[1:], data.dtype, chunk=chunk, shard=shard, attrs=attrs)
        for frame in data:
            w.append(name, frame)
    meta = w.commit({"id": "ours", "frames": 37})
    # the meta gains each array's length, shard and rank (what the start-up check needs)
    assert meta["arrays"]["rgb"] == {"frames": 37, "shard": arrays["rgb"][2] or spec.storage.shard_frames, "ndim": 4}

    ours = tmp_path / "videos" / "ours"
    theirs = zarr.open_group(str(tmp_path / "theirs"), mode="w", attributes={"motionssl_video": meta})
    for name, (data, chunk, shard, attrs) in arrays.items():
        chunk, shard = chunk or spec.storage.chunk_frames, shard or spec.storage.shard_frames
        codec = BloscCodec(cname=spec.storage.zarr_codec, clevel=spec.storage.zarr_level, shuffle="shuffle",
                           blocksize=chunk * data[0].nbytes)  # the writer's: one Blosc block per chunk
        a = theirs.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(chunk, *data.shape[1:]),
                                shards=(shard, *data.shape[1:]) if shard > chunk else None,
                                compressors=(codec, Crc32cCodec()),  # spec storage.checksums
                                fill_value=0, dimension_names=("t", *[f"d{i}" for i in range(data.ndim - 1)]),
                                attributes=attrs, config={"write_empty_chunks": True})
        a[:] = data
        np.testing.assert_array_equal(zarr.open_array(str(ours / name), mode="r")[:], data)
    write_group(tmp_path / "group")  # the store root and parents of nested ids
    zarr.open_group(str(tmp_path / "their_group"), mode="a")
    assert (tmp_path / "group" / "zarr.json").read_text() == (tmp_path / "their_group" / "zarr.json").read_text()
    files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "theirs") for p in (tmp_path / "theirs").rglob("*") if p.is_file())
    for f in files:
        if f.name == "zarr.json":
            assert json.loads((ours / f).read_text()) == json.loads((tmp_path / "theirs" / f).read_text()), f
        else:
            assert (ours / f).read_bytes() == (tmp_path / "theirs" / f).read_bytes(), f


def _read_in_child(store, queue):
    queue.put(int(store.read("a", "rgb", 5, 6)[0, 0, 0, 0]))


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_forked_reader_opens_its_own_handles(tmp_path, fmt):
    s = build_store(tmp_path / "s", fmt)
    s.read("a", "rgb", 0, 1)  # parent holds an open handle
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_read_in_child, args=(s, q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results == [5, 5, 5]


def test_unknown_versions_are_refused(tmp_path):
    s = build_store(tmp_path / "s", "zarr")
    meta = json.loads((s.path / ROOT_META).read_text())
    meta["spec"]["spec_version"] = 7
    (s.path / ROOT_META).write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="spec_version 7 is not known"):
        open_store(s.path)
    meta["spec"]["spec_version"], meta["format_version"] = 1, 99
    (s.path / ROOT_META).write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="format_version 99"):
        open_store(s.path)
    with pytest.raises(StoreError, match="not a motionssl store"):
        open_store(tmp_path)


def test_uncommitted_writer_leaves_nothing_visible(tmp_path):
    s = build_store(tmp_path / "s", "zarr")
    w = make_writer(s.path, "zarr", "c", s.spec)
    w.add_array("rgb", (8, 12, 3), np.uint8)
    for t in range(20):
        w.append("rgb", np.zeros((8, 12, 3), np.uint8))
    ids, temps = scan_videos(s.path, "zarr")
    assert "c" not in ids and len(temps) == 1  # a write in progress is only a temporary
    assert any("partial" in p for p in verify_store(open_store(s.path)))
    w.abort()
    assert scan_videos(s.path, "zarr") == (["a", "nested/b"], [])


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_verify_names_damage(tmp_path, fmt):
    s = build_store(tmp_path / "s", fmt)
    assert verify_store(s) == []
    if fmt == "zarr":
        shutil.rmtree(s.path / "videos" / "a" / "rgb" / "c" / "1")  # second shard of frames
        problem = "a: rgb: chunk file"
    else:
        f = s.path / "videos" / "a.h5"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        problem = "a: cannot open"
    problems = verify_store(open_store(s.path))
    assert any(p.startswith(problem) for p in problems), problems
    assert not any(p.startswith("nested/b") for p in problems)
    proc = subprocess.run([sys.executable, "-m", "motionssl.cli", "verify", str(s.path)], capture_output=True, text=True)
    assert proc.returncode == 1 and problem in proc.stdout


def test_specs():
    d = load_spec("default")
    every = ("rgb", "iframes", "mv", "flow", "boundary", "edges")
    assert d.modalities == every and d.resolution.short_side == 128 and d.mv.cell == 4
    assert (d.flow.method, d.flow.batch, d.flow.edges_gap, d.flow.boundary_operator) == ("tvl1-torch", 4, 5, "prewitt")
    assert load_spec("fast").flow.method == "dis" and load_spec("raft").flow.method == "raft"
    gpu = load_spec("default-gpu")
    assert (gpu.modalities, gpu.flow.method, gpu.flow.batch) == (every, "tvl1-torch", 64)
    assert gpu.flow.edges_gap == d.flow.edges_gap and gpu.storage == d.storage and gpu.digest != d.digest
    assert load_spec("compressed").modalities == ("rgb", "iframes", "mv")
    assert d.digest != load_spec("fast").digest
    with pytest.raises(SpecError, match="flow.method must be one of"):
        spec_from_dict({**TINY_SPEC, "flow": {"method": "farneback"}})
    with pytest.raises(SpecError, match="unknown spec"):
        load_spec("nope")
    with pytest.raises(SpecError, match="unknown keys"):
        spec_from_dict({**TINY_SPEC, "mv": {"cel": 4}})
    with pytest.raises(SpecError, match="modalities"):
        spec_from_dict({**TINY_SPEC, "modalities": ["rgb", "sound"]})
    for storage, message in [({"zarr_codec": "brotli"}, "zarr_codec must be one of"),
                             ({"zarr_level": 12}, "zarr_level must be an integer"),
                             ({"hdf5_compression": "szip"}, "hdf5_compression must be blosc, lzf")]:
        with pytest.raises(SpecError, match=message):
            spec_from_dict({**TINY_SPEC, "storage": storage})
    assert stored_size(320, 240, 128) == (170, 128)
    assert stored_size(240, 320, 128) == (128, 170)
    assert stored_size(1280, 720, 128) == (228, 128)
    assert mv_grid(170, 128, 4) == (43, 32)


def test_a_renamed_flow_method_reads_and_hashes_as_before():
    """`tvl1` was OpenCV's TV-L1 until it became `tvl1-opencv`: a spec or a store's recorded spec naming it means
    that method, and keeps the digest stores recorded (the shipped `default` spec's until issue 19: 3256876d95dde0d0),
    so a resumed extract skips the videos it already holds."""
    old_default = load_spec("default").to_dict()
    old_default["flow"] |= {"method": "tvl1", "batch": 8}
    old = spec_from_dict(old_default)
    assert old.flow.method == "tvl1-opencv" and old.digest == "3256876d95dde0d0"
    assert spec_from_dict(old.to_dict(), recorded=True) == old
    assert load_spec("default").digest not in ("3256876d95dde0d0", old.digest)  # new flow: new digest
    with pytest.raises(SpecError, match="flow.method must be one of .*'tvl1-opencv'"):
        spec_from_dict({**TINY_SPEC, "flow": {"method": "opencv"}})


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_store_recording_the_old_flow_method_name_still_reads(tmp_path, fmt):
    """A store whose recorded spec names `tvl1` (OpenCV's TV-L1 before issue 19) opens with tvl1-opencv, keeps the
    digest it recorded, reads, verifies, and refuses to mix in videos of today's `default` (another flow)."""
    build_store(tmp_path / "s", fmt)
    root = json.loads((tmp_path / "s" / ROOT_META).read_text())
    root["spec"]["flow"]["method"] = "tvl1"
    (tmp_path / "s" / ROOT_META).write_text(json.dumps(root))
    s = open_store(tmp_path / "s")
    assert s.spec.flow.method == "tvl1-opencv" and s.spec.digest == root["spec_digest"]
    assert verify_store(s) == [] and s.read("a", "rgb", 5, 7)[:, 0, 0, 0].tolist() == [5, 6]
    with pytest.raises(StoreError):
        init_store(tmp_path / "s", fmt, load_spec("default"))


def test_every_command_has_help():
    for cmd in ("extract", "info", "verify", "dump", "pretrain", "finetune", "evaluate", "show", "plot",
                "evaluate retrieve", "evaluate classify", "evaluate motion"):
        proc = subprocess.run([sys.executable, "-m", "motionssl.cli", *cmd.split(), "--help"],
                              capture_output=True, text=True)
        assert proc.returncode == 0 and "Usage" in proc.stdout, cmd
    proc = subprocess.run([sys.executable, "-m", "motionssl.cli", "pretrain"], capture_output=True, text=True)
    assert proc.returncode == 2 and "-o" in proc.stderr  # a usage error names the missing option


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_store_written_before_chunk_checksums_still_reads(tmp_path, fmt):
    """Stores recorded their spec before storage.checksums existed: that means no checksums, the digest they
    recorded (the shipped `default` spec's was e0e9011bb4076c8e), and a one-line refusal to mix in new videos."""
    from dataclasses import replace

    default = load_spec("default")
    default = replace(default, flow=replace(default.flow, method="tvl1-opencv", batch=8))  # `default` until issue 19
    assert default.storage.checksums and default.digest != "e0e9011bb4076c8e"
    assert replace(default, storage=replace(default.storage, checksums=False)).digest == "e0e9011bb4076c8e"
    build_store(tmp_path / "s", fmt, checksums=False)
    root = json.loads((tmp_path / "s" / ROOT_META).read_text())
    del root["spec"]["storage"]["checksums"]  # as written before the key
    (tmp_path / "s" / ROOT_META).write_text(json.dumps(root))
    s = open_store(tmp_path / "s")
    assert s.spec.storage.checksums is False and s.spec.digest == root["spec_digest"]
    assert verify_store(s) == []
    assert s.read("a", "rgb", 5, 7)[:, 0, 0, 0].tolist() == [5, 6]
    with pytest.raises(StoreError, match="made without chunk checksums .*checksums: false"):
        init_store(tmp_path / "s", fmt, spec_from_dict({**TINY_SPEC, "modalities": ["rgb"]}))


def test_the_version_hashes_the_index_bytes_and_older_indexes_keep_theirs(tmp_path):
    """index.json is written in canonical form, so the version is a hash of its bytes; it equals the digest of the
    re-serialised index (data_specs/README.md, "Version"), which indexes in any other form still get: a store
    indexed before keeps its version, and the same videos get the same version in either form. Any change of the
    videos changes it, a hand edit that keeps the canonical head included."""
    from motionssl.stores import index_digest, parse_index
    from motionssl.stores.layout import INDEX

    s = build_store(tmp_path / "s", "zarr")
    videos = {vid: {**s.meta(vid), "source": f"clàss ü/{vid} \"x\".mp4", "fps": 29.97, "notes": ["a, b: c"]}
              for vid in s.videos}
    write_index(s.path, videos)
    data = (s.path / INDEX).read_bytes()
    assert data.startswith(b'{"canonical":true,"videos":{') and data.isascii()
    read, by_bytes = parse_index(data)
    assert read == videos and by_bytes == index_digest(videos) == open_store(s.path).version
    # the version of this index as every motionssl before the canonical form computed it
    old = "sha256:" + hashlib.sha256(json.dumps(videos, sort_keys=True, separators=(",", ":")).encode()
                                     ).hexdigest()[:16]
    assert by_bytes == old

    for older in (json.dumps({"videos": videos}, sort_keys=True),            # the index as written before
                  json.dumps({"videos": videos}, indent=1, sort_keys=True),  # and before that
                  json.dumps({"canonical": True, "videos": videos}, indent=1)):  # reformatted by hand
        (s.path / INDEX).write_text(older)
        assert parse_index(older.encode())[1] is None and open_store(s.path).version == old

    changed = {**videos, "a": {**videos["a"], "frames": 39}}
    write_index(s.path, changed)
    assert open_store(s.path).version == index_digest(changed) != old
    canonical = data[len(b'{"canonical":true,"videos":'):-1]
    for edited in (data.replace(b'"frames":40', b'"frames":39', 1),  # canonical head kept, content changed
                   data[:-1] + b',"videos":' + canonical.replace(b'"frames":40', b'"frames":39', 1) + b"}"):
        (s.path / INDEX).write_bytes(edited)  # the second: a later duplicate key is what json reads
        st = open_store(s.path)
        assert st.meta("a")["frames"] == 39 and st.version != old
