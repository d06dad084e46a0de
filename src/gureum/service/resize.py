"""Resizing a VM by configuration alone: vCPUs, memory and disk, live where the guest allows.

Running VM: vCPUs are hot-plugged (and brought online through the guest agent), memory is
hot-plugged as a DIMM (the guest onlines it itself, ``memhp_default_state=online``), the disk is
grown through QMP and its ext4 filesystem grown online. What cannot happen live (shrinking CPUs
or memory, a memory step that is not whole 128 MiB blocks, beyond the hot-plug ceiling) is
recorded and takes effect at the next boot; the answer says which. Stopped VM: everything takes
effect at the next boot, the disk is grown at once. A disk never shrinks.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from gureum.errors import InvalidInput, InvalidState
from gureum.host.interface import HostAgent
from gureum.model.hardware import MAX_DIMMS, MEMORY_BLOCK_MIB, Hardware
from gureum.model.instance import Instance, State, check_action
from gureum.model.operation import Operation
from gureum.service.admission import Admission
from gureum.service.disks import DiskLayers
from gureum.service.instances import (
    MAX_DISK_BYTES,
    InstanceService,
    check_cpus,
    check_memory,
    whole_mib,
)
from gureum.service.lifecycle import Lifecycle
from gureum.service.operations import OpContext, OperationManager
from gureum.service.quotas import QuotaService
from gureum.units import GIB


class ResizeService:
    def __init__(
        self,
        instances: InstanceService,
        lifecycle: Lifecycle,
        disks: DiskLayers,
        admission: Admission,
        quotas: QuotaService,
        ops: OperationManager,
        host: HostAgent,
    ) -> None:
        self.instances = instances
        self.lifecycle = lifecycle
        self.disks = disks
        self.admission = admission
        self.quotas = quotas
        self.ops = ops
        self.host = host

    async def resize(
        self,
        ref: str,
        *,
        cpus: int | None = None,
        memory_mib: int | None = None,
        disk_bytes: int | None = None,
        project_id: str | None = None,
    ) -> Operation:
        inst = self.instances.get(ref, project_id)
        if cpus is None and memory_mib is None and disk_bytes is None:
            raise InvalidInput("say what to resize: cpus, memory and/or disk")
        if cpus is not None:
            check_cpus(cpus)
        if memory_mib is not None:
            check_memory(memory_mib)
        if disk_bytes is not None:
            disk_bytes = whole_mib(disk_bytes)
            if disk_bytes < inst.spec.disk_bytes:
                raise InvalidInput(
                    f"shrinking a disk is not supported ({inst.name} has "
                    f"{inst.spec.disk_bytes / GIB:g} GiB, asked {disk_bytes / GIB:g} GiB)"
                )
            if disk_bytes > MAX_DISK_BYTES:
                raise InvalidInput(f"disk must be at most {MAX_DISK_BYTES // GIB} GiB")
        check_action("resize", inst.state, name=inst.name)
        new_cpus = inst.spec.cpus if cpus is None else cpus
        new_mib = inst.spec.memory_mib if memory_mib is None else memory_mib
        new_disk = inst.spec.disk_bytes if disk_bytes is None else disk_bytes
        more_cpus = max(0, new_cpus - inst.spec.cpus)
        more_mib = max(0, new_mib - inst.spec.memory_mib)
        more_disk = max(0, new_disk - inst.spec.disk_bytes)
        async with self.admission:
            # Quota and capacity apply to the new size, counted against everything else.
            self.quotas.check(
                inst.project_id,
                replacing=inst,
                cpus=new_cpus,
                memory_mib=new_mib,
                disk_bytes=new_disk,
            )
            if inst.state == State.RUNNING:
                await self.admission.admit(new_cpus, new_mib, replacing=inst)
            # The growth counts from now until the operation has written the new size:
            # concurrent resizes and launches see it.
            releases = [
                self.quotas.hold(
                    inst.project_id, cpus=more_cpus, memory_mib=more_mib, disk_bytes=more_disk
                )
            ]
            if inst.state == State.RUNNING:
                releases.append(self.admission.hold_growth(more_cpus, more_mib))
        return self.ops.start(
            "resize",
            inst.id,
            lambda ctx: self._resize(inst.id, cpus, memory_mib, disk_bytes, ctx),
            inst.project_id,
            then=lambda: [release() for release in releases],
        )

    async def _resize(
        self,
        instance_id: str,
        cpus: int | None,
        memory_mib: int | None,
        disk_bytes: int | None,
        ctx: OpContext,
    ) -> dict[str, object]:
        svc = self.instances
        applied: dict[str, str] = {}
        async with self.lifecycle.lock(instance_id):
            inst = svc.get(instance_id)
            live = inst.state == State.RUNNING
            if inst.is_container:
                applied = await self._container(inst, cpus, memory_mib, disk_bytes, live, ctx)
                return {"instance": svc.view(svc.get(instance_id)), "applied": applied}
            if cpus is not None:
                applied["cpus"] = await self._cpus(inst, cpus, live, ctx)
            if memory_mib is not None:
                applied["memory"] = await self._memory(inst, memory_mib, live, ctx)
            if disk_bytes is not None:
                applied["disk"] = await self._disk(inst, disk_bytes, live, ctx)
        return {"instance": svc.view(svc.get(instance_id)), "applied": applied}

    async def _container(
        self,
        inst: Instance,
        cpus: int | None,
        memory_mib: int | None,
        disk_bytes: int | None,
        live: bool,
        ctx: OpContext,
    ) -> dict[str, str]:
        """A container's CPU and memory are its control group's limits: any size, either way,
        at once. Its disk (its layer) grows at its next start, as does all of it when stopped."""
        asked = {"cpus": cpus, "memory_mib": memory_mib, "disk_bytes": disk_bytes}
        fields = {k: v for k, v in asked.items() if v is not None}
        self.instances.update(inst.id, **fields)
        spec = self.instances.get(inst.id).spec
        applied = {}
        if live and (cpus is not None or memory_mib is not None):
            await self.host.limit_container(inst.id, spec.cpus, spec.memory_mib)
            assert inst.hardware is not None
            hw = replace(inst.hardware, cpus=spec.cpus, memory_mib=spec.memory_mib)
            self._save_hardware(inst, hw)
            ctx.progress(f"limits now {spec.cpus} CPUs and {spec.memory_mib} MiB")
        for field, name in (("cpus", "cpus"), ("memory_mib", "memory"), ("disk_bytes", "disk")):
            if field in fields:
                applied[name] = "live" if live and field != "disk_bytes" else "next-boot"
        if "disk_bytes" in fields:
            ctx.progress(
                f"disk: its layer grows to {spec.disk_bytes / GIB:g} GiB at its next start"
            )
        return applied

    def _ask(self, inst: Instance, live: bool, now: int, **field: int) -> tuple[Hardware, str]:
        """Record the asked size (what the next boot gets); say whether there is anything
        to do live: "" when there is, else the answer ("next-boot", "unchanged")."""
        assert inst.hardware is not None
        self.instances.update(inst.id, **field)
        inst.spec = self.instances.get(inst.id).spec
        if not live:
            return inst.hardware, "next-boot"
        return inst.hardware, "unchanged" if now == next(iter(field.values())) else ""

    async def _cpus(self, inst: Instance, cpus: int, live: bool, ctx: OpContext) -> str:
        assert inst.hardware is not None
        hw, answer = self._ask(inst, live, inst.hardware.total_cpus, cpus=cpus)
        if answer:
            return answer
        if cpus < hw.total_cpus or cpus > hw.max_cpus:
            why = "removing vCPUs" if cpus < hw.total_cpus else f"more than {hw.max_cpus} vCPUs"
            ctx.progress(f"vCPUs: {why} takes effect at the next boot")
            return "next-boot"
        present = set(range(hw.cpus)) | set(hw.hot_cpus)
        new_cores = [c for c in range(hw.max_cpus) if c not in present][: cpus - hw.total_cpus]
        for core in new_cores:
            await self.host.hotplug_cpu(inst.id, core)
        hw = replace(hw, hot_cpus=(*hw.hot_cpus, *new_cores))
        self._save_hardware(inst, hw)
        await self.host.online_cpus(inst.id, cpus)
        ctx.progress(f"vCPUs: {cpus} online (hot-plugged {len(new_cores)})")
        return "live"

    async def _memory(self, inst: Instance, mib: int, live: bool, ctx: OpContext) -> str:
        assert inst.hardware is not None
        hw, answer = self._ask(inst, live, inst.hardware.total_memory_mib, memory_mib=mib)
        if answer:
            return answer
        grow = mib - hw.total_memory_mib
        if (
            grow < 0
            or grow % MEMORY_BLOCK_MIB
            or len(hw.dimms) >= MAX_DIMMS
            or mib > hw.max_memory_mib
        ):
            ctx.progress(
                "memory: takes effect at the next boot (live growth is in whole "
                f"{MEMORY_BLOCK_MIB} MiB steps, up to {hw.max_memory_mib} MiB)"
            )
            return "next-boot"
        before = await self.host.guest_memory_kib(inst.id)
        await self.host.hotplug_dimm(inst.id, len(hw.dimms), grow)
        hw = replace(hw, dimms=(*hw.dimms, grow))
        self._save_hardware(inst, hw)
        for attempt in range(100):
            now = await self.host.guest_memory_kib(inst.id)
            if now - before >= grow * 1024 * 0.9:
                ctx.progress(f"memory: guest sees {now // 1024} MiB (hot-plugged {grow} MiB)")
                return "live"
            await asyncio.sleep(min(0.02 * (attempt + 1), 0.2))
        raise InvalidState("the guest did not bring the new memory online")

    async def _disk(self, inst: Instance, size: int, live: bool, ctx: OpContext) -> str:
        if size == inst.spec.disk_bytes:
            return "unchanged"
        assert inst.root_layer is not None
        top = self.disks.layer_path(inst.root_layer)
        if live:
            await self.host.resize_disk_live(inst.id, size)
        else:
            await self.host.grow_disk_offline(top, size)
        self.instances.update(inst.id, disk_bytes=size)
        inst.spec = replace(inst.spec, disk_bytes=size)
        if not live:
            ctx.progress(f"disk: {size / GIB:g} GiB (the filesystem grows at the next boot)")
            return "offline"
        grown = await self.host.grow_guest_filesystem(inst.id)
        ctx.progress(f"disk: {size / GIB:g} GiB" + (", filesystem grown" if grown else ""))
        return "live"

    def _save_hardware(self, inst: Instance, hw: Hardware) -> None:
        inst.hardware = hw
        self.instances.update(inst.id, hardware=hw)
        self.host.update_hardware(inst.id, hw)
