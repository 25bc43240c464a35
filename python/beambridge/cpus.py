"""How many CPUs this process may use: the CPUs its affinity allows, bounded by a CPU
quota of the cgroup it runs in (a container started with ``--cpus 1`` on a 16-core host
may run on any of the 16, but only for one CPU's worth of time).

The worker polls for the next call only when it may use more than one CPU
(`beambridge.spin.spin_seconds`): under a quota of one CPU, time spent polling is time
the BEAM cannot have.

>>> usable_cpus() >= 1
True
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_quota", "usable_cpus"]

#: Where cgroup v2 (``cpu.max``) and v1 (``cpu/cpu.cfs_quota_us``) keep the CPU quota
#: of the cgroup a containerised process sees as its root.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(root: Path | None = None) -> float:
    """The CPUs of this process's affinity, or its cgroup's CPU quota if that is less
    (a quota may be a fraction: 1.5 CPUs). ``root``: the cgroup directory (default
    `CGROUP_ROOT`)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    quota = cgroup_quota(root)
    return allowed if quota is None else min(float(allowed), quota)


def cgroup_quota(root: Path | None = None) -> float | None:
    """The CPU quota under ``root`` in CPUs (quota / period), or None when there is none
    or it cannot be read.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "cpu.max").write_text("150000 100000\\n")
    ...     cgroup_quota(Path(d))
    1.5
    """
    root = CGROUP_ROOT if root is None else root
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else _ratio(quota, period)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota = (v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (v1 / "cpu.cfs_period_us").read_text().strip()
            return None if quota.startswith("-") else _ratio(quota, period)
    except (OSError, ValueError):
        return None
    return None


def _ratio(quota: str, period: str) -> float | None:
    q, p = int(quota), int(period)
    if q <= 0 or p <= 0:
        return None
    value = q / p
    return value if math.isfinite(value) else None
