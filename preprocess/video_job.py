"""Extract one video into the store: decode once, write every modality, commit atomically.

This runs inside an isolated decoder process (see `isolation.py`); it must never be called
with a writer already open for the same video elsewhere.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from motionssl.data_specs import Spec, mv_grid, spec_from_dict, stored_size
from motionssl.stores.decode import BadVideo, Truncated, decode_frames, open_video
from motionssl.stores import make_writer, package_version


def extract_video(job: dict, *, progress: Callable[[int], None] | None = None) -> dict:
    """job: {path, video_id, store, format, spec (dict), reencode, keep_partial, motionssl_version}. Returns the
    committed meta. (`motionssl_version`: the driver's, so that a decoder process need not import importlib.metadata.)

    A video the decoder or demuxer finds damaged after N good frames fails (`Truncated`), or with
    job["keep_partial"] keeps those N frames, its meta's `partial` saying why.

    `progress(frames_done)` is called after every frame (the caller rate-limits it)."""
    spec = spec_from_dict(job["spec"])
    path = Path(job["path"])
    tmpdir = None
    try:
        if job.get("reencode"):
            from motionssl.preprocess.reencode import reencode_mpeg4

            tmpdir = Path(tempfile.mkdtemp(prefix="motionssl-reencode-"))
            path = reencode_mpeg4(path, tmpdir / "reencoded.avi", short_side=spec.resolution.short_side,
                                  max_pixels=spec.decode.max_pixels)
        return _extract(path, job, spec, progress or (lambda n: None))
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _extract(path: Path, job: dict, spec: Spec, progress: Callable[[int], None]) -> dict:
    t0 = time.perf_counter()
    container, probe = open_video(path, max_pixels=spec.decode.max_pixels)
    size = stored_size(probe.width, probe.height, spec.resolution.short_side)
    want = set(spec.modalities)
    mv_on = "mv" in want
    gw, gh = mv_grid(size[0], size[1], spec.mv.cell)
    notes = []
    if mv_on and not probe.has_mv_export:
        notes.append(f"no motion vectors for codec {probe.codec}; re-extract with --reencode to get them")

    writer = make_writer(job["store"], job["format"], job["video_id"], spec)
    try:
        frame_shape = (size[1], size[0], 3)
        small = 4096
        writer.add_array("pts", (), np.float64, chunk=small, shard=small)
        writer.add_array("frame_type", (), np.uint8, chunk=small, shard=small)
        if "rgb" in want:
            writer.add_array("rgb", frame_shape, np.uint8)
        if "iframes" in want:
            writer.add_array("iframes", frame_shape, np.uint8, chunk=1)
            writer.add_array("iframe_index", (), np.int32, chunk=small, shard=small)
        if mv_on:
            writer.add_array("mv", (gh, gw, 2), np.float16)
            writer.add_array("mv_valid", (gh, gw), np.bool_)
        maps = None
        if spec.needs_flow:
            from motionssl.preprocess.motion_maps import MotionMapStream, flow_method

            maps = MotionMapStream(spec.flow, flow_method(spec.flow, device=job.get("device")),
                                   boundary="boundary" in want, edges="edges" in want)
            flow_bound = spec.flow.store_bound if spec.flow.store_as == "uint8" else None
            if "flow" in want:
                quantized = spec.flow.store_as == "uint8"
                writer.add_array("flow", frame_shape[:2] + (2,), np.uint8 if quantized else np.float16,
                                 attrs={"quantization": {"kind": "linear", "bound": spec.flow.store_bound}}
                                 if quantized else None)
            for name, bound in maps_bounds(spec).items():
                if name in want:
                    writer.add_array(name, frame_shape[:2], np.float16 if bound is None else np.uint8,
                                     attrs=None if bound is None else
                                     {"quantization": {"kind": "range", "min": 0.0, "max": bound}})
        n = n_iframes = 0
        no_mv = (np.zeros((gh, gw, 2), np.float16), np.zeros((gh, gw), bool))
        rotation = 0
        partial = None
        try:
            for frame in decode_frames(container, probe, size=size, mv_cell=spec.mv.cell if mv_on else None):
                if n == 0:
                    rotation = frame.rotation
                writer.append("pts", np.float64(frame.pts))
                writer.append("frame_type", np.uint8(ord(frame.frame_type)))
                if "rgb" in want:
                    writer.append("rgb", frame.rgb)
                if frame.frame_type == "I" and "iframes" in want:
                    writer.append("iframes", frame.rgb)
                    writer.append("iframe_index", np.int32(frame.index))
                    n_iframes += 1
                if mv_on:
                    # I-frames carry no inter prediction: all-invalid by convention.
                    mv, valid = (frame.mv, frame.mv_valid) if frame.mv is not None and frame.frame_type != "I" else no_mv
                    writer.append("mv", mv.astype(np.float16))
                    writer.append("mv_valid", valid)
                if maps is not None:
                    _write_maps(writer, maps.push(frame.rgb), want, flow_bound, maps_bounds(spec))
                n += 1
                progress(n)
        except Truncated as e:
            if n == 0:
                raise
            if not job.get("keep_partial"):
                raise BadVideo(f"{e}; `extract --keep-partial` keeps those frames") from None
            partial = str(e)
            notes.append(f"partial: kept the {n} frames before the damage ({e})")
        if maps is not None:
            _write_maps(writer, maps.finish(), want, flow_bound, maps_bounds(spec))
            notes += maps.notes
        if n == 0:
            raise BadVideo("no frames could be decoded")
        declared = probe.frames_declared
        if partial is None and declared and abs(declared - n) > max(2, declared // 100):
            # A hint only: AVI counts its empty filler chunks, edit lists hide frames; damage is judged above.
            notes.append(f"the container declares {declared} frames; {n} decoded")
        meta = {
            "id": job["video_id"], "source": str(job.get("source", job["path"])), "frames": n,
            "fps": probe.fps, "codec": probe.codec, "width": probe.width, "height": probe.height,
            "rotation": rotation, "stored_width": size[0], "stored_height": size[1],
            "mv_grid": [gh, gw] if mv_on else None, "has_mv": bool(mv_on and probe.has_mv_export),
            "iframes": n_iframes, "reencoded": bool(job.get("reencode")), "partial": partial, "notes": notes,
            "spec_digest": spec.digest, "motionssl_version": job.get("motionssl_version") or package_version(),
            "seconds": round(time.perf_counter() - t0, 4),
        }
        return writer.commit(meta)
    except BaseException:
        writer.abort()
        raise
    finally:
        container.close()  # now, not when collected: the decoder process goes on to the next video


def maps_bounds(spec) -> dict[str, float | None]:
    """The uint8 range [0, bound] of boundary and edges, or None where they are stored as float16."""
    if spec.flow.maps_store_as == "float16":
        return {"boundary": None, "edges": None}
    return {"boundary": spec.flow.boundary_bound, "edges": spec.flow.edges_clamp}


def _map_values(m: np.ndarray, bound: float | None) -> np.ndarray:
    if bound is None:
        return m.astype(np.float16)
    return np.clip(np.rint(m * np.float32(255 / bound)), 0, 255).astype(np.uint8)


def _write_maps(writer, maps, want: set[str], flow_bound: float | None, bounds: dict[str, float | None]) -> None:
    from motionssl.preprocess.flow import quantize_flow  # here: specs without flow never import torch

    for m in maps:
        if "flow" in want:
            writer.append("flow", m.flow.astype(np.float16) if flow_bound is None
                          else quantize_flow(m.flow, bound=flow_bound))
        if "boundary" in want:
            writer.append("boundary", _map_values(m.boundary, bounds["boundary"]))
        if "edges" in want:
            writer.append("edges", _map_values(m.edges, bounds["edges"]))
