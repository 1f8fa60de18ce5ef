"""Stores on object storage: real S3 and GCS APIs started here on localhost (moto's S3 server; gcp-storage-emulator's
GCS JSON API, read and written by gcsfs), the real extract, verify, info and a tiny pretrain reading from each; a
kill between a video's upload and its commit record, and a rerun; the lock created only if absent."""
import copy
import functools
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import write_spec
from test_extract import SYNTHETIC_IDS, extract, motionssl

SECRET = "motionssl-test-secret-Zq7"  # must never appear in anything motionssl writes or prints
# What gcp-storage-emulator lacks that real GCS has, and so what is not tested against it (README, "Beyond one
# machine"): preconditions. It ignores ifGenerationMatch=0 and overwrites, where GCS answers 412.
NO_GCS_PRECONDITIONS = ("gcp-storage-emulator ignores ifGenerationMatch=0 (it overwrites where GCS answers 412 "
                        "Precondition Failed), so a second create of the lock cannot be refused by it")


@dataclass
class Bucket:
    """A bucket named `bucket` on a server of `scheme`, and the client environment that reaches it."""
    scheme: str
    env: dict[str, str]
    secret: str | None  # a credential in env, which must never appear in what motionssl writes or prints
    requests: list[str] | None  # each request line the server answered (the GCS emulator), else None
    conditional_create: bool  # whether the server refuses to create an object that exists

    def url(self, rel: str) -> str:
        return f"{self.scheme}://bucket/{rel}"

    def fs(self):
        import fsspec

        return fsspec.filesystem(self.scheme, skip_instance_cache=True, use_listings_cache=False)


def _s3_server():
    """moto's S3 server, in this process."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "motionssl-test-key", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    return Bucket("s3", env, SECRET, None, True), server.stop, lambda fs: fs.mkdir("bucket")


def _gcs_server():
    """gcp-storage-emulator's GCS JSON API, in this process (its own storage and request handler), every request line
    kept. It answers one request at a time; its listen queue is made long enough for a client's 64 concurrent
    connections, which would otherwise wait out SYN retries."""
    from gcp_storage_emulator.handlers.buckets import create_bucket
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    logging.getLogger("api.object").setLevel(logging.ERROR)
    lines: list[str] = []

    class Handler(RequestHandler):
        def log_request(self, code="-", size="-"):
            lines.append(self.requestline)

    class Server(http.server.HTTPServer):
        request_queue_size = 128

    storage = Storage(use_memory_fs=True)
    create_bucket("bucket", storage)
    httpd = Server(("127.0.0.1", 0), functools.partial(Handler, storage))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop():
        httpd.shutdown()
        httpd.server_close()

    # gcsfs's standard environment: the emulator's address, no credentials (fsspec's config), and its plain client
    # (the experimental one asks the Storage Control API, gRPC, which the emulator lacks, for each bucket's layout)
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{httpd.server_address[1]}", "FSSPEC_GS_TOKEN": "anon",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    return Bucket("gs", env, None, lines, False), stop, lambda fs: None


@pytest.fixture(scope="module", params=["s3", "gs"])
def bucket(request):
    """An object-storage server on localhost (each test runs against S3 and GCS), its bucket, and the standard client
    environment, set here too."""
    import fsspec.config

    server, stop, make_bucket = {"s3": _s3_server, "gs": _gcs_server}[request.param]()
    saved, saved_conf = {k: os.environ.get(k) for k in server.env}, copy.deepcopy(fsspec.config.conf)
    os.environ.update(server.env)
    fsspec.config.set_conf_env(fsspec.config.conf)  # FSSPEC_* variables, read once when fsspec was imported
    make_bucket(server.fs())
    yield server
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    fsspec.config.conf.clear()
    fsspec.config.conf.update(saved_conf)
    stop()


def _objects(bucket: Bucket, prefix: str) -> dict[str, bytes]:
    fs = bucket.fs()
    return {k: fs.cat_file(k) for k in fs.find(prefix)}


def _no_secret(bucket: Bucket, *texts) -> bool:
    """The server's credential is in none of `texts` (str or bytes)."""
    return bucket.secret is None or not any((bucket.secret.encode() if isinstance(t, bytes) else bucket.secret) in t
                                             for t in texts)


