"""The one way an instance comes to exist: launch, clone and backup import all go through here.

An instance is made in three steps, each undone if a later one fails:
1. admission: the project's quota and (for one that will run) the host's capacity are checked
   and claimed under ``Admission``'s lock; the claim is held until the row counts instead;
2. slow work on the host that must come before the row (an import takes its disk and boot
   files), each step registering its undo with the ``Reverter``;
3. the store writes the instance with its NICs (addresses picked under the lock), its security
   groups and any disk layer made for it, in one transaction (``InstanceStore.create``).
Work after that (a memory image, a first top layer) registers its undo the same way; the undo
of the row is ``forget``: every row of the instance and the layers and files only it used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType

from gureum.errors import GureumError
from gureum.ids import new_id
from gureum.model.hardware import Hardware
from gureum.model.instance import Instance, InstanceSpec, State
from gureum.model.network import Network
from gureum.model.snapshot import Layer
from gureum.service.admission import Admission
from gureum.service.disks import DiskLayers
from gureum.service.events import EventBus, publish_state
from gureum.service.host_router import HostRouter
from gureum.service.hosts import HostService
from gureum.service.networks import NetworkService, machine_nics
from gureum.service.placement import Want
from gureum.service.quotas import QuotaService
from gureum.store.instances import InstanceStore

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[None]]
NICs = tuple[tuple[int, str, str], ...]


class Reverter:
    """Undo steps, run newest first when the block they were registered in fails.

    ``async with Reverter() as undo:`` then ``undo.add(step)`` after each thing made. A step
    that fails while undoing is logged and the rest still run: the first error is the one the
    caller sees.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Undo]] = []

    def add(self, what: str, step: Undo) -> None:
        self._steps.append((what, step))

    async def revert(self) -> None:
        while self._steps:
            what, step = self._steps.pop()
            try:
                await step()
            except Exception:
                log.exception("could not undo %s", what)

    async def __aenter__(self) -> Reverter:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            await self.revert()


@dataclass
class Draft:
    """An instance about to be made: its row (without hardware), where its NICs go, its groups.

    ``networks`` and ``groups`` are looked up only once the claim is granted, under the lock
    the row is written under: a refused request makes no default network or group, and a
    group deleted meanwhile is never named. ``hardware`` makes its machine from its new NICs
    (slot, MAC, network id): a launch boots a new one, a clone or an import keeps the saved
    one with new MACs.
    """

    inst: Instance
    networks: Callable[[], Awaitable[list[tuple[int, Network]]]]
    groups: Callable[[], list[str]]
    hardware: Callable[[NICs], Hardware]
    runs: bool = True  # it will start at once: the host's capacity is admitted too
    layers: list[Layer] = field(default_factory=list)  # made for it before its row (an import)
    # MACs chosen before the draft (by slot): those a QEMU of the pool was started with.
    macs: dict[int, str] = field(default_factory=dict)
    # What keeps it on the control plane's own host (placement's ``here``), if anything.
    local_only: str | None = None

    @property
    def wanted(self) -> dict[str, int]:
        spec = self.inst.spec
        return {
            "instances": 1,
            "cpus": spec.cpus,
            "memory_mib": spec.memory_mib,
            "disk_bytes": spec.disk_bytes,
        }


