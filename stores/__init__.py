"""The one reader API over both backends, and store creation for `extract`.

    store = open_store("data.zarr")          # or an HDF5 store directory
    store.videos                             # ['class_a/v1', ...]
    store.meta("class_a/v1")["frames"]
    store.read("class_a/v1", "rgb", 10, 26)  # (16, H, W, 3) uint8
    store.read_at("class_a/v1", "mv", [3, 7, 11])

File handles open lazily and per process: a reader pickled into a DataLoader worker or a
forked process reopens its own handles instead of sharing the parent's (which corrupts HDF5).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from motionssl.data_specs import Spec, SpecError, spec_from_dict
from motionssl.stores.layout import (
    FORMAT_VERSION, INDEX, ROOT_META, read_json, scan_videos, video_path, write_atomic, write_json_atomic,
)

FORMATS = ("zarr", "hdf5")


def __getattr__(name: str):
    # Looked up when first asked: importlib.metadata's import is a tenth of a decoder process's start-up.
    if name == "__version__":
        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def package_version() -> str:
    """Recorded in every store's and video's meta; the package metadata is the one source of the number."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("motionssl")
    except PackageNotFoundError:  # a source tree used without `pip install`
        return "0+unknown"


class StoreError(Exception):
    """A store that cannot be used as asked; the message says what to do."""


def _backend(fmt: str):
    if fmt == "zarr":
        from motionssl.stores.zarr_backend import ZarrVideoReader, ZarrVideoWriter
        return ZarrVideoReader, ZarrVideoWriter
    from motionssl.stores.hdf5_backend import HDF5VideoReader, HDF5VideoWriter
    return HDF5VideoReader, HDF5VideoWriter


