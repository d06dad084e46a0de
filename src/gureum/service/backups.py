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
import os
import secrets
import shutil
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gureum.errors import Conflict, GureumError, InvalidImage, InvalidInput, RateLimited
from gureum.ids import check_name, new_id
from gureum.model.hardware import Hardware, check_hardware
from gureum.model.instance import DEFAULT_PROJECT, Instance, InstanceSpec, State
from gureum.model.snapshot import Layer, Snapshot
from gureum.service.instances import (
    INTERNAL_SNAPSHOT_PREFIX,
    MAX_DISK_BYTES,
    InstanceService,
    check_cpus,
    check_memory,
)
from gureum.service.operations import Quiet
from gureum.service.snapshots import SnapshotService
from gureum.storage import archive
from gureum.sys import streams

# Backup transfers under way at once: each holds a thread, a scratch folder and a connection
# for as long as its client takes to send or read. On the host, and per project.
MAX_TRANSFERS = 8
MAX_TRANSFERS_PER_PROJECT = 2
# An upload must bring at least UPLOAD_MIN_BYTES every UPLOAD_IDLE_S seconds (a trickle of a
# byte a minute would hold its slot forever), and nothing for that long ends it at once.
UPLOAD_IDLE_S = 60.0
UPLOAD_MIN_BYTES = 1 << 20


class _Transfers:
    """Counts transfers under way; ``take`` refuses one past the limits (429)."""

    def __init__(self) -> None:
        self._active: dict[str, int] = {}

    def take(self, project_id: str) -> Callable[[], None]:
        total, mine = sum(self._active.values()), self._active.get(project_id, 0)
        if total >= MAX_TRANSFERS or mine >= MAX_TRANSFERS_PER_PROJECT:
            raise RateLimited(
                f"too many backup transfers under way ({mine} of this project's"
                f" {MAX_TRANSFERS_PER_PROJECT}, {total} of the host's {MAX_TRANSFERS}):"
                " try again when one ends",
                retry_after=10,
            )
        self._active[project_id] = mine + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._active[project_id] -= 1

        return release


