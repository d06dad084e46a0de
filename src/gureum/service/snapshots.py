"""Snapshots (disk, or disk and memory), restore, and clone.

Disk: a snapshot freezes the VM's current top layer and gives the VM a new, empty one on top
(QEMU's external snapshot when running, qemu-img when stopped). The snapshot's data is that
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
import os
import shutil
import time
from dataclasses import replace

from gureum.errors import Conflict, GureumError, InvalidInput, InvalidState, NotFound
from gureum.ids import check_name, new_id
from gureum.model.instance import Instance, InstanceSpec, State, check_action
from gureum.model.operation import Operation
from gureum.model.snapshot import Snapshot
from gureum.service.instances import INTERNAL_SNAPSHOT_PREFIX, InstanceService
from gureum.service.operations import Reporter


class SnapshotService:
    def __init__(self, instances: InstanceService) -> None:
        self.instances = instances
        self.store = instances.snapshots
        self.host = instances.host
        self.config = instances.config

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
            for i in self.instances.layers.users(snap.layer)
            if i != snap.instance_id
        ]
        return out

    # -- create ----------------------------------------------------------------------------------
    async def create(
        self, ref: str, name: str, *, memory: bool = False, project_id: str | None = None
    ) -> Operation:
        inst = self.instances.get(ref, project_id)
        self._check_create(inst, name, memory)
        quotas = self.instances.quotas
        async with self.instances.admission:
            quotas.check(inst.project_id, snapshots=1)
            # Counted from now: concurrent requests see it before its row exists.
            release = quotas.hold(inst.project_id, snapshots=1)
        return self.instances.ops.start(
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
        if memory and inst.state != State.RUNNING:
            raise InvalidState(
                f"a memory snapshot needs a running VM; {inst.name} is {inst.state.value}"
            )

    async def create_now(
        self, instance_id: str, name: str, memory: bool, ctx: Reporter, *, internal: bool = False
    ) -> dict[str, object]:
        """Take the snapshot (the operation's work; also used by backup export)."""
        svc = self.instances
        async with svc.lock(instance_id):
            inst = svc.get(instance_id)
            self._check_create(inst, name, memory, internal=internal)
            frozen = inst.root_layer
            assert frozen is not None and inst.hardware is not None
            hardware = inst.hardware
            snap_id = new_id("s-")
            folder = self.config.snapshots_dir / snap_id
            partial = folder.with_name(folder.name + ".partial")
            started = time.monotonic()
            if inst.state == State.RUNNING and memory:
                ctx.progress("pausing the VM")
                await self.host.pause(inst.id)
                try:
                    await svc.new_top_layer(
                        inst, on=frozen, size_bytes=inst.spec.disk_bytes, live=True
                    )
                    ctx.progress("disk frozen; saving memory and device state")
                    await self.host.save_memory(inst.id, svc.disk_chain(frozen), partial)
                except GureumError:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise
                finally:
                    with contextlib.suppress(GureumError):
                        await self.host.resume(inst.id)
                partial.rename(folder)
                consistency = "paused"
            elif inst.state == State.RUNNING:
                quiesced = await self.host.freeze(inst.id)
                ctx.progress(
                    "filesystems frozen (fsfreeze)"
                    if quiesced
                    else "no guest agent freeze: crash-consistent snapshot"
                )
                try:
                    await svc.new_top_layer(
                        inst, on=frozen, size_bytes=inst.spec.disk_bytes, live=True
                    )
                finally:
                    if quiesced:
                        await self.host.thaw(inst.id)
                consistency = "fsfreeze" if quiesced else "crash-consistent"
            else:
                await svc.new_top_layer(inst, on=frozen, size_bytes=inst.spec.disk_bytes)
                consistency = "offline"
            size = self.host.disk_bytes(svc.layer_path(frozen))
            if memory:
                size += sum(p.stat().st_blocks * 512 for p in folder.iterdir())
            snap = Snapshot(
                id=snap_id,
                instance_id=inst.id,
                name=name,
                layer=frozen,
                memory=memory,
                consistency=consistency,
                hardware=hardware,
                disk_bytes=inst.spec.disk_bytes,
                size_bytes=size,
                created_at=time.time(),
            )
            try:
                self.store.add(snap)
            except GureumError:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            took = time.monotonic() - started
            ctx.progress(f"snapshot {name} taken in {took:.2f} s ({consistency})")
            return {"snapshot": self.view(snap), "seconds": round(took, 3)}

    # -- restore ---------------------------------------------------------------------------------
    async def restore(self, ref: str, name: str, project_id: str | None = None) -> Operation:
        inst, snap = self.get(ref, name, project_id)
        if inst.state in (State.PENDING, State.STARTING, State.STOPPING):
            raise InvalidState(f"cannot restore {inst.name} while it is {inst.state.value}")
        if snap.memory:
            # The machine must be the same: a NIC added or removed since cannot be restored.
            self.instances.networks.check_slots_match(inst.id, snap.hardware.nics)
            async with self.instances.admission:
                await self.instances.admit(
                    snap.hardware.total_cpus, snap.hardware.total_memory_mib, replacing=inst
                )
        return self.instances.ops.start(
            "restore", inst.id, lambda ctx: self.restore_now(inst.id, snap, ctx), inst.project_id
        )

    async def restore_now(
        self, instance_id: str, snap: Snapshot, ctx: Reporter
    ) -> dict[str, object]:
        svc = self.instances
        async with svc.lock(instance_id):
            inst = svc.get(instance_id)
            was_running = inst.state == State.RUNNING
            await svc.kill_locked(inst)
            ctx.progress(f"disk back to snapshot {snap.name}")
            await svc.new_top_layer(inst, on=snap.layer, size_bytes=snap.disk_bytes)
            assert inst.hardware is not None
            nets = svc.networks
            own_nics = nets.with_current_macs(inst.id, snap.hardware.nics)
            base = replace(snap.hardware, nics=own_nics) if snap.memory else inst.hardware
            hardware = svc.new_generation(base)
            spec = inst.spec
            if snap.memory:
                spec = replace(spec, cpus=hardware.total_cpus, memory_mib=hardware.total_memory_mib)
            spec = replace(spec, disk_bytes=snap.disk_bytes)
            svc.store.update(
                inst.id,
                hardware=hardware,
                cpus=spec.cpus,
                memory_mib=spec.memory_mib,
                disk_bytes=spec.disk_bytes,
            )
        await svc.collect_layers()
        # Every restore is a new generation: the guest is told (seed, machine id). A memory
        # image from another machine (an imported backup) also learns this VM's name and MAC.
        identity: dict[str, object] = {}
        changed = nets.mac_changes(snap.hardware.nics, own_nics) if snap.memory else []
        if changed:
            identity = {"hostname": inst.spec.name, "macs": changed}
        if snap.memory:
            ctx.progress("resuming from the memory snapshot")
            folder = self.config.snapshots_dir / snap.id
            return await svc.boot(instance_id, ctx, restore_from=folder, identity=identity)
        if was_running:
            return await svc.boot(instance_id, ctx, identity=identity)
        return {"instance": svc.view(svc.get(instance_id))}

    # -- delete ----------------------------------------------------------------------------------
    async def delete(self, ref: str, name: str, project_id: str | None = None) -> dict[str, object]:
        inst, snap = self.get(ref, name, project_id)
        async with self.instances.lock(inst.id):
            users = [self.instances.get(i).name for i in self.instances.layers.users(snap.layer)]
            self.store.remove(snap.id)
            await self.host.remove_file(self.config.snapshots_dir / snap.id)
            await self.instances.collect_layers()
        view = snap.to_dict()
        # The disk data stays while a disk builds on it (the VM's own chain, or a clone's).
        view["disk_data_kept_for"] = users
        return view

    # -- clone -----------------------------------------------------------------------------------
    async def clone(
        self, ref: str, name: str, new_name: str, project_id: str | None = None
    ) -> tuple[Instance, Operation]:
        source, snap = self.get(ref, name, project_id)
        check_name(new_name, what="instance name")
        hw = snap.hardware
        nets = self.instances.networks
        networks = [nets.get(network_id) for _slot, _mac, network_id in hw.nics]
        spec = InstanceSpec(
            new_name, source.spec.image, hw.total_cpus, hw.total_memory_mib, snap.disk_bytes
        )
        groups = nets.store.instance_groups().get(source.id) or self.instances.secgroups.resolve(
            [], source.project_id
        )
        async with self.instances.admission:
            self.instances.quotas.check(
                source.project_id,
                instances=1,
                cpus=spec.cpus,
                memory_mib=spec.memory_mib,
                disk_bytes=spec.disk_bytes,
            )
            await self.instances.admit(spec.cpus, spec.memory_mib)
            clone = Instance(
                id=new_id("i-"),
                spec=spec,
                state=State.PENDING,
                created_at=time.time(),
                image_version=source.image_version,
                accel=self.host.accel.accel,
                user_data=source.user_data,
                ssh_keys=source.ssh_keys,
                project_id=source.project_id,
                uid=self.instances.store.next_uid(),
            )
            self.instances.store.insert(clone)
            own_boot = self.config.instances_dir / clone.id
            try:
                # Its own NICs: same networks and slots, new MACs and addresses.
                for (slot, _mac, _net), net in zip(hw.nics, networks, strict=True):
                    nets.new_nic(clone.id, net, slot)
                nets.store.set_instance_groups(clone.id, groups)
                boot = self.instances.boot_folder(source)
                if boot != self.instances.image_folder(source):
                    # An imported source's own kernel and initramfs: the clone keeps a link.
                    own_boot.mkdir(parents=True)
                    for boot_file in ("vmlinuz", "initrd.img"):
                        os.link(boot / boot_file, own_boot / boot_file)
            except BaseException:
                nets.store.forget_instance(clone.id)
                self.instances.store.delete(clone.id)
                shutil.rmtree(own_boot, ignore_errors=True)
                raise
            new_nics = nets.hardware_nics(clone.id)
            hardware = replace(self.instances.new_generation(hw), nics=new_nics)
            if not snap.memory:
                hardware = hardware.rebooted(spec.cpus, spec.memory_mib)
            clone.hardware = hardware
            self.instances.store.update(clone.id, hardware=hardware)

        async def work(ctx: Reporter) -> dict[str, object]:
            svc = self.instances
            try:
                async with svc.lock(clone.id):
                    inst = svc.get(clone.id)
                    ctx.progress(f"thin disk on snapshot {source.name}/{snap.name}")
                    await svc.new_top_layer(inst, on=snap.layer, size_bytes=snap.disk_bytes)
            except GureumError as exc:
                await svc.mark_error(clone.id, f"clone failed: {exc.message}")
                raise
            identity: dict[str, object] = {"hostname": new_name}
            if snap.memory:
                identity["macs"] = nets.mac_changes(hw.nics, new_nics)
            folder = self.config.snapshots_dir / snap.id if snap.memory else None
            return await svc.boot(clone.id, ctx, restore_from=folder, identity=identity)

        return clone, self.instances.ops.start("clone", clone.id, work, clone.project_id)
