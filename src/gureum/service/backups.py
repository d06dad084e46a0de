"""Backups: one portable archive per VM (disk, boot files, optionally memory), and back.

Export takes a snapshot (so a running VM keeps running and the archive is one consistent point),
flattens its disk chain into one standalone qcow2, and streams the archive (format:
``storage/archive.py``) while computing checksums. Import reads the stream into a scratch
folder, checks it whole, and only then creates anything: a new instance (stopped) with its own
id, name and MAC, and, when the archive holds memory, a memory snapshot named ``backup`` to
resume from. Verify imports into a throw-away VM, boots it, checks the guest answers, and
removes it.
"""

from __future__ import annotations

import contextlib
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gureum.errors import (
    Conflict,
    GureumError,
    InvalidArchive,
    InvalidImage,
    InvalidInput,
)
from gureum.host.interface import HostAgent
from gureum.ids import check_name, new_id
from gureum.model.hardware import Hardware, check_hardware
from gureum.model.instance import DEFAULT_PROJECT, Instance, InstanceSpec, State
from gureum.model.network import Network
from gureum.model.operation import Operation
from gureum.model.snapshot import Snapshot
from gureum.service.creation import Creator, Draft, Reverter
from gureum.service.disks import DiskLayers
from gureum.service.instances import (
    MAX_DISK_BYTES,
    InstanceService,
    check_cpus,
    check_memory,
)
from gureum.service.lifecycle import Lifecycle
from gureum.service.networks import NetworkService
from gureum.service.operations import OpContext, OperationManager
from gureum.service.secgroups import SecGroupService
from gureum.service.snapshots import SnapshotService
from gureum.service.transfers import UPLOAD_IDLE_S, UPLOAD_MIN_BYTES, Transfers


