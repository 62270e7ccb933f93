"""Memory of this process, in MB (2**20 bytes).

``ru_maxrss`` (getrusage RUSAGE_SELF) is not this program's own peak when the process was
started by a larger one: Linux carries the parent's peak RSS at fork/exec into the child's
ru_maxrss (exec saves the old address space's high-water mark in the process's signal
struct). A child of a 300 MB Python reports ru_maxrss 310 MB while its own peak is 9 MB.
``VmHWM`` in /proc/self/status is the high-water mark of this address space only, so it is
the peak reported here; ru_maxrss is kept beside it for reference."""

from __future__ import annotations

import resource


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise KeyError(field)


def peak_rss_mb() -> float:
    """This process image's peak resident set (VmHWM)."""
    return _status("VmHWM")


def rss_mb() -> float:
    """The resident set now (VmRSS)."""
    return _status("VmRSS")


def ru_maxrss_mb() -> float:
    """getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux), which includes the parent's peak."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
