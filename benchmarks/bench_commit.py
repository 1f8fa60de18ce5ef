"""Committing videos on object storage: the commit-record writer (stores/remote.py) against Icechunk, side by side on
one local S3 server (moto, in a process of its own), and what each does when two writers commit at once.

    .venv/bin/python -m pip install 'icechunk>=1.1'     # benchmarks only (the `bench` extra), not a dependency
    .venv/bin/python benchmarks/bench_commit.py --out bench_out

Videos: bench_scale's tiny ones (--frames frames of 43x32, the `compressed` spec's seven arrays, chunks of 4 frames in
shards of 16). Both designs upload objects of the same sizes. Per video, timed from a finished local video to a video
that readers see, with the server's requests counted by method (a listing is a GET):
  - commit record: the real writer's commit (`RemoteZarrVideoWriter`: the arrays uploaded under a fresh token, the
    record PUT, earlier attempts listed and deleted);
  - Icechunk: one transaction per video, which is what a rerun-safe extract needs (a video visible once it is
    committed, a killed run losing at most the videos in flight): a writable session on `main`, the video's objects
    (its zarr.json documents and shard files: those of one video the writer made, set again for each) set in the
    session's store, `commit`.
--videos videos are committed one after another into each, alternating between the two; the first and the last
--window videos are reported apart, since an Icechunk commit rewrites the snapshot, which lists every node.

Two writers at once (two processes, released together): each commits --concurrent videos of its own, then both commit
the same video. Commit record: no coordination, which is what two writers that bypass the lock do; Icechunk: its
optimistic concurrency (a commit whose parent moved fails with ConflictError; rebased with ConflictDetector and tried
again). Reported: tries, seconds, and what the store holds afterwards. Writes OUT/bench_commit.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import filled_writer, ids, logging_quiet, tiny_spec, video_meta, write_video  # noqa: E402
from machine import machine_info  # noqa: E402
from motionssl.stores import init_store  # noqa: E402
from motionssl.stores.remote import Remote, scan_commits  # noqa: E402
from motionssl.stores.zarr_writer import group_doc  # noqa: E402

BUCKET = "bench"
METHODS = ("GET", "PUT", "HEAD", "DELETE", "POST", "other")  # a listing is a GET


def serve(port, counts) -> None:
    """moto's S3 app on localhost, each request counted by method into the shared `counts`; `port` set when up."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging_quiet()
    app = DomainDispatcherApplication(create_backend_app)

    def counted(environ, start_response):
        method = environ["REQUEST_METHOD"]
        with counts.get_lock():
            counts[METHODS.index(method) if method in METHODS else len(METHODS) - 1] += 1
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, counted, threaded=True)
    port.value = server.port
    server.serve_forever()


class S3Server:
    """moto's S3 server in a process of its own, so that its Python does not share a client's interpreter lock (the
    commit record's client is Python, Icechunk's is Rust)."""

    def __init__(self):
        ctx = mp.get_context("spawn")
        self.counts, port = ctx.Array("q", len(METHODS)), ctx.Value("i", 0)
        self.proc = ctx.Process(target=serve, args=(port, self.counts), daemon=True)
        self.proc.start()
        deadline = time.monotonic() + 60
        while not port.value:
            if time.monotonic() > deadline or not self.proc.is_alive():
                raise RuntimeError("the S3 server did not start")
            time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{port.value}"

    @property
    def methods(self) -> dict[str, int]:
        return {m: n for m, n in zip(METHODS, self.counts[:]) if n}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join()


def s3_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint}


def staged_video(spec, frames: int, work: Path) -> tuple[dict[str, bytes], dict]:
    """One video's objects relative to its group (its arrays' zarr.json and shard files), as the writer makes them,
    and its group document."""
    root = work / "staged.zarr"
    init_store(root, "zarr", spec)
    write_video(root, "v", spec, frames, 0)
    top = root / "videos" / "v"
    files = {p.relative_to(top).as_posix(): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}
    return files, json.loads(files.pop("zarr.json"))


# -- Icechunk -------------------------------------------------------------------------------------------------------

def ice_storage(endpoint: str, prefix: str):
    import icechunk

    env = s3_env(endpoint)
    return icechunk.s3_storage(bucket=BUCKET, prefix=prefix, endpoint_url=endpoint, allow_http=True,
                               access_key_id=env["AWS_ACCESS_KEY_ID"], secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                               region=env["AWS_DEFAULT_REGION"], force_path_style=True)


