"""Run each video's extraction in a separate decoder process, under a wall-clock timeout.

A segfault or an endless loop inside FFmpeg kills or stalls only that process: the Dask worker
gives a dead decoder's video one more try in a fresh decoder, then reports it failed (quarantined,
see `extract.py`), and goes on. The decoder process is a plain
subprocess (not multiprocessing), so it also works inside daemonic Dask worker processes, and it
is reused across videos so its start-up cost is paid once per worker. extract's first decoders,
started before Dask, are instead copies (os.fork) of its still single-threaded main process, which
skips a fresh interpreter's imports; every later one (a retry after a crash) is a fresh subprocess.

Protocol: one JSON job per line on the child's stdin, one JSON result per line on a private pipe.
"""
from __future__ import annotations

import errno
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time

from motionssl.stores import fault_injection

# Test hook (motionssl/fault_injection.py): MOTIONSSL_FAULT="crash:<id substring>", "hang:<...>", "slow:<...>"
# or "enospc:<...>" makes the decoder process crash (SIGSEGV), hang, take 0.3 s per frame, or hit a full disk
# on matching videos, to exercise isolation, retries, the no-progress timeout and cleanup with real signals,
# real time and real error paths.


class DecoderFailed(Exception):
    """The decoder process died or hung; the message is the report's one-line reason.

    `hung` tells a hang (no progress for the timeout) from a death (a signal, an exit): the caller retries a
    death once in a fresh process, since one can be transient (the OOM killer, a killed process), but not a hang,
    which already cost a whole timeout."""

    def __init__(self, message: str, *, hung: bool = False):
        super().__init__(message)
        self.hung = hung


# One core per decoder: OpenCV and BLAS/OpenMP pools read these at import, so they are set before a decoder imports
# them (on a loaded machine a 2-thread BLAS pool made a tiny matmul 400x slower).
PINNED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}


def can_fork() -> bool:
    """Whether `DecoderProcess.start(fork=True)` is safe here: no other thread (Dask's, say) in this process, and
    not a Dask nanny's worker, whose malloc settings (MALLOC_TRIM_THRESHOLD_, see `start`) a copy would keep."""
    import threading

    return (sys.platform.startswith("linux") and threading.active_count() == 1
            and "MALLOC_TRIM_THRESHOLD_" not in os.environ)


class _Forked:
    """What DecoderProcess uses of subprocess.Popen, for a child made by os.fork."""

    def __init__(self, pid: int, stdin):
        self.pid, self.stdin, self.returncode = pid, stdin, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


class DecoderProcess:
    def __init__(self, *, preload: tuple[str, ...] = ()):
        """preload: modules the process imports as it starts, before its first job (torch: seconds)."""
        self.proc: subprocess.Popen | _Forked | None = None
        self._results = None
        self._pending = b""
        self.preload = preload

    def start(self, *, fork: bool = False) -> None:
        """Start the process (also done by `run` when needed): its imports then overlap the caller's work.

        fork: a copy of this process instead of a fresh interpreter, sharing what this one imported (numpy,
        PyAV, the writer: about 0.3 s of CPU per decoder, benchmarks/README.md). Only while this process has no
        other thread (`can_fork`): a thread holding a lock at the fork would leave it held in the copy."""
        r, w = os.pipe()
        if fork:
            from motionssl.preprocess import video_job  # noqa: F401  imported once here, not in every copy

            jobs_r, jobs_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                _serve_forked(jobs_r, w, self.preload)  # never returns
            os.close(jobs_r)
            self.proc = _Forked(pid, os.fdopen(jobs_w, "w"))
        else:
            env = dict(os.environ, MOTIONSSL_RESULT_FD=str(w), MOTIONSSL_PRELOAD=",".join(self.preload), **PINNED)
            # Dask's nanny sets a 64 KiB malloc trim threshold for its workers; inherited by a decoder
            # that allocates a frame buffer per frame, it tripled system CPU (benchmarks/README.md).
            env.pop("MALLOC_TRIM_THRESHOLD_", None)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "motionssl.preprocess.isolation"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(w,), env=env, text=True,
            )
        os.close(w)
        self._results = os.fdopen(r, "rb", buffering=0)  # unbuffered: select sees every byte not yet read
        self._pending = b""

    def run(self, job: dict, timeout: float) -> dict:
        self.submit(job)
        return self.collect(timeout)

    def submit(self, job: dict) -> None:
        """Hand the process a job; `collect` waits for its result."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.stop()
            raise DecoderFailed("decoder process exited before taking the job") from None

    def collect(self, timeout: float) -> dict:
        """The result of the job submitted last, or DecoderFailed."""
        frames = 0
        while True:  # progress lines reset the clock: the timeout catches hangs, not long videos
            line = self._read_line(timeout)
            if line is None:
                self.stop()
                raise DecoderFailed(f"timed out: no progress for {timeout:g}s after {frames} frames "
                                    f"(decoder hung; raise --timeout if frames are very slow)", hung=True)
            if not line:
                code = self.proc.wait()
                self.stop()
                reason = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                raise DecoderFailed(f"decoder process crashed ({reason})")
            message = json.loads(line)
            if "progress" not in message:
                return message
            frames = message["progress"]

    def _read_line(self, timeout: float) -> bytes | None:
        """The next line from the result pipe (b"" at its end); None when nothing came for `timeout` s. A job
        submitted ahead may have written its progress and its result before anyone reads: lines that one read
        brought beyond the first wait in `_pending` (a buffered reader would hide them from select)."""
        while b"\n" not in self._pending:
            ready, _, _ = select.select([self._results], [], [], timeout)
            if not ready:
                return None
            chunk = self._results.read(65536)
            if not chunk:
                return b""
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

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
        self._pending = b""


def _inject_faults(video_id: str) -> set[str]:
    """Fire the faults armed for this video that act here (crash, hang); return every armed kind, for the
    caller to apply slow and enospc."""
    kinds = fault_injection.armed(video_id)
    for kind in kinds & {"crash", "hang", "slow", "enospc"}:
        fault_injection.record(kind, video_id)
    if "crash" in kinds:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "hang" in kinds:
        time.sleep(10**6)
    return kinds


def _full_disk_after_first_write():
    """Make every VideoWriter fail with a real ENOSPC OSError from its second block on (fault `enospc`), so the
    whole error path runs: a partly written temporary, abort, the report's reason. Returns the undo."""
    from motionssl.stores.writer import VideoWriter

    original = VideoWriter._flush

    def flush(self, name):
        if sum(self._written.values()) > 0 and self._buf.get(name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.tmp / name))
        original(self, name)

    VideoWriter._flush = flush
    return lambda: setattr(VideoWriter, "_flush", original)