def test_a_kill_between_upload_and_commit_leaves_nothing_visible_and_a_rerun_completes(bucket, synthetic_dir,
                                                                                         tmp_path):
    """The extract's whole process group is SIGKILLed right after one video's arrays are uploaded and before its
    commit record: that video is invisible (readers, index, verify's listing names the leftover), the rerun takes
    over the stale lock, redoes it, removes the leftover, and the store equals a local extract bit for bit."""
    from motionssl.stores import open_store
    from motionssl.stores.remote import scan_commits
    from motionssl.stores.verify import verify_store

    spec = write_spec(tmp_path / "tiny.yaml")
    url = bucket.url("runs/killed.zarr")
    cmd = [sys.executable, "-m", "motionssl.cli", "extract", str(synthetic_dir), "-o", url, "--spec", str(spec),
           "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, env={**os.environ, **bucket.env, "MOTIONSSL_FAULT": "kill-commit:right_b"},
                            cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=240) == -signal.SIGKILL
    store = open_store(url)
    assert "moving/right_b" not in store.videos
    with pytest.raises(KeyError):
        store.meta("moving/right_b")
    leftovers = [p for p in verify_store(store) if p.startswith("partial: ")]
    assert any("videos/moving/right_b/d-" in p for p in leftovers), leftovers
    # what the rerun skips is every committed video; the index (rewritten every few seconds) may lag behind those
    committed = set(scan_commits(store.remote)[0])
    assert set(store.videos) <= committed and "moving/right_b" not in committed
    done_before = committed
    assert any(k.endswith("/.extract.lock") for k in _objects(bucket, "bucket/runs/killed.zarr"))  # holder is dead

    r = extract(synthetic_dir, url, spec, "--report", tmp_path / "report.json", env=bucket.env)
    report = json.loads((tmp_path / "report.json").read_text())
    statuses = {v["id"]: v["status"] for v in report["videos"]}
    assert statuses["moving/right_b"] == "ok" and {v for v, st in statuses.items() if st == "skipped"} == done_before
    assert motionssl("verify", url, env=bucket.env).returncode == 0
    keys = _objects(bucket, "bucket/runs/killed.zarr")
    assert not any(k.endswith(".extract.lock") for k in keys)
    assert len({k.split("/d-")[1].split("/")[0] for k in keys if "right_b/d-" in k}) == 1  # the leftover is gone

    local = tmp_path / "local.zarr"
    extract(synthetic_dir, local, spec)
    a, b = open_store(url), open_store(local)
    assert set(a.videos) == SYNTHETIC_IDS
    for vid in SYNTHETIC_IDS:
        assert set(a.arrays(vid)) == set(b.arrays(vid))
        for name in b.arrays(vid):
            np.testing.assert_array_equal(a.read(vid, name), b.read(vid, name), err_msg=f"{vid}/{name}")
        np.testing.assert_array_equal(a.read_at(vid, "rgb", [5, 1, 5]), b.read_at(vid, "rgb", [5, 1, 5]))
    assert _no_secret(bucket, r.stdout + r.stderr, *keys.values())