class BackupService:
    def __init__(
        self,
        instances: InstanceService,
        snapshots: SnapshotService,
        # An import is made by the creator, on the project's default network and group.
        creator: Creator,
        networks: NetworkService,
        secgroups: SecGroupService,
        # Verify boots what it imported.
        lifecycle: Lifecycle,
        disks: DiskLayers,
        ops: OperationManager,
        host: HostAgent,
        transfers: Transfers,
    ) -> None:
        self.instances, self.snapshots = instances, snapshots
        self.creator, self.networks, self.secgroups = creator, networks, secgroups
        self.lifecycle, self.disks, self.ops, self.host = lifecycle, disks, ops, host
        self.transfers = transfers

    def _scratch(self) -> Path:
        return self.host.new_scratch()

    def _drop_scratch(self, work: Path) -> None:
        """Synchronously (also from a finalizer): the scratch folder and all in it."""
        self.host.remove_scratch(work)

    # -- export ----------------------------------------------------------------------------------
    async def export(
        self, ref: str, *, memory: bool = False, project_id: str | None = None
    ) -> tuple[str, AsyncIterator[bytes]]:
        """Prepare an export and return (file name, the archive as a byte stream). Everything
        that can fail on bad input fails here, before the first byte is sent."""
        inst = self.instances.get(ref, project_id)
        inst.needs_vm("a backup export")
        release = self.transfers.take(inst.project_id)
        work: Path | None = None
        try:
            work = self._scratch()
            files, config = await self._prepare(inst, memory, work)
        except BaseException:
            if work is not None:
                self._drop_scratch(work)
            release()
            raise
        stream = self._stream(files, config, work, release)
        # If the client is gone before the first byte, the stream never starts and its own
        # cleanup never runs: the scratch folder and the slot go when the stream object does.
        weakref.finalize(stream, self._drop_scratch, work)
        weakref.finalize(stream, release)
        return f"{inst.name}.gbk", stream

    async def _prepare(
        self, inst: Instance, memory: bool, work: Path
    ) -> tuple[dict[str, Path], dict[str, Any]]:
        async with self.snapshots.internal(inst.id, "export", memory=memory) as snap:
            files = {"disk.qcow2": work / "disk.qcow2"}
            await self.host.flatten_disk(self.disks.chain(snap.layer), work / "disk.qcow2")
            boot = self.disks.boot_files(inst)
            if boot is not None:  # else the disk boots itself: its bootloader is in it
                files["vmlinuz"], files["initrd.img"] = boot
            if snap.memory:
                backends = snap.hardware.memory_backends()
                files |= await self.host.export_memory(snap.id, backends, work)
            config = {
                "name": inst.spec.name,
                "image": inst.spec.image,
                "image_version": inst.image_version,
                "cpus": inst.spec.cpus,
                "memory_mib": inst.spec.memory_mib,
                "disk_bytes": snap.disk_bytes,
                "memory": snap.memory,
                "consistency": snap.consistency,
                "hardware": snap.hardware.to_json(),
                "exported_at": time.time(),
            }
            return files, config

    async def _stream(
        self,
        files: dict[str, Path],
        config: dict[str, Any],
        work: Path,
        release: Callable[[], None],
    ) -> AsyncIterator[bytes]:
        """The archive, written on a thread of its own and sent as it is produced."""
        try:
            async for chunk in self.host.write_archive(files, config):
                yield chunk
        finally:
            self._drop_scratch(work)
            release()

    # -- import ----------------------------------------------------------------------------------
    async def import_(
        self, body: AsyncIterator[bytes], name: str, project_id: str = DEFAULT_PROJECT
    ) -> Instance:
        check_name(name, what="instance name")
        if any(i.name == name for i in self.instances.list(project_id)):
            raise Conflict(f"an instance named {name!r} already exists")
        release = self.transfers.take(project_id)
        work: Path | None = None
        try:
            work = self._scratch()
            manifest = await self._receive(body, work)
            return await self._create(manifest, work, name, project_id)
        finally:
            if work is not None:
                self._drop_scratch(work)
            release()

    async def _receive(self, body: AsyncIterator[bytes], work: Path) -> dict[str, Any]:
        """Read and check the archive into ``work/in``; an archive found bad is refused at once,
        without reading the rest of the body."""
        return await self.host.read_archive(
            body, work / "in", idle_timeout=UPLOAD_IDLE_S, min_bytes=UPLOAD_MIN_BYTES
        )

    async def _create(
        self, manifest: dict[str, Any], work: Path, name: str, project_id: str
    ) -> Instance:
        data = work / "in"
        found = _Found.check(manifest, set(manifest.get("files") or {}))
        self.disks.images.check_named(found.image, project_id)
        spec = InstanceSpec(name, found.image, found.cpus, found.memory_mib, found.disk_bytes)
        # Every image file is checked before anything is created or counted: a header that
        # names another host file (backing, data file) is refused here (storage/qcow2.py).
        images = [("disk.qcow2", spec.disk_bytes)] + [
            (f"memory/ram-{backend}.qcow2", mib << 20) for backend, mib in found.backends
        ]
        for member, size in images:
            try:
                await self.host.check_image(data / member, size, member)
            except InvalidImage as exc:
                raise InvalidArchive(exc.message) from exc
        inst = self.creator.new(spec, found.version, project_id, state=State.STOPPED)
        source_hw = found.hardware
        slots = [slot for slot, _mac, _net in source_hw.nics] or [0]
        old_macs = {slot: mac for slot, mac, _net in source_hw.nics}
        base = self.disks.new_base(inst)

        def hardware(nics: tuple[tuple[int, str, str], ...]) -> Hardware:
            made = replace(self.lifecycle.new_generation(source_hw), nics=nics)
            return made if found.memory else made.rebooted(spec.cpus, spec.memory_mib)

        async def take_files(undo: Reverter) -> None:
            # The boot files live with this machine, never in the shared image store.
            undo.add("the imported boot files", lambda: self.host.destroy(inst.id))
            if "vmlinuz" in manifest["files"]:  # else its disk's own bootloader boots it
                await self.host.take_boot_files(data, inst.id)
            dest = self.host.path(base.path)
            undo.add("the imported disk", lambda: self.host.remove_file(dest))
            await self.host.take_disk(data / "disk.qcow2", dest, spec.disk_bytes, "disk.qcow2")

        async def add_top_and_memory(made: Instance, undo: Reverter) -> None:
            await self.disks.new_top(made, on=base.id, size_bytes=spec.disk_bytes)
            if not found.memory:
                return
            assert made.hardware is not None
            # The memory image still holds the source's MACs: a restore will set the new ones.
            image_nics = tuple((s, old_macs.get(s, m), n) for s, m, n in made.hardware.nics)
            snap_id = new_id("s-")
            undo.add("the imported memory", lambda: self.host.remove_snapshot(snap_id))
            await self.host.take_memory(data, snap_id, found.backends)
            self.snapshots.store.add(
                Snapshot(
                    id=snap_id,
                    instance_id=made.id,
                    name="backup",
                    layer=base.id,
                    memory=True,
                    consistency=found.consistency,
                    # The source's machine and MACs: a restore renames the guest.
                    hardware=replace(source_hw, nics=image_nics),
                    disk_bytes=spec.disk_bytes,
                    size_bytes=0,
                    created_at=time.time(),
                )
            )

        async def networks() -> list[tuple[int, Network]]:
            # Networks are this host's: every NIC the source had goes on the default network.
            default = await self.networks.default(project_id)
            return [(slot, default) for slot in slots]

        def groups() -> list[str]:
            return self.secgroups.resolve([], project_id)

        draft = Draft(
            inst,
            networks,
            groups,
            hardware,
            runs=False,  # it is made stopped: the host's capacity is admitted when it starts
            layers=[base],
            local_only="machines imported from backups",  # its files arrive here
        )
        try:
            await self.creator.create(draft, before=take_files, after=add_top_and_memory)
        except InvalidImage as exc:
            raise InvalidArchive(exc.message) from exc
        return self.instances.get(inst.id)

    # -- verify ----------------------------------------------------------------------------------
    async def verify(
        self, body: AsyncIterator[bytes], project_id: str = DEFAULT_PROJECT
    ) -> Operation:
        """Prove an archive restores. The upload is received and checked here, in the request:
        an archive that is not whole is refused (``invalid-archive``) and nothing is made. Then
        an operation imports it as a throw-away VM, boots or resumes it, asks the guest, and
        removes it; its result is ``{ok, seconds, detail}``. The transfer slot is held until
        the operation ends (its scratch folder lives as long)."""
        started = time.monotonic()
        name = f"verify-{secrets.token_hex(4)}"
        release = self.transfers.take(project_id)
        work: Path | None = None
        try:
            work = self._scratch()
            manifest = await self._receive(body, work)
            received = work

            async def run(ctx: OpContext) -> dict[str, object]:
                try:
                    return await self._verify_received(
                        manifest, received, name, project_id, started, ctx
                    )
                finally:
                    self._drop_scratch(received)

            return self.ops.start("backup-verify", name, run, project_id, then=release)
        except BaseException:
            if work is not None:
                self._drop_scratch(work)
            release()
            raise

    async def _verify_received(
        self,
        manifest: dict[str, Any],
        work: Path,
        name: str,
        project_id: str,
        started: float,
        ctx: OpContext,
    ) -> dict[str, object]:
        """The verify operation's work; ``seconds`` counts from the upload's start."""

        def result(ok: bool, detail: str) -> dict[str, object]:
            return {"ok": ok, "seconds": round(time.monotonic() - started, 3), "detail": detail}

        ctx.progress(f"importing the archive as a throw-away VM, {name}")
        try:
            inst = await self._create(manifest, work, name, project_id)
        except InvalidInput as exc:  # the manifest or an image in it is refused
            return result(False, exc.message)
        try:
            snaps = self.snapshots.store.list(inst.id)
            if snaps:
                await self.snapshots.restore_now(inst.id, snaps[0], ctx)
            else:
                await self.lifecycle.boot(inst.id, ctx)
            out = await self.instances.exec(inst.id, ["cat", "/etc/hostname"])
            ok = out["exit_code"] == 0
            detail = "guest answered" + (" (resumed from memory)" if snaps else " (booted)")
        except GureumError as exc:
            ok, detail = False, f"the VM did not come up: {exc.message}"
        finally:
            ctx.progress(f"removing {name}")
            with contextlib.suppress(GureumError):
                await self.instances.delete(inst.id, force=True)
        return result(ok, detail)


