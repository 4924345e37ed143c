"""How many torch threads a server process should use: as many as the CPUs it may actually use.

torch's default is one intra-op thread per core of the *host*. In a pod with a CPU limit of 2 on a
64-core node that is 64 OpenMP threads sharing 2 cores' worth of CFS quota: every barrier waits for
a descheduled thread, and the throttled process runs many times slower (measured in BENCHMARKS.md:
two threads on one contended core were 4-16x slower than one). So the default (`--torch-threads 0`)
is derived, in order of precedence, from:

1. `OMP_NUM_THREADS` when it is set (an explicit choice, honoured as torch itself would);
2. the cgroup CPU quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`),
   i.e. the container's CPU limit, rounded up;
3. the CPUs this process may run on (`os.sched_getaffinity`, which honours cpusets).

The smallest of (2) and (3) wins, and the answer is at least 1. Pure functions over a cgroup root,
so tests can give a fake one; no torch import here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit of this process's cgroup in CPUs (e.g. 2.5), or None when unlimited/unknown."""
    v2 = _read(root / "cpu.max")  # "max 100000" or "250000 100000"
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    quota_text = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us")
    period_text = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None  # -1 means unlimited


def usable_cpus() -> int:
    """CPUs this process may be scheduled on (cpuset-aware where the OS supports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def torch_threads(
    requested: int,
    environ: Mapping[str, str] | None = None,
    root: Path = CGROUP_ROOT,
    cpus: int | None = None,
) -> int:
    """The intra-op thread count: `requested` when > 0, else derived as the module docstring
    says."""
    if requested > 0:
        return requested
    environment = os.environ if environ is None else environ
    explicit = environment.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    available = usable_cpus() if cpus is None else cpus
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        available = min(available, math.ceil(limit))
    return max(1, available)
