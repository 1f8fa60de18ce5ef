"""Test hooks that make real faults happen on chosen videos, so the fault-tolerance tests need no mocks.

`MOTIONSSL_FAULT="KIND:NEEDLE[,KIND:NEEDLE...]"` arms fault KIND for every video whose id contains NEEDLE.
`MOTIONSSL_FAULT_LOG=PATH`, when set, gets one line "KIND VIDEO_ID" each time a fault fires, so a test can
count attempts. Kinds, and who acts on them:

    crash        the decoder process kills itself with SIGSEGV           (preprocess/isolation.py)
    hang         the decoder process sleeps forever                      (preprocess/isolation.py)
    slow         the decoder process takes 0.3 s per frame               (preprocess/isolation.py)
    enospc       the video's writer fails with ENOSPC on its 2nd write   (preprocess/isolation.py)
    hang-sample  a DataLoader worker sleeps forever in that sample       (train/faults.py)
    inf-sample   that sample's RGB clips are +inf (a non-finite loss)    (train/faults.py)

Unset (the normal case), every check is one environment lookup.
"""
from __future__ import annotations

import os

FAULT_ENV = "MOTIONSSL_FAULT"
FAULT_LOG_ENV = "MOTIONSSL_FAULT_LOG"


def armed(video_id: str) -> set[str]:
    """The fault kinds armed for `video_id`."""
    spec = os.environ.get(FAULT_ENV, "")
    kinds = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, needle = item.partition(":")
        if needle and needle in video_id:
            kinds.add(kind)
    return kinds


def record(kind: str, video_id: str) -> None:
    """Note in MOTIONSSL_FAULT_LOG that `kind` fired on `video_id` (one O_APPEND write: safe across processes)."""
    path = os.environ.get(FAULT_LOG_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{kind} {video_id}\n".encode())
        finally:
            os.close(fd)
