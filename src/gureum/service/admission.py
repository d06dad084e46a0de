"""Admission: whether the host can take one more VM, or a bigger one, decided under one lock.

Every check that claims something (host CPUs and memory, a project's quota, an address on a
network) runs under ``Admission``'s lock and claims what it admitted before the lock is let go:
in the store, or held (``service/holds.py``) until the store shows it. Two requests can then
never both take the last MiB.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gureum.host.interface import HostAgent
from gureum.model.instance import Instance, committed
from gureum.service.holds import Holds
from gureum.store.instances import InstanceStore

HOST = "host"  # the key of what the host holds for growing VMs
POOL = "pool"  # the key of what QEMUs waiting in the host's pool hold (``service/pool.py``)


class Admission(asyncio.Lock):
    """The lock itself (``async with admission:``), and ``admit``, which checks the host
    under it."""

    def __init__(self, store: InstanceStore, host: HostAgent) -> None:
        super().__init__()
        self.store = store
        self.host = host
        # vCPUs and MiB admitted to running VMs that are still growing into them (a live
        # resize under way), under HOST: the host counts them before the store does.
        self.growing = Holds()
        # MiB the QEMUs waiting in the pool take themselves (no guest runs in them yet).
        self.waiting = Holds()

    def committed(self) -> tuple[int, int]:
        """vCPUs and MiB the host has given to active VMs, and to VMs growing into more."""
        cpus, mib = committed(self.store.list())
        growing = self.growing.of(HOST)
        waiting = self.waiting.of(POOL)["memory_mib"]
        return cpus + growing["cpus"], mib + growing["memory_mib"] + waiting

    async def admit(self, cpus: int, memory_mib: int, *, replacing: Instance | None = None) -> None:
        """Refuse what the host cannot take. ``replacing``: an active VM whose own share is
        counted as freed (a restore or resize replaces it). Call it holding the lock."""
        used_cpus, used_mib = self.committed()
        if replacing is not None:
            share = replacing.host_share
            used_cpus, used_mib = used_cpus - share[0], used_mib - share[1]
        self.host.admit(used_cpus, used_mib, cpus, memory_mib)

    def hold_growth(self, cpus: int, memory_mib: int) -> Callable[[], None]:
        """Count a live resize's growth against the host until it is in the store."""
        return self.growing.hold(HOST, cpus=cpus, memory_mib=memory_mib)