def set_objects(store, objects: dict[str, bytes]) -> None:
    """Zarr keys into an Icechunk session's store: the documents first, parents before children (a chunk needs its
    array), then the chunks concurrently."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = default_buffer_prototype().buffer.from_bytes

    async def put_all():
        for key in sorted((k for k in objects if k.endswith("zarr.json")), key=lambda k: k.count("/")):
            await store.set(key, buf(objects[key]))
        await asyncio.gather(*(store.set(k, buf(v)) for k, v in objects.items() if not k.endswith("zarr.json")))

    sync(put_all())


def ice_create(endpoint: str, prefix: str, classes) -> None:
    """A repository holding the groups above the videos, in its first commit."""
    import icechunk

    repo = icechunk.Repository.create(ice_storage(endpoint, prefix))
    session = repo.writable_session("main")
    docs = ["zarr.json", "videos/zarr.json", *(f"videos/{c}/zarr.json" for c in classes)]
    set_objects(session.store, {k: json.dumps(group_doc()).encode() for k in docs})
    session.commit("the groups above the videos")


def ice_commit(repo, vid: str, objects: dict[str, bytes], group: dict, spec, frames: int) -> int:
    """One video in one transaction; returns how many times its commit met a moved branch and was rebased."""
    import icechunk

    session = repo.writable_session("main")
    doc = {**group, "attributes": {"motionssl_video": video_meta(vid, spec, frames)}}
    set_objects(session.store, {**{f"videos/{vid}/{k}": v for k, v in objects.items()},
                                f"videos/{vid}/zarr.json": json.dumps(doc).encode()})
    conflicts = 0
    while True:
        try:
            session.commit(f"video {vid}")
            return conflicts
        except icechunk.ConflictError:
            conflicts += 1
            session.rebase(icechunk.ConflictDetector())  # RebaseFailedError when both changed the same node


def ice_videos(endpoint: str, prefix: str) -> list[str]:
    import icechunk
    import zarr

    session = icechunk.Repository.open(ice_storage(endpoint, prefix)).readonly_session(branch="main")
    videos = zarr.open_group(session.store, path="videos", mode="r")
    return sorted(f"{c}/{v}" for c, g in videos.groups() for v, _ in g.groups())


# -- the commit record ----------------------------------------------------------------------------------------------

def record_create(url: str, spec, classes) -> None:
    init_store(url, "zarr", spec)
    Remote(url).put_many({f"videos/{c}/zarr.json": json.dumps(group_doc()).encode() for c in classes})


def record_commit(url: str, vid: str, spec, frames: int, seed: int, ready=None) -> float:
    """The writer of one video filled (locally), then its commit timed: upload, record, clean-up."""
    wr = filled_writer(url, vid, spec, frames, seed)
    if ready is not None:
        ready()
    t0 = time.perf_counter()
    wr.commit(video_meta(vid, spec, frames))
    return time.perf_counter() - t0


# -- one after another ----------------------------------------------------------------------------------------------

def sequential(server: S3Server, spec, videos: int, frames: int, window: int, work: Path) -> dict:
    import icechunk

    vids = ids(videos)
    classes = sorted({v.split("/")[0] for v in vids})
    url = f"s3://{BUCKET}/seq-record.zarr"
    record_create(url, spec, classes)
    ice_create(server.endpoint, "seq-ice", classes)
    repo = icechunk.Repository.open(ice_storage(server.endpoint, "seq-ice"))
    objects, group = staged_video(spec, frames, work)
    rows = {"commit_record": [], "icechunk": []}

    def measured(fn) -> dict:
        """fn() returns the seconds it timed itself (the writer's commit alone), or None to be timed here."""
        before = dict(server.methods)
        t0 = time.perf_counter()
        inside = fn()
        seconds = time.perf_counter() - t0 if inside is None else inside
        methods = {m: n - before.get(m, 0) for m, n in server.methods.items() if n - before.get(m, 0)}
        return {"seconds": seconds, "requests": sum(methods.values()), "methods": methods}

    def ice(vid):
        ice_commit(repo, vid, objects, group, spec, frames)

    for i, vid in enumerate(vids):
        rows["commit_record"].append(measured(lambda: record_commit(url, vid, spec, frames, i)))
        rows["icechunk"].append(measured(lambda: ice(vid)))
    assert sorted(scan_commits(Remote(url))[0]) == sorted(vids)
    assert ice_videos(server.endpoint, "seq-ice") == sorted(vids)

    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    out = {}
    for design, prefix in (("commit_record", "seq-record.zarr"), ("icechunk", "seq-ice")):
        found = fs.find(f"{BUCKET}/{prefix}", detail=True)
        out[design] = {"first": summary(rows[design][:window]), "last": summary(rows[design][-window:]),
                       "objects": len(found), "bytes": sum(int(v["size"]) for v in found.values())}
    snapshots = [v for k, v in fs.find(f"{BUCKET}/seq-ice/snapshots", detail=True).items()]
    out["icechunk"]["snapshots"] = len(snapshots)
    out["icechunk"]["largest_snapshot_bytes"] = max(int(v["size"]) for v in snapshots)
    return out


def summary(rows: list[dict]) -> dict:
    methods: dict[str, float] = {}
    for r in rows:
        for m, n in r["methods"].items():
            methods[m] = methods.get(m, 0) + n / len(rows)
    return {"videos": len(rows), "median_s": statistics.median(r["seconds"] for r in rows),
            "mean_s": statistics.fmean(r["seconds"] for r in rows),
            "requests": statistics.fmean(r["requests"] for r in rows), "methods": methods}


# -- two writers at once --------------------------------------------------------------------------------------------

def writer(design: str, endpoint: str, target: str, vids: list[str], frames: int, seed: int, barrier, results):
    """One of two writers (a spawned process, its own staging directory as on another machine): commits `vids`
    once both are ready; puts {"seconds", "conflicts", "error"} on `results`."""
    os.environ.update(s3_env(endpoint))
    os.environ["TMPDIR"] = tempfile.mkdtemp(prefix=f"writer{seed}-")
    tempfile.tempdir = None
    logging_quiet()
    spec = tiny_spec()
    conflicts, error, seconds = 0, None, 0.0
    try:
        if design == "icechunk":
            import icechunk

            repo = icechunk.Repository.open(ice_storage(endpoint, target))
            objects, group = staged_video(spec, frames, Path(os.environ["TMPDIR"]))
            barrier.wait(timeout=300)
            t0 = time.perf_counter()
            for vid in vids:
                conflicts += ice_commit(repo, vid, objects, group, spec, frames)
            seconds = time.perf_counter() - t0
        else:
            start = []

            def release():
                barrier.wait(timeout=300)
                start.append(time.perf_counter())

            for i, vid in enumerate(vids):  # each filled (encoded locally) before its commit, as extract does
                record_commit(target, vid, spec, frames, seed * 1000 + i, ready=release if i == 0 else None)
            seconds = time.perf_counter() - start[0]
    except Exception as e:  # what a writer meets is the figure
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if hasattr(e, "conflicts"):
            error += " " + "; ".join(f"{c.conflict_type} {c.path}" for c in e.conflicts)
    results.put({"seed": seed, "seconds": seconds, "conflicts": conflicts, "error": error})


def two_writers(design: str, endpoint: str, target: str, vids_a: list[str], vids_b: list[str], frames: int) -> list:
    ctx = mp.get_context("spawn")  # no fork of a process with a Tokio runtime or fsspec's loop
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(design, endpoint, target, vids, frames, seed, barrier, results))
             for seed, vids in ((1, vids_a), (2, vids_b))]
    for p in procs:
        p.start()
    out = sorted((results.get(timeout=600) for _ in procs), key=lambda r: r["seed"])
    for p in procs:
        p.join()
    return out


