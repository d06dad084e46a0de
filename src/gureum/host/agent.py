"""The HostAgent boundary: everything the service asks of a host, and nothing more.

The service never touches QEMU, qcow2 files or /proc; it calls these methods. ``LocalHostAgent``
does the work in-process for a single host; a remote agent for a cluster would expose the same
methods over HTTP. Nothing here knows users, projects or the API.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gureum.config import Config
from gureum.engine.qemu import accel as accel_probe
from gureum.engine.qemu import process
from gureum.engine.qemu.agent import ExecResult
from gureum.engine.qemu.argv import RuntimePaths, VMConfig
from gureum.engine.qemu.vm import QemuVM, VMEvents, ended_with_power_down
from gureum.errors import InvalidState
from gureum.host.capacity import HostCapacity, measure
from gureum.storage import disks

log = logging.getLogger(__name__)


class Console(Protocol):
    """A VM's serial console as the service sees it (the engine's SerialConsole is one)."""

    def attach(self) -> asyncio.Queue[bytes | None]: ...

    def detach(self, queue: asyncio.Queue[bytes | None]) -> None: ...

    async def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class VMSpec:
    """What a host needs to run one VM."""

    instance_id: str
    name: str
    cpus: int
    memory_mib: int
    disk_bytes: int
    kernel: Path
    initrd: Path
    base_disk: Path


class LocalHostAgent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._vms: dict[str, QemuVM] = {}
        self.accel = accel_probe.choose(config.accel)

    # -- folders ---------------------------------------------------------------------------------
    def runtime(self, instance_id: str) -> RuntimePaths:
        return RuntimePaths(self.config.run_dir / instance_id)

    def state_dir(self, instance_id: str) -> Path:
        return self.config.instances_dir / instance_id

    def root_disk(self, instance_id: str) -> Path:
        return self.state_dir(instance_id) / "root.qcow2"

    # -- capacity --------------------------------------------------------------------------------
    def capacity(self) -> HostCapacity:
        return measure(self.config.memory_reserve_mib, self.config.cpu_overcommit)

    # -- lifecycle -------------------------------------------------------------------------------
    async def prepare(self, spec: VMSpec) -> None:
        """Create the VM's disk: a thin overlay on the image's base disk, if not there yet."""
        disk = self.root_disk(spec.instance_id)
        if not disk.exists():
            await disks.create_overlay(spec.base_disk, disk, spec.disk_bytes)

    def _vm_config(self, spec: VMSpec) -> VMConfig:
        return VMConfig(
            name=spec.name,
            cpus=spec.cpus,
            memory_mib=spec.memory_mib,
            accel=self.accel.accel,
            kernel=spec.kernel,
            initrd=spec.initrd,
            root_disk=self.root_disk(spec.instance_id),
            runtime=self.runtime(spec.instance_id),
            hostname=spec.name,
            qemu_binary=self.config.qemu_binary,
            tcg_tb_size_mib=self.config.tcg_tb_size_mib,
        )

    async def start(self, spec: VMSpec, events: VMEvents) -> int:
        """Spawn the VM's QEMU and let it boot; returns its pid. Readiness: ``wait_ready``."""
        if spec.instance_id in self._vms and not self._vms[spec.instance_id].exited:
            raise InvalidState(f"{spec.name} already has a running QEMU")
        vm = QemuVM(self._vm_config(spec), events)
        self._vms[spec.instance_id] = vm
        try:
            await vm.start()
        except BaseException:
            self._vms.pop(spec.instance_id, None)
            raise
        assert vm.pid is not None
        return vm.pid

    async def wait_ready(self, instance_id: str, timeout: float) -> None:
        await self._vm(instance_id).wait_ready(timeout)

    def find_running(self, instance_id: str) -> int | None:
        """The pid of this VM's QEMU if one is alive (after a service restart, say)."""
        rt = self.runtime(instance_id)
        pid = process.read_pidfile(rt.pidfile)
        if pid is not None and process.owns(pid, str(rt.qmp)):
            return pid
        return None

    def died_cleanly(self, instance_id: str) -> bool:
        return ended_with_power_down(self.runtime(instance_id).serial_log)

    async def adopt(self, spec: VMSpec, pid: int, events: VMEvents, *, booted: bool) -> None:
        vm = QemuVM(self._vm_config(spec), events)
        await vm.adopt(pid, booted=booted)
        self._vms[spec.instance_id] = vm

    async def stop(self, instance_id: str, timeout: float) -> str:
        return await self._vm(instance_id).stop(timeout)

    async def kill(self, instance_id: str) -> None:
        vm = self._vms.get(instance_id)
        if vm is not None:
            await vm.kill()
        else:
            pid = self.find_running(instance_id)
            if pid is not None:
                process.kill(pid)

    def forget(self, instance_id: str) -> None:
        self._vms.pop(instance_id, None)

    async def destroy(self, instance_id: str) -> None:
        """Remove everything the host holds for this VM. Its QEMU must be gone."""
        await self.kill(instance_id)
        self.forget(instance_id)
        await asyncio.to_thread(shutil.rmtree, self.runtime(instance_id).dir, True)
        await asyncio.to_thread(shutil.rmtree, self.state_dir(instance_id), True)

    def check_alive(self) -> None:
        """Reconciler safety net: fire exit events that were somehow missed."""
        for vm in list(self._vms.values()):
            vm.check_alive()

    # -- guest access ----------------------------------------------------------------------------
    async def exec(
        self, instance_id: str, argv: list[str], stdin: bytes | None, timeout: float
    ) -> ExecResult:
        return await self._vm(instance_id).exec(argv, stdin=stdin, timeout=timeout)

    def console(self, instance_id: str) -> Console:
        return self._vm(instance_id).serial

    def serial_log(self, instance_id: str) -> Path:
        return self.runtime(instance_id).serial_log

    def rss_bytes(self, instance_id: str) -> int | None:
        vm = self._vms.get(instance_id)
        return vm.rss_bytes() if vm else None

    def disk_allocated_bytes(self, instance_id: str) -> int | None:
        disk = self.root_disk(instance_id)
        return disks.allocated_bytes(disk) if disk.exists() else None

    def _vm(self, instance_id: str) -> QemuVM:
        vm = self._vms.get(instance_id)
        if vm is None or vm.exited:
            raise InvalidState("the VM is not running on this host")
        return vm

    # -- leftovers -------------------------------------------------------------------------------
    async def remove_leftovers(self, known_ids: set[str]) -> list[str]:
        """Kill QEMUs and remove folders that belong to no known instance. Returns what went."""
        removed = []
        run_root = str(self.config.run_dir) + "/"
        for pid in process.find_by_marker(run_root):
            owner = next(
                (
                    a.split(run_root, 1)[1].split("/")[0]
                    for a in process.cmdline(pid)
                    if run_root in a
                ),
                "",
            )
            if owner and owner not in known_ids:
                process.kill(pid)
                removed.append(f"process {pid} of unknown VM {owner}")
        for parent in (self.config.run_dir, self.config.instances_dir):
            if not parent.exists():
                continue
            for folder in parent.iterdir():
                if folder.name not in known_ids:
                    await asyncio.to_thread(shutil.rmtree, folder, True)
                    removed.append(str(folder))
        return removed
