"""Extraction on a SLURM cluster with dask-jobqueue: start a cluster of SLURM jobs, run `motionssl extract` on it.

    python examples/slurm/extract.py /data/ucf101/videos -o s3://bucket/ucf101.zarr --jobs 8 --cores 16 \
        --queue cpu --memory 64GB --walltime 04:00:00 -- --spec fast
    python examples/slurm/extract.py VIDEOS -o STORE --print-job-script     # the job script, nothing submitted
    python examples/slurm/extract.py VIDEOS -o STORE --local 2 -- --spec fast   # a local cluster instead (testing)

Each SLURM job runs --cores single-threaded Dask worker processes (one decoder each). Options after `--` go to
`motionssl extract`. The workers need motionssl installed (--venv), the videos at the same path, and the store:
a shared filesystem path, or a URL on object storage with the credentials in their environment or config files.
Exit status: extract's.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def slurm_cluster(args):
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        queue=args.queue, cores=args.cores, processes=args.cores, memory=args.memory, walltime=args.walltime,
        job_extra_directives=[f"--cpus-per-task={args.cores}"],
        job_script_prologue=[f"source {args.venv}/bin/activate", "export OMP_NUM_THREADS=1"],
        worker_extra_args=["--nthreads", "1"],
    )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos")
    ap.add_argument("-o", "--output", required=True, help="the store: a path every node mounts, or a URL")
    ap.add_argument("--jobs", type=int, default=4, help="SLURM jobs (nodes)")
    ap.add_argument("--cores", type=int, default=16, help="worker processes (one core each) per job")
    ap.add_argument("--memory", default="64GB")
    ap.add_argument("--queue", default=None)
    ap.add_argument("--walltime", default="04:00:00")
    ap.add_argument("--venv", default=str(Path(sys.executable).parent.parent))
    ap.add_argument("--local", type=int, default=0, help="a LocalCluster of this many workers instead of SLURM")
    ap.add_argument("--print-job-script", action="store_true")
    args = ap.parse_args(argv)

    if args.local:
        from dask.distributed import LocalCluster

        cluster = LocalCluster(n_workers=args.local, threads_per_worker=1, processes=True, dashboard_address=":0")
    else:
        cluster = slurm_cluster(args)
        if args.print_job_script:
            print(cluster.job_script())
            cluster.close()
            return 0
        cluster.scale(jobs=args.jobs)
    try:
        from dask.distributed import Client

        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=3600)  # SLURM may queue the jobs a while
        motionssl = shutil.which("motionssl", path=str(Path(sys.executable).parent)) or "motionssl"
        cmd = [motionssl, "extract", args.videos, "-o", args.output, "--scheduler", cluster.scheduler_address, *extra]
        print(" ".join(cmd), flush=True)
        return subprocess.run(cmd).returncode
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
