"""Where things live inside a store directory; shared by both backends.

STORE/
  motionssl.json        format, format_version, spec, spec_digest, motionssl_version
  index.json            {"canonical": true, "videos": {id: meta}}, rewritten by `extract` as videos complete
  quarantine.json       (when any) videos whose decoder crashed or hung, not retried until their file changes
  zarr.json             (zarr only) root group, so plain zarr can open the store
  videos/<id>           (zarr) one group per video; (hdf5) videos/<id>.h5, one file per video
  videos/.../.<name>.tmp-<hex>   a video being written; renamed into place only when complete
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

FORMAT_VERSION = 1
ROOT_META = "motionssl.json"
INDEX = "index.json"
QUARANTINE = "quarantine.json"
VIDEOS = "videos"
TMP_MARK = ".tmp-"
SUFFIX = {"zarr": "", "hdf5": ".h5"}


def video_path(root: Path, fmt: str, video_id: str) -> Path:
    return root / VIDEOS / (video_id + SUFFIX[fmt])


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")


def is_temp(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


def write_atomic(path: Path, data: bytes) -> None:
    """`data` into `path` whole or not at all: a temporary beside it, fsynced, renamed over it."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def scan_videos(root: Path, fmt: str, *, known=()) -> tuple[list[str], list[Path]]:
    """(complete video ids, leftover temporary entries) found on disk under STORE/videos. Zarr groups whose id is
    in `known` (the index) are taken as videos without reading their metadata."""
    known = set(known)
    base = root / VIDEOS
    ids, temps = [], []
    if not base.is_dir():
        return ids, temps
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        for name in list(dirnames) + filenames:
            if is_temp(name):
                temps.append(here / name)
        dirnames[:] = [d for d in dirnames if not is_temp(d)]
        if fmt == "zarr":
            rel_here = here.relative_to(base).as_posix()
            for d in list(dirnames):
                vid = d if rel_here == "." else f"{rel_here}/{d}"
                meta = here / d / "zarr.json"
                if vid in known or (meta.is_file() and _is_video_group(meta)):
                    ids.append(vid)
                    dirnames.remove(d)  # a video group has no videos below it
        else:
            ids += [(here / f).relative_to(base).as_posix()[: -len(".h5")] for f in filenames
                    if f.endswith(".h5") and not is_temp(f)]
    return sorted(ids), sorted(temps)


def _is_video_group(meta_file: Path) -> bool:
    try:
        return "motionssl_video" in read_json(meta_file).get("attributes", {})
    except (OSError, ValueError):
        return True  # unreadable metadata: report it as a (broken) video, not silently skip
