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

import asyncio
import contextlib
import os
import secrets
import shutil
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gureum.errors import Conflict, GureumError, InvalidInput
from gureum.ids import check_name, new_id
from gureum.images.debian import sha256_file
from gureum.model.hardware import Hardware
from gureum.model.instance import DEFAULT_PROJECT, Instance, InstanceSpec, State
from gureum.model.snapshot import Layer, Snapshot
from gureum.service.instances import (
    INTERNAL_SNAPSHOT_PREFIX,
    InstanceService,
    check_cpus,
    check_memory,
)
from gureum.service.operations import Quiet
from gureum.service.snapshots import SnapshotService
from gureum.storage import archive
from gureum.sys.runner import arun

CHUNK = 1 << 20


class BackupService:
    def __init__(self, instances: InstanceService, snapshots: SnapshotService) -> None:
        self.instances = instances
        self.snapshots = snapshots
        self.host = instances.host
        self.config = instances.config

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
        work = self._scratch()
        try:
            files, config = await self._prepare(inst, memory, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        stream = self._stream(files, config, work)
        # If the client is gone before the first byte, the stream never starts and its own
        # cleanup never runs: the scratch folder goes when the stream object does.
        weakref.finalize(stream, shutil.rmtree, work, True)
        return f"{inst.name}.gbk", stream

    async def _prepare(
        self, inst: Instance, memory: bool, work: Path
    ) -> tuple[dict[str, Path], dict[str, Any]]:
        name = f"{INTERNAL_SNAPSHOT_PREFIX}export-{secrets.token_hex(3)}"
        await self.snapshots.create_now(inst.id, name, memory, Quiet(), internal=True)
        try:
            _, snap = self.snapshots.get(inst.id, name)
            files = {"disk.qcow2": work / "disk.qcow2"}
            await self.host.flatten_disk(self.instances.layer_path(snap.layer), work / "disk.qcow2")
            boot = self.instances.image_folder(inst)
            files["vmlinuz"] = boot / "vmlinuz"
            files["initrd.img"] = boot / "initrd.img"
            if snap.memory:
                folder = self.config.snapshots_dir / snap.id
                os.link(folder / "state", work / "state")
                files["memory/state"] = work / "state"
                for backend, _ in snap.hardware.memory_backends():
                    # RAM files are mostly holes; qcow2 keeps only the written clusters.
                    dest = work / f"ram-{backend}.qcow2"
                    await arun(
                        [
                            "qemu-img",
                            "convert",
                            "-f",
                            "raw",
                            "-O",
                            "qcow2",
                            str(folder / f"ram-{backend}"),
                            str(dest),
                        ],
                        timeout=3600,
                    )
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
        self, files: dict[str, Path], config: dict[str, Any], work: Path
    ) -> AsyncIterator[bytes]:
        """The archive, written by a thread into a pipe and read here as it is produced."""
        read_fd, write_fd = os.pipe()
        reader = os.fdopen(read_fd, "rb", buffering=0)
        writer = os.fdopen(write_fd, "wb")

        def produce() -> None:
            try:
                archive.write(writer, files, config)
            finally:
                writer.close()

        producer = asyncio.get_running_loop().run_in_executor(None, produce)
        try:
            while chunk := await asyncio.to_thread(reader.read, CHUNK):
                yield chunk
            await producer
        finally:
            reader.close()  # a client gone mid-stream makes the writer fail and stop
            with contextlib.suppress(Exception):
                await producer
            shutil.rmtree(work, ignore_errors=True)

    # -- import ----------------------------------------------------------------------------------
    async def import_(
        self, body: AsyncIterator[bytes], name: str, project_id: str = DEFAULT_PROJECT
    ) -> Instance:
        check_name(name, what="instance name")
        if self.instances.store.get_by_name(name, project_id) is not None:
            raise Conflict(f"an instance named {name!r} already exists")
        work = self._scratch()
        try:
            manifest = await self._receive(body, work)
            return await self._create(manifest, work, name, project_id)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def _receive(self, body: AsyncIterator[bytes], work: Path) -> dict[str, Any]:
        read_fd, write_fd = os.pipe()
        reader = os.fdopen(read_fd, "rb")
        writer = os.fdopen(write_fd, "wb", buffering=0)
        consumer = asyncio.get_running_loop().run_in_executor(
            None, archive.read, reader, work / "in"
        )
        try:
            async for chunk in body:
                await asyncio.to_thread(writer.write, chunk)
        except BrokenPipeError:
            pass  # the reader stopped early: it will say why
        finally:
            writer.close()
        try:
            return await consumer
        finally:
            reader.close()

    async def _create(
        self, manifest: dict[str, Any], work: Path, name: str, project_id: str
    ) -> Instance:
        cfg = manifest["config"]
        try:
            image, version = str(cfg["image"]), str(cfg["image_version"])
            spec = InstanceSpec(
                name,
                image,
                check_cpus(cfg["cpus"]),
                check_memory(cfg["memory_mib"]),
                int(cfg["disk_bytes"]),
            )
            source_hw = Hardware.from_json(cfg["hardware"])
            has_memory = bool(cfg["memory"])
        except (KeyError, TypeError, ValueError) as exc:
            raise archive.ArchiveError(
                f"the manifest's configuration is incomplete: {exc}"
            ) from exc
        check_name(image, what="image name")
        if not version.isalnum():
            raise archive.ArchiveError("the manifest names an invalid image version")
        data = work / "in"
        self._install_boot_files(image, version, data)
        created: list[Path] = []
        inst = Instance(
            id=new_id("i-"),
            spec=spec,
            state=State.STOPPED,
            created_at=time.time(),
            image_version=version,
            accel=self.host.accel.accel,
            project_id=project_id,
            uid=self.instances.store.next_uid(),
        )
        wanted = {"instances": 1, "cpus": spec.cpus, "memory_mib": spec.memory_mib,
                  "disk_bytes": spec.disk_bytes}  # fmt: skip
        async with self.instances.admission:
            self.instances.quotas.check(project_id, **wanted)
            # Counted until its row is in the store (or the import fails): concurrent imports
            # and launches see it.
            release = self.instances.quotas.hold(project_id, **wanted)
        try:
            return await self._create_held(inst, source_hw, has_memory, cfg, data, created,
                                           release)  # fmt: skip
        finally:
            release()

    async def _create_held(
        self,
        inst: Instance,
        source_hw: Hardware,
        has_memory: bool,
        cfg: dict[str, Any],
        data: Path,
        created: list[Path],
        release: Callable[[], None],
    ) -> Instance:
        """The import's work once its quota is held; ``release`` once its row counts instead."""
        spec, project_id = inst.spec, inst.project_id
        # Networks are this host's: every NIC the source had goes on the default network.
        nets = self.instances.networks
        default = await nets.default(project_id)
        slots = [slot for slot, _mac, _net in source_hw.nics] or [0]
        old_macs = {slot: mac for slot, mac, _net in source_hw.nics}
        base_id = new_id("l-")
        base = Layer(base_id, inst.id, f"disks/{base_id}.qcow2", None, time.time())
        try:
            dest = self.host.path(base.path)
            await asyncio.to_thread(shutil.move, data / "disk.qcow2", dest)
            created.append(dest)
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
            if not has_memory:
                hardware = hardware.rebooted(spec.cpus, spec.memory_mib)
            inst.hardware = hardware
            self.instances.store.update(inst.id, hardware=hardware)
            # The memory image still holds the source's MACs: a restore will set the new ones.
            image_nics = tuple((s, old_macs.get(s, m), n) for s, m, n in new_nics)
            await self.instances.new_top_layer(inst, on=base_id, size_bytes=spec.disk_bytes)
            if has_memory:
                snap_id = new_id("s-")
                folder = self.config.snapshots_dir / snap_id
                created.append(folder)
                folder.mkdir()
                shutil.move(data / "memory" / "state", folder / "state")
                for backend, _ in hardware.memory_backends():
                    await arun(
                        [
                            "qemu-img",
                            "convert",
                            "-f",
                            "qcow2",
                            "-O",
                            "raw",
                            str(data / "memory" / f"ram-{backend}.qcow2"),
                            str(folder / f"ram-{backend}"),
                        ],
                        timeout=3600,
                    )
                self.instances.snapshots.add(
                    Snapshot(
                        id=snap_id,
                        instance_id=inst.id,
                        name="backup",
                        layer=base_id,
                        memory=True,
                        consistency=str(cfg.get("consistency", "paused")),
                        # The source's machine and MACs: a restore renames the guest.
                        hardware=replace(source_hw, nics=image_nics),
                        disk_bytes=spec.disk_bytes,
                        size_bytes=0,
                        created_at=time.time(),
                    )
                )
        except BaseException:
            # Nothing half-made stays: rows, layers and files all go.
            nets.store.forget_instance(inst.id)
            for snap in self.instances.snapshots.list(inst.id):
                self.instances.snapshots.remove(snap.id)
            self.instances.store.delete(inst.id)
            await self.instances.collect_layers()
            for path in created:
                await self.host.remove_file(path)
            raise
        return self.instances.get(inst.id)

    def _install_boot_files(self, image: str, version: str, data: Path) -> None:
        """The kernel and initramfs the disk was made with, unless this host has them."""
        folder = self.config.images_dir / image / version
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("vmlinuz", "initrd.img"):
            target = folder / name
            if target.exists():
                if sha256_file(target) != sha256_file(data / name):
                    raise Conflict(f"image {image} {version} here has a different {name}")
                continue
            shutil.move(data / name, target)

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
