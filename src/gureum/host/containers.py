"""The host's system containers (issue 14): each one's folder, root, runc bundle, start, stop,
commands and end. The service reaches this only through ``HostAgent``.

A container's folder is ``instances/<id>/container/`` (bundle.py's config, rootfs.py's layers,
its console log). Its image's files are unpacked once per image version beside the image's
disk (images/rootfs.py) and shared, read-only, by all its containers.

How a container is asked to stop depends on its init: busybox init powers off on SIGUSR2,
systemd on SIGRTMIN+4 (SIGTERM would make either reboot or re-execute). Past the timeout it is
killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from gureum.config import Config
from gureum.engine.container import bundle
from gureum.engine.container import rootfs as container_root
from gureum.engine.container.runc import Runc
from gureum.engine.qemu.agent import ExecResult
from gureum.engine.qemu.serial import LOG_CAP, read_log
from gureum.engine.qemu.vm import VMEvents
from gureum.errors import EngineError, GureumError, InvalidInput, InvalidState
from gureum.host import permissions
from gureum.host.container_run import ContainerConsole, RunningContainer
from gureum.host.network import BRIDGE
from gureum.images import rootfs as image_rootfs
from gureum.model.network import NOCLOUD_URL
from gureum.network import veth
from gureum.sys import procs
from gureum.sys.runner import arun, run

log = logging.getLogger(__name__)

# What powers each init off (see the module's docstring), as numbers: runc takes a number for
# any signal, but not every name (SIGRTMIN+4 is 38 on Linux).
STOP_SIGNALS = {"busybox": str(int(signal.SIGUSR2)), "systemd": str(signal.SIGRTMIN + 4)}
# A runc state other than these means the container's init is gone.
ALIVE = ("created", "running", "paused")
# What ``systemctl is-system-running`` says once systemd has finished starting.
SYSTEMD_UP = (b"running", b"degraded")
INIT_FILE = "init"  # in the container's folder: which init it runs (root's, like config.json)
# cloud-init in a container: the NoCloud datasource, from the network's metadata service (the
# URL a VM reads from its SMBIOS serial). A single datasource: ds-identify takes it as found.
CLOUD_CFG_D, CLOUD_CFG_NAME = "etc/cloud/cloud.cfg.d", "90-gureum-container.cfg"
CLOUD_CFG = f"""\
# Written by gureum at each start of this container: where cloud-init finds its data.
datasource_list: [NoCloud, None]
datasource:
  NoCloud:
    seedfrom: {NOCLOUD_URL}
"""


@dataclass(frozen=True)
class ContainerStart:
    """One container to start; everything here was checked and recorded by the service."""

    instance_id: str
    hostname: str
    image_disk: Path  # the image version's disk: its files are unpacked from it once
    uid_base: int  # its uid range's first uid (bundle.UID_RANGE of them)
    cpus: int
    memory_mib: int
    cgroup: str  # its own control group's path, under its project's
    layer_bytes: int = 1 << 30  # its own layer's size (its disk): bounds what it can write
    init: str | None = None  # which init the image runs (how it is asked to stop); None: its
    # files say (``init_of``)
    # Its NICs: (slot, MAC, the network namespace whose bridge it joins), as a VM's are.
    nics: tuple[tuple[int, str, str], ...] = ()


def init_of(files: Path) -> str:
    """Which init an image's files run as ``/sbin/init`` (a link in the images gureum builds:
    systemd's for Debian, busybox's for tiny). Read as the link's text, never followed."""
    try:
        target = os.readlink(files / "sbin" / "init")
    except OSError:
        target = ""
    for init in ("systemd", "busybox"):
        if init in target:
            return init
    raise InvalidInput(
        "this image has no init gureum can run as a container (systemd or busybox as /sbin/init)"
    )


