"""The node-local cache of shard objects (stores/shard_cache.py), on its own: bytes kept and checked, paths that
stay inside its directory, eviction of the least recently used files down to its bound, and a disk it cannot
write, which never fails a read. Its use by the reader, against S3 and GCS servers: test_object_store.py."""
import os
import warnings

import pytest

from motionssl.stores.shard_cache import TRAILER, CacheError, ShardCache


def test_bytes_are_kept_checked_and_named_inside_the_directory(tmp_path):
    cache = ShardCache(tmp_path / "c", 10**9)
    cache.directory.mkdir()
    hostile = "s3\0\0bucket/x.zarr/../../../../etc/passwd"
    assert cache.get(hostile) is None
    cache.put(hostile, b"shard bytes")
    assert cache.get(hostile) == b"shard bytes"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [cache.path(hostile)] and files[0].parent.parent == cache.directory
    assert files[0].stat().st_size == len(b"shard bytes") + TRAILER
    cache.put("empty", b"")
    assert cache.get("empty") == b""

    for damage in (lambda d: d[:-1], lambda d: b"X" + d[1:], lambda d: d[:3]):  # torn, flipped, short
        cache.put("k", b"0123456789")
        path = cache.path("k")
        path.write_bytes(damage(path.read_bytes()))
        assert cache.get("k") is None and not path.exists()


def test_eviction_keeps_the_bound_and_the_most_recently_used(tmp_path):
    roomy = ShardCache(tmp_path, max_bytes=10**9)
    for i in range(10):
        roomy.put(f"k{i}", bytes([i]) * 100)
        os.utime(roomy.path(f"k{i}"), (1000 + i, 1000 + i))
    cache = ShardCache(tmp_path, max_bytes=8 * (100 + TRAILER))  # holds 10: three go, down to 9/10 of 8
    cache.get("k0")  # used now: the most recent
    assert cache.evict() == 7 * (100 + TRAILER)
    kept = [i for i in range(10) if cache.path(f"k{i}").exists()]
    assert kept == [0, 4, 5, 6, 7, 8, 9], kept
    for i in range(10, 40):  # a process that writes more than an eighth of the bound since it looked evicts
        cache.put(f"k{i}", bytes(100))
    held = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert held <= cache.max_bytes

    dead = cache.path("k9").with_name(".tmp-dead-write")
    dead.write_bytes(b"half")
    os.utime(dead, (1000, 1000))
    live = cache.path("k9").with_name(".tmp-live-write")
    live.write_bytes(b"half")
    cache.evict()
    assert not dead.exists() and live.exists()


def test_a_disk_it_cannot_write_warns_once_and_reads_go_on(tmp_path):
    cache = ShardCache(tmp_path, 10**9)
    for name in ("a", "b"):
        cache.path(name).parent.write_bytes(b"a file where its subdirectory goes")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache.put("a", b"x")
        cache.put("b", b"y")
    assert cache.get("a") is None
    assert len(caught) == 1 and "MOTIONSSL_CACHE_DIR" in str(caught[0].message)


def test_the_environment_chooses_it_and_bad_values_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MOTIONSSL_CACHE_DIR", raising=False)
    assert ShardCache.from_env() is None
    monkeypatch.setenv("MOTIONSSL_CACHE_DIR", str(tmp_path / "new" / "cache"))
    monkeypatch.setenv("MOTIONSSL_CACHE_GB", "2.5")
    cache = ShardCache.from_env()
    assert cache.directory.is_dir() and cache.max_bytes == 2_500_000_000
    for bad in ("0", "-1", "nan", "lots"):
        monkeypatch.setenv("MOTIONSSL_CACHE_GB", bad)
        with pytest.raises(CacheError, match="is not a positive number of gigabytes"):
            ShardCache.from_env()
    monkeypatch.delenv("MOTIONSSL_CACHE_GB")
    (tmp_path / "file").write_bytes(b"")
    monkeypatch.setenv("MOTIONSSL_CACHE_DIR", str(tmp_path / "file" / "cache"))
    with pytest.raises(CacheError, match="cannot create it .*unset it to read without a cache") as e:
        ShardCache.from_env()
    assert "\n" not in str(e.value)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # as /tmp is: anyone could plant files there
    monkeypatch.setenv("MOTIONSSL_CACHE_DIR", str(shared))
    with pytest.raises(CacheError, match="is not a directory of yours alone .*mode 777"):
        ShardCache.from_env()
    monkeypatch.setenv("MOTIONSSL_CACHE_DIR", str(tmp_path / "mine"))
    assert (ShardCache.from_env().directory.stat().st_mode & 0o777) == 0o700


def test_a_process_expects_waits_only_after_a_recent_miss(tmp_path):
    """`missing()` decides whether a batch is drawn in threads (reads wait on the bucket) or one sample after another
    (every recent read a file's): a new process expects hits; a miss makes it expect waits for RECENT lookups."""
    from motionssl.stores.shard_cache import RECENT

    cache = ShardCache(tmp_path, 10**9)
    assert not cache.missing()
    cache.put("k", b"x")
    assert cache.get("absent") is None and cache.missing()
    for _ in range(RECENT - 1):
        assert cache.get("k") == b"x" and cache.missing()
    assert cache.get("k") == b"x" and not cache.missing()
