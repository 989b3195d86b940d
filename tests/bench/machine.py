"""The machine the figures were taken on, and the CPU placement that keeps runs comparable."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["cpu_ns", "default_cpus", "describe", "load_average", "pin", "rss_kib", "rss_mb"]

PACKAGES = ("mcphub", "mcp", "grpcio", "protobuf", "uvicorn", "uvloop", "httptools", "starlette", "pydantic")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": {name: _package_version(name) for name in PACKAGES},
    }


def default_cpus() -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(servers, load generators): the first usable CPU for the system under test, the rest for load.

    Every server is a single Python process (one core's worth of interpreter), so giving
    each the same one CPU makes the comparison fair; gRPC's helper threads share it too.
    None on a one-CPU machine, where nothing can be separated.
    """
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None
    return (usable[0],), tuple(usable[1:])


def pin(pid: int, cpus: tuple[int, ...] | None) -> None:
    """Restrict every thread of a running process to `cpus` (threads it starts later inherit it)."""
    if not cpus:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of a process in KiB: VmRSS, or its RssAnon (private) or RssFile (mapped
    files, mostly shared libraries other processes can share) part."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"process {pid} has no {field} line (a zombie?)")


def rss_mb(kib: int) -> float:
    """KiB as MB (10^6 bytes, the unit the goals are stated in), one decimal."""
    return round(kib * 1024 / 1e6, 1)


def cpu_ns(pid: int) -> int:
    """CPU time a process has used so far, all its threads, in nanoseconds (from schedstat).

    Per call, this is the figure least disturbed by other work on a shared machine:
    waiting for a CPU makes calls slower but costs the process no CPU time.
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return total
