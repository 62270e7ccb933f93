"""The shared machine: what it is, and how busy it is (the contention meter every reference
benchmark uses). Standard library only, so both venvs (.venv with torch, .venv-ort without)
import it."""
from __future__ import annotations

import os
import platform
import resource
from pathlib import Path


def busy_seconds() -> float:
    """System-wide non-idle CPU seconds (all cores) from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def foreign_share(wall: float, busy0: float, own0: float) -> float:
    """CPU share (of wall x cores) that other processes used since (busy0, own0)."""
    other = (busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    return max(0.0, other) / (wall * (os.cpu_count() or 1))


def timed_steps(step, warmup: int, steps: int) -> dict:
    """`warmup` untimed calls of `step`, then `steps` timed ones: each step's milliseconds
    (`times`), the timed run's wall seconds, the CPU share other processes took meanwhile
    (`foreign`) and this process's CPU seconds per wall second (`cpu_per_wall`)."""
    import time
    for _ in range(warmup):
        step()
    times = []
    w0, b0, c0 = time.perf_counter(), busy_seconds(), own_cpu_seconds()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    wall = time.perf_counter() - w0
    return {"times": times, "wall": wall, "foreign": foreign_share(wall, b0, c0),
            "cpu_per_wall": (own_cpu_seconds() - c0) / wall}


def machine(**versions: str) -> dict:
    """The CPU, cores, Python and platform, with the given library versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            **versions, "platform": platform.platform()}
