"""Stores on object storage (`s3://bucket/prefix/x.zarr`, `gs://...`, any fsspec URL): Zarr only.

Object stores have no rename, so a video cannot appear at once by moving a finished directory into place. Instead
(data_specs/README.md, "Object storage"):

- a video's writer finishes it in a local staging directory (the same writer as on disk), then uploads its arrays
  under a prefix of its own, `videos/<id>/d-<token>/`, that no reader looks at yet;
- its **commit record**, `videos/<id>/zarr.json` (a Zarr group document whose attributes hold the video's meta,
  the token and every array's document), is written last, in one PUT: S3 and GCS make a single object appear
  whole or not at all. Readers open a video only through its commit record, so they never see a partial one;
- a killed upload leaves only an unreferenced `d-<token>/` prefix: invisible, named by `verify`, and removed when
  that video is next committed; a rerun redoes the video under a new token;
- `--overwrite`, and two writers of one video, each upload under their own token: whichever commit record lands
  last wins, and either is a complete video. Two `extract` runs on one store are refused anyway by the lock, an
  object created only if absent (a conditional PUT: `If-None-Match: *` on S3, `ifGenerationMatch=0` on GCS).

Credentials come from the client library's own chain (for s3fs/botocore: AWS_* variables, ~/.aws/config and
credentials, instance roles; AWS_ENDPOINT_URL for S3-compatible servers; for gcsfs: GOOGLE_APPLICATION_CREDENTIALS,
gcloud's config, the metadata server; STORAGE_EMULATOR_HOST for an emulator). motionssl never reads, prints or
writes them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

from motionssl.stores.layout import VIDEOS
from motionssl.stores.zarr_writer import ZarrVideoWriter

COMMIT = "zarr.json"  # the video group's document: the commit record
DATA_MARK = "d-"  # prefix of one attempt's arrays under videos/<id>/
CONCURRENCY = 64  # requests in flight in one batch
GCS = ("gs", "gcs")  # gcsfs's schemes


def is_url(path) -> bool:
    """A store given as a URL (s3://, gs://, ...), not a local path."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


class RemoteError(Exception):
    """Object storage that cannot be used as asked; the message says what to do."""


class Remote:
    """A store root on object storage: small-object reads and writes, relative to the root. Picklable: each
    process makes its own filesystem client (fsspec clients are not fork-safe)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.scheme = self.url.split("://", 1)[0]
        self._fs = None
        self._pid = None
        self._signed = None
        self.root = self.fs._strip_protocol(self.url).rstrip("/")
        self.cache = None  # a ShardCache (`shard_cache.py`) for the readers' shard objects, set by Store
        self._endpoint = None

    def location(self, rel: str) -> str:
        """Where `rel` is, for the cache: scheme, endpoint (an S3-compatible server, an emulator) and key."""
        if self._endpoint is None:
            if self.scheme in GCS:
                self._endpoint = os.environ.get("STORAGE_EMULATOR_HOST", "")
            elif self.scheme in ("s3", "s3a"):
                self._endpoint = getattr(self.fs, "endpoint_url", None) \
                    or (self.fs.client_kwargs or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") \
                    or os.environ.get("AWS_ENDPOINT_URL", "")
            else:
                self._endpoint = ""
        return f"{self.scheme}\0{self._endpoint}\0{self.key(rel)}"

    @property
    def fs(self):
        if self._fs is None or self._pid != os.getpid():
            try:
                import fsspec

                # No listings cache: a listing must never hide an object written after it (a commit record).
                self._fs = fsspec.filesystem(self.scheme, use_listings_cache=False)
                self._signed = None  # the signed-GET client of this process's filesystem, made on first read
            except (ImportError, ValueError) as e:
                extra = "gs" if self.scheme in GCS else "s3"
                raise RemoteError(f"{self.url}: {self.scheme}:// stores need the client library: pip install "
                                  f"'motionssl[{extra}]' ({type(e).__name__}: {e})") from None
            self._pid = os.getpid()
        return self._fs

    def __getstate__(self):
        return {**self.__dict__, "_fs": None, "_pid": None, "_signed": None}

    @property
    def _one_get(self) -> dict:
        """Each read one GET. To split a large read into concurrent parts, s3fs asks an object's size (a HEAD) before
        a whole read, and gcsfs 2026.4-2026.8 its metadata (two requests) before any read, turning a suffix range (the
        last N bytes) into an explicit one, invalid for an object shorter than N. Ours are small."""
        if self.scheme in ("s3", "s3a"):
            return {"max_concurrency": 1}
        return {"concurrency": 1} if self.scheme in GCS else {}

    def key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    # -- single objects
    def get(self, rel: str) -> bytes | None:
        return self.get_many([rel])[rel]

    def get_json(self, rel: str):
        data = self.get(rel)
        return None if data is None else json.loads(data)

    def put(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self.key(rel), data)

    def put_json(self, rel: str, obj) -> None:
        self.put(rel, json.dumps(obj, indent=1, sort_keys=True).encode())

    def create(self, rel: str, data: bytes) -> bool:
        """Write `rel` only if it does not exist (a conditional PUT); False when it does."""
        try:
            self.fs.pipe_file(self.key(rel), data, mode="create")
        except FileExistsError:
            return False
        return True

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.key(rel))
        except FileNotFoundError:
            pass

    def delete_prefix(self, rel: str) -> None:
        try:
            self.fs.rm(self.key(rel), recursive=True)
        except FileNotFoundError:
            pass

    # -- many objects at once: one round trip of latency for the batch, not one per object
    def get_many(self, rels: list[str]) -> dict[str, bytes | None]:
        """{rel: bytes, or None where absent}, fetched concurrently."""
        async def one(fs, rel):
            try:
                return await self._read(fs, rel)
            except FileNotFoundError:
                return None

        if not getattr(self.fs, "async_impl", False):
            got = {}
            for rel in rels:
                try:
                    got[rel] = self.fs.cat_file(self.key(rel))
                except FileNotFoundError:
                    got[rel] = None
            return got
        return dict(zip(rels, self._concurrently([lambda fs, r=r: one(fs, r) for r in rels])))

    def get_ranges(self, ranges: list[tuple[str, int, int | None]]) -> list[bytes]:
        """The bytes [start, end) of each (rel, start, end), fetched concurrently: one round trip for the lot.
        start < 0 with end None: the object's last -start bytes (all of it when it is smaller). A missing object
        raises FileNotFoundError."""
        if not getattr(self.fs, "async_impl", False):
            got = [self.fs.cat_file(self.key(rel), start=start, end=end) for rel, start, end in ranges]
        else:
            got = self._concurrently([lambda fs, r=r: self._read(fs, *r) for r in ranges])
        return [_within(data, start, end) for data, (_, start, end) in zip(got, ranges)]

    async def _read(self, fs, rel: str, start: int | None = None, end: int | None = None) -> bytes:
        """One GET on the async client's loop: by signed URL on S3 (`s3_get.py`), else the client's own."""
        if self._signed is None and self.scheme in ("s3", "s3a"):
            from motionssl.stores import s3_get

            self._signed = s3_get.for_fs(fs) or False
        if self.scheme not in ("s3", "s3a"):
            return await fs._cat_file(self.key(rel), start=start, end=end, **self._one_get)
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        try:
            if self._signed:
                return await self._signed.get(self.key(rel), start, end)
            return await fs._cat_file(self.key(rel), start=start, end=end, **self._one_get)
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise PermissionError(f"{self.url}: {e}; give your s3 client credentials (AWS_ACCESS_KEY_ID and "
                                  f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials or an instance role)"
                                  ) from None

    def _concurrently(self, calls: list) -> list:
        """Each call(fs), an awaitable, run concurrently (at most CONCURRENCY in flight) on the async client's event
        loop; the results in order."""
        if not calls:
            return []
        import asyncio  # here: extract imports this module before it forks its decoders, which never need it

        from fsspec.asyn import sync

        fs = self.fs

        async def run_all():
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(call):
                async with gate:
                    return await call(fs)

            return await asyncio.gather(*(one(c) for c in calls))

        return list(sync(fs.loop, run_all))

    def put_many(self, objects: dict[str, bytes]) -> None:
        if objects:
            self.fs.pipe({self.key(rel): data for rel, data in objects.items()}, batch_size=CONCURRENCY)

    def listdir(self, rel: str) -> list[str]:
        """Names directly under `rel/` (objects and common prefixes); [] when there are none."""
        try:
            entries = self.fs.ls(self.key(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def find(self, rel: str) -> dict[str, int]:
        """{key relative to the root: size} of every object under `rel/`."""
        try:
            found = self.fs.find(self.key(rel), detail=True)
        except FileNotFoundError:
            return {}
        cut = len(self.root) + 1
        return {k[cut:]: int(v.get("size") or 0) for k, v in found.items()}


def _within(data: bytes, start: int, end: int | None) -> bytes:
    """The asked part of a ranged read's reply. A server may ignore a Range header and send the whole object (HTTP
    allows it; gcp-storage-emulator does so for a suffix range), which is then longer than what was asked."""
    asked = -start if end is None and start < 0 else None if end is None else end - start
    if asked is not None and len(data) > asked:
        return data[start:end]
    return data


def video_prefix(video_id: str) -> str:
    return f"{VIDEOS}/{video_id}"


def commit_key(video_id: str) -> str:
    return f"{video_prefix(video_id)}/{COMMIT}"


def read_commit(remote: Remote, video_id: str) -> dict | None:
    """The attributes of a video's commit record (motionssl_video, motionssl_data, motionssl_arrays), or None."""
    return parse_commit(remote.get(commit_key(video_id)))