class Store:
    """A store on disk (`path` a directory) or on object storage (`path` a URL such as s3://bucket/x.zarr; then
    `self.path` is that URL, and `self.remote` reaches it)."""

    def __init__(self, path: str | Path):
        self.remote = _remote(path)
        self.path = self.remote.url if self.remote else Path(path)
        meta_file = f"{self.path}/{ROOT_META}" if self.remote else self.path / ROOT_META
        try:
            self.root_meta = self.remote.get_json(ROOT_META) if self.remote else \
                (read_json(meta_file) if meta_file.is_file() else None)
        except ValueError as e:
            raise StoreError(f"{meta_file} is not valid JSON ({e}); the store is damaged") from None
        except OSError as e:  # object storage: no such bucket, no access
            raise StoreError(f"cannot read {meta_file} ({type(e).__name__}: {e}); check the URL and the "
                             f"credentials of your {self.remote.scheme} client") from None
        if self.root_meta is None:
            raise StoreError(f"{self.path} is not a motionssl store (no {ROOT_META}); create one with `motionssl extract`")
        if self.remote:
            from motionssl.stores.shard_cache import CacheError, ShardCache

            try:
                self.remote.cache = ShardCache.from_env()
            except CacheError as e:
                raise StoreError(str(e)) from None
        version = self.root_meta.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format_version {version} is not known to motionssl {package_version()} "
                             f"(knows {FORMAT_VERSION}); upgrade motionssl or re-extract")
        self.format = self.root_meta["format"]
        if self.format not in FORMATS:
            raise StoreError(f"{self.path}: unknown store format {self.format!r}")
        try:
            self.spec: Spec = spec_from_dict(self.root_meta["spec"], source=f"{self.path} (recorded spec)",
                                             recorded=True)
        except SpecError as e:
            raise StoreError(str(e)) from None
        self._reader_cls = _backend(self.format)[0]
        self._readers: dict[str, object] = {}
        self._pid = os.getpid()
        self._index: dict[str, dict] | None = None
        self._videos: list[str] | None = None  # the sorted listing: sorted once, not on every look
        self._version: str | None = None

    # -- listing
    @property
    def index(self) -> dict[str, dict]:
        if self._index is None and self.remote:
            data = self.remote.get(INDEX)
            if data is None:  # no index yet (extract never finished): list the commit records
                from motionssl.stores.remote import scan_commits

                self._index = {vid: a["motionssl_video"] for vid, a in scan_commits(self.remote)[0].items()}
            else:
                self._index, self._version = parse_index(data)
        if self._index is None:
            index_file = self.path / INDEX
            if index_file.is_file():
                with open(index_file, "rb") as f:
                    self._index, self._version = parse_index(f.read())
            else:  # no index yet (extract never finished): fall back to the slow scan
                ids, _ = scan_videos(self.path, self.format)
                self._index = {vid: self._open(vid).meta() for vid in ids}
        return self._index

    @property
    def version(self) -> str:
        """The store's content version: a digest of its index (every committed video's id and meta, which holds its
        frame count, source and spec digest). Any video added, redone or removed changes it; a run records it."""
        index = self.index  # an index read in index_bytes' form brings its version
        if self._version is None:
            self._version = index_digest(index)
        return self._version

    @property
    def videos(self) -> list[str]:
        if self._videos is None:
            self._videos = sorted(self.index)
        return self._videos

    def meta(self, video_id: str) -> dict:
        if video_id not in self.index:
            raise KeyError(f"video {video_id!r} is not in store {self.path}")
        return self.index[video_id]

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.index

    # -- reading
    def _open_check(self) -> None:
        if os.getpid() != self._pid:  # forked: never reuse the parent's handles
            self._readers = {}
            self._pid = os.getpid()

    def _open(self, video_id: str):
        self._open_check()
        reader = self._readers.get(video_id)
        if reader is None and self.remote:
            from motionssl.stores.zarr_backend import ZarrVideoReader

            reader = self._readers[video_id] = ZarrVideoReader.remote(self.remote, video_id)
        if reader is None:
            path = video_path(self.path, self.format, video_id)
            if not path.exists():
                raise KeyError(f"video {video_id!r} is not in store {self.path}")
            reader = self._readers[video_id] = self._reader_cls(path)
        return reader

    def open_many(self, video_ids) -> None:
        """Open the readers of these videos now; on object storage the commit records of those not open yet are
        fetched in one round (a batch's videos), not one round each. Absent videos are left to the reads."""
        if not self.remote:
            return
        self._open_check()
        todo = [v for v in dict.fromkeys(video_ids) if v not in self._readers]
        if len(todo) < 2:
            return
        from motionssl.stores.remote import commit_key, parse_commit
        from motionssl.stores.zarr_backend import ZarrVideoReader

        records = self.remote.get_many([commit_key(v) for v in todo])
        for video_id in todo:
            attrs = parse_commit(records[commit_key(video_id)])
            if attrs is not None:
                self._readers[video_id] = ZarrVideoReader.from_commit(self.remote, video_id, attrs)

    def reads_wait(self) -> bool:
        """Whether a read waits on the network: on object storage, unless the node's cache (MOTIONSSL_CACHE_DIR) has
        served every recent read of this process. Callers read concurrently only then: a cached read is a file's."""
        return self.remote is not None and (self.remote.cache is None or self.remote.cache.missing())

    def _damaged(self, video_id: str, name: str, e: Exception) -> StoreError:
        """A read that failed on the data itself (a truncated or corrupt chunk): one line naming video and array."""
        detail = str(e).splitlines()[0] if str(e) else ""
        return StoreError(f"cannot read {name} of video {video_id!r} in {self.path} ({type(e).__name__}: {detail}); "
                          f"`motionssl verify {self.path}` lists the damage")

    def arrays(self, video_id: str) -> dict[str, tuple[tuple, np.dtype]]:
        """{array name: (shape, dtype)} for one video."""
        return self._open(video_id).arrays()

    def read(self, video_id: str, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """A time slice [start, stop) of one array (all of it by default), in data_specs units."""
        return self._read(video_id, name, slice(start, stop))

    def read_at(self, video_id: str, name: str, indices) -> np.ndarray:
        """Frames at arbitrary time indices (any order, repeats allowed), in data_specs units."""
        return self._read(video_id, name, indices)

    def read_arrays(self, video_id: str, names, indices) -> dict[str, np.ndarray]:
        """{name: frames at `indices`} of several arrays of one video, in data_specs units; on object storage
        fetched together, in one round of requests (a clip's rgb, mv and mv_valid)."""
        reader = self._open(video_id)
        many = getattr(reader, "read_many", None)
        try:
            raw = many(names, indices) if many else {name: reader.read(name, indices) for name in names}
        except (IndexError, KeyError):  # the caller's mistake, not damage
            raise
        except Exception as e:
            raise self._damaged(video_id, ", ".join(names), e) from e
        return {name: _decode(raw[name], reader.attrs(name)) for name in names}

    def _read(self, video_id: str, name: str, sel) -> np.ndarray:
        reader = self._open(video_id)
        try:
            raw = reader.read(name, sel)
        except (IndexError, KeyError):  # the caller's mistake, not damage
            raise
        except Exception as e:
            raise self._damaged(video_id, name, e) from e
        return _decode(raw, reader.attrs(name))

    def without(self, video_ids) -> "Store":
        """This store with `video_ids` left out of its listing (e.g. broken videos a run skips)."""
        drop = set(video_ids)
        self.version  # noqa: B018  (the whole store's, computed before the listing shrinks)
        other = copy.copy(self)
        other._index = {vid: m for vid, m in self.index.items() if vid not in drop}
        other._videos = None
        other._readers = {}
        return other

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers = {}

    def __getstate__(self):  # picklable into DataLoader workers / Dask tasks without handles
        state = self.__dict__.copy()
        state["_readers"] = {}
        return state

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, format={self.format}, spec={self.spec.name}, videos={len(self.index)})"