def write_error(e: OSError, store: str) -> str:
    """The report's one-line reason for a failed write; a full disk says what to do. (HDF5's own messages span
    lines and bury the cause: its errno is taken instead.)"""
    where = e.filename or store
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"write failed: {os.strerror(e.errno)} (writing {where}); the video was not kept: free space and "
                f"rerun the same extract (finished videos are skipped)")
    reason = os.strerror(e.errno) if e.errno else (str(e).splitlines() or [type(e).__name__])[0]
    return f"write failed: {reason} (writing {where})"


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its worker dies, so a hung decoder never outlives
    a killed extract."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _serve_forked(jobs_fd: int, result_fd: int, preload: tuple[str, ...]) -> None:
    """The decoder in a child made by os.fork: as a fresh one would (`_serve`), then exit, never returning
    into the code that forked it (its `finally` blocks would release the parent's lock)."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        keep = sorted((jobs_fd, result_fd))  # the parent's other descriptors (pipes of other decoders) closed
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, os.sysconf("SC_OPEN_MAX"))
        os.environ.update(PINNED)  # for what this copy imports from now on (OpenCV, torch)
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # and the pools already loaded (numpy's BLAS)
        _serve(os.fdopen(jobs_fd, "r"), os.fdopen(result_fd, "w"), preload)
        code = 0
    finally:
        os._exit(code)


def _serve(jobs, out, preload) -> None:
    """One result line on `out` per job line from `jobs`, until `jobs` ends."""
    from motionssl.stores.decode import BadVideo, limit_threads
    from motionssl.preprocess.video_job import extract_video

    _die_with_parent()
    limit_threads()
    for module in preload:
        importlib.import_module(module)
    last, slow = [0.0], [False]

    def progress(frames: int) -> None:
        if slow[0]:
            time.sleep(0.3)
        if time.monotonic() - last[0] > 1.0:
            out.write(json.dumps({"progress": frames}) + "\n")
            out.flush()
            last[0] = time.monotonic()

    for line in jobs:
        job = json.loads(line)
        faults = _inject_faults(job["video_id"])
        slow[0] = "slow" in faults
        undo = _full_disk_after_first_write() if "enospc" in faults else None
        try:
            result = {"ok": True, "meta": extract_video(job, progress=progress)}
        except BadVideo as e:
            result = {"ok": False, "error": str(e)}
        except OSError as e:  # disk full, permissions: the video is not complete
            result = {"ok": False, "error": write_error(e, job["store"])}
        except Exception as e:  # any other failure stays this video's, with its type named
            result = {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
        finally:
            if undo is not None:
                undo()
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve(sys.stdin, os.fdopen(int(os.environ["MOTIONSSL_RESULT_FD"]), "w"),
           tuple(filter(None, os.environ.get("MOTIONSSL_PRELOAD", "").split(","))))
