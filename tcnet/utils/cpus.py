"""How many CPUs this process may use: what "all cores" means for preprocess's workers, a DDP
process's threads and the benchmarks.

``os.cpu_count()`` is the machine's cores. A process may be allowed fewer: its affinity mask
(``taskset``, a CPU set), its cgroup's CPU quota (a container's or a Kubernetes pod's CPU *limit*)
and ``TCNET_CPUS`` (what the Kubeflow pipeline sets from a task's CPU *request*, which the cgroup
does not show). Starting a worker per machine core in a pod allowed two would run dozens of
processes in a few cores' time and memory. ``OMP_NUM_THREADS`` is left to mean threads per process
(torch's): a user's ``OMP_NUM_THREADS=1`` does not shrink preprocess's pool.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: str, period: str) -> Optional[float]:
    try:
        q, p = int(quota), int(period)
    except ValueError:  # a file we do not understand: no quota rather than a crash
        return None
    return q / p if q > 0 and p > 0 else None  # v1's -1: no quota


def _v2_quota(folder: Path) -> Optional[float]:
    text = _read(folder / "cpu.max")  # "max 100000" or "200000 100000"
    if not text or text.split()[0] == "max":
        return None
    quota, period = (text.split() + ["100000"])[:2]
    return _ratio(quota, period)


def _v1_quota(folder: Path) -> Optional[float]:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    return _ratio(quota, period) if quota and period else None


def cgroup_cpu_quota(proc_cgroup: Optional[str] = None, root: Path = CGROUP_ROOT) -> Optional[float]:
    """The CPU quota of this process's cgroup in cores (the smallest along its path; cgroup v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``), ``None`` where there is none.
    ``proc_cgroup``: the text of ``/proc/self/cgroup`` (read if not given)."""
    text = proc_cgroup if proc_cgroup is not None else (_read(Path("/proc/self/cgroup")) or "")
    found = []
    for line in text.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2
            base, read = root if (root / "cgroup.controllers").exists() else root / "unified", _v2_quota
        elif "cpu" in controllers.split(","):  # v1: mounted as cpu, or cpu,cpuacct
            base = next((root / n for n in (controllers, "cpu,cpuacct", "cpu") if (root / n).is_dir()), None)
            read = _v1_quota
            if base is None:
                continue
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # the cgroup and each parent: the tightest quota holds
            quota = read(base.joinpath(*parts[:depth]))
            if quota is not None:
                found.append(quota)
    return min(found) if found else None


def cpus_from_env(environ=os.environ) -> Optional[int]:
    """``TCNET_CPUS`` as a positive int, else ``None``."""
    text = str(environ.get("TCNET_CPUS", "")).strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def affinity_cpus() -> int:
    """Cores in this process's affinity mask (``os.cpu_count()`` where there is none: macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_cpus(environ=os.environ) -> int:
    """The CPUs this process may use: the fewest of its affinity mask, its cgroup's CPU quota
    (rounded up) and ``TCNET_CPUS``; at least 1."""
    n = affinity_cpus()
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    told = cpus_from_env(environ)
    return max(1, min(n, told) if told else n)


__all__ = ["affinity_cpus", "available_cpus", "cgroup_cpu_quota", "cpus_from_env"]