def _decode(raw: np.ndarray, attrs: dict) -> np.ndarray:
    """Undo storage quantisation: uint8 q over [-bound, bound] -> float32 q * 2 bound / 255 - bound (kind
    linear); over [min, max] -> q * (max - min) / 255 + min (kind range)."""
    quant = attrs.get("quantization")
    if quant is None:
        return raw
    if quant["kind"] == "range":
        lo, hi = np.float32(quant["min"]), np.float32(quant["max"])
        return raw.astype(np.float32) * ((hi - lo) / np.float32(255)) + lo
    bound = np.float32(quant["bound"])
    return raw.astype(np.float32) * (2 * bound / np.float32(255)) - bound


def index_digest(index: dict[str, dict]) -> str:
    """`sha256:` and 16 hex digits of the index's canonical JSON (sorted keys, no spaces, ASCII)."""
    return _digest(_canonical(index))


def _canonical(index: dict[str, dict]) -> bytes:
    return json.dumps(index, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(canonical) -> str:
    return "sha256:" + hashlib.sha256(canonical).hexdigest()[:16]


# index.json as written: {"canonical":true,"videos":CANONICAL}, so a reader hashes the file's own bytes for the
# version instead of serialising every meta again (data_specs/README.md, "Version").
_HEAD, _TAIL = b'{"canonical":true,"videos":', b"}"


def index_bytes(index: dict[str, dict]) -> bytes:
    """index.json's content for {id: meta}."""
    return _HEAD + _canonical(index) + _TAIL


def parse_index(data: bytes) -> tuple[dict[str, dict], str | None]:
    """({id: meta}, the version) of index.json's bytes; the version is None for an index not in index_bytes' form
    (older stores), for `index_digest` to compute. Hashing the bytes, never a digest stored beside them, so any
    change of the file changes the version, and the same {id: meta} gets the same version in either form."""
    videos = json.loads(data)["videos"]
    if data.startswith(_HEAD) and data.endswith(_TAIL):
        return videos, _digest(memoryview(data)[len(_HEAD):-len(_TAIL)])
    return videos, None


def _remote(path):
    """The object-storage root `path` names, or None for a local path."""
    from motionssl.stores.remote import Remote, RemoteError, is_url

    if not is_url(path):
        return None
    try:
        return Remote(str(path))
    except RemoteError as e:
        raise StoreError(str(e)) from None


def open_store(path: str | Path) -> Store:
    return Store(path)


def init_store(path: Path | str, fmt: str, spec: Spec) -> None:
    """Create the store root, or check that an existing one matches `fmt` and `spec`."""
    remote = _remote(path)
    if remote and fmt != "zarr":
        raise StoreError(f"{path}: stores on object storage are Zarr; drop --format {fmt} (HDF5 stores stay on a "
                         f"local or shared filesystem)")
    if remote:
        meta_file, exists = f"{remote.url}/{ROOT_META}", remote.get(ROOT_META) is not None
    else:
        meta_file = path / ROOT_META
        exists = meta_file.exists()
    if exists:
        existing = Store(path)
        if existing.format != fmt:
            raise StoreError(f"{path} is a {existing.format} store; pass --format {existing.format} or choose a new -o")
        if existing.spec.storage.checksums != spec.storage.checksums and \
                replace(existing.spec, storage=replace(existing.spec.storage, checksums=spec.storage.checksums),
                        name=spec.name).digest == spec.digest:
            raise StoreError(f"{path} was made {'without' if spec.storage.checksums else 'with'} chunk checksums "
                             f"(storage.checksums); to add videos to it, pass a spec file with storage: "
                             f"{{checksums: {str(existing.spec.storage.checksums).lower()}}}, or extract into a new -o")
        if existing.spec.digest != spec.digest:
            raise StoreError(f"{path} was made with spec {existing.spec.name!r} ({existing.spec.digest}), not "
                             f"{spec.name!r} ({spec.digest}); extract into a new -o, or delete the store first")
        return
    root_meta = {"format": fmt, "format_version": FORMAT_VERSION, "spec": spec.to_dict(),
                 "spec_digest": spec.digest, "motionssl_version": package_version()}
    if remote:
        from motionssl.stores.zarr_writer import group_doc

        remote.put_many({"zarr.json": json.dumps(group_doc()).encode(),
                         "videos/zarr.json": json.dumps(group_doc()).encode()})
        remote.put_json(ROOT_META, root_meta)  # last: what makes it a store
        return
    path.mkdir(parents=True, exist_ok=True)
    if fmt == "zarr":
        from motionssl.stores.zarr_writer import write_group
        write_group(path)
    (path / "videos").mkdir(exist_ok=True)
    write_json_atomic(meta_file, root_meta)


def make_writer(store_path: Path | str, fmt: str, video_id: str, spec: Spec):
    from motionssl.stores.remote import is_url

    if is_url(store_path):
        from motionssl.stores.remote import RemoteZarrVideoWriter
        return RemoteZarrVideoWriter(str(store_path), video_id, spec)
    store_path = Path(store_path)
    if fmt == "zarr":  # not through _backend: the writer needs numcodecs only, and decoders start faster without zarr
        from motionssl.stores.zarr_writer import ZarrVideoWriter as writer
    else:
        writer = _backend(fmt)[1]
    return writer(video_path(store_path, fmt, video_id), spec)


def read_video_metas(store_path: Path | str, fmt: str, video_ids) -> dict[str, dict | None]:
    """{video id: its committed meta, or None when it is absent or unreadable}; on object storage fetched
    concurrently."""
    remote = _remote(store_path)
    if remote is None:
        return {vid: read_video_meta(store_path, fmt, vid) for vid in video_ids}
    from motionssl.stores.remote import commit_key, parse_commit

    records = remote.get_many([commit_key(vid) for vid in video_ids])
    return {vid: (parse_commit(records[commit_key(vid)]) or {}).get("motionssl_video") for vid in video_ids}


def read_video_meta(store_path: Path, fmt: str, video_id: str) -> dict | None:
    """The committed meta of one video on disk, or None when it is absent or unreadable."""
    path = video_path(store_path, fmt, video_id)
    if not path.exists():
        return None
    try:
        reader = _backend(fmt)[0](path)
        try:
            return reader.meta()
        finally:
            reader.close()
    except Exception:  # a damaged video is simply not complete; extract redoes it
        return None


def write_index(store_path: Path | str, metas: dict[str, dict]) -> None:
    remote = _remote(store_path)
    if remote:
        remote.put(INDEX, index_bytes(metas))  # one PUT: all of it or the old
    else:
        write_atomic(Path(store_path) / INDEX, index_bytes(metas))
