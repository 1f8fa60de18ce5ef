"""`motionssl verify`, and the quick check `pretrain` runs before it trains.

`verify_store` lists every problem of every video, one line each ("VIDEO: ARRAY: what is wrong"), reading every
array through. `broken_videos` finds what shows without decoding anything (missing or empty files, wrong
lengths, HDF5 files that will not open), cheap enough to run before each training run.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from motionssl.stores import Store, StoreError
from motionssl.stores.layout import INDEX, VIDEOS, read_json, scan_videos, video_path

PER_FRAME = ("rgb", "pts", "frame_type", "mv", "mv_valid")


def _redo(store: Store, path: Path | str) -> str:
    if store.remote:  # path: the video's prefix, relative to the store
        return (f"delete {path}/zarr.json (its commit record) and rerun `motionssl extract` with the same arguments "
                f"to redo it")
    return f"delete {Path(path).relative_to(store.path)} and rerun `motionssl extract` with the same arguments to redo it"


def verify_store(store: Store) -> list[str]:
    """One line per problem; an empty list means the store is sound."""
    if store.remote:
        store.remote.cache = None  # the bucket's objects are checked, never a node's copies of them
        return _verify_remote(store)
    problems = []
    on_disk, temps = scan_videos(store.path, store.format)
    for t in temps:
        problems.append(f"partial: {t.relative_to(store.path)} is a leftover of an interrupted write "
                        f"(the next `motionssl extract` removes it)")
    indexed = set(read_json(store.path / INDEX)["videos"]) if (store.path / INDEX).is_file() else set()
    if not (store.path / INDEX).is_file():
        problems.append(f"{INDEX} is missing; rerun `motionssl extract` to rebuild it")
    for vid in sorted(indexed - set(on_disk)):
        problems.append(f"{vid}: listed in {INDEX} but missing on disk")
    for vid in on_disk:
        problems += [f"{vid}: {p}" for p in _check_video(store, vid, read_through=True)]
        if indexed and vid not in indexed:
            problems.append(f"{vid}: on disk but not in {INDEX}; rerun `motionssl extract` to index it")
    return problems


def _verify_remote(store: Store) -> list[str]:
    """verify_store on object storage: one listing of every object, then each committed video read through."""
    from motionssl.stores.remote import scan_commits, video_prefix

    keys = store.remote.find("videos")
    committed, leftovers = scan_commits(store.remote, keys=keys)
    problems = [f"partial: {p}/ is a leftover of an interrupted write, never committed (the next `motionssl extract` "
                f"of that video removes it)" for p in leftovers]
    index = store.remote.get_json(INDEX)
    if index is None:
        problems.append(f"{INDEX} is missing; rerun `motionssl extract` to rebuild it")
    indexed = set((index or {"videos": {}})["videos"])
    for vid in sorted(indexed - set(committed)):
        problems.append(f"{vid}: listed in {INDEX} but has no commit record")
    for vid, attrs in sorted(committed.items()):
        prefix = video_prefix(vid)
        docs = attrs.get("motionssl_arrays", {})
        out = _check_lengths(store, prefix, attrs["motionssl_video"],
                             {name: tuple(doc["shape"]) for name, doc in docs.items()})
        data = f"{prefix}/{attrs['motionssl_data']}"
        reader = None
        for name, doc in docs.items():
            missing = [f"{data}/{name}/{k}" for k in _chunk_keys(doc) if not keys.get(f"{data}/{name}/{k}")]
            if missing:
                out.append(_missing_line(store, prefix, name, missing))
                continue
            reader = reader or store._open(vid)
            out += _read_through(reader, name, doc["shape"][0])
        problems += [f"{vid}: {p}" for p in out]
        if index is not None and vid not in indexed:
            problems.append(f"{vid}: committed but not in {INDEX}; rerun `motionssl extract` to index it")
    return problems


def broken_videos(store: Store) -> dict[str, str]:
    """{video id: its problems, '; '-joined} over the store's listed videos, without decoding any data. (On object
    storage: each commit record and its arrays' lengths, fetched concurrently; `verify` lists the chunks too.)
    Checking in 2 threads was measured and not kept: no faster on 2 cores (benchmarks/README.md, "Scale")."""
    if store.remote:
        from motionssl.stores.remote import commit_key, parse_commit, video_prefix

        records = store.remote.get_many([commit_key(vid) for vid in store.videos])
        out = {}
        for vid in store.videos:
            attrs = parse_commit(records[commit_key(vid)])
            problems = ["no commit record; rerun `motionssl extract` with the same arguments"] if attrs is None else \
                _check_lengths(store, video_prefix(vid), store.meta(vid),
                               {n: tuple(d["shape"]) for n, d in attrs.get("motionssl_arrays", {}).items()})
            if problems:
                out[vid] = "; ".join(problems)
        return out
    if store.format == "zarr":
        names, base, index = store.spec.arrays(), f"{store.path}/{VIDEOS}", store.index
        found = ((vid, _check_zarr_files(store, vid, index.get(vid), f"{base}/{vid}", names)) for vid in store.videos)
    else:
        found = ((vid, _check_video(store, vid, read_through=False)) for vid in store.videos)
    return {vid: "; ".join(problems) for vid, problems in found if problems}


def _check_video(store: Store, vid: str, *, read_through: bool) -> list[str]:
    path = video_path(store.path, store.format, vid)
    if not path.exists():
        return [f"{path.relative_to(store.path)} is missing; rerun `motionssl extract` with the same arguments"]
    from motionssl.stores import _backend

    try:
        reader = _backend(store.format)[0](path)
    except StoreError as e:
        return [str(e)]
    except Exception as e:
        return [f"cannot open {path.relative_to(store.path)} ({type(e).__name__}: {_first_line(e)}); "
                f"{_redo(store, path)}"]
    try:
        try:
            meta = reader.meta()
        except Exception:
            return ["no video metadata (incomplete write)"]
        if meta.get("spec_digest") != store.spec.digest:
            return [f"made with another spec ({meta.get('spec_digest')}, store has {store.spec.digest})"]
        shapes = {name: shape for name, (shape, _) in reader.arrays().items()}
        out = _check_lengths(store, path, meta, shapes)
        for name in shapes:
            if store.format == "zarr":
                missing = _missing_chunk_files(path / name, _read_doc(path / name / "zarr.json"))
                if missing:
                    out.append(_missing_line(store, path, name, missing))
                    continue
            if read_through:
                out += _read_through(reader, name, shapes[name][0])
        return out
    finally:
        reader.close()


def _check_lengths(store: Store, path: Path, meta: dict, shapes: dict[str, tuple]) -> list[str]:
    out = []
    missing = [a for a in store.spec.arrays() if a not in shapes]
    if missing:
        out.append(f"missing arrays {missing}; {_redo(store, path)}")
    n = meta["frames"]
    for name in PER_FRAME:
        if name in shapes and shapes[name][0] != n:
            out.append(f"{name}: has {shapes[name][0]} frames, expected {n}")
    if "iframes" in shapes and "iframe_index" in shapes and shapes["iframes"][0] != shapes["iframe_index"][0]:
        out.append("iframes: iframes and iframe_index differ in length")
    return out


def _check_zarr_files(store: Store, vid: str, meta: dict | None, root: str, names: tuple[str, ...]) -> list[str]:
    """The start-up check of one Zarr video, without zarr: every array's metadata document and every shard file,
    present and not empty. One `stat` per file, relative to the video's directory (open once), on strings: at 100,000
    videos pathlib's objects and the full paths' lookups cost more than the checks (benchmarks/README.md, "Scale")."""
    if meta is None:
        return ["not in the index"]
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return [f"{VIDEOS}/{vid} is missing; rerun `motionssl extract` with the same arguments"]
    recorded = meta.get("arrays") or {}  # new stores: each array's length and shard in the meta
    shapes, missing = {}, {}
    try:
        for name in names:
            a = recorded.get(name)
            try:
                if a is not None:
                    if not os.stat(f"{name}/zarr.json", dir_fd=fd).st_size:
                        continue  # reported as a missing array
                    frames, shard, ndim = a["frames"], a["shard"], a["ndim"]
                else:  # older stores: the document itself
                    doc = _read_doc(f"{name}/zarr.json", dir_fd=fd)
                    frames, ndim = (doc["shape"] or [0])[0], len(doc["shape"])
                    shard = doc["chunk_grid"]["configuration"]["chunk_shape"][0]
            except (OSError, ValueError):
                continue  # reported as a missing array
            shapes[name] = (frames,)
            for rel in _shard_files(name, frames, shard, ndim):
                try:
                    if os.stat(rel, dir_fd=fd).st_size:
                        continue
                except OSError:
                    pass
                missing.setdefault(name, []).append(Path(root, rel))
    finally:
        os.close(fd)
    out = _check_lengths(store, root, meta, shapes)
    for name, absent in missing.items():
        out.append(_missing_line(store, root, name, absent))
    return out


def _size(path: str, dir_fd: int | None = None) -> int:
    """The size of a file, 0 when it is absent."""
    try:
        return os.stat(path, dir_fd=dir_fd).st_size
    except OSError:
        return 0


def _read_doc(path: Path | str, *, dir_fd: int | None = None) -> dict:
    fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    with open(fd, "rb") as f:
        return json.loads(f.read())


def _chunk_keys(doc: dict) -> list[str]:
    """The keys of a zarr array's shard (or unsharded chunk) files, relative to the array."""
    shape = doc["shape"]
    return _shard_keys(shape[0] if shape else 0, doc["chunk_grid"]["configuration"]["chunk_shape"][0], len(shape))


