"""What `extract` costs and risks before the first video: a Dask cluster that does not start on a busy machine,
and what each spec's decoder process imports."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from motionssl.data_specs import load_spec
from motionssl.preprocess.isolation import DecoderProcess
from motionssl.preprocess.synthetic import encode, translating_frames
from motionssl.stores import init_store, open_store
from motionssl.stores.verify import verify_store


def test_a_cluster_that_does_not_start_is_one_line_and_exit_2(synthetic_dir, tiny_spec, tmp_path):
    """A real LocalCluster given 1 ms to start (and 2 ms on its retry) fails for real: exit 2, one line that says
    what to do; the lock is released. The decoders start on the first videos before Dask is up: what they finished
    is whole (a rerun skips it), what they had not is gone, temporaries included."""
    store = tmp_path / "s.zarr"
    r = subprocess.run([sys.executable, "-m", "motionssl.cli", "extract", str(synthetic_dir), "-o", str(store),
                        "--spec", str(tiny_spec), "--workers", "2", "--no-progress", "--start-timeout", "0.001"],
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stdout + r.stderr
    assert lines[0].startswith("error: the local Dask cluster (2 workers) did not start, in 0.001s nor in 0.002s "
                               "(TimeoutError: "), lines[0]
    assert lines[0].endswith("the machine is busy: retry when it is quieter, with fewer --workers, or with a larger "
                             "--start-timeout"), lines[0]
    assert not (store / ".extract.lock").exists()
    s = open_store(store)
    assert len(s.videos) <= 2  # at most one per decoder
    assert [p for p in verify_store(s) if not p.startswith("index.json is missing; rerun `motionssl extract`")] == []
    assert all(len(s.read(vid, "rgb")) == s.meta(vid)["frames"] > 0 for vid in s.videos)
    assert not [p for p in store.rglob(".*") if ".tmp-" in p.name]


def libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("spec,torch_expected", [("compressed", False), ("fast", False), ("default", True)])
def test_a_decoder_imports_torch_only_for_a_spec_that_runs_on_it(spec, torch_expected, tmp_path):
    """A real decoder process extracts a video with the shipped spec; torch, once imported, maps libtorch_cpu into
    the process. `fast` (OpenCV DIS) and `compressed` never import it; `default` (tvl1-torch) does, which
    shows the check sees an import."""
    video = encode(tmp_path / "v.mp4", translating_frames(12, size=(96, 64), velocity=(2, 1)), "x264-nob")
    parsed = load_spec(spec)
    init_store(tmp_path / "s.zarr", "zarr", parsed)
    decoder = DecoderProcess()
    try:
        result = decoder.run({"path": str(video), "source": "v.mp4", "video_id": "v", "store": str(tmp_path / "s.zarr"),
                              "format": "zarr", "spec": parsed.to_dict(), "reencode": False, "gpus": 0,
                              "device": "cpu"}, 300)
        assert result["ok"], result
        assert ("libtorch_cpu" in libraries(decoder.proc.pid)) is torch_expected
    finally:
        decoder.stop()
    assert os.path.isdir(tmp_path / "s.zarr" / "videos" / "v")


def test_a_decoder_preloads_what_the_spec_will_import(tmp_path):
    """extract starts a tvl1-torch spec's decoders with torch preloaded, so that its import overlaps the cluster's
    start: a decoder given the preload holds libtorch after a `compressed` job, which never imports it."""
    from motionssl.preprocess.extract import _flow_modules

    assert _flow_modules(load_spec("default")) == ("motionssl.preprocess.tvl1_torch",)
    assert _flow_modules(load_spec("fast")) == _flow_modules(load_spec("compressed")) == ()
    video = encode(tmp_path / "v.mp4", translating_frames(6, size=(64, 48), velocity=(2, 1)), "x264-nob")
    parsed = load_spec("compressed")
    init_store(tmp_path / "s.zarr", "zarr", parsed)
    decoder = DecoderProcess(preload=_flow_modules(load_spec("default")))
    try:
        result = decoder.run({"path": str(video), "source": "v.mp4", "video_id": "v", "store": str(tmp_path / "s.zarr"),
                              "format": "zarr", "spec": parsed.to_dict(), "reencode": False}, 300)
        assert result["ok"], result
        assert "libtorch_cpu" in libraries(decoder.proc.pid)
    finally:
        decoder.stop()


def test_a_job_submitted_ahead_is_collected_after_it_finished(tmp_path):
    """extract hands each decoder its first video before Dask is up; the task collects the result later, when the
    decoder has long written its progress and its result: both lines wait in the pipe, and collect returns at once
    (a buffered reader hid the second line from select, and the task waited out its timeout)."""
    import time

    video = encode(tmp_path / "v.mp4", translating_frames(6, size=(64, 48), velocity=(2, 1)), "x264-nob")
    parsed = load_spec("compressed")
    init_store(tmp_path / "s.zarr", "zarr", parsed)
    decoder = DecoderProcess()
    try:
        decoder.submit({"path": str(video), "source": "v.mp4", "video_id": "v", "store": str(tmp_path / "s.zarr"),
                        "format": "zarr", "spec": parsed.to_dict(), "reencode": False})
        deadline = time.monotonic() + 120
        while not (tmp_path / "s.zarr" / "videos" / "v").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the result line follows the commit
        t0 = time.monotonic()
        result = decoder.collect(timeout=30)
        assert result["ok"] and result["meta"]["frames"] == 6, result
        assert time.monotonic() - t0 < 5
    finally:
        decoder.stop()


def test_a_decoder_job_parses_no_yaml_and_records_the_drivers_version(tmp_path):
    """What a decoder process runs for a job (its spec comes as a dict, its version from the driver) imports no
    YAML parser: one less import in every decoder's start-up (benchmarks/README.md, issue 19 part 3)."""
    video = encode(tmp_path / "v.mp4", translating_frames(6, size=(64, 48), velocity=(2, 1)), "x264-nob")
    parsed = load_spec("compressed")
    init_store(tmp_path / "s.zarr", "zarr", parsed)
    job = {"path": str(video), "source": "v.mp4", "video_id": "v", "store": str(tmp_path / "s.zarr"), "format": "zarr",
           "spec": parsed.to_dict(), "reencode": False, "motionssl_version": "9.9.9-driver"}
    code = ("import json, sys\n"
            "from motionssl.preprocess.video_job import extract_video\n"
            f"meta = extract_video(json.loads({json.dumps(json.dumps(job))}))\n"
            "print(json.dumps({'yaml': 'yaml' in sys.modules, 'version': meta['motionssl_version']}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"yaml": False, "version": "9.9.9-driver"}
    assert open_store(tmp_path / "s.zarr").meta("v")["motionssl_version"] == "9.9.9-driver"


FORKED_DECODERS = """
import json, os, sys
from motionssl.preprocess.isolation import DecoderFailed, DecoderProcess, can_fork

job = json.loads(sys.argv[1])
out = {"can_fork": can_fork()}
first, second = DecoderProcess(), DecoderProcess()
try:
    first.start(fork=True)
    second.start(fork=True)
    out["ok"] = second.run(job, 300)["ok"]
    out["cmdline"] = open(f"/proc/{second.proc.pid}/cmdline", "rb").read() == open("/proc/self/cmdline", "rb").read()
    out["fds"] = sorted(os.readlink(f"/proc/{second.proc.pid}/fd/{fd}").split(":")[0]
                        for fd in os.listdir(f"/proc/{second.proc.pid}/fd"))
    try:
        first.run(dict(job, video_id="crash_me"), 300)
    except DecoderFailed as e:
        out["crash"] = str(e)
finally:
    first.stop()
    second.stop()
    with open(sys.argv[2], "a") as f:  # the parent's cleanup: a copy that returned into this code would run it too
        f.write(f"{os.getpid()}\\n")
print(json.dumps(out))
"""


def test_forked_decoders_share_the_parents_imports_and_stay_isolated(tmp_path):
    """extract's first decoders are copies (fork) of its single-threaded main process, which has already imported
    numpy, PyAV and the writer: a copy does the job as a fresh decoder would, holds only its own two pipes and
    /dev/null (not the pipes of the decoder forked before it), and its crash is still only its own: a real
    SIGSEGV (fault hook) fails that decoder's job with the signal named, and no copy ever returns into the code
    that forked it (the parent's cleanup runs once)."""
    video = encode(tmp_path / "v.mp4", translating_frames(6, size=(64, 48), velocity=(2, 1)), "x264-nob")
    parsed = load_spec("compressed")
    init_store(tmp_path / "s.zarr", "zarr", parsed)
    job = {"path": str(video), "source": "v.mp4", "video_id": "v", "store": str(tmp_path / "s.zarr"),
           "format": "zarr", "spec": parsed.to_dict(), "reencode": False}
    marker = tmp_path / "cleanup.log"
    r = subprocess.run([sys.executable, "-c", FORKED_DECODERS, json.dumps(job), str(marker)], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path, env={**os.environ, "MOTIONSSL_FAULT": "crash:crash_me"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["can_fork"] and out["ok"] and out["cmdline"], out
    assert out["fds"] == ["/dev/null"] * 3 + ["pipe"] * 2, out
    assert out["crash"] == "decoder process crashed (signal SIGSEGV)", out
    assert len(marker.read_text().split()) == 1
    assert open_store(tmp_path / "s.zarr").meta("v")["frames"] == 6


def test_extract_forks_its_first_decoders_only_while_single_threaded():
    """A copy of a process with other threads could inherit a lock one of them held: extract forks only before
    Dask starts its threads, and spawns fresh decoders (a retry after a crash, say) afterwards."""
    import threading

    from motionssl.preprocess.isolation import can_fork

    done = threading.Event()
    t = threading.Thread(target=done.wait)
    t.start()
    try:
        assert not can_fork()
    finally:
        done.set()
        t.join()


def test_the_local_cluster_runs_without_dasks_profiler_and_monitors(tmp_path):
    """The in-process cluster's periodic work (the statistical profiler every 10 ms per worker, a 20 ms tick per
    server, the system and memory monitors) took more CPU from the decoders than the run's own tasks
    (benchmarks/README.md, "Round four"): extract's local cluster starts without the profiler and the memory monitor,
    and with a slower tick and system monitor. Checked on the running cluster, so a renamed Dask setting fails here."""
    from motionssl.preprocess.extract import ExtractOptions, _start_client

    opts = ExtractOptions(video_dir=tmp_path, store=tmp_path / "s.zarr", spec=load_spec("compressed"), workers=2)
    client, cluster = _start_client(opts, 0)
    try:
        assert len(cluster.workers) == 2
        for worker in cluster.workers.values():
            assert not {"profile", "profile-cycle", "memory_monitor"} & set(worker.periodic_callbacks)
        for server in (cluster.scheduler, *cluster.workers.values()):
            assert server.periodic_callbacks["tick"].callback_time == 1000
            assert server.periodic_callbacks["monitor"].callback_time == 5000
    finally:
        client.close()
        cluster.close()
