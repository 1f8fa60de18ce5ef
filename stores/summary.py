"""What `motionssl info` reports: per-video arrays and on-disk sizes, as plain JSON-able data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from motionssl.stores import Store
from motionssl.stores.layout import video_path


def _array_bytes(store: Store, reader, name: str, sizes: dict[str, int] | None) -> int:
    if sizes is not None:  # object storage: from one listing of the store
        return sizes.get(f"{reader.path[len(store.path) + 1:]}/{name}", 0)
    if store.format == "zarr":
        root = Path(reader.path) / name
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    frames = reader.h264_frames(name)
    if frames is not None:  # variable-length entries live in the file's heap, outside the dataset's storage
        return sum(len(entry) for entry in frames.ds[:])
    return int(reader.array(name).id.get_storage_size())


def _video_row(meta: dict, size: int, arrays: dict) -> dict:
    return {**{k: meta[k] for k in ("id", "frames", "fps", "codec", "width", "height", "rotation", "stored_width",
                                    "stored_height", "iframes", "has_mv", "notes")},
            "partial": meta.get("partial"), "bytes": size, "arrays": arrays}


def _sizes_by_array(keys: dict[str, int]) -> dict[str, int]:
    """{videos/<id>/d-<token>/<array>: bytes} from a listing of object keys and sizes."""
    from motionssl.stores.remote import DATA_MARK

    out: dict[str, int] = {}
    for key, n in keys.items():
        video, sep, rest = key.partition(f"/{DATA_MARK}")
        if sep:
            array = f"{video}/{DATA_MARK}" + "/".join(rest.split("/", 2)[:2])
            out[array] = out.get(array, 0) + n
    return out


def _zarr_video(path: Path) -> tuple[dict[str, dict], int]:
    """({array: {shape, dtype, bytes}}, the video's bytes) of a Zarr video on disk, from one walk of its directory
    and its arrays' zarr.json documents, without zarr: opening each array through zarr cost milliseconds, which
    made `info` the slowest command on a large store (benchmarks/README.md, "Scale")."""
    per_top, total = {}, 0
    for d, _, files in os.walk(path):
        top = os.path.relpath(d, path).split(os.sep, 1)[0]
        nbytes = sum(os.path.getsize(os.path.join(d, f)) for f in files)
        per_top[top] = per_top.get(top, 0) + nbytes
        total += nbytes
    arrays = {}
    for name in sorted(n for n in per_top if n != "."):
        try:
            with open(os.path.join(path, name, "zarr.json"), "rb") as f:
                doc = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if doc.get("node_type") == "array":
            arrays[name] = {"shape": list(doc["shape"]), "dtype": str(np.dtype(doc["data_type"])),
                            "bytes": per_top[name]}
    return arrays, total


def summarize(store: Store) -> dict:
    videos, array_bytes = [], {}
    total_bytes = total_frames = 0
    sizes = _sizes_by_array(store.remote.find("videos")) if store.remote else None
    for vid in store.videos:
        meta = store.meta(vid)
        if store.format == "zarr" and sizes is None:
            arrays, size = _zarr_video(video_path(store.path, store.format, vid))
            for name, a in arrays.items():
                array_bytes[name] = array_bytes.get(name, 0) + a["bytes"]
            total_bytes += size
            total_frames += meta["frames"]
            videos.append(_video_row(meta, size, arrays))
            continue
        reader = store._open(vid)
        arrays = {}
        for name, (shape, dtype) in reader.arrays().items():
            nbytes = _array_bytes(store, reader, name, sizes)
            array_bytes[name] = array_bytes.get(name, 0) + nbytes
            arrays[name] = {"shape": list(shape), "dtype": str(dtype), "bytes": nbytes}
        if sizes is not None:
            size = sum(a["bytes"] for a in arrays.values())
        else:
            path = video_path(store.path, store.format, vid)
            size = path.stat().st_size if path.is_file() else sum(
                os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        total_bytes += size
        total_frames += meta["frames"]
        videos.append(_video_row(meta, size, arrays))
    store.close()
    return {
        "store": str(store.path), "format": store.format, "spec": store.spec.to_dict(),
        "spec_digest": store.spec.digest, "version": store.version, "motionssl_version": store.root_meta["motionssl_version"],
        "totals": {"videos": len(videos), "frames": total_frames, "bytes": total_bytes,
                   "bytes_per_frame": total_bytes / max(total_frames, 1),
                   "partial": sum(bool(v["partial"]) for v in videos)},
        "array_bytes": array_bytes,
        "array_bytes_per_frame": {k: v / max(total_frames, 1) for k, v in array_bytes.items()},
        "videos": videos,
    }
