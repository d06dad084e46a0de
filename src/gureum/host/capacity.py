"""What this host can give to guests, and the admission rule that keeps it from over-committing."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from gureum.errors import InsufficientCapacity

MIB = 1024 * 1024


@dataclass(frozen=True)
class HostCapacity:
    cpus: int
    memory_mib: int
    memory_reserve_mib: int
    cpu_overcommit: float

    @property
    def memory_limit_mib(self) -> int:
        return max(0, self.memory_mib - self.memory_reserve_mib)

    @property
    def vcpu_limit(self) -> int:
        return int(self.cpus * self.cpu_overcommit)

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "memory_limit_mib": self.memory_limit_mib,
            "vcpu_limit": self.vcpu_limit,
        }


def host_memory_mib(meminfo: str | None = None) -> int:
    text = meminfo if meminfo is not None else Path("/proc/meminfo").read_text()
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("MemTotal missing from /proc/meminfo")


def measure(reserve_mib: int | None, overcommit: float) -> HostCapacity:
    total = host_memory_mib()
    if reserve_mib is None:
        # The host itself, the service and each QEMU's own overhead live in the reserve.
        reserve_mib = max(1024, total // 10)
    return HostCapacity(
        cpus=os.cpu_count() or 1,
        memory_mib=total,
        memory_reserve_mib=reserve_mib,
        cpu_overcommit=overcommit,
    )


def admit(
    host: HostCapacity, committed_cpus: int, committed_mib: int, cpus: int, memory_mib: int
) -> None:
    """Refuse (InsufficientCapacity) a VM that would push the host past its limits."""
    if committed_mib + memory_mib > host.memory_limit_mib:
        free = max(0, host.memory_limit_mib - committed_mib)
        raise InsufficientCapacity(
            f"not enough host memory: {memory_mib} MiB asked, {free} MiB free for guests "
            f"({host.memory_mib} MiB on the host, {host.memory_reserve_mib} MiB reserved, "
            f"{committed_mib} MiB committed to other VMs)"
        )
    if committed_cpus + cpus > host.vcpu_limit:
        free = max(0, host.vcpu_limit - committed_cpus)
        raise InsufficientCapacity(
            f"not enough host CPUs: {cpus} vCPUs asked, {free} free "
            f"({host.cpus} CPUs x over-commit {host.cpu_overcommit:g} = {host.vcpu_limit}, "
            f"{committed_cpus} committed)"
        )