def parse_commit(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        attrs = json.loads(data).get("attributes", {})
    except (ValueError, AttributeError):
        return None
    return attrs if "motionssl_video" in attrs and "motionssl_data" in attrs else None


def scan_commits(remote: Remote, *, keys: dict[str, int] | None = None) -> tuple[dict[str, dict], list[str]]:
    """({video id: commit attributes}, [uncommitted attempt prefixes]) found by listing every object of the store
    (or given `keys`, that listing): the slow path, for `verify` and for a store whose index was never written."""
    keys = remote.find(VIDEOS) if keys is None else keys
    records = [k for k in keys if k.endswith("/" + COMMIT) and f"/{DATA_MARK}" not in k]
    attempts = {k.split(f"/{DATA_MARK}", 1)[0] + "/" + DATA_MARK + k.split(f"/{DATA_MARK}", 1)[1].split("/", 1)[0]
                for k in keys if f"/{DATA_MARK}" in k}
    found = {}
    for key, data in remote.get_many(records).items():
        attrs = parse_commit(data)
        if attrs is not None:
            found[key[len(VIDEOS) + 1:-len(COMMIT) - 1]] = attrs
    live = {f"{video_prefix(vid)}/{a['motionssl_data']}" for vid, a in found.items()}
    return found, sorted(attempts - live)


def stage_dir(url: str, video_id: str) -> Path:
    """The local directory where one video of a remote store is finished before upload; removed after."""
    digest = hashlib.sha1(f"{url}\0{video_id}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "motionssl-stage" / digest


class RemoteZarrVideoWriter(ZarrVideoWriter):
    """The Zarr writer, staged locally and published by upload + commit record (module docstring)."""

    def __init__(self, url: str, video_id: str, spec):
        self.remote, self.video_id = Remote(url), video_id
        self.stage = stage_dir(url, video_id)
        shutil.rmtree(self.stage, ignore_errors=True)  # what a killed decoder left
        self.stage.mkdir(parents=True)
        super().__init__(self.stage / "video", spec)

    def _publish(self) -> None:
        from motionssl.stores import fault_injection

        prefix = video_prefix(self.video_id)
        token = DATA_MARK + uuid.uuid4().hex[:12]
        group = json.loads((self.tmp / COMMIT).read_text())
        objects = {f"{prefix}/{token}/{p.relative_to(self.tmp).as_posix()}": p.read_bytes()
                   for p in sorted(self.tmp.rglob("*")) if p.is_file() and p != self.tmp / COMMIT}
        objects[f"{prefix}/{token}/{COMMIT}"] = json.dumps({**group, "attributes": {}}).encode()
        self.remote.put_many(objects)
        if "kill-commit" in fault_injection.armed(self.video_id):  # the arrays are up, the record is not
            fault_injection.record("kill-commit", self.video_id)
            os.killpg(os.getpgid(os.getppid()), 9)  # the extract process (its parent) and its whole group
        arrays = {name: json.loads((self.tmp / name / COMMIT).read_text()) for name in self.arrays}
        group["attributes"] = {**group["attributes"], "motionssl_data": token, "motionssl_arrays": arrays}
        self.remote.put(commit_key(self.video_id), json.dumps(group).encode())  # the commit
        for name in self.remote.listdir(prefix):  # earlier attempts: overwritten or killed before their commit
            if name.startswith(DATA_MARK) and name != token:
                self.remote.delete_prefix(f"{prefix}/{name}")
        shutil.rmtree(self.stage, ignore_errors=True)

    def abort(self) -> None:
        try:
            super().abort()
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)


def acquire_remote_lock(remote: Remote, name: str, *, user: str) -> str:
    """The lock of `stores.lock.acquire_lock` as an object created only if absent; returns its key."""
    from motionssl.stores.lock import Locked, _pid_alive, refusal

    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        if remote.create(name, json.dumps(me).encode()):
            return name
        try:
            holder = remote.get_json(name) or {}
        except ValueError:
            holder = {}
        if holder.get("host") == me["host"] and not _pid_alive(holder.get("pid", -1)):
            remote.delete(name)  # stale: its process is gone
            continue
        raise Locked(refusal(remote.url, remote.url_of(name), holder, user))
    raise Locked(f"could not take the lock {remote.url_of(name)}")