CONSISTENCIES = ("offline", "fsfreeze", "paused", "crash-consistent")


@dataclass(frozen=True)
class _Found:
    """What an archive's manifest declares, each field checked: the manifest is the tenant's
    word (its checksums prove the archive is whole, not who wrote it)."""

    image: str
    version: str
    cpus: int
    memory_mib: int
    disk_bytes: int
    hardware: Hardware  # the machine the memory state was saved from (used as is on resume)
    memory: bool
    consistency: str

    @property
    def backends(self) -> list[tuple[str, int]]:
        """(backend, MiB) of each RAM image the archive must hold (none without memory)."""
        return self.hardware.memory_backends() if self.memory else []

    @classmethod
    def check(cls, manifest: dict[str, Any], members: set[str]) -> _Found:
        cfg = manifest.get("config")
        if not isinstance(cfg, dict):
            raise InvalidArchive("the manifest has no configuration")
        try:
            found = cls(
                image=check_name(cfg["image"], what="image name"),
                version=str(cfg["image_version"]),
                cpus=check_cpus(cfg["cpus"]),
                memory_mib=check_memory(cfg["memory_mib"]),
                disk_bytes=cfg["disk_bytes"],
                hardware=Hardware.from_json(cfg["hardware"]),
                memory=cfg["memory"],
                consistency=cfg.get("consistency", "paused"),
            )
            check_hardware(found.hardware)
        except (KeyError, TypeError, ValueError, RecursionError, InvalidInput) as exc:
            detail = exc.message if isinstance(exc, InvalidInput) else str(exc)
            raise InvalidArchive(f"the manifest's configuration is invalid: {detail}") from (exc)
        if not found.version.isalnum() or len(found.version) > 64:
            raise InvalidArchive("the manifest names an invalid image version")
        disk = found.disk_bytes
        if isinstance(disk, bool) or not isinstance(disk, int) or not 0 < disk <= MAX_DISK_BYTES:
            raise InvalidArchive(f"the manifest's disk size {disk!r} is out of range")
        if not isinstance(found.memory, bool) or found.consistency not in CONSISTENCIES:
            raise InvalidArchive("the manifest's memory fields are invalid")
        hw = found.hardware
        if found.memory and (hw.total_cpus, hw.total_memory_mib) != (found.cpus, found.memory_mib):
            # Admission and quotas count the manifest's size; a resume runs the saved machine.
            raise InvalidArchive(
                f"the manifest declares {found.cpus} vCPU and {found.memory_mib} MiB, but its"
                f" memory state is of a {hw.total_cpus} vCPU, {hw.total_memory_mib} MiB machine"
            )
        # Boot files both, or neither (a machine whose disk has its own bootloader).
        boot_files = {"vmlinuz", "initrd.img"}
        wanted = {"disk.qcow2"} | (boot_files if members & boot_files else set())
        if found.memory:
            wanted |= {"memory/state"} | {f"memory/ram-{b}.qcow2" for b, _ in found.backends}
        if members != wanted:
            raise InvalidArchive(
                f"the archive holds {sorted(members)}, not the {sorted(wanted)} its"
                " configuration needs"
            )
        return found
