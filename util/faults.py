"""Deterministic fault injection for the fault-matrix tests: DEEPCLUSTER_FAULT names a point in the code where the
process kills itself (SIGKILL: no cleanup, no flush, as a pre-empted node) or fails a write as a full disk would.

    DEEPCLUSTER_FAULT=<point>[@<n>][:stall]    the n-th time (default 1) the run reaches <point>; with `:stall` the
                                               process sleeps there instead (a rank that hangs, for timeouts)
Points: mid-step (after a training step's optimizer update), after-log (the epoch's log line written, its
checkpoint not yet), checkpoint-write (inside the atomic checkpoint write: temp file written, not yet renamed),
no-space (the checkpoint write fails with ENOSPC). Unset, every call is one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time

POINTS = ("mid-step", "after-log", "checkpoint-write", "no-space")
_reached: dict[str, int] = {}


def _armed(point: str) -> bool:
    spec = os.environ.get("DEEPCLUSTER_FAULT")
    if not spec:
        return False
    name, _, count = spec.split(":")[0].partition("@")
    if name != point:
        return False
    _reached[point] = _reached.get(point, 0) + 1
    return _reached[point] == int(count or 1)


def kill_point(point: str) -> None:
    """SIGKILL this process when DEEPCLUSTER_FAULT names this point (and this is its n-th visit)."""
    if _armed(point):
        if os.environ["DEEPCLUSTER_FAULT"].endswith(":stall"):
            time.sleep(3600)
        os.kill(os.getpid(), signal.SIGKILL)


def write_fault(point: str) -> None:
    """Inside a write: SIGKILL when DEEPCLUSTER_FAULT names this point, or the OSError of a full disk when it
    names `no-space`."""
    kill_point(point)
    if _armed("no-space"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
