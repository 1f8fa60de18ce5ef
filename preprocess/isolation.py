"""Run each video's extraction in a separate decoder process, under a wall-clock timeout.

A segfault or an endless loop inside FFmpeg kills or stalls only that process: the Dask worker
reports the video as failed, starts a fresh decoder and goes on. The decoder process is a plain
subprocess (not multiprocessing), so it also works inside daemonic Dask worker processes, and it
is reused across videos so its start-up cost is paid once per worker.

Protocol: one JSON job per line on the child's stdin, one JSON result per line on a private pipe.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

# Test hook: MOTIONSSL_FAULT="crash:<id substring>", "hang:<...>" or "slow:<...>" makes the decoder
# process crash (SIGSEGV), hang, or take 0.3 s per frame on matching videos, to exercise
# isolation and the no-progress timeout with real signals and real time.
FAULT_ENV = "MOTIONSSL_FAULT"


class DecoderFailed(Exception):
    """The decoder process died or hung; the message is the report's one-line reason."""


class DecoderProcess:
    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self._results = None

    def start(self) -> None:
        """Start the process (also done by `run` when needed): its imports then overlap the caller's work."""
        r, w = os.pipe()
        # One core per decoder: OpenCV and BLAS/OpenMP pools read these at import, so set them before
        # it starts (on a loaded machine a 2-thread BLAS pool made a tiny matmul 400x slower).
        env = dict(os.environ, MOTIONSSL_RESULT_FD=str(w), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", OPENCV_FOR_THREADS_NUM="1")
        # Dask's nanny sets a 64 KiB malloc trim threshold for its workers; inherited by a decoder
        # that allocates a frame buffer per frame, it tripled system CPU (benchmarks/README.md).
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "motionssl.preprocess.isolation"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(w,), env=env, text=True,
        )
        os.close(w)
        self._results = os.fdopen(r, "r")

    def run(self, job: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.stop()
            raise DecoderFailed("decoder process exited before taking the job") from None
        frames = 0
        while True:  # progress lines reset the clock: the timeout catches hangs, not long videos
            ready, _, _ = select.select([self._results], [], [], timeout)
            if not ready:
                self.stop()
                raise DecoderFailed(f"timed out: no progress for {timeout:g}s after {frames} frames "
                                    f"(decoder hung; raise --timeout if frames are very slow)")
            line = self._results.readline()
            if not line:
                code = self.proc.wait()
                self.stop()
                reason = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                raise DecoderFailed(f"decoder process crashed ({reason})")
            message = json.loads(line)
            if "progress" not in message:
                return message
            frames = message["progress"]

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stdin:
                self.proc.stdin.close()
        if self._results is not None:
            self._results.close()
        self.proc = self._results = None


def _fault(video_id: str) -> str:
    spec = os.environ.get(FAULT_ENV, "")
    kind, _, needle = spec.partition(":")
    if not needle or needle not in video_id:
        return ""
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "hang":
        time.sleep(10**6)
    return kind


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its worker dies, so a hung decoder never outlives
    a killed extract."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _serve() -> None:
    from motionssl.preprocess.decode import BadVideo, limit_threads
    from motionssl.preprocess.video_job import extract_video

    _die_with_parent()
    limit_threads()
    out = os.fdopen(int(os.environ["MOTIONSSL_RESULT_FD"]), "w")
    last, slow = [0.0], [False]

    def progress(frames: int) -> None:
        if slow[0]:
            time.sleep(0.3)
        if time.monotonic() - last[0] > 1.0:
            out.write(json.dumps({"progress": frames}) + "\n")
            out.flush()
            last[0] = time.monotonic()

    for line in sys.stdin:
        job = json.loads(line)
        slow[0] = _fault(job["video_id"]) == "slow"
        try:
            result = {"ok": True, "meta": extract_video(job, progress=progress)}
        except BadVideo as e:
            result = {"ok": False, "error": str(e)}
        except OSError as e:  # disk full, permissions: the video is not complete
            result = {"ok": False, "error": f"write failed: {e.strerror or e} ({e.filename or 'store'})"}
        except Exception as e:  # any other failure stays this video's, with its type named
            result = {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