class BackupService:
    def __init__(self, instances: InstanceService, snapshots: SnapshotService) -> None:
        self.instances = instances
        self.snapshots = snapshots
        self.host = instances.host
        self.config = instances.config
        self.transfers = _Transfers()

    def _scratch(self) -> Path:
        path = self.config.home / "scratch" / new_id("x-")
        path.mkdir(parents=True)
        return path

    # -- export ----------------------------------------------------------------------------------
    async def export(
        self, ref: str, *, memory: bool = False, project_id: str | None = None
    ) -> tuple[str, AsyncIterator[bytes]]:
        """Prepare an export and return (file name, the archive as a byte stream). Everything
        that can fail on bad input fails here, before the first byte is sent."""
        inst = self.instances.get(ref, project_id)
        release = self.transfers.take(inst.project_id)
        work: Path | None = None
        try:
            work = self._scratch()
            files, config = await self._prepare(inst, memory, work)
        except BaseException:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            release()
            raise
        stream = self._stream(files, config, work, release)
        # If the client is gone before the first byte, the stream never starts and its own
        # cleanup never runs: the scratch folder and the slot go when the stream object does.
        weakref.finalize(stream, shutil.rmtree, work, True)
        weakref.finalize(stream, release)
        return f"{inst.name}.gbk", stream

    async def _prepare(
        self, inst: Instance, memory: bool, work: Path
    ) -> tuple[dict[str, Path], dict[str, Any]]:
        name = f"{INTERNAL_SNAPSHOT_PREFIX}export-{secrets.token_hex(3)}"
        await self.snapshots.create_now(inst.id, name, memory, Quiet(), internal=True)
        try:
            _, snap = self.snapshots.get(inst.id, name)
            files = {"disk.qcow2": work / "disk.qcow2"}
            chain = self.instances.disk_chain(snap.layer)
            await self.host.flatten_disk(chain, work / "disk.qcow2")
            boot = self.instances.boot_folder(inst)
            files["vmlinuz"] = boot / "vmlinuz"
            files["initrd.img"] = boot / "initrd.img"
            if snap.memory:
                folder = self.config.snapshots_dir / snap.id
                os.link(folder / "state", work / "state")
                files["memory/state"] = work / "state"
                for backend, _ in snap.hardware.memory_backends():
                    # RAM files are mostly holes; qcow2 keeps only the written clusters.
                    dest = work / f"ram-{backend}.qcow2"
                    await self.host.pack_ram(folder / f"ram-{backend}", dest)
                    files[f"memory/ram-{backend}.qcow2"] = dest
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
        finally:
            await self.snapshots.delete(inst.id, name)

    async def _stream(
        self,
        files: dict[str, Path],
        config: dict[str, Any],
        work: Path,
        release: Callable[[], None],
    ) -> AsyncIterator[bytes]:
        """The archive, written on a thread of its own and sent as it is produced."""
        try:
            stream = streams.produce_in_thread(
                lambda out: archive.write(out, files, config), name="backup-export"
            )
            async for chunk in stream:
                yield chunk
        finally:
            shutil.rmtree(work, ignore_errors=True)
            release()

    # -- import ----------------------------------------------------------------------------------
    async def import_(
        self, body: AsyncIterator[bytes], name: str, project_id: str = DEFAULT_PROJECT
    ) -> Instance:
        check_name(name, what="instance name")
        if self.instances.store.get_by_name(name, project_id) is not None:
            raise Conflict(f"an instance named {name!r} already exists")
        release = self.transfers.take(project_id)
        work: Path | None = None
        try:
            work = self._scratch()
            manifest = await self._receive(body, work)
            return await self._create(manifest, work, name, project_id)
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            release()

    async def _receive(self, body: AsyncIterator[bytes], work: Path) -> dict[str, Any]:
        """Read and check the archive on a thread of its own; an archive found bad is refused
        at once, without reading the rest of the body (``sys/streams.py``)."""
        keep_free = self.host.disk_reserve_bytes()
        return await streams.consume_in_thread(
            body, lambda inp: archive.read(inp, work / "in", keep_free=keep_free),
            name="backup-import", idle_timeout=UPLOAD_IDLE_S, min_bytes=UPLOAD_MIN_BYTES,
        )  # fmt: skip

    async def _create(
        self, manifest: dict[str, Any], work: Path, name: str, project_id: str
    ) -> Instance:
        data = work / "in"
        found = _Found.check(manifest, set(manifest.get("files") or {}))
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
                raise archive.ArchiveError(exc.message) from exc
        inst = Instance(
            id=new_id("i-"),
            spec=spec,
            state=State.STOPPED,
            created_at=time.time(),
            image_version=found.version,
            accel=self.host.accel.accel,
            project_id=project_id,
            uid=self.instances.store.next_uid(),
        )
        wanted = {"instances": 1, "cpus": spec.cpus, "memory_mib": spec.memory_mib,
                  "disk_bytes": spec.disk_bytes}  # fmt: skip
        async with self.instances.admission:
            self.instances.quotas.check(project_id, replacing=None, **wanted)
            # Counted until its row is in the store (or the import fails): concurrent imports
            # and launches see it.
            release = self.instances.quotas.hold(project_id, **wanted)
        try:
            return await self._create_held(inst, found, data, [], release)
        finally:
            release()

    async def _create_held(
        self,
        inst: Instance,
        found: _Found,
        data: Path,
        created: list[Path],
        release: Callable[[], None],
    ) -> Instance:
        """The import's work once its quota is held; ``release`` once its row counts instead."""
        spec, project_id, source_hw = inst.spec, inst.project_id, found.hardware
        # Networks are this host's: every NIC the source had goes on the default network.
        nets = self.instances.networks
        default = await nets.default(project_id)
        slots = [slot for slot, _mac, _net in source_hw.nics] or [0]
        old_macs = {slot: mac for slot, mac, _net in source_hw.nics}
        base_id = new_id("l-")
        base = Layer(base_id, inst.id, f"disks/{base_id}.qcow2", None, time.time(), None)
        try:
            # The boot files live with this machine, never in the shared image store.
            boot = self.config.instances_dir / inst.id
            created.append(boot)
            boot.mkdir(parents=True)
            for boot_file in ("vmlinuz", "initrd.img"):
                shutil.move(data / boot_file, boot / boot_file)
            dest = self.host.path(base.path)
            created.append(dest)
            await self.host.take_disk(data / "disk.qcow2", dest, spec.disk_bytes, "disk.qcow2")
            self.instances.layers.add(base)
            self.instances.store.insert(inst)
            release()  # the row counts now
            for slot in slots:
                nets.new_nic(inst.id, default, slot)
            nets.store.set_instance_groups(
                inst.id, self.instances.secgroups.resolve([], project_id)
            )
            new_nics = nets.hardware_nics(inst.id)
            hardware = replace(self.instances.new_generation(source_hw), nics=new_nics)
            if not found.memory:
                hardware = hardware.rebooted(spec.cpus, spec.memory_mib)
            inst.hardware = hardware
            self.instances.store.update(inst.id, hardware=hardware)
            # The memory image still holds the source's MACs: a restore will set the new ones.
            image_nics = tuple((s, old_macs.get(s, m), n) for s, m, n in new_nics)
            await self.instances.new_top_layer(inst, on=base_id, size_bytes=spec.disk_bytes)
            if found.memory:
                snap_id = new_id("s-")
                folder = self.config.snapshots_dir / snap_id
                created.append(folder)
                folder.mkdir()
                shutil.move(data / "memory" / "state", folder / "state")
                for backend, mib in found.backends:
                    member = f"memory/ram-{backend}.qcow2"
                    await self.host.take_ram(data / member, folder / f"ram-{backend}",
                                             mib << 20, member)  # fmt: skip
                self.instances.snapshots.add(
                    Snapshot(
                        id=snap_id,
                        instance_id=inst.id,
                        name="backup",
                        layer=base_id,
                        memory=True,
                        consistency=found.consistency,
                        # The source's machine and MACs: a restore renames the guest.
                        hardware=replace(source_hw, nics=image_nics),
                        disk_bytes=spec.disk_bytes,
                        size_bytes=0,
                        created_at=time.time(),
                    )
                )
        except BaseException as exc:
            # Nothing half-made stays: rows, layers and files all go.
            nets.store.forget_instance(inst.id)
            for snap in self.instances.snapshots.list(inst.id):
                self.instances.snapshots.remove(snap.id)
            self.instances.store.delete(inst.id)
            await self.instances.collect_layers()
            for path in created:
                await self.host.remove_file(path)
            if isinstance(exc, InvalidImage):
                raise archive.ArchiveError(exc.message) from exc
            raise
        return self.instances.get(inst.id)

    # -- verify ----------------------------------------------------------------------------------
    async def verify(
        self, body: AsyncIterator[bytes], project_id: str = DEFAULT_PROJECT
    ) -> dict[str, object]:
        """Prove an archive restores: import it as a throw-away VM, boot it, ask the guest."""
        started = time.monotonic()
        name = f"verify-{secrets.token_hex(4)}"
        try:
            inst = await self.import_(body, name, project_id)
        except InvalidInput as exc:
            return {
                "ok": False,
                "seconds": round(time.monotonic() - started, 3),
                "detail": exc.message,
            }
        detail = ""
        try:
            snaps = self.instances.snapshots.list(inst.id)
            if snaps:
                await self.snapshots.restore_now(inst.id, snaps[0], Quiet())
            else:
                await self.instances.boot(inst.id, Quiet())
            out = await self.instances.exec(inst.id, ["cat", "/etc/hostname"])
            ok = out["exit_code"] == 0
            detail = "guest answered" + (" (resumed from memory)" if snaps else " (booted)")
        except GureumError as exc:
            ok, detail = False, f"the VM did not come up: {exc.message}"
        finally:
            with contextlib.suppress(GureumError):
                await self.instances.delete(inst.id, force=True)
        return {"ok": ok, "seconds": round(time.monotonic() - started, 3), "detail": detail}


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
            raise archive.ArchiveError("the manifest has no configuration")
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
            raise archive.ArchiveError(f"the manifest's configuration is invalid: {detail}") from (
                exc
            )
        if not found.version.isalnum() or len(found.version) > 64:
            raise archive.ArchiveError("the manifest names an invalid image version")
        disk = found.disk_bytes
        if isinstance(disk, bool) or not isinstance(disk, int) or not 0 < disk <= MAX_DISK_BYTES:
            raise archive.ArchiveError(f"the manifest's disk size {disk!r} is out of range")
        if not isinstance(found.memory, bool) or found.consistency not in CONSISTENCIES:
            raise archive.ArchiveError("the manifest's memory fields are invalid")
        hw = found.hardware
        if found.memory and (hw.total_cpus, hw.total_memory_mib) != (found.cpus, found.memory_mib):
            # Admission and quotas count the manifest's size; a resume runs the saved machine.
            raise archive.ArchiveError(
                f"the manifest declares {found.cpus} vCPU and {found.memory_mib} MiB, but its"
                f" memory state is of a {hw.total_cpus} vCPU, {hw.total_memory_mib} MiB machine"
            )
        wanted = {"disk.qcow2", "vmlinuz", "initrd.img"}
        if found.memory:
            wanted |= {"memory/state"} | {f"memory/ram-{b}.qcow2" for b, _ in found.backends}
        if members != wanted:
            raise archive.ArchiveError(
                f"the archive holds {sorted(members)}, not the {sorted(wanted)} its"
                " configuration needs"
            )
        return found