class Containers:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.runc = Runc(config.runc_dir)
        self.running: dict[str, RunningContainer] = {}

    def owns(self, instance_id: str) -> bool:
        """Whether the instance is a container of this host (running or not)."""
        return instance_id in self.running or (self.folder(instance_id) / "config.json").exists()

    def folder(self, instance_id: str) -> Path:
        return self.config.instances_dir / instance_id / "container"

    def console_log(self, instance_id: str) -> Path:
        """The live log: in its own layer's filesystem (root's, outside what the container
        sees), since the container holds a descriptor to it (container_run.py)."""
        return self.folder(instance_id) / container_root.LAYER / "console.log"

    def kept_log(self, instance_id: str) -> Path:
        """The log's last LOG_CAP bytes, copied beside the layer when it is unmounted."""
        return self.folder(instance_id) / "console.log"

    def readable_log(self, instance_id: str) -> Path:
        """The log to show: the live one while its layer is mounted, else the copy kept."""
        if container_root.is_mounted(self.folder(instance_id) / container_root.LAYER):
            return self.console_log(instance_id)
        return self.kept_log(instance_id)

    async def _take_apart(self, instance_id: str) -> None:
        """Its root unmounted, its console log's tail kept first."""
        live, kept = self.console_log(instance_id), self.kept_log(instance_id)
        if container_root.is_mounted(self.folder(instance_id) / container_root.LAYER):
            await asyncio.to_thread(_keep_log, live, kept)
        await asyncio.to_thread(container_root.unmount, self.folder(instance_id))

    async def start(self, want: ContainerStart, events: VMEvents | None = None) -> int:
        """Create and start the container; its init's host pid. On failure nothing is left
        running or mounted (its folder's own layer stays, as a VM's disk does). With
        ``events`` it is watched from its creation (``RunningContainer``): its boot events,
        readiness and end go there."""
        image_dir = want.image_disk.parent
        files = await asyncio.to_thread(
            image_rootfs.unpack,
            want.image_disk,
            image_rootfs.folder_of(image_dir),
            self.config.cache_dir,
        )
        init = want.init or init_of(files)
        if init not in STOP_SIGNALS:
            raise EngineError(f"no way known to stop an init of kind {init!r}")
        folder = self.folder(want.instance_id)
        folder.mkdir(parents=True, exist_ok=True)
        # runc mounts the root as the container's uid, which must get through: the instance's
        # folder lets anyone cross; the container's own only its group (root inside), so no
        # other host user reaches its files or console log.
        permissions.crossable(folder.parent)
        os.chown(folder, 0, want.uid_base)
        os.chmod(folder, 0o710)
        root = await asyncio.to_thread(
            container_root.mount, files, folder, want.uid_base, want.layer_bytes
        )
        try:
            # Its name, in its own layer and owned by its own root (who may change it).
            await asyncio.to_thread(_write_owned, root, "etc", "hostname",
                                    f"{want.hostname}\n", want.uid_base)  # fmt: skip
            if (files / CLOUD_CFG_D).is_dir():  # the image's, not the container's, says so
                # Where its cloud-init finds its data: a VM is told through SMBIOS, which a
                # container does not have.
                await asyncio.to_thread(_write_owned, root, CLOUD_CFG_D, CLOUD_CFG_NAME,
                                        CLOUD_CFG, want.uid_base)  # fmt: skip
            spec = bundle.ContainerSpec(
                container_id=want.instance_id,
                hostname=want.hostname,
                rootfs=root,
                uid_base=want.uid_base,
                cpus=want.cpus,
                memory_mib=want.memory_mib,
                cgroup=want.cgroup,
                delegate_cgroups=init == "systemd",
            )
            (folder / "config.json").write_text(json.dumps(bundle.oci_config(spec), indent=1))
            (folder / INIT_FILE).write_text(init)
            await asyncio.to_thread(container_root.check_mount_points, folder, bundle.MOUNT_POINTS)
            if (self.runc.root / want.instance_id).exists():  # a stopped one left from before
                await self.runc.delete(want.instance_id)
            pid = await self.runc.create(
                want.instance_id, folder, self.console_log(want.instance_id)
            )
            if events is not None:
                events.on_boot_event("process_started", time.time())
                running = RunningContainer(
                    want.instance_id, pid, init, events, self.console_log(want.instance_id)
                )
                self.running[want.instance_id] = running
                running.watch(booted=False)
            # Created, not started: its network namespace exists and its init waits, so its
            # NICs are there before the init looks for them.
            for slot, mac, namespace in want.nics:
                await veth.plug(namespace, BRIDGE, want.instance_id, slot, mac, pid)
            if init == "systemd":
                await asyncio.to_thread(delegate_cgroups, pid, want.uid_base, want.cgroup)
            await self.runc.start(want.instance_id)
            if events is not None:
                events.on_boot_event("running", time.time())
        except BaseException:
            if want.instance_id in self.running:  # its end is this failure's, not a crash
                self.running[want.instance_id].stopping = True
                self.forget(want.instance_id)
            await self.runc.delete(want.instance_id)  # its namespace, and its NICs with it
            for slot, _, namespace in want.nics:
                await veth.unplug(namespace, want.instance_id, slot)
            await self._take_apart(want.instance_id)
            raise
        return pid

    async def wait_ready(self, instance_id: str, timeout: float) -> None:
        """Until its init is up: tiny's says so on its console; systemd is asked (through
        ``systemctl is-system-running --wait``, run in the container) until it has finished
        starting."""
        running = self._running(instance_id)
        if running.init != "systemd" or running.ready.is_set():
            await running.wait_ready(timeout)
            return
        asking = asyncio.create_task(self._ask_systemd(running, timeout))
        try:
            await running.wait_ready(timeout)
        finally:
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError, GureumError):
                await asking

    async def _ask_systemd(self, running: RunningContainer, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        argv = ["systemctl", "is-system-running", "--wait"]
        while not running.exited and loop.time() < deadline:
            try:
                said = await self.runc.exec(
                    running.instance_id, argv, None, max(1.0, deadline - loop.time())
                )
            except GureumError:  # too early for runc to enter it, say: asked again
                said = None
            if said is not None and said.stdout.strip() in SYSTEMD_UP:
                running.mark_ready(time.time())
                return
            await asyncio.sleep(0.2)

    def _running(self, instance_id: str) -> RunningContainer:
        running = self.running.get(instance_id)
        if running is None or running.exited:
            raise InvalidState("the container is not running on this host")
        return running

    def find_running(self, instance_id: str) -> int | None:
        """Its init's pid if it lives (after a service restart, say): the pid runc recorded,
        if that process is the container's root, whose host uid no other process has."""
        folder = self.folder(instance_id)
        pid = procs.read_pidfile(folder / "init.pid")
        try:
            config = json.loads((folder / "config.json").read_text())
            uid_base = int(config["linux"]["uidMappings"][0]["hostID"])
            owner = os.stat(f"/proc/{pid}").st_uid if pid is not None else None
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None
        return pid if owner == uid_base and procs.is_alive(pid or 0) else None

    async def adopt(self, instance_id: str, pid: int, events: VMEvents, *, booted: bool) -> None:
        """Watch a live container again (after a service restart). A snapshot may have been
        under way when the service went down: it must not stay frozen."""
        state = await self.runc.state(instance_id)
        if state is not None and state.get("status") == "paused":
            mounted = self.folder(instance_id) / container_root.LAYER
            await arun(["fsfreeze", "--unfreeze", str(mounted)], check=False, timeout=60)
            await self.runc.resume(instance_id)
        init = self._init(instance_id)
        if init not in STOP_SIGNALS:
            raise EngineError(f"the container's init kind is unknown ({init!r})")
        running = RunningContainer(instance_id, pid, init, events, self.console_log(instance_id))
        self.running[instance_id] = running
        running.watch(booted=booted)

    def _init(self, instance_id: str) -> str:
        """Which init it runs, as its start recorded ("" if unknown: it is killed to stop)."""
        try:
            return (self.folder(instance_id) / INIT_FILE).read_text().strip()
        except OSError:
            return ""

    def forget(self, instance_id: str) -> None:
        running = self.running.pop(instance_id, None)
        if running is not None:
            running.close()

    def console(self, instance_id: str) -> ContainerConsole:
        return self._running(instance_id).console

    def memory_bytes(self, instance_id: str) -> int | None:
        """What its processes hold in memory now (its control group's resident anonymous
        and file pages: what the host gives it), None when it is not running."""
        running = self.running.get(instance_id)
        if running is None or running.exited:
            return None
        with contextlib.suppress(OSError, ValueError):
            for folder in cgroup_folders(running.pid):
                stat = folder / "memory.stat"
                if stat.exists():
                    fields = dict(
                        line.split() for line in stat.read_text().splitlines() if " " in line
                    )
                    # v1: total_rss and total_cache; v2: anon and file
                    anon = int(fields.get("total_rss", fields.get("anon", 0)))
                    return anon
        return None

    async def _end_now(self, instance_id: str) -> None:
        """Kill its init if it lives (its end is asked for, not a crash) and wait for it."""
        running = self.running.get(instance_id)
        if running is not None:
            running.stopping = True
        pid = await self.pid(instance_id)
        if pid is not None:
            await self.runc.kill(instance_id, "KILL")
            if not await _ended(pid, 10.0):
                raise EngineError(f"the container's init (pid {pid}) did not end; it is kept")

    async def kill(self, instance_id: str) -> None:
        """End it now (no power-off), and take its root apart."""
        await self._end_now(instance_id)
        await self.runc.delete(instance_id)
        await self._take_apart(instance_id)

    # -- its layer: snapshots and size ------------------------------------------------------------
    def layer_file(self, instance_id: str) -> Path:
        return self.folder(instance_id) / container_root.LAYER_FILE

    async def copy_layer(self, instance_id: str, dest: Path) -> str:
        """Copy its layer to ``dest`` (a new file): as it is when stopped ("offline"); when it
        runs, with its processes frozen (the cgroup freezer) and its layer's filesystem
        frozen (FIFREEZE) meanwhile, so the copy is whole ("frozen")."""
        layer = self.layer_file(instance_id)
        pid = await self.pid(instance_id)
        if pid is None:
            await asyncio.to_thread(_copy_sparse, layer, dest)
            return "offline"
        mounted = self.folder(instance_id) / container_root.LAYER
        try:  # a pause that fails half-way is resumed too
            await self.runc.pause(instance_id)
            await arun(["fsfreeze", "--freeze", str(mounted)], timeout=60)
            try:
                await asyncio.to_thread(_copy_sparse, layer, dest)
            finally:
                await arun(["fsfreeze", "--unfreeze", str(mounted)], timeout=60)
        finally:
            await self.runc.resume(instance_id)
        return "frozen"

    async def put_layer(self, instance_id: str, source: Path) -> None:
        """Make a copy of ``source`` its layer (it must be stopped: its old layer goes)."""
        if await self.pid(instance_id) is not None:
            raise InvalidState("the container must be stopped to change its layer")
        folder = self.folder(instance_id)
        await self._take_apart(instance_id)
        new = folder / (container_root.LAYER_FILE + ".new")
        with contextlib.suppress(FileNotFoundError):
            new.unlink()
        await asyncio.to_thread(_copy_sparse, source, new)
        os.replace(new, self.layer_file(instance_id))

    async def set_limits(self, instance_id: str, cpus: int, memory_mib: int) -> None:
        """Its CPU and memory limits now (``runc update``), if it runs; a stopped one gets
        them at its next start (its bundle is written then)."""
        if await self.pid(instance_id) is not None:
            await self.runc.update(instance_id, bundle.resources(cpus, memory_mib))

    async def pid(self, instance_id: str) -> int | None:
        """Its init's pid while it lives, else None."""
        state = await self.runc.state(instance_id)
        if state is None or state.get("status") not in ALIVE:
            return None
        pid = state.get("pid")
        return pid if isinstance(pid, int) and procs.is_alive(pid) else None

    async def stop(self, instance_id: str, timeout: float) -> str:
        """Ask its init to power off, then kill it past ``timeout``: "powerdown" or "killed".
        Its root is taken apart either way."""
        running = self.running.get(instance_id)
        if running is not None:
            running.stopping = True
        init = self._init(instance_id)
        pid = await self.pid(instance_id)
        how = "already stopped"
        if pid is not None:
            await self.runc.kill(instance_id, STOP_SIGNALS.get(init, "KILL"))
            how = "powerdown"
            if not await _ended(pid, timeout):
                await self.runc.kill(instance_id, "KILL")
                how = "killed"
                if not await _ended(pid, 10.0):
                    raise EngineError(f"the container's init (pid {pid}) did not end")
        await self.runc.delete(instance_id)
        await self._take_apart(instance_id)
        return how

    async def exec(
        self, instance_id: str, argv: list[str], stdin: bytes | None, timeout: float
    ) -> ExecResult:
        if await self.pid(instance_id) is None:
            raise InvalidState("the container is not running")
        return await self.runc.exec(instance_id, argv, stdin, timeout)

    async def destroy(self, instance_id: str) -> None:
        """Kill it if it runs, and remove its folder, its own layer included. The folder goes
        only once nothing is mounted in it: a mounted view of the image is never walked."""
        await self._end_now(instance_id)
        self.forget(instance_id)
        await self.runc.delete(instance_id)
        folder = self.folder(instance_id)
        await asyncio.to_thread(container_root.unmount, folder)  # its log goes with it
        for name in (container_root.ROOT, container_root.LOWER, container_root.LAYER):
            if container_root.is_mounted(folder / name):
                raise EngineError(f"{folder / name} is still mounted; the folder is kept")
        await asyncio.to_thread(shutil.rmtree, folder, True)


# What an init inside may write in its own control group: make groups under it (the folder) and
# move its processes (these files). Never its limits (memory.*, cpu.*, pids.max, ...): those
# stay the host's, so a container cannot raise its own.
DELEGATED_FILES = ("cgroup.procs", "tasks", "cgroup.threads", "cgroup.subtree_control")


@functools.cache
def _cgroup_mounts() -> dict[str, Path]:
    """Where each control group hierarchy is mounted ("name=systemd", "memory", ... or "" for
    v2), read once: they do not move while the service runs, and the mount table grows with
    every container's root (read per instance, it held a listing of 100 running containers to
    4.9 a second from 20 clients; read once, 29.2: bench/ec2.py, 1 run each)."""
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, options = [*right.split(), "", "", ""][:3]
        point = Path(left.split()[4])
        if fstype == "cgroup2":
            mounts[""] = point
        elif fstype == "cgroup":
            for option in options.split(","):
                if option not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec"):
                    mounts[option] = point
    return mounts


def cgroup_folders(pid: int) -> list[Path]:
    """The folders of ``pid``'s control groups, one per hierarchy (cgroup v1 and v2), from
    /proc/PID/cgroup and the host's mount table."""
    mounts = _cgroup_mounts()
    folders = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        first = controllers.split(",")[0]
        if first in mounts:
            folders.append(mounts[first] / path.lstrip("/"))
    return folders


# How many groups, and how deep, systemd inside may make under its own (cgroup v2; v1 has no
# such bound).
MAX_DESCENDANTS, MAX_DEPTH = 1024, 16


def delegate_cgroups(pid: int, uid: int, cgroup: str) -> None:
    """Give the container's root its own control group folders (not their limits): systemd as
    its init makes its own groups there, or stops at once. Only folders that are its own group
    (``cgroup``, its cgroupsPath): in a hierarchy runc does not join, /proc lists the group it
    was left in, which is the service's, shared by every tenant."""
    own = cgroup.strip("/")
    for folder in cgroup_folders(pid):
        if not folder.is_dir() or not folder.as_posix().endswith(f"/{own}"):
            continue
        for name, bound in (("cgroup.max.descendants", MAX_DESCENDANTS),
                            ("cgroup.max.depth", MAX_DEPTH)):  # fmt: skip
            if (folder / name).exists():  # v2 only: cgroupfs makes no new files (EPERM)
                (folder / name).write_text(str(bound))
        os.chown(folder, uid, uid)
        for name in DELEGATED_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.chown(folder / name, uid, uid)


def _keep_log(live: Path, kept: Path) -> None:
    """Copy the live console log's last LOG_CAP bytes beside the layer (for `console --log`
    of a stopped container), through a new file: never through a name that is there."""
    data = read_log(live, LOG_CAP)
    new = kept.with_name(kept.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        new.unlink()
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(new, kept)


def _copy_sparse(source: Path, dest: Path) -> None:
    """A copy of a layer that keeps its holes (the unwritten part of its size takes no room)."""
    run(["cp", "--sparse=always", "--no-dereference", str(source), str(dest)], timeout=3600)
    os.chmod(dest, 0o600)


def _write_owned(root: Path, folder: str, name: str, text: str, uid: int) -> None:
    """Write ``root/folder/name`` as the container's root would own it (``folder``: one or
    more names, "/" between them, that must all exist). The container may have made any part
    of that path a link (to the host's /etc, once resolved here): no link is followed, each
    step is opened relative to the one before with O_NOFOLLOW."""
    top = os.open(root, os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        where = os.dup(top)
        for step in folder.split("/"):
            try:
                inner = os.open(step, os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=where)
            finally:
                os.close(where)
            where = inner
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=where)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(name, flags, 0o644, dir_fd=where)
            try:
                os.write(fd, text.encode())
                os.fchown(fd, uid, uid)
            finally:
                os.close(fd)
        finally:
            os.close(where)
    finally:
        os.close(top)


async def _ended(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``pid`` to end (reaped if it is this process's child)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        procs.reap(pid)
        if not procs.is_alive(pid):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
