"""What this machine is and where bnonly keeps its files on it: the CPU's feature flags (which
decide the compute defaults and which compiled kernel fits), the cores this process may use, and
the cache folder (decoded image
folders, the fused kernel's build). No bnonly imports: every layer above may ask."""

from __future__ import annotations

import os
from pathlib import Path


def read_cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (empty when /proc/cpuinfo cannot be read, e.g. not on Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (a Slurm allocation's, a
    ``taskset``'s), not the machine's count, so threads and workers never oversubscribe it."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity masks
        return os.cpu_count() or 1


def default_cache_dir() -> Path:
    """``$BNONLY_CACHE``, else ``~/.cache/bnonly``."""
    return Path(os.environ.get("BNONLY_CACHE") or Path.home() / ".cache" / "bnonly")
