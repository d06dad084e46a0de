"""Snapshots (disk, or disk and memory), restore, and clone.

Disk: a snapshot freezes the VM's current top layer and gives the VM a new, empty one on top
(QEMU's external snapshot when running, a new layer file when stopped). The snapshot's data is that
frozen layer plus the chain below it, which never changes again.

Memory: the VM is paused, its disk frozen as above, and its memory and device state written as
a memory image (``engine/qemu/memimage.py``); then it runs on. A restore or clone maps that
image copy-on-write, so it does not grow with memory size.

Consistency: a running VM's filesystems are quiesced through the guest agent (fsfreeze) for a
disk snapshot; a memory snapshot needs no freeze (the paused VM's memory holds every unwritten
buffer, and a frozen guest would be restored frozen). Each snapshot records which it got.

A snapshot's record is written last: one cut short is never listed. Deleting a snapshot never
breaks a chain: layers another disk builds on (the VM's own, a clone's) stay until nobody does.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial

from gureum.errors import Conflict, GureumError, InvalidInput, InvalidState, NotFound
from gureum.host.interface import Identity
from gureum.ids import check_name, new_id
from gureum.model.hardware import Hardware
from gureum.model.instance import Instance, InstanceSpec, State, check_action
from gureum.model.network import Network
from gureum.model.operation import Operation
from gureum.model.snapshot import CONTAINER_LAYER, Snapshot
from gureum.service.admission import Admission
from gureum.service.creation import Creator, Draft, Reverter
from gureum.service.disks import DiskLayers
from gureum.service.host_router import HostRouter
from gureum.service.instances import INTERNAL_SNAPSHOT_PREFIX, InstanceService
from gureum.service.lifecycle import Lifecycle
from gureum.service.networks import NetworkService
from gureum.service.operations import OperationManager, Quiet, Reporter
from gureum.service.quotas import QuotaService
from gureum.service.secgroups import SecGroupService
from gureum.store.layers import SnapshotStore
from gureum.units import GIB


class SnapshotService:
    def __init__(
        self,
        store: SnapshotStore,
        instances: InstanceService,
        lifecycle: Lifecycle,
        disks: DiskLayers,
        admission: Admission,
        quotas: QuotaService,
        networks: NetworkService,
        secgroups: SecGroupService,
        creator: Creator,
        ops: OperationManager,
        host: HostRouter,
    ) -> None:
        self.store = store
        self.instances = instances
        self.lifecycle = lifecycle
        self.disks = disks
        self.admission = admission
        self.quotas = quotas
        self.networks = networks
        self.secgroups = secgroups
        self.creator = creator
        self.ops = ops
        self.host = host

    def list(self, ref: str, project_id: str | None = None) -> list[Snapshot]:
        return self.store.list(self.instances.get(ref, project_id).id)

    def get(self, ref: str, name: str, project_id: str | None = None) -> tuple[Instance, Snapshot]:
        inst = self.instances.get(ref, project_id)
        snap = self.store.get(inst.id, name)
        if snap is None:
            raise NotFound(f"{inst.name} has no snapshot named {name!r}")
        return inst, snap

    def view(self, snap: Snapshot) -> dict[str, object]:
        out = snap.to_dict()
        out["depended_on_by"] = [
            self.instances.get(i).name
            for i in self.disks.store.users(snap.layer)
            if i != snap.instance_id
        ]
        return out

    # -- create ----------------------------------------------------------------------------------
    async def create(
        self, ref: str, name: str, *, memory: bool = False, project_id: str | None = None
    ) -> Operation:
        inst = self.instances.get(ref, project_id)
        self._check_create(inst, name, memory)
        async with self.admission:
            self.quotas.check(inst.project_id, snapshots=1)
            # Counted from now: concurrent requests see it before its row exists.
            release = self.quotas.hold(inst.project_id, snapshots=1)
        return self.ops.start(
            "snapshot",
            inst.id,
            lambda ctx: self.create_now(inst.id, name, memory, ctx),
            inst.project_id,
            then=release,
        )

    def _check_create(
        self, inst: Instance, name: str, memory: bool, *, internal: bool = False
    ) -> None:
        check_name(name, what="snapshot name")
        if name.startswith(INTERNAL_SNAPSHOT_PREFIX) and not internal:
            raise InvalidInput(f"snapshot names starting {INTERNAL_SNAPSHOT_PREFIX!r} are reserved")
        if self.store.get(inst.id, name) is not None:
            raise Conflict(f"{inst.name} already has a snapshot named {name!r}")
        check_action("snapshot", inst.state, name=inst.name)
        if not self.host.is_local(inst.host):  # before any layer is made for it
            raise InvalidState(
                f"{inst.name} is on joined host {inst.host}, where snapshots are not supported yet"
            )
        if memory:
            inst.needs_vm("a memory snapshot")
        if memory and inst.state != State.RUNNING:
            raise InvalidState(
                f"a memory snapshot needs a running VM; {inst.name} is {inst.state.value}"
            )

    @contextlib.asynccontextmanager
    async def internal(
        self, instance_id: str, purpose: str, *, memory: bool = False
    ) -> AsyncIterator[Snapshot]:
        """A snapshot taken for the service's own work on a copy of the instance (a backup
        export, an image), running or not, and deleted when that work is done."""
        name = f"{INTERNAL_SNAPSHOT_PREFIX}{purpose}-{secrets.token_hex(3)}"
        await self.create_now(instance_id, name, memory, Quiet(), internal=True)
        try:
            yield self.get(instance_id, name)[1]
        finally:
            await self.delete(instance_id, name)

    async def create_now(
        self, instance_id: str, name: str, memory: bool, ctx: Reporter, *, internal: bool = False
    ) -> dict[str, object]:
        """Take the snapshot (the operation's work; also used by backup export)."""
        disks = self.disks
        async with self.lifecycle.lock(instance_id):
            inst = self.instances.get(instance_id)
            self._check_create(inst, name, memory, internal=internal)
            if inst.is_container:
                return await self._container_snapshot(inst, name, ctx)
            frozen = inst.root_layer
            assert frozen is not None and inst.hardware is not None
            hardware = inst.hardware
            snap_id = new_id("s-")
            started = time.monotonic()
            if inst.state == State.RUNNING and memory:
                ctx.progress("pausing the VM")
                await self.host.pause(inst.id)
                try:
                    await disks.new_top(inst, on=frozen, size_bytes=inst.spec.disk_bytes, live=True)
                    ctx.progress("disk frozen; saving memory and device state")
                    await self.host.save_memory(inst.id, disks.chain(frozen), snap_id)
                finally:
                    with contextlib.suppress(GureumError):
                        await self.host.resume(inst.id)
                consistency = "paused"
            elif inst.state == State.RUNNING:
                quiesced = await self.host.freeze(inst.id)
                ctx.progress(
                    "filesystems frozen (fsfreeze)"
                    if quiesced
                    else "no guest agent freeze: crash-consistent snapshot"
                )
                try:
                    await disks.new_top(inst, on=frozen, size_bytes=inst.spec.disk_bytes, live=True)
                finally:
                    if quiesced:
                        await self.host.thaw(inst.id)
                consistency = "fsfreeze" if quiesced else "crash-consistent"
            else:
                await disks.new_top(inst, on=frozen, size_bytes=inst.spec.disk_bytes)
                consistency = "offline"
            size = self.host.disk_bytes(disks.layer_path(frozen)) + self.host.snapshot_bytes(
                snap_id
            )
            snap = Snapshot(
                snap_id, inst.id, name, frozen, memory, consistency, hardware,
                disk_bytes=inst.spec.disk_bytes, size_bytes=size, created_at=time.time(),
            )  # fmt: skip
            return await self._record(snap, started, ctx)

    async def _record(self, snap: Snapshot, started: float, ctx: Reporter) -> dict[str, object]:
        """Write a snapshot just taken (its host files go if the write fails)."""
        try:
            self.store.add(snap)
        except GureumError:
            await self.host.remove_snapshot(snap.id)
            raise
        took = time.monotonic() - started
        ctx.progress(f"snapshot {snap.name} taken in {took:.2f} s ({snap.consistency})")
        return {"snapshot": self.view(snap), "seconds": round(took, 3)}

    async def _container_snapshot(
        self, inst: Instance, name: str, ctx: Reporter
    ) -> dict[str, object]:
        """A copy of the container's own layer (the image under it never changes): taken
        stopped, or with its processes and filesystem frozen while it is copied."""
        assert inst.hardware is not None
        snap_id = new_id("s-")
        started = time.monotonic()
        if inst.state == State.RUNNING:
            ctx.progress("freezing the container (cgroup freezer and its layer's filesystem)")
        consistency = await self.host.snapshot_container(inst.id, snap_id)
        snap = Snapshot(
            snap_id, inst.id, name, CONTAINER_LAYER, False, consistency, inst.hardware,
            disk_bytes=inst.spec.disk_bytes, size_bytes=self.host.snapshot_bytes(snap_id),
            created_at=time.time(),
        )  # fmt: skip
        return await self._record(snap, started, ctx)

    # -- restore ---------------------------------------------------------------------------------
    async def restore(
        self, ref: str, name: str, project_id: str | None = None, *, restart: bool = False
    ) -> Operation:
        """Back to the snapshot. A running VM restored to a disk snapshot is restarted on that
        disk: only when the caller says so (``restart``). The VM keeps its current disk size
        (a disk never shrinks under a guest); a memory snapshot brings back the vCPUs and
        memory the saved guest had, since its state is of that machine."""
        inst, snap = self.get(ref, name, project_id)
        check_action("restore", inst.state, name=inst.name)
        if not snap.memory and inst.state == State.RUNNING and not restart:
            raise InvalidState(
                f"{inst.name} is running: restoring disk snapshot {snap.name} restarts it on that"
                " disk; say so with --restart (or stop it first)"
            )
        if snap.memory:
            # The machine must be the same: a NIC added or removed since cannot be restored.
            self.networks.check_slots_match(inst.id, snap.hardware.nics)
            async with self.admission:
                await self.admission.admit(
                    snap.hardware.total_cpus, snap.hardware.total_memory_mib, replacing=inst
                )
        return self.ops.start(
            "restore", inst.id, lambda ctx: self.restore_now(inst.id, snap, ctx), inst.project_id
        )

    async def restore_now(
        self, instance_id: str, snap: Snapshot, ctx: Reporter
    ) -> dict[str, object]:
        if snap.layer == CONTAINER_LAYER:
            return await self._restore_container(instance_id, snap, ctx)
        async with self.lifecycle.lock(instance_id):
            inst = self.instances.get(instance_id)
            was_running = inst.state == State.RUNNING
            await self.lifecycle.kill_locked(inst)
            ctx.progress(f"disk back to snapshot {snap.name}")
            # The disk keeps its size (never smaller than the snapshot's). A memory image's
            # guest knew the snapshot's size: it gets that, then grows live once it runs.
            keep = max(inst.spec.disk_bytes, snap.disk_bytes)
            size = snap.disk_bytes if snap.memory else keep
            await self.disks.new_top(inst, on=snap.layer, size_bytes=size)
            assert inst.hardware is not None
            nets = self.networks
            own_nics = nets.with_current_macs(inst.id, snap.hardware.nics)
            base = replace(snap.hardware, nics=own_nics) if snap.memory else inst.hardware
            hardware = self.lifecycle.new_generation(base)
            spec = inst.spec
            if snap.memory:
                spec = replace(spec, cpus=hardware.total_cpus, memory_mib=hardware.total_memory_mib)
            spec = replace(spec, disk_bytes=keep)
            self.instances.update(
                inst.id,
                hardware=hardware,
                cpus=spec.cpus,
                memory_mib=spec.memory_mib,
                disk_bytes=spec.disk_bytes,
            )
        await self.disks.collect()
        # Every restore is a new generation: the guest is told (seed, machine id). A memory
        # image from another machine (an imported backup) also learns this VM's name and MAC.
        identity = Identity()
        changed = nets.mac_changes(snap.hardware.nics, own_nics) if snap.memory else []
        if changed:
            identity = Identity(hostname=inst.spec.name, macs=changed)
        boot = self.lifecycle.boot
        if snap.memory:
            ctx.progress("resuming from the memory snapshot")
            done = await boot(instance_id, ctx, restore_from=snap.id, identity=identity)
            if keep > snap.disk_bytes:
                await self.host.resize_disk_live(instance_id, keep)
                grown = await self.host.grow_guest_filesystem(instance_id)
                ctx.progress(
                    f"disk kept at {keep / GIB:g} GiB" + (", filesystem grown" if grown else "")
                )
                done["instance"] = self.instances.view(self.instances.get(instance_id))
            return done
        if was_running:
            return await boot(instance_id, ctx, identity=identity)
        return {"instance": self.instances.view(self.instances.get(instance_id))}

    async def _restore_container(
        self, instance_id: str, snap: Snapshot, ctx: Reporter
    ) -> dict[str, object]:
        async with self.lifecycle.lock(instance_id):
            inst = self.instances.get(instance_id)
            was_running = inst.state == State.RUNNING
            if was_running:
                await self.lifecycle.stop_locked(instance_id, ctx)
            ctx.progress(f"layer back to snapshot {snap.name}")
            await self.host.restore_container(instance_id, snap.id)
        if was_running:
            return await self.lifecycle.boot(instance_id, ctx)
        return {"instance": self.instances.view(self.instances.get(instance_id))}

    # -- delete ----------------------------------------------------------------------------------
    async def delete(self, ref: str, name: str, project_id: str | None = None) -> dict[str, object]:
        inst, snap = self.get(ref, name, project_id)
        async with self.lifecycle.lock(inst.id):
            users = [self.instances.get(i).name for i in self.disks.store.users(snap.layer)]
            self.store.remove(snap.id)
            await self.host.remove_snapshot(snap.id)
            await self.disks.collect()
        view = snap.to_dict()
        # The disk data stays while a disk builds on it (the VM's own chain, or a clone's).
        view["disk_data_kept_for"] = users
        return view

    # -- clone -----------------------------------------------------------------------------------
    async def clone(
        self, ref: str, name: str, new_name: str, project_id: str | None = None
    ) -> tuple[Instance, Operation]:
        source, snap = self.get(ref, name, project_id)
        source.needs_vm("a clone")
        check_name(new_name, what="instance name")
        hw = snap.hardware
        # Its own NICs: same networks and slots, new MACs and addresses.
        nets = [(slot, self.networks.get(network_id)) for slot, _mac, network_id in hw.nics]
        spec = InstanceSpec(
            new_name, source.spec.image, hw.total_cpus, hw.total_memory_mib, snap.disk_bytes
        )

        async def networks() -> list[tuple[int, Network]]:
            return nets

        def groups() -> list[str]:  # the source's, as they are when the clone is written
            own = self.networks.store.instance_groups().get(source.id)
            return own or self.secgroups.resolve([], source.project_id)

        clone = self.creator.new(
            spec,
            source.image_version,
            source.project_id,
            user_data=source.user_data,
            ssh_keys=source.ssh_keys,
            host=source.host,  # its disk starts as layers of the source's, on that host
        )

        def hardware(nics: tuple[tuple[int, str, str], ...]) -> Hardware:
            made = replace(self.lifecycle.new_generation(hw), nics=nics)
            return made if snap.memory else made.rebooted(spec.cpus, spec.memory_mib)

        async def share_boot_files(inst: Instance, undo: Reverter) -> None:
            if self.host.own_boot_files(source.id) is not None:
                # An imported source's own kernel and initramfs: the clone keeps a link.
                await self.host.share_boot_files(source.id, inst.id)

        draft = Draft(clone, networks, groups, hardware)
        clone = await self.creator.create(draft, after=share_boot_files)
        what = f"snapshot {source.name}/{snap.name}"
        work = partial(self.instances.boot_from, clone.id, snap, what)
        return clone, self.ops.start("clone", clone.id, work, clone.project_id)
