"""`motionssl verify`: is every video complete and consistent with the store's spec?"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from motionssl.stores import Store
from motionssl.stores.layout import INDEX, read_json, scan_videos, video_path

PER_FRAME = ("rgb", "pts", "frame_type", "mv", "mv_valid")


def verify_store(store: Store) -> list[str]:
    """One line per problem; an empty list means the store is sound."""
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
        problems += [f"{vid}: {p}" for p in _check_video(store, vid)]
        if indexed and vid not in indexed:
            problems.append(f"{vid}: on disk but not in {INDEX}; rerun `motionssl extract` to index it")
    return problems


def _check_video(store: Store, vid: str) -> list[str]:
    from motionssl.stores import _backend

    path = video_path(store.path, store.format, vid)
    try:
        reader = _backend(store.format)[0](path)
    except Exception as e:
        return [f"cannot open ({type(e).__name__}: {e})"]
    try:
        try:
            meta = reader.meta()
        except Exception:
            return ["no video metadata (incomplete write)"]
        if meta.get("spec_digest") != store.spec.digest:
            return [f"made with another spec ({meta.get('spec_digest')}, store has {store.spec.digest})"]
        arrays = reader.arrays()
        missing = [a for a in store.spec.arrays() if a not in arrays]
        if missing:
            return [f"missing arrays {missing}"]
        out = []
        n = meta["frames"]
        for name in PER_FRAME:
            if name in arrays and arrays[name][0][0] != n:
                out.append(f"{name} has {arrays[name][0][0]} frames, expected {n}")
        if "iframes" in arrays and arrays["iframes"][0][0] != arrays["iframe_index"][0][0]:
            out.append("iframes and iframe_index differ in length")
        for name in arrays:
            out += _check_chunks(store, reader, name)
        return out
    finally:
        reader.close()


def _check_chunks(store: Store, reader, name: str) -> list[str]:
    """Read every array through; for zarr also require every shard/chunk file, since a deleted
    chunk would otherwise read back silently as zeros."""
    arr = reader.array(name)
    if store.format == "zarr" and arr.shape[0] > 0:
        outer = arr.shards or arr.chunks
        root = Path(reader.path) / name / "c"
        n_outer = -(-arr.shape[0] // outer[0])
        tail = "/".join("0" for _ in arr.shape[1:])  # frames are never split across chunks
        for i in range(n_outer):
            key = root / (f"{i}/{tail}" if tail else f"{i}")
            if not key.is_file():
                return [f"{name}: chunk file {key.relative_to(store.path)} is missing"]
    try:
        step = max(1, (arr.chunks[0] if hasattr(arr, "chunks") and arr.chunks else 64) * 8)
        for s in range(0, arr.shape[0], step):
            np.asarray(arr[s:s + step])
    except Exception as e:
        return [f"{name}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"]
    return []
