"""examples/slurm/, run here: the dask-jobqueue extraction on a local 2-worker cluster (and its SLURM job script),
and the srun + torchrun pretrain script as 2 gloo processes, SIGTERMed mid-run, requeued and resumed to the end."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import write_spec
from test_extract import SYNTHETIC_IDS, motionssl
from test_pretrain import TINY

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "slurm"
BIN = Path(sys.executable).parent


def test_the_jobqueue_extraction_runs_on_a_local_cluster_and_writes_a_slurm_job_script(synthetic_dir, tmp_path):
    store = tmp_path / "s.zarr"
    spec = write_spec(tmp_path / "tiny.yaml")
    r = subprocess.run([sys.executable, str(EXAMPLES / "extract.py"), str(synthetic_dir), "-o", str(store),
                        "--local", "2", "--", "--spec", str(spec), "--no-progress"],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "--scheduler tcp://" in r.stdout
    assert motionssl("verify", store).returncode == 0
    from motionssl.stores import open_store

    assert set(open_store(store).videos) == SYNTHETIC_IDS
    r = subprocess.run([sys.executable, str(EXAMPLES / "extract.py"), "VIDEOS", "-o", "STORE", "--cores", "16",
                        "--queue", "cpu", "--print-job-script"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "#SBATCH -p cpu" in r.stdout and "#SBATCH --cpus-per-task=16" in r.stdout
    assert "--nworkers 16" in r.stdout and f"source {Path(sys.executable).parent.parent}/bin/activate" in r.stdout


def test_the_pretrain_script_runs_two_gloo_ranks_is_requeued_on_sigterm_and_resumes(tmp_path):
    from conftest import extract_in_process, TINY_SPEC
    from motionssl.preprocess.synthetic import encode, translating_frames
    from motionssl.train.run_log import read_log

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        encode(videos / f"v{i}.mp4", translating_frames(16, velocity=(2 + i, 1), seed=i), "x264-nob")
    store = extract_in_process(videos, tmp_path / "store.zarr", TINY_SPEC, "zarr")
    run = tmp_path / "run"
    marker = tmp_path / "requeued"
    env = {**os.environ, "NPROC": "2", "MOTIONSSL_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1",
           "PORT": str(29500 + os.getpid() % 1000), "MOTIONSSL": str(BIN / "motionssl"),
           "PYTHON": sys.executable, "REQUEUE": f"touch {marker}"}
    env.pop("SLURM_JOB_ID", None)
    args = ["bash", str(EXAMPLES / "pretrain.sbatch"), str(store), str(run), *TINY, "--steps", "400",
            "--batch-size", "2", "--workers", "0", "--log-every", "1", "--save-every", "1000",
            "--option", "queue_size=8"]
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "log.csv").exists() and len(read_log(run)) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGTERM)  # what SLURM's --signal=TERM@120 does to every task of the job
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err[-3000:]
    assert marker.exists() and "requeueing job local" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["terminated"] == "SIGTERM" and not summary["finished"] and summary["world_size"] == 2
    stopped = summary["steps"]

    # the requeued job: the same script, which resumes; a short run this time
    marker.unlink()
    r = subprocess.run([*args, "--halt-after", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert not marker.exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == stopped + 2 and summary["terminated"] is None
    assert [row["step"] for row in read_log(run)] == list(range(1, stopped + 3))