@functools.lru_cache(maxsize=1024)
def _shard_files(name: str, frames: int, shard: int, ndim: int) -> tuple[str, ...]:
    """`name/key` of each shard file: videos of one length share one tuple, not a string per file each."""
    return tuple(f"{name}/{key}" for key in _shard_keys(frames, shard, ndim))


def _shard_keys(frames: int, shard: int, ndim: int) -> list[str]:
    """Frames are never split across chunks, so the keys are c/<i>/0/0..."""
    tail = "/0" * (ndim - 1)
    return [f"c/{i}{tail}" for i in range(-(-frames // shard))] if frames else []


def _missing_chunk_files(root: Path, doc: dict) -> list[Path]:
    """The shard (or unsharded chunk) files of a zarr array that are absent or empty: a missing one would read
    back silently as zeros."""
    return [root / key for key in _chunk_keys(doc) if not _size(str(root / key))]


def _missing_line(store: Store, path: Path | str, name: str, missing: list) -> str:
    shown = ", ".join(str(p if store.remote else p.relative_to(store.path)) for p in missing[:3]) + \
        (" ..." if len(missing) > 3 else "")
    if len(missing) == 1:
        return f"{name}: chunk file {shown} is missing or empty; {_redo(store, path)}"
    return f"{name}: chunk files missing or empty ({len(missing)}): {shown}; {_redo(store, path)}"


def _read_through(reader, name: str, frames: int) -> list[str]:
    """Every frame, through the path training reads: chunk checksums (storage.checksums) checked, H.264 decoded."""
    arr = reader.array(name)
    try:
        step = max(1, (arr.chunks[0] if getattr(arr, "chunks", None) else 64) * 8)
        for s in range(0, frames, step):
            np.asarray(reader.read(name, slice(s, min(s + step, frames))))
    except Exception as e:
        return [f"{name}: unreadable ({type(e).__name__}: {_first_line(e)})"]
    return []


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""
