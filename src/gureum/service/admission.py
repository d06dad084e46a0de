"""Admission: whether the host can take one more VM, or a bigger one, decided under one lock.

Every check that claims something (host CPUs and memory, a project's quota, an address on a
network) runs under ``Admission``'s lock and claims what it admitted before the lock is let go:
in the store, or held (``service/holds.py``) until the store shows it. Two requests can then
never both take the last MiB.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gureum.host.capacity import HostCapacity, admit
from gureum.model.instance import Instance, committed
from gureum.service.holds import Holds
from gureum.service.host_router import HostRouter
from gureum.store.instances import InstanceStore

HOST = "host"  # the key of what the host holds for growing VMs
POOL = "pool"  # the key of what QEMUs waiting in the host's pool hold (``service/pool.py``)


class Admission(asyncio.Lock):
    """The lock itself (``async with admission:``), and ``admit``, which checks the host
    under it."""

    def __init__(self, store: InstanceStore, host: HostRouter) -> None:
        super().__init__()
        self.store = store
        self.host = host
        # A joined host's capacity as it last reported (``HostService``, made after this).
        self.capacity_of: Callable[[str], HostCapacity] | None = None
        # vCPUs and MiB admitted to running VMs that are still growing into them (a live
        # resize under way), under HOST: the host counts them before the store does.
        self.growing = Holds()
        # MiB the QEMUs waiting in the pool take themselves (no guest runs in them yet).
        self.waiting = Holds()

    def committed(self) -> tuple[int, int]:
        """vCPUs and MiB this host has given to active VMs, and to VMs growing into more (a
        joined host's instances are its own to count)."""
        here = [i for i in self.store.list() if self.host.is_local(i.host)]
        cpus, mib = committed(here)
        growing = self.growing.of(HOST)
        waiting = self.waiting.of(POOL)["memory_mib"]
        return cpus + growing["cpus"], mib + growing["memory_mib"] + waiting

    async def admit(
        self,
        cpus: int,
        memory_mib: int,
        *,
        replacing: Instance | None = None,
        on: str | None = None,
    ) -> None:
        """Refuse what the host cannot take: this one, or ``on`` (a joined host, by what it
        last reported and the store's instances on it). ``replacing``: an active VM whose own
        share is counted as freed (a restore or resize replaces it). Call it holding the
        lock."""
        host = replacing.host if replacing is not None else on
        here = self.host.is_local(host)
        if here:
            used_cpus, used_mib = self.committed()
        else:
            used_cpus, used_mib = committed([i for i in self.store.list() if i.host == host])
        if replacing is not None:
            share = replacing.host_share
            used_cpus, used_mib = used_cpus - share[0], used_mib - share[1]
        if here:
            self.host.admit(used_cpus, used_mib, cpus, memory_mib)
        elif self.capacity_of is not None:
            admit(self.capacity_of(str(host)), used_cpus, used_mib, cpus, memory_mib)

    def admit_on(self, host: str, cpus: int, memory_mib: int) -> None:
        """Refuse a new instance that a joined host cannot take, by what it last reported and
        the store's instances on it now: the check again, in the transaction that writes the
        instance, under the host's lock (``InstanceStore.create``). Placement chose the host
        from the store as it was; another launch there, from this control plane or another,
        may have been written since."""
        used_cpus, used_mib = committed(self.store.list(host=host))
        if self.capacity_of is not None:
            admit(self.capacity_of(host), used_cpus, used_mib, cpus, memory_mib)

    def hold_growth(self, cpus: int, memory_mib: int) -> Callable[[], None]:
        """Count a live resize's growth against the host until it is in the store."""
        return self.growing.hold(HOST, cpus=cpus, memory_mib=memory_mib)

    def hold_on(self, host: str | None, cpus: int, memory_mib: int) -> Callable[[], None]:
        """Count a new instance placed on ``host`` against it until it is in the store: this
        host's growth, or a joined host's launches under way (``held_on``), which placement
        counts, so that two launches at once are not both placed on one joined host's last
        room."""
        key = HOST if self.host.is_local(host) else _joined_key(str(host))
        return self.growing.hold(key, cpus=cpus, memory_mib=memory_mib)

    def held_on(self, host: str) -> tuple[int, int]:
        """vCPUs and MiB of this control plane's launches under way to joined ``host``."""
        held = self.growing.of(_joined_key(host))
        return held["cpus"], held["memory_mib"]


def _joined_key(host: str) -> str:
    return f"joined:{host}"  # never HOST or POOL, whatever a host is named
