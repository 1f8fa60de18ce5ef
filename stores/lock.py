"""One writer per directory: a lock file naming its holder (host, pid, start time), for `extract` on a store and
the training loop on a run directory. A lock whose holder is dead on this host is taken over."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from motionssl.stores.layout import read_json


class Locked(Exception):
    """Another live process holds the lock; the message names it and says what to do."""


def acquire_lock(directory: Path, name: str, *, user: str) -> Path:
    """Create `directory/name` for this process, or raise Locked naming the holder (`another {user}`)."""
    lock = Path(directory) / name
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = read_json(lock)
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and not _pid_alive(holder.get("pid", -1)):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise Locked(refusal(directory, lock, holder, user)) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lock
    raise Locked(f"could not take the lock {lock}")


def refusal(directory, lock, holder: dict, user: str) -> str:
    return (f"{directory} is being written by another {user} (pid {holder.get('pid')} on {holder.get('host')}, "
            f"since {holder.get('started')}); wait for it, or delete {lock} if that process is gone")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
