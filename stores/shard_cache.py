"""A node-local disk cache of the shard objects a reader fetches from object storage (MOTIONSSL_CACHE_DIR).

Training reads every video again each epoch. On disk the page cache serves the repeats; object storage has none,
so each epoch would pay the bucket's requests again. With MOTIONSSL_CACHE_DIR set, a reader fetches each shard
object it touches whole, once, keeps it in that directory, and serves later clips of that shard from there; every
process of the node (DataLoader workers, torchrun's ranks) shares it. The cache is a machine's setting, not a run's,
so it is an environment variable (inherited by workers, ranks and srun) and never written into a run's config.

Only the objects of an attempt (`videos/<id>/d-<token>/...`) are kept: they are written once and never change, and a
re-extracted video is another attempt, other keys (`remote.py`). Commit records and the index are always fetched.
The directory must be the user's own, writable by no one else (others could plant files that pass the check). A
file is named by the SHA-256 of its object's location (scheme, endpoint and key), so no store's key can name a
path outside the directory, and holds the object's bytes, their length and a crc32c: one that does not check (a
torn or damaged file) is a miss, deleted and fetched again. Files appear by rename, whole or not at all; many
processes may write at once. The size is bounded by MOTIONSSL_CACHE_GB (default 50): a process that has written
an eighth of it since it last looked deletes the least recently used files down to nine tenths.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
import warnings
from pathlib import Path

import google_crc32c

ENV_DIR, ENV_GB = "MOTIONSSL_CACHE_DIR", "MOTIONSSL_CACHE_GB"
DEFAULT_GB = 50.0
TRAILER = 12  # bytes after the object's: its length (uint64) and crc32c, little-endian
TMP = ".tmp-"
RECENT = 256  # lookups without a miss after which a process stops expecting its reads to wait


class CacheError(Exception):
    """MOTIONSSL_CACHE_DIR or MOTIONSSL_CACHE_GB set to something unusable; the message says what to do."""


class ShardCache:
    def __init__(self, directory: Path | str, max_bytes: int):
        self.directory, self.max_bytes = Path(directory), int(max_bytes)
        self._root = str(self.directory)
        self._written = 0  # bytes this process wrote since it last measured the cache
        self._warned = False
        self.lookups, self.last_miss = 0, -RECENT  # a new process expects hits: a miss costs it one batch's rounds

    @classmethod
    def from_env(cls) -> ShardCache | None:
        """The cache MOTIONSSL_CACHE_DIR names (its directory created), or None when it is unset or empty."""
        where = os.environ.get(ENV_DIR, "").strip()
        if not where:
            return None
        text = os.environ.get(ENV_GB, "").strip() or str(DEFAULT_GB)
        try:
            gb = float(text)
        except ValueError:
            gb = -1.0
        if not gb > 0:
            raise CacheError(f"{ENV_GB}={text!r} is not a positive number of gigabytes; set it (e.g. 50) or unset it")
        directory = Path(where).expanduser()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = directory.stat()
        except OSError as e:
            raise CacheError(f"{ENV_DIR}={where}: cannot create it ({e.strerror}); set it to a writable local "
                             f"directory, or unset it to read without a cache") from None
        if st.st_uid != os.getuid() or st.st_mode & 0o022:  # others could plant bytes that check
            raise CacheError(f"{ENV_DIR}={where} is not a directory of yours alone (owner uid {st.st_uid}, mode "
                             f"{st.st_mode & 0o777:o}); name a new directory, which motionssl creates with mode 700")
        return cls(directory, int(gb * 1e9))

    def path(self, location: str) -> Path:
        return Path(self._file(location))

    def _file(self, location: str) -> str:
        digest = hashlib.sha256(location.encode()).hexdigest()
        return os.path.join(self._root, digest[:2], digest[2:])

    def get(self, location: str) -> bytes | None:
        """The object's bytes, or None when they are not here (or fail their check: that file is deleted)."""
        self.lookups += 1
        path = self._file(location)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:  # absent, or deleted by another process's eviction meanwhile
            self.last_miss = self.lookups
            return None
        body, trailer = data[:-TRAILER], data[-TRAILER:]
        if len(data) < TRAILER or int.from_bytes(trailer[:8], "little") != len(body) \
                or int.from_bytes(trailer[8:], "little") != google_crc32c.value(body):
            with contextlib.suppress(OSError):
                os.unlink(path)
            self.last_miss = self.lookups
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # the eviction's recency
        return body

    def missing(self) -> bool:
        """Whether reads wait on the bucket: a miss among this process's last RECENT lookups."""
        return self.lookups - self.last_miss < RECENT

    def put(self, location: str, data: bytes) -> None:
        """Keep the object's bytes. Best effort: a full or read-only disk warns once and leaves reads uncached."""
        path = self._file(location)
        tmp = f"{os.path.dirname(path)}/{TMP}{os.path.basename(path)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        trailer = len(data).to_bytes(8, "little") + google_crc32c.value(data).to_bytes(4, "little")
        try:
            try:
                f = open(tmp, "wb")
            except FileNotFoundError:  # the first file of its subdirectory
                os.makedirs(os.path.dirname(path), exist_ok=True)
                f = open(tmp, "wb")
            with f:
                f.write(data)
                f.write(trailer)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._warn(e)
            return
        self._written += len(data) + TRAILER
        if self._written > self.max_bytes // 8:
            try:
                self.evict()
            except OSError as e:
                self._warn(e)

    def _warn(self, e: OSError) -> None:
        if not self._warned:
            warnings.warn(f"{ENV_DIR}={self.directory}: {e.strerror or e}; reads go on, but the cache may miss or "
                          f"outgrow {ENV_GB}")
            self._warned = True

    def evict(self) -> int:
        """Delete the least recently used files until the cache holds at most nine tenths of its bound, and the
        leftovers of writes that died over an hour ago; the bytes it now holds."""
        self._written = 0
        files, stale = [], time.time() - 3600
        for sub in os.scandir(self.directory):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:  # deleted by another process meanwhile
                    continue
                if entry.name.startswith(TMP):
                    if st.st_mtime < stale:
                        Path(entry.path).unlink(missing_ok=True)
                    continue
                files.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes * 9 // 10:
                break
            Path(path).unlink(missing_ok=True)
            total -= size
        return total