class Creator:
    def __init__(
        self,
        store: InstanceStore,
        admission: Admission,
        quotas: QuotaService,
        networks: NetworkService,
        disks: DiskLayers,
        host: HostRouter,
        events: EventBus,
        hosts: HostService,
    ) -> None:
        self.hosts = hosts
        self.events = events
        self.store = store
        self.admission = admission
        self.quotas = quotas
        self.networks = networks
        self.disks = disks
        self.host = host

    def new(
        self,
        spec: InstanceSpec,
        image_version: str,
        project_id: str,
        *,
        state: State = State.PENDING,
        user_data: str | None = None,
        ssh_keys: tuple[str, ...] = (),
        autostart: bool = False,
        kind: str = "vm",
        host: str | None = None,
        spread_group: str | None = None,
    ) -> Instance:
        """A new instance's row: its own id and its own unprivileged user on this host (a
        container: its own range of them, root inside being the first). ``host``: the one it
        must go on (None: the scheduler chooses when it is claimed)."""
        return Instance(
            id=new_id("i-"),
            spec=spec,
            state=state,
            created_at=time.time(),
            image_version=image_version,
            accel=self.host.accel.accel,
            user_data=user_data,
            ssh_keys=ssh_keys,
            project_id=project_id,
            uid=self.store.next_uid_range() if kind == "container" else self.store.next_uid(),
            autostart=autostart,
            kind=kind,
            host=host,
            spread_group=spread_group,
        )

    async def claim(self, draft: Draft) -> Callable[[], None]:
        """Check and hold what the instance will count for (quota; host capacity if it runs).
        Release it once its row is in the store, or when the creation fails."""
        inst = draft.inst
        async with self.admission:
            self.quotas.check(inst.project_id, replacing=None, **draft.wanted)
            # The scheduler: its host filters, and the host's capacity if it will run.
            cpus, mib = (inst.spec.cpus, inst.spec.memory_mib) if draft.runs else (0, 0)
            want = Want(cpus, mib, inst.host, inst.spread_group, local_only=draft.local_only)
            inst.host = self.hosts.place(want)
            release_quota = self.quotas.hold(inst.project_id, **draft.wanted)
            release_host = (
                self.admission.hold_on(inst.host, inst.spec.cpus, inst.spec.memory_mib)
                if draft.runs
                else _nothing
            )

        def release() -> None:
            release_quota()
            release_host()

        return release

    async def insert(self, draft: Draft, undo: Reverter) -> Instance:
        """Write the instance, its NICs, groups and layers in one transaction; register the
        undo of all of it."""
        inst = draft.inst
        async with self.admission:  # addresses are handed out under this lock
            # The project's default network is made on its first use, here.
            nics = self.networks.plan_nics(inst.id, await draft.networks(), draft.macs)
            inst.hardware = draft.hardware(machine_nics(nics))
            # No await from here to the write: a group deleted meanwhile cannot be named.
            self.store.create(inst, nics, draft.groups(), draft.layers, *self._rechecks(draft))
        publish_state(self.events, inst, "created")
        undo.add(f"the records of {inst.spec.name}", lambda: self.forget(inst.id))
        return inst

    def _rechecks(self, draft: Draft) -> tuple[list[str], Callable[[], None]]:
        """What the store checks again as it writes the instance, and under which locks: the
        project's quota, and a joined host's capacity (another control plane's launches,
        and this one's own under way to that host, are counted only once written)."""
        inst = draft.inst
        locks, checks = [], []
        quota = self.quotas.recheck(inst.project_id, **draft.wanted)
        if quota is not None:
            locks.append(f"project-instances:{inst.project_id}")
            checks.append(quota)
        if draft.runs and inst.host is not None and not self.host.is_local(inst.host):
            host, cpus, mib = inst.host, inst.spec.cpus, inst.spec.memory_mib
            locks.append(f"host-instances:{host}")
            checks.append(lambda: self.admission.admit_on(host, cpus, mib))

        def recheck() -> None:
            for check in checks:
                check()

        return locks, recheck

    async def create(
        self,
        draft: Draft,
        *,
        before: Callable[[Reverter], Awaitable[None]] | None = None,
        after: Callable[[Instance, Reverter], Awaitable[None]] | None = None,
    ) -> Instance:
        """Claim, run ``before`` (host work the row needs), insert, run ``after``: all of it,
        or nothing left in the store or on the host."""
        release = await self.claim(draft)
        try:
            async with Reverter() as undo:
                if before is not None:
                    await before(undo)
                inst = await self.insert(draft, undo)
                release()  # the row counts now
                if after is not None:
                    await after(inst, undo)
        finally:
            release()
        return inst

    async def forget(self, instance_id: str) -> None:
        """Every row of an instance, then its networks brought in step, and the layers and host
        files only it used (its QEMU, if any, must be gone)."""
        networks = {n.network_id for n in self.networks.store.nics(instance_id=instance_id)}
        snapshots = [s.id for s in self.disks.snapshots.list(instance_id)]
        gone = self.store.get(instance_id)
        on = self.host.on(gone.host if gone else None)
        self.store.forget(instance_id)
        if gone is not None:
            publish_state(self.events, gone, "deleted")
        # The rows are gone: what follows cleans up after them, each step whatever became of
        # the one before (the reconciler removes what a failure here leaves, at next start).
        steps: list[tuple[str, Undo]] = [
            *((f"memory image {s}", partial(self.host.remove_snapshot, s)) for s in snapshots),
            ("unused disk layers", self._collect),
            # Its row is gone: the host it was on is told, not looked up.
            ("the host's files of the instance", partial(on.destroy, instance_id)),
        ]
        for network_id in sorted(networks):
            net = self.networks.store.network(network_id)
            if net is not None:  # its DHCP and firewall forget the instance's NICs
                sync = partial(self.networks.sync, net, gone.host if gone else None)
                steps.append((f"network {net.name}", sync))
        for what, step in steps:
            try:
                await step()
            except GureumError as exc:
                log.warning("after forgetting %s: %s: %s", instance_id, what, exc.message)

    async def _collect(self) -> None:
        await self.disks.collect()


def _nothing() -> None:
    pass
