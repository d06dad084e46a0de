"""FakeHost: a ``HostAgent`` in memory, for unit tests of the service's rules.

It keeps what a real host would have (disk files, VMs, memory images, boot files, networks,
forwards, control groups) as sets, records every call, and raises an ``EngineError`` at the
step named in ``fail_at`` (optionally only on its ``fail_on``-th call). Nothing here runs a
process: it stands in for ``LocalHostAgent`` beneath unit tests only.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gureum.config import Config
from gureum.errors import EngineError, InvalidImage, InvalidState
from gureum.host.capacity import HostCapacity, admit
from gureum.host.interface import (
    AccelChoice,
    Console,
    ExecResult,
    Identity,
    NetworkPlan,
    ProjectUsage,
    Span,
    VMEvents,
    VMSpec,
)
from gureum.host.stats import InstanceStats
from gureum.model.hardware import Hardware
from gureum.model.network import Forward, Network
from gureum.network.metadata import Lookup
from gureum.storage import archive
from gureum.sys import streams


@dataclass
class FakeVM:
    spec: VMSpec
    events: VMEvents
    pid: int
    restored_from: str | None


@dataclass
class HostState:
    """What is on the host, to compare before and after."""

    files: frozenset[Path]
    vms: frozenset[str]
    memory_images: frozenset[str]
    boot_files: frozenset[str]
    forwards: frozenset[str]

    def without(self, other: HostState) -> dict[str, set[object]]:
        """What this state has that ``other`` has not (empty: nothing was left)."""
        left = {
            "files": set(self.files - other.files),
            "vms": set(self.vms - other.vms),
            "memory_images": set(self.memory_images - other.memory_images),
            "boot_files": set(self.boot_files - other.boot_files),
            "forwards": set(self.forwards - other.forwards),
        }
        return {k: v for k, v in left.items() if v}


@dataclass
class FakeHost:
    config: Config
    cpus: int = 8
    memory_mib: int = 16384
    fail_at: str | None = None
    fail_on: int = 1  # the n-th call of fail_at fails
    calls: list[str] = field(default_factory=list)
    told: dict[str, Identity] = field(default_factory=dict)  # refresh_identity's, per VM
    files: set[Path] = field(default_factory=set)
    vms: dict[str, FakeVM] = field(default_factory=dict)
    memory_images: set[str] = field(default_factory=set)
    boot_files: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    spans: dict[str, Span | None] = field(default_factory=dict)  # how each network spans hosts
    forwards: set[str] = field(default_factory=set)
    groups: dict[str, tuple[float | None, int | None]] = field(default_factory=dict)
    hardware: dict[str, Hardware] = field(default_factory=dict)
    sizes: dict[Path, int] = field(default_factory=dict)  # a disk layer's virtual size
    _pids: Iterator[int] = field(default_factory=lambda: itertools.count(40000))
    lookup: Lookup | None = None
    # (network id, ip) -> the MAC that address resolves to in the network's namespace here.
    neighbours: dict[tuple[str, str], str] = field(default_factory=dict)
    booted: bool = True  # the next service start is the first since the host booted
    host_keys: list[str] = field(default_factory=list)  # what every guest reports as its own
    waiting: dict[str, FakeVM] = field(default_factory=dict)  # the pool's QEMUs, by instance
    # Containers: layers put back from snapshots (instance, snapshot); limits set while running.
    restored_layers: list[tuple[str, str]] = field(default_factory=list)
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)
    # What instance_stats reports of a running VM (default: 1 s of CPU more at each round).
    stats: dict[str, InstanceStats] = field(default_factory=dict)
    rounds: int = 0

    @property
    def accel(self) -> AccelChoice:
        return AccelChoice("tcg", "a fake host")

    def _step(self, name: str) -> None:
        """Record a call; fail it if it is the one chosen."""
        self.calls.append(name)
        if name == self.fail_at and self.calls.count(name) == self.fail_on:
            raise EngineError(f"injected failure in {name}")

    def state(self) -> HostState:
        return HostState(
            frozenset(self.files),
            frozenset(self.vms) | frozenset(self.waiting),
            frozenset(self.memory_images),
            frozenset(self.boot_files),
            frozenset(self.forwards),
        )

    # -- the host --------------------------------------------------------------------------------
    def prepare(self) -> None:
        for folder in (self.config.home, self.config.images_dir, self.config.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def first_start_since_boot(self) -> bool:
        first, self.booted = self.booted, False
        return first

    def capacity(self) -> HostCapacity:
        return HostCapacity(self.cpus, self.memory_mib, 0, 1.0)

    def admit(self, used_cpus: int, used_mib: int, cpus: int, memory_mib: int) -> None:
        admit(self.capacity(), used_cpus, used_mib, cpus, memory_mib)

    def path(self, relative: str) -> Path:
        return self.config.home / relative

    def free_disk_bytes(self) -> int:
        return 1 << 40

    def disk_reserve_bytes(self) -> int:
        return 1 << 30

    async def check_alive(self) -> None:
        self._step("check_alive")

    async def remove_leftovers(
        self, known_ids: set[str], known_layers: set[Path], known_snapshots: set[str]
    ) -> list[str]:
        self._step("remove_leftovers")
        gone = [str(p) for p in self.files - known_layers]
        self.files &= known_layers
        self.memory_images &= known_snapshots
        return gone

    # -- projects --------------------------------------------------------------------------------
    async def limit_project(self, project_id: str, cores: float | None, memory: int | None) -> None:
        self._step("limit_project")
        self.groups[project_id] = (cores, memory)

    def forget_project(self, project_id: str) -> None:
        self.groups.pop(project_id, None)

    def project_usage(self, project_id: str) -> ProjectUsage:
        return ProjectUsage(None, None, None)

    def tidy_projects(self) -> None:
        pass

    # -- disks -----------------------------------------------------------------------------------
    async def create_disk(self, path: Path, backing: Path, size_bytes: int) -> None:
        self._step("create_disk")
        self.files.add(path)
        self.sizes[path] = size_bytes

    async def grow_disk_offline(self, path: Path, size_bytes: int) -> None:
        self._step("grow_disk_offline")

    async def flatten_disk(self, chain: tuple[Path, ...], dest: Path) -> None:
        self._step("flatten_disk")
        dest.write_bytes(b"flattened")

    async def check_image(self, path: Path, size_bytes: int, what: str) -> None:
        self._step("check_image")

    async def take_disk(self, src: Path, dest: Path, size_bytes: int, what: str) -> None:
        self._step("take_disk")
        self.files.add(dest)

    def names_backing_file(self, path: Path) -> bool:
        return False

    def disk_bytes(self, path: Path) -> int:
        return 4096 if path in self.files else 0

    async def revoke_access(self, uid: int, paths: list[Path]) -> None:
        self._step("revoke_access")

    async def remove_file(self, path: Path) -> None:
        self.files.discard(path)

    # -- boot files ------------------------------------------------------------------------------
    def own_boot_files(self, instance_id: str) -> Path | None:
        if instance_id in self.boot_files:
            return self.config.instances_dir / instance_id
        return None

    async def share_boot_files(self, source_id: str, instance_id: str) -> None:
        self._step("share_boot_files")
        self.boot_files.add(instance_id)

    async def import_image(
        self,
        body: AsyncIterator[bytes],
        folder: Path,
        *,
        max_bytes: int,
        idle_timeout: float,
        min_bytes: int,
    ) -> dict[str, Any]:
        self._step("import_image")
        data = b"".join([chunk async for chunk in body])
        if not data.startswith(b"BOOT"):  # the fake's stand-in for a bootable disk
            raise InvalidImage("the image's first sector is not a boot sector")
        self.files.add(folder / "disk.qcow2")
        return {"format": "raw", "virtual_bytes": len(data) << 20, "firmware": "bios",
                "file": {"file": "disk.qcow2", "bytes": len(data), "sha256": "0" * 64}}  # fmt: skip

    async def capture_image(
        self, chain: tuple[Path, ...], boot: tuple[Path, Path] | None, folder: Path
    ) -> dict[str, dict[str, object]]:
        self._step("capture_image")
        self.files.add(folder / "disk.qcow2")
        roles = {"disk": "disk.qcow2"} | (
            {"kernel": "vmlinuz", "initrd": "initrd.img"} if boot else {}
        )
        return {r: {"file": f, "bytes": 1, "sha256": "0" * 64} for r, f in roles.items()}

    def remove_image(self, folder: Path) -> None:
        self.files.discard(folder / "disk.qcow2")

    async def take_boot_files(self, scratch: Path, instance_id: str) -> None:
        self._step("take_boot_files")
        self.boot_files.add(instance_id)

    def new_scratch(self) -> Path:
        path = self.config.home / "scratch" / f"x{next(self._pids)}"
        path.mkdir(parents=True)
        return path

    def remove_scratch(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    # -- backup archives: the real format, read and written in process --------------------------
    def write_archive(self, files: dict[str, Path], config: dict[str, Any]) -> AsyncIterator[bytes]:
        self._step("write_archive")
        return streams.produce_in_thread(lambda out: archive.write(out, files, config), name="x")

    async def read_archive(
        self, body: AsyncIterator[bytes], dest: Path, *, idle_timeout: float, min_bytes: int
    ) -> dict[str, Any]:
        self._step("read_archive")
        return await streams.consume_in_thread(
            body, lambda inp: archive.read(inp, dest, keep_free=0), name="x",
            idle_timeout=idle_timeout, min_bytes=min_bytes,
        )  # fmt: skip

    # -- memory images ---------------------------------------------------------------------------
    async def save_memory(
        self, instance_id: str, frozen_chain: tuple[Path, ...], snapshot_id: str
    ) -> None:
        self._step("save_memory")
        self.memory_images.add(snapshot_id)

    async def take_memory(
        self, scratch: Path, snapshot_id: str, backends: list[tuple[str, int]]
    ) -> None:
        self._step("take_memory")
        self.memory_images.add(snapshot_id)

    async def export_memory(
        self, snapshot_id: str, backends: list[tuple[str, int]], scratch: Path
    ) -> dict[str, Path]:
        self._step("export_memory")
        return {}

    def snapshot_bytes(self, snapshot_id: str) -> int:
        return 4096 if snapshot_id in self.memory_images else 0

    async def remove_snapshot(self, snapshot_id: str) -> None:
        self.memory_images.discard(snapshot_id)

    # -- containers' own layers (kept, like memory images, under the snapshot's id) ---------------
    async def snapshot_container(self, instance_id: str, snapshot_id: str) -> str:
        self._step("snapshot_container")
        self.memory_images.add(snapshot_id)
        return "frozen" if instance_id in self.vms else "offline"

    async def restore_container(self, instance_id: str, snapshot_id: str) -> None:
        self._step("restore_container")
        if instance_id in self.vms:
            raise InvalidState("the container must be stopped to change its layer")
        if snapshot_id not in self.memory_images:
            raise EngineError(f"snapshot {snapshot_id} has no copy of a container's layer")
        self.restored_layers.append((instance_id, snapshot_id))

    async def limit_container(self, instance_id: str, cpus: int, memory_mib: int) -> None:
        self._step("limit_container")
        self.limits[instance_id] = (cpus, memory_mib)

    # -- a VM's life -----------------------------------------------------------------------------
    async def start(
        self,
        spec: VMSpec,
        events: VMEvents,
        restore_from: str | None = None,
        keep_memory: bool = False,
    ) -> int:
        self._step("start")
        if spec.instance_id in self.vms:
            raise InvalidState(f"{spec.name} already has a running QEMU")
        waiting = self.waiting.pop(spec.instance_id, None)
        if waiting is not None:
            if restore_from != waiting.restored_from:
                raise EngineError("the waiting QEMU waits for another state")
            if spec.disk_chain != waiting.spec.disk_chain or spec.uid != waiting.spec.uid:
                raise EngineError("the waiting QEMU has another disk or user")
            if spec.hardware.generation_id != waiting.spec.hardware.generation_id:
                raise EngineError("the waiting QEMU has another vmgenid")
            self.vms[spec.instance_id] = FakeVM(spec, events, waiting.pid, restore_from)
            events.on_boot_event("taken_from_pool", asyncio.get_running_loop().time())  # once
            events.on_boot_event("running", asyncio.get_running_loop().time())
            return waiting.pid
        pid = self._spawn(spec, restore_from)
        self.vms[spec.instance_id] = FakeVM(spec, events, pid, restore_from)
        events.on_boot_event("process_started", asyncio.get_running_loop().time())
        events.on_boot_event("running", asyncio.get_running_loop().time())
        return pid

    async def start_waiting(
        self, spec: VMSpec, restore_from: str, macs: list[tuple[str, str]], events: VMEvents
    ) -> int:
        self._step("start_waiting")
        pid = self._spawn(spec, restore_from)
        self.waiting[spec.instance_id] = FakeVM(spec, events, pid, restore_from)
        return pid

    def _spawn(self, spec: VMSpec, restore_from: str | None) -> int:
        """A QEMU's pid, once what it would open is there."""
        if restore_from is not None and restore_from not in self.memory_images:
            raise EngineError(f"no memory image {restore_from}")
        missing = [p for p in spec.disk_chain if p not in self.files and "images" not in p.parts]
        if missing:
            raise EngineError(f"disk files missing: {missing}")
        return next(self._pids)

    async def seal_template(self, instance_id: str) -> None:
        self._step("seal_template")
        self._vm(instance_id)

    async def claim_waiting(self, spec: VMSpec, events: VMEvents) -> None:
        self._step("claim_waiting")
        if spec.instance_id in self.waiting:
            events.on_boot_event("taken_from_pool", asyncio.get_running_loop().time())

    async def discard_waiting(self, instance_id: str) -> None:
        self.waiting.pop(instance_id, None)

    async def close_pool(self) -> None:
        self.waiting.clear()

    async def wait_ready(self, instance_id: str, timeout: float) -> None:
        self._step("wait_ready")
        self._vm(instance_id)

    def find_running(self, instance_id: str) -> int | None:
        vm = self.vms.get(instance_id)
        return vm.pid if vm else None

    def died_cleanly(self, instance_id: str) -> bool:
        return False

    async def adopt(self, spec: VMSpec, pid: int, events: VMEvents, *, booted: bool) -> Path:
        self._step("adopt")
        if spec.instance_id in self.vms:  # its events are the new watcher's now
            self.vms[spec.instance_id] = FakeVM(spec, events, pid, None)
        return spec.root_disk

    async def stop(self, instance_id: str, timeout: float) -> str:
        self._step("stop")
        self._vm(instance_id)
        self.vms.pop(instance_id)
        return "powerdown"

    async def kill(self, instance_id: str) -> None:
        self.vms.pop(instance_id, None)

    def forget(self, instance_id: str) -> None:
        pass

    async def destroy(self, instance_id: str) -> None:
        self.vms.pop(instance_id, None)
        self.waiting.pop(instance_id, None)
        self.boot_files.discard(instance_id)

    async def pause(self, instance_id: str) -> None:
        self._step("pause")
        self._vm(instance_id)

    async def resume(self, instance_id: str) -> None:
        self._step("resume")

    async def freeze(self, instance_id: str) -> bool:
        self._step("freeze")
        return True

    async def thaw(self, instance_id: str) -> None:
        self._step("thaw")

    async def thaw_if_frozen(self, instance_id: str) -> None:
        pass

    async def snapshot_disk_live(self, instance_id: str, new_top: Path) -> None:
        self._step("snapshot_disk_live")
        self._vm(instance_id)
        self.files.add(new_top)

    def update_disk_chain(self, instance_id: str, chain: tuple[Path, ...]) -> None:
        pass

    def update_hardware(self, instance_id: str, hardware: Hardware) -> None:
        self.hardware[instance_id] = hardware

    # -- resources -------------------------------------------------------------------------------
    async def hotplug_cpu(self, instance_id: str, core: int) -> None:
        self._step("hotplug_cpu")

    async def online_cpus(self, instance_id: str, want: int) -> None:
        self._step("online_cpus")

    async def hotplug_dimm(self, instance_id: str, index: int, mib: int) -> None:
        self._step("hotplug_dimm")

    async def guest_memory_kib(self, instance_id: str) -> int:
        self._step("guest_memory_kib")
        hw = self.hardware.get(instance_id) or self._vm(instance_id).spec.hardware
        return hw.total_memory_mib * 1024

    async def resize_disk_live(self, instance_id: str, size_bytes: int) -> None:
        self._step("resize_disk_live")

    async def grow_guest_filesystem(self, instance_id: str) -> bool:
        self._step("grow_guest_filesystem")
        return True

    async def hotplug_nic(self, instance_id: str, slot: int, mac: str, network_id: str) -> None:
        self._step("hotplug_nic")

    async def wait_for_nic(self, instance_id: str, mac: str, timeout: float) -> None:
        self._step("wait_for_nic")

    async def renew_network(self, instance_id: str) -> None:
        self._step("renew_network")

    async def unplug_nic(self, instance_id: str, slot: int) -> None:
        self._step("unplug_nic")

    # -- guest access ----------------------------------------------------------------------------
    async def exec(
        self, instance_id: str, argv: list[str], stdin: bytes | None, timeout: float
    ) -> ExecResult:
        self._step("exec")
        vm = self._vm(instance_id)
        return ExecResult(0, f"{vm.spec.name}\n".encode(), b"")

    async def refresh_identity(self, instance_id: str, identity: Identity) -> str:
        self._step("refresh_identity")
        self._vm(instance_id)
        self.told[instance_id] = identity
        return "0" * 32

    def console(self, instance_id: str) -> Console:
        raise InvalidState("a fake host has no consoles")

    async def console_log(self, instance_id: str, tail_bytes: int) -> bytes:
        return b""

    async def ssh_host_keys(self, instance_id: str) -> list[str]:
        self._step("ssh_host_keys")
        self._vm(instance_id)
        return list(self.host_keys)

    async def connect_guest(self, network_id: str, ip: str, port: int) -> socket.socket:
        raise InvalidState("a fake host has no guests to connect to")

    def rss_bytes(self, instance_id: str) -> int | None:
        return 1 << 20 if instance_id in self.vms else None

    async def instance_stats(
        self, instances: list[tuple[str, Hardware]]
    ) -> dict[str, InstanceStats]:
        self.rounds += 1
        return {
            i: self.stats.get(i, InstanceStats(time.time(), float(self.rounds), 1 << 20, 1 << 19))
            for i, _ in instances
            if i in self.vms
        }

    def _vm(self, instance_id: str) -> FakeVM:
        vm = self.vms.get(instance_id)
        if vm is None:
            raise InvalidState("the VM is not running on this host")
        return vm

    # -- networks --------------------------------------------------------------------------------
    def serve_metadata(self, lookup: Lookup) -> None:
        self.lookup = lookup

    def network_namespace(self, network_id: str) -> str:
        return f"fake-{network_id}"

    async def ensure_network(self, net: Network) -> None:
        self._step("ensure_network")
        self.networks.add(net.id)

    async def remove_network(self, network_id: str) -> None:
        self.networks.discard(network_id)

    def networks_present(self) -> set[str]:
        return set(self.networks)

    async def sync_network(self, net: Network, plan: NetworkPlan) -> None:
        self._step("sync_network")
        self.spans[net.id] = plan.span

    async def neighbour_mac(self, network_id: str, ip: str) -> str | None:
        return self.neighbours.get((network_id, ip))

    async def add_forward(self, fwd: Forward, network_id: str, ip: str) -> None:
        self._step("add_forward")
        self.forwards.add(fwd.id)

    async def remove_forward(self, forward_id: str) -> None:
        self.forwards.discard(forward_id)

    async def close_networks(self) -> None:
        pass
