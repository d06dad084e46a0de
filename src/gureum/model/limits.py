"""What a project's CPU limit can be: the bounds of the kernel's CPU bandwidth control.

A rule users meet (``quota set --cpu-limit``), so it is checked by the service before anything
is written; the host (``host/cgroups.py``) applies it with the same arithmetic.
"""

from __future__ import annotations

PERIOD_US = 100_000
# What the kernel takes as a CFS quota per period (v1 cpu.cfs_quota_us and v2 cpu.max alike):
# at least 1 ms (EINVAL below), at most 2^44 - 1 us (its bandwidth arithmetic's width).
MIN_QUOTA_US = 1000
MAX_QUOTA_US = (1 << 44) - 1
MIN_CPU_CORES = MIN_QUOTA_US / PERIOD_US


def cpu_quota_us(cores: float) -> int:
    """The CFS quota per period that gives ``cores`` CPUs."""
    return int(cores * PERIOD_US)