def concurrent(server: S3Server, spec, k: int, frames: int) -> dict:
    from motionssl.stores import StoreError, open_store
    from motionssl.stores.verify import verify_store

    a, b = [f"a/v_{i:03d}" for i in range(k)], [f"b/v_{i:03d}" for i in range(k)]
    out = {}
    url = f"s3://{BUCKET}/conc-record.zarr"
    record_create(url, spec, ["a", "b", "same"])
    different = two_writers("record", server.endpoint, url, a, b, frames)
    same = two_writers("record", server.endpoint, url, ["same/v"], ["same/v"], frames)
    store = open_store(url)  # no index: its listing is read from the commit records
    try:
        readable = all(store.read("same/v", name) is not None for name in store.arrays("same/v"))
        same_after = "readable"
    except (StoreError, OSError, KeyError) as e:
        readable, same_after = False, f"unreadable: {str(e).splitlines()[0]}"
    out["commit_record"] = {"different": different, "same": same, "committed": len(store.index),
                            "same_video_after": same_after, "same_video_readable": readable,
                            "verify": verify_store(store)[:5]}

    ice_create(server.endpoint, "conc-ice", ["a", "b", "same"])
    different = two_writers("icechunk", server.endpoint, "conc-ice", a, b, frames)
    same = two_writers("icechunk", server.endpoint, "conc-ice", ["same/v"], ["same/v"], frames)
    held = ice_videos(server.endpoint, "conc-ice")
    out["icechunk"] = {"different": different, "same": same, "committed": len(held),
                       "same_video_after": "readable" if "same/v" in held else "absent"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--videos", type=int, default=100, help="videos committed one after another into each design")
    ap.add_argument("--window", type=int, default=10, help="videos in each of the first and last summaries")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--concurrent", type=int, default=10, help="videos each of the two concurrent writers commits")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging_quiet()
    server = S3Server()
    os.environ.update(s3_env(server.endpoint))
    work = Path(tempfile.mkdtemp(prefix="bench_commit-"))
    try:
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(BUCKET)
        spec = tiny_spec()
        results = {"machine": machine_info(("numpy", "zarr", "s3fs", "moto", "icechunk")), "frames": args.frames}
        results["sequential"] = sequential(server, spec, args.videos, args.frames, args.window, work)
        print(json.dumps(results["sequential"], indent=1), flush=True)
        results["concurrent"] = concurrent(server, spec, args.concurrent, args.frames)
        print(json.dumps(results["concurrent"], indent=1), flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    (args.out / "bench_commit.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