def test_a_second_extract_is_refused_while_the_lock_holder_lives(bucket, synthetic_dir, tmp_path):
    """The lock is an object created only if absent (S3: If-None-Match: *; GCS: ifGenerationMatch=0): a second
    create of it is refused, and an extract while its holder (this process) lives stops with one line naming it."""
    from motionssl.stores.remote import Remote, acquire_remote_lock

    remote = Remote(bucket.url("runs/locked.zarr"))
    seen = len(bucket.requests or [])
    assert remote.create("probe", b"first")
    if bucket.requests is not None:  # the request asked for the precondition, whatever the server does with it
        assert any("ifGenerationMatch=0" in line for line in bucket.requests[seen:]), bucket.requests[seen:]
    if not bucket.conditional_create:
        pytest.skip(NO_GCS_PRECONDITIONS)
    assert not remote.create("probe", b"second") and remote.get("probe") == b"first"

    acquire_remote_lock(remote, ".extract.lock", user="extract")
    r = extract(synthetic_dir, remote.url, write_spec(tmp_path / "tiny.yaml"), check=2, env=bucket.env)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{remote.url} is being written by another extract (pid {os.getpid()} on " in lines[0]
    assert lines[0].endswith(f"delete {remote.url}/.extract.lock if that process is gone")
    remote.delete(".extract.lock")


def test_info_pretrain_and_errors_on_object_storage(bucket, synthetic_dir, tmp_path):
    """info (its version), dump, and a tiny pretrain whose DataLoader workers read from the bucket; HDF5 and a
    missing bucket are one-line errors; the secret key is nowhere in what was printed or written."""
    from test_pretrain import TINY

    env, scheme = bucket.env, bucket.scheme
    spec = write_spec(tmp_path / "tiny.yaml")
    url = bucket.url("runs/train.zarr")
    first = extract(synthetic_dir, url, spec, "--report", tmp_path / "report.json", env=env)
    info = json.loads(motionssl("info", url, "--json", env=env, check=0).stdout)
    assert info["totals"]["videos"] == 4 and info["version"].startswith("sha256:")
    assert all(a["bytes"] > 0 for v in info["videos"] for a in v["arrays"].values())
    npy = tmp_path / "mv.npy"
    motionssl("dump", url, "moving/right_b", "mv", "-o", npy, env=env, check=0)
    assert np.load(npy).shape[0] == 20

    run = tmp_path / "run"
    r = motionssl("pretrain", url, "-o", run, *TINY, "--steps", "2", "--batch-size", "2", "--workers", "2",
                  "--option", "queue_size=8", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["store"] == url and summary["store_version"] == info["version"]
    cache = tmp_path / "node-cache"  # the same through the node's cache, shared by both workers
    r = motionssl("pretrain", url, "-o", tmp_path / "cached", *TINY, "--steps", "2", "--batch-size", "2",
                  "--workers", "2", "--option", "queue_size=8", env={**env, "MOTIONSSL_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stderr
    assert any(p.is_file() for p in cache.rglob("*"))
    assert str(cache) not in (tmp_path / "cached" / "config.yaml").read_text()

    r = motionssl("extract", synthetic_dir, "-o", bucket.url("runs/h.h5store"), "--format", "hdf5", "--spec", spec,
                  "--no-progress", env=env)
    assert r.returncode == 2 and "stores on object storage are Zarr" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = motionssl("extract", synthetic_dir, "-o", f"{scheme}://no-such-bucket/x.zarr", "--spec", spec,
                  "--no-progress", env=env)
    assert r.returncode == 2 and f"cannot write to {scheme}://no-such-bucket/x.zarr" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = motionssl("info", bucket.url("nothing.zarr"), env=env)
    assert r.returncode == 2 and "is not a motionssl store" in r.stderr

    from motionssl.stores import StoreError, open_store

    fs = bucket.fs()
    shard = sorted(k for k in fs.find("bucket/runs/train.zarr/videos/hevc") if "/rgb/c/" in k)[0]
    fs.rm_file(shard)  # damage: a missing shard object is an error, never zeros
    r = motionssl("verify", url, env=env)
    assert r.returncode == 1 and "hevc: rgb: chunk file" in r.stdout and "is missing or empty" in r.stdout
    with pytest.raises(StoreError, match="cannot read rgb of video 'hevc'"):
        open_store(url).read("hevc", "rgb", 0, 2)

    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert _no_secret(bucket, *written, *_objects(bucket, "bucket/runs").values(),
                      first.stdout + first.stderr + r.stdout + r.stderr)


def _write_video(root, vid: str, spec, seed: int, frames: int = 40) -> dict:
    """One video of random rgb (H.264 or Blosc, per the spec), mv (float16) and mv_valid through the real writer."""
    from motionssl.stores import make_writer

    rng = np.random.default_rng(seed)
    w = make_writer(root, "zarr", vid, spec)
    w.add_array("rgb", (24, 32, 3), np.uint8)
    w.add_array("mv", (6, 8, 2), np.float16)
    w.add_array("mv_valid", (6, 8), np.bool_)
    w.add_array("pts", (), np.float64, chunk=4096, shard=4096)
    for t in range(frames):
        w.append("rgb", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
        mv = rng.normal(0, 3, (6, 8, 2)).astype(np.float16)
        w.append("mv", mv)
        w.append("mv_valid", mv[..., 0] > 0)
        w.append("pts", np.float64(t / 25))
    return w.commit({"id": vid, "frames": frames, "spec_digest": spec.digest})


def _count_rounds(monkeypatch, bucket: Bucket, remote, rounds: list) -> None:
    """Record the number of ranges of each `remote.get_ranges` call, and check that each range cost the server one
    GET (where it logs requests): no request asks an object's size first."""
    get_ranges = remote.get_ranges

    def counted(ranges):
        seen = len(bucket.requests or [])
        got = get_ranges(ranges)
        rounds.append(len(ranges))
        if bucket.requests is not None:
            sent = bucket.requests[seen:]
            assert len(sent) == len(ranges) and all(line.startswith("GET ") for line in sent), sent
        return got

    monkeypatch.setattr(remote, "get_ranges", counted)


@pytest.mark.parametrize("rgb_codec", ["blosc", "h264"])
def test_a_clip_from_object_storage_is_the_clip_from_disk_fetched_in_one_round_of_requests(bucket, tmp_path,
                                                                                            monkeypatch, rgb_codec):
    """The remote reader (chunks of every array of a clip in one round of ranged GETs, shard indices kept per
    reader) decodes exactly what the disk reader and zarr-python decode; a shard bigger than the tail it asks first
    takes a second round; a re-extracted video is read from its new attempt, never through the old one's indices."""
    import zarr

    from conftest import TINY_SPEC
    from motionssl.data_specs import spec_from_dict
    from motionssl.stores import StoreError, init_store, open_store, write_index
    from motionssl.stores import zarr_backend

    spec = spec_from_dict({**TINY_SPEC, "storage": {**TINY_SPEC["storage"], "rgb_codec": rgb_codec}})
    url = bucket.url(f"clips-{rgb_codec}.zarr")
    for root in (tmp_path / "s.zarr", url):
        init_store(root, "zarr", spec)
        write_index(root, {"v": _write_video(root, "v", spec, 0)})
    local, remote = open_store(tmp_path / "s.zarr"), open_store(url)
    names = ["mv", "mv_valid", "pts", "rgb"]
    # the last N bytes of an object, or a range of it, whatever the server does with a suffix range (the GCS
    # emulator answers one with the whole object)
    shard = next(k for k in remote.remote.find("videos/v") if "/rgb/c/" in k)
    whole = remote.remote.get(shard)
    parts = remote.remote.get_ranges([(shard, -100, None), (shard, 10, 20), (shard, -len(whole) - 9, None)])
    assert len(whole) > 100 and parts == [whole[-100:], whole[10:20], whole]
    rounds = []
    _count_rounds(monkeypatch, bucket, remote.remote, rounds)

    clip = np.array([13, 14, 15, 16, 17, 33])  # across shards 0, 1 and 2 of 16 frames
    got = remote.read_arrays("v", names, clip)
    want = local.read_arrays("v", names, clip)
    for name in names:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name
        on_disk = zarr.open_array(str(tmp_path / "s.zarr" / "videos" / "v" / name), mode="r")
        assert np.array_equal(on_disk.get_orthogonal_selection((clip,)), got[name]), name
    # first touch: one round of tails (3 shards each of rgb, mv, mv_valid; pts, one unsharded chunk, is zarr's);
    # each shard is whole in its tail
    assert rounds == [9], rounds
    rounds.clear()
    again = remote.read_arrays("v", names, np.arange(20, 36))  # shards 1 and 2, indices kept: one round of ranges
    assert rounds == [6], rounds
    np.testing.assert_array_equal(again["rgb"], local.read("v", "rgb", 20, 36))

    # shards larger than the tail asked first: indices from the tail, chunks in a second round of ranges
    monkeypatch.setattr(zarr_backend, "TAIL_BYTES", 100)
    fresh = open_store(url)
    rounds.clear()
    _count_rounds(monkeypatch, bucket, fresh.remote, rounds)
    got = fresh.read_arrays("v", names, clip)
    assert len(rounds) == 2 and rounds[0] == 9 and 3 <= rounds[1] <= 9, rounds
    for name in names:
        assert np.array_equal(got[name], want[name]), name

    # re-extracted under a new attempt: a new reader reads the new data; the old one fails, never mixes the two
    old_prefix = remote._open("v").prefix
    write_index(url, {"v": _write_video(url, "v", spec, 1)})
    new = open_store(url)
    assert new._open("v").prefix != old_prefix
    init_store(tmp_path / "t.zarr", "zarr", spec)
    write_index(tmp_path / "t.zarr", {"v": _write_video(tmp_path / "t.zarr", "v", spec, 1)})
    np.testing.assert_array_equal(new.read_at("v", "rgb", clip), open_store(tmp_path / "t.zarr").read_at("v", "rgb", clip))
    with pytest.raises(StoreError, match="cannot read .*of video 'v'"):
        remote.read_arrays("v", names, clip)


def test_the_node_cache_serves_repeated_reads_without_requests_and_never_stale_or_damaged_bytes(bucket, tmp_path,
                                                                                              monkeypatch):
    """With MOTIONSSL_CACHE_DIR: a clip reads what the disk reader reads; its shards are fetched whole in one round
    and kept; a store opened later (another process, another epoch) reads them with no request at all; a damaged
    cache file is fetched again; a re-extracted video is read from its new attempt; `verify` checks the bucket,
    never the cache."""
    from conftest import TINY_SPEC
    from motionssl.data_specs import spec_from_dict
    from motionssl.stores import StoreError, init_store, open_store, write_index
    from motionssl.stores.shard_cache import ShardCache
    from motionssl.stores.verify import verify_store

    spec = spec_from_dict(TINY_SPEC)
    url = bucket.url("cached.zarr")
    for root in (tmp_path / "s.zarr", url):
        init_store(root, "zarr", spec)
        write_index(root, {"v": _write_video(root, "v", spec, 0)})
    local = open_store(tmp_path / "s.zarr")
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("MOTIONSSL_CACHE_DIR", str(cache_dir))
    names, clip = ["mv", "mv_valid", "rgb"], np.array([13, 14, 15, 16, 17, 33])
    want = local.read_arrays("v", names, clip)

    def reads(store) -> list:
        """Each read the store's client makes: ('many', n objects) or ('ranges', n ranges)."""
        calls, remote = [], store.remote
        get_many, get_ranges = remote.get_many, remote.get_ranges
        monkeypatch.setattr(remote, "get_many", lambda rels: calls.append(("many", len(rels))) or get_many(rels))
        monkeypatch.setattr(remote, "get_ranges", lambda r: calls.append(("ranges", len(r))) or get_ranges(r))
        return calls

    store = open_store(url)
    assert isinstance(store.remote.cache, ShardCache)
    store._open("v")  # the commit record, fetched as without the cache
    calls = reads(store)
    got = store.read_arrays("v", names, clip)
    assert calls == [("many", 9)], calls  # shards 0, 1 and 2 of three arrays, whole, one round
    for name in names:
        assert np.array_equal(got[name], want[name]), name
    files = sorted(p for p in cache_dir.rglob("*") if p.is_file())
    assert len(files) == 9 and all(p.resolve().is_relative_to(cache_dir.resolve()) for p in files)

    later = open_store(url)  # a new reader: its indices not kept, the cache is
    later._open("v")
    calls = reads(later)
    for indices in (clip, np.arange(20, 36), np.arange(40)[::-3]):
        got = later.read_arrays("v", names, indices)
        for name in names:
            assert np.array_equal(got[name], local.read_arrays("v", [name], indices)[name]), name
    assert calls == [("many", 0)] * 3, calls

    files[0].write_bytes(files[0].read_bytes()[:-20] + bytes(20))  # torn or damaged on the node's disk
    third = open_store(url)
    third._open("v")
    calls = reads(third)
    got = third.read_arrays("v", names, clip)
    assert calls == [("many", 1)], calls
    for name in names:
        assert np.array_equal(got[name], want[name]), name

    # re-extracted: a new attempt, other keys, so nothing kept for the old one is read for it
    write_index(url, {"v": _write_video(url, "v", spec, 1)})
    init_store(tmp_path / "t.zarr", "zarr", spec)
    write_index(tmp_path / "t.zarr", {"v": _write_video(tmp_path / "t.zarr", "v", spec, 1)})
    np.testing.assert_array_equal(open_store(url).read_at("v", "rgb", clip),
                                  open_store(tmp_path / "t.zarr").read_at("v", "rgb", clip))

    # a shard gone from the bucket: verify names it though the cache holds it, and a cached read still works
    fs = bucket.fs()
    prefix = open_store(url)._open("v").prefix
    open_store(url).read_arrays("v", names, np.arange(40))  # every shard of the new attempt cached
    shard = sorted(k for k in fs.find(f"bucket/cached.zarr/{prefix}/rgb") if "/c/" in k)[0]
    fs.rm_file(shard)
    problems = verify_store(open_store(url))
    assert any("rgb: chunk file" in p and "missing" in p for p in problems), problems
    assert open_store(url).read_at("v", "rgb", clip).shape[0] == len(clip)

    monkeypatch.setenv("MOTIONSSL_CACHE_GB", "lots")
    with pytest.raises(StoreError, match="MOTIONSSL_CACHE_GB='lots' is not a positive number"):
        open_store(url)
