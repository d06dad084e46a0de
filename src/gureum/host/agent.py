"""``LocalHostAgent``: the ``HostAgent`` (``host/interface.py``) of this machine, in-process.

It drives QEMU (``engine/qemu``), disk files (``storage``), TAPs and namespaces (``network``,
through ``host/network.py``) and projects' control groups (``host/cgroups.py``). Nothing here
knows users, projects' rules or the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import stat
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from gureum.config import Config
from gureum.engine.container.rootfs import LAYER_FILE
from gureum.engine.qemu import accel as accel_probe
from gureum.engine.qemu import memimage, process, serial
from gureum.engine.qemu.agent import ExecResult
from gureum.engine.qemu.argv import RamFiles, RuntimePaths, VMConfig
from gureum.engine.qemu.vm import QemuVM, VMEvents, ended_with_power_down
from gureum.errors import (
    EngineError,
    GureumError,
    InsufficientCapacity,
    InvalidImage,
    InvalidInput,
    InvalidState,
    Unavailable,
)
from gureum.host import permissions, stats
from gureum.host.capacity import HostCapacity, admit, measure
from gureum.host.cgroups import ProjectGroups
from gureum.host.containers import Containers, ContainerStart, cgroup_folders
from gureum.host.interface import Console, Identity, NetworkPlan, ProjectUsage, VMSpec
from gureum.host.network import BRIDGE, NetworkHost
from gureum.host.sealed_ram import SealedRam
from gureum.images.debian import sha256_file
from gureum.model.hardware import UEFI, Hardware
from gureum.model.network import Forward, Network
from gureum.model.sshkeys import public_key
from gureum.network import forward, netns, tap
from gureum.network.metadata import Lookup
from gureum.storage import archive, disks, qcow2
from gureum.sys import procs, streams

log = logging.getLogger(__name__)


# DHCP on the guest's NICs, through the guest's own client: tiny's /etc/gureum/network, else
# dhclient (Debian's ifupdown images, cloud images among them), else dhcpcd. With "renew" (a
# clone, whose MACs changed) every NIC asks again, its old lease forgotten; without, only NICs
# with no IPv4 address yet (a hot-plug). Only physical NICs: not lo, bridges or tunnels. Every
# client goes to the background at once (a lease may take long); one NIC failing does not stop
# the others.
DHCP = r"""
mode=$1 failed=0
if [ -x /etc/gureum/network ]; then exec /etc/gureum/network $mode; fi
# udev renames a new NIC (eth0 -> enp2s0) a moment after it appears: a client started on the
# old name would lose it. settle waits for the kernel's events to be handled.
if command -v udevadm >/dev/null 2>&1; then udevadm settle -t 10 || true; fi
for dev in /sys/class/net/*; do
  ifname=${dev##*/}
  [ -e "$dev/device" ] || continue
  if [ "$mode" != renew ] && [ -n "$(ip -4 -o addr show dev "$ifname" scope global)" ]; then
    continue
  fi
  ip link set dev "$ifname" up
  if command -v dhclient >/dev/null 2>&1; then
    pid=/run/dhclient.$ifname.pid lease=/var/lib/dhcp/dhclient.$ifname.leases
    [ -f "$pid" ] && dhclient -x -pf "$pid" "$ifname" >/dev/null 2>&1
    ip -4 addr flush dev "$ifname" scope global
    rm -f "$lease"
    dhclient -4 -nw -pf "$pid" -lf "$lease" "$ifname" </dev/null >/dev/null 2>&1 || failed=1
  elif command -v dhcpcd >/dev/null 2>&1; then
    dhcpcd -b -n "$ifname" </dev/null >/dev/null 2>&1 || failed=1
  else
    echo "the guest has no DHCP client gureum can start (dhclient, dhcpcd)" >&2
    exit 3
  fi
done
[ "$failed" = 0 ] || echo "a DHCP client did not start" >&2
exit "$failed"
"""

# What a restored or cloned guest is told, in one guest process (each costs tens of ms under
# TCG): the time (its clock stopped when the state was saved), a new machine id, and for a
# clone a new hostname and its NICs' new MACs (each NIC found by its old one), all with shell
# builtins but ``date`` and ``ip``; then, with "renew", DHCP asked again in the background. It
# is ready once the guest has its new names; its network is up when the new lease is (the guest
# says so on its console: ``network_up``). Arguments: seconds since the epoch, machine id,
# hostname (empty: keep it), renew|none, must|try (below), old=new MAC pairs.
#
# First of all the kernel's random generator is reseeded from its input pool, into which the
# agent has just written new entropy: a clone's generator is otherwise the template's, and would
# hand every clone the same "random" bytes until its next timed reseed (up to a minute). The
# Debian kernel has no vmgenid driver to do it, and only the RNDRESEEDCRNG ioctl (0x5207, Linux
# 4.17 and later) does it at once. tiny has a program of its own for that call (images/tiny/
# reseed.c); other guests use perl (essential in Debian) or else python3 (or RHEL's
# platform-python, which runs its cloud-init), which cost tenths of a second to start under
# TCG. "must": the machine was saved from one that others resume too (a template, another
# instance's snapshot), and a guest that cannot be reseeded is refused; "try": its own
# snapshot, a warning only.
NEW_IDENTITY = (
    r"""
now=$1 machine_id=$2 name=$3 dhcp=$4 strict=$5; shift 5
reseed() {
  if [ -x /usr/lib/gureum/reseed ]; then
    /usr/lib/gureum/reseed || { echo "error $?"; return 1; }
    return
  fi
  if command -v perl >/dev/null 2>&1; then
    perl -e 'open(F, "<", "/dev/urandom") && ioctl(F, 0x5207, 0) || die "$!\n"' 2>&1
    return
  fi
  for py in python3 /usr/libexec/platform-python; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" -c '
import fcntl, os, sys
try:
    fcntl.ioctl(os.open("/dev/urandom", os.O_RDONLY), 0x5207)
except OSError as e:
    sys.exit(e.strerror)' 2>&1
    return
  done
  echo "it has neither perl nor python3 to ask with"; return 1
}
if ! why=$(reseed); then
  echo "its kernel did not reseed its random generator (RNDRESEEDCRNG, Linux 4.17+): $why" >&2
  [ "$strict" = must ] && exit 5
fi
date -s "@$now" >/dev/null || echo "cannot set the clock" >&2
login=$(cat /run/gureum-login 2>/dev/null); rm -f /run/gureum-login
echo "$machine_id" > /etc/machine-id || exit 1
if [ -n "$name" ]; then
  echo "$name" > /proc/sys/kernel/hostname || exit 1
  echo "$name" > /etc/hostname
fi
for pair in "$@"; do
  old=${pair%%=*}; new=${pair#*=}
  for dev in /sys/class/net/*; do
    read -r address < "$dev/address"
    if [ "$address" = "$old" ]; then
      ip link set dev "${dev##*/}" address "$new" || exit 2
    fi
  done
done
[ "$dhcp" = renew ] || exit 0
set -- renew
(
"""
    + DHCP
    + """
) </dev/null >/dev/null 2>&1 &
"""
    + r"""
# A template's guest whose cloud-init forgot its instance (SEAL_TEMPLATE): provisioned again
# as the new instance it is, as at a first boot, once it has an address to fetch its data from.
#
# Its SSH server does not wait for that (cloud-init's first stage takes about 20 s under TCG,
# half of it an RSA key): here, with the generator reseeded above, it gets new ed25519 and ECDSA
# host keys, the instance's keys for its default user (/run/gureum-login, written by the agent:
# the user, then one key a line; read above), and starts. cloud-init is told to keep those
# two host keys: ssh_deletekeys: false in its runtime config, /run/cloud-init/cloud.cfg, which
# no reboot keeps (a later clone of this VM's disk makes its own). It makes the RSA key, installs
# the same user keys again with the rest of the instance's data, and the server reloads to offer
# the RSA key too.
if command -v cloud-init >/dev/null 2>&1 && [ -e /var/lib/cloud/gureum-template ]; then
  rm -f /var/lib/cloud/gureum-template
  sshd_unit=ssh.service
  systemctl cat ssh.service >/dev/null 2>&1 || sshd_unit=sshd.service
  if command -v ssh-keygen >/dev/null 2>&1 && [ -d /etc/ssh ] && mkdir -p /run/cloud-init; then
    for kind in ed25519 ecdsa; do
      rm -f "/etc/ssh/ssh_host_${kind}_key" "/etc/ssh/ssh_host_${kind}_key.pub"
      ssh-keygen -q -t "$kind" -N "" -f "/etc/ssh/ssh_host_${kind}_key" </dev/null || exit 4
    done
    printf '\nssh_deletekeys: false\n' >> /run/cloud-init/cloud.cfg
    if [ -n "$login" ]; then
      printf '%s\n' "$login" | {
        IFS= read -r user
        home=$(getent passwd "$user" | cut -d: -f6)
        if [ -n "$home" ] && [ -d "$home" ] \
            && install -d -m 700 -o "$user" -g "$(id -gn "$user")" "$home/.ssh"; then
          while IFS= read -r line; do printf '%s\n' "$line"; done >> "$home/.ssh/authorized_keys"
          chown "$user:" "$home/.ssh/authorized_keys" && chmod 600 "$home/.ssh/authorized_keys"
        else
          echo "the instance's SSH keys wait for cloud-init: no home for $user" >&2
        fi
      }
    fi
    systemctl start --no-block "$sshd_unit"
  fi
  reprovision='
    for i in $(seq 600); do
      [ -n "$(ip -4 -o addr show scope global)" ] && break
      sleep 0.1
    done
    cloud-init init
    systemctl reload-or-restart '"$sshd_unit"'
    cloud-init modules --mode config
    cloud-init modules --mode final'
  if command -v systemd-run >/dev/null 2>&1; then
    systemd-run --no-block --unit "gureum-reprovision-$$" sh -c "$reprovision" >/dev/null 2>&1 \
      || echo "cloud-init could not be started again" >&2
  else
    (sh -c "$reprovision") </dev/null >/var/log/gureum-reprovision.log 2>&1 &
  fi
fi
exit 0
"""
)

# Before a guest provisioned by cloud-init is saved as a template: cloud-init done, then told
# to forget this instance (a clone runs it again as its own, NEW_IDENTITY), and no SSH host key
# left for any clone to hold (each clone's cloud-init makes its own). A guest without cloud-init
# has nothing to do.
SEAL_TEMPLATE = r"""
command -v cloud-init >/dev/null 2>&1 || exit 0
cloud-init status --wait >/dev/null
systemctl stop ssh.socket ssh.service 2>/dev/null
rm -f /etc/ssh/ssh_host_*
cloud-init clean --logs || exit 1
mkdir -p /var/lib/cloud && : > /var/lib/cloud/gureum-template
sync
"""
# How long a template's cloud-init may take to finish (TCG: about a minute).
SEAL_TIMEOUT_S = 900.0


SSH_HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
# How long a waiting QEMU's guest may take to answer while it is warmed (``_warm``).
WARM_TIMEOUT_S = 60.0


def _publish(image_file: Path, images: Path) -> None:
    """An image's file readable by every VM's user, and its folders up to ``images`` crossable:
    images are shared, read-only, by every VM made from them."""
    for path in (image_file, *list(image_file.parents)):
        if path == images.parent:
            break
        permissions.public(path)


def _grant_private(path: Path, uid: int, home: Path) -> None:
    """A root-owned file that one VM's user may read, and no one else; its folders below the
    home crossable (0711), never listable."""
    home = home.resolve()
    permissions.crossable(*[p for p in path.resolve().parents if home in p.parents])
    permissions.root_only(path)
    permissions.grant_read([path], uid)


def _receive_file(inp: BinaryIO, dest: Path, limit: int, keep_free: int) -> None:
    """Copy a body to ``dest``: at most ``limit`` bytes, and never past ``keep_free`` bytes
    free where it is written (the host's reserve)."""
    written = 0
    room = archive.Room(dest.parent, keep_free, "this image file")
    with open(dest, "xb") as out:
        while chunk := inp.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise InvalidImage(f"the image file is over {limit >> 20} MiB: refused")
            room.check(len(chunk))
            out.write(chunk)


def _remove_image_folder(folder: Path) -> None:
    """An image version's folder, and the image's own if it held only this one."""
    _remove(folder)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()


async def _drop_image_folder(folder: Path) -> None:
    await asyncio.to_thread(_remove_image_folder, folder)


class LocalHostAgent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._vms: dict[str, QemuVM] = {}
        # When each VM's guest last told its memory, and what (host/stats.py, metrics).
        self._guest_seen: dict[str, tuple[float, int | None, int | None]] = {}
        self._waiting: dict[str, QemuVM] = {}  # QEMUs of VMs to come (``start_waiting``)
        self._claimed: set[str] = set()  # of those, the ones ``claim_waiting`` readied
        self.accel = accel_probe.choose(config.accel)
        self.network = NetworkHost(config)
        self.cgroups = ProjectGroups(f"gureum-{netns.home_tag(config.home)}")
        self.sealed_ram = SealedRam()
        self.containers = Containers(config)

    # -- the host --------------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.config
        for folder in (
            cfg.home, cfg.run_dir, cfg.instances_dir, cfg.images_dir, cfg.cache_dir,
            cfg.disks_dir, cfg.snapshots_dir, cfg.project_images_dir,
        ):  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
        # The home and the folders VMs' files are in are 0711 (crossable, not listable: each
        # QEMU runs as its own user and opens its own files by path); all else is 0600/0700.
        permissions.crossable(
            cfg.home, cfg.run_dir, cfg.disks_dir, cfg.snapshots_dir, cfg.instances_dir,
            cfg.project_images_dir,
        )  # fmt: skip
        os.chmod(cfg.cache_dir, 0o700)

    def first_start_since_boot(self) -> bool:
        marker = BOOT_MARKERS / f"{netns.home_tag(self.config.home)}.started"
        try:
            marker.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:  # cannot tell: better to start nothing than to start twice
            log.warning("cannot tell whether the host booted since the last start: %s", exc)
            return False
        os.close(fd)
        return True

    def admit(self, used_cpus: int, used_mib: int, cpus: int, memory_mib: int) -> None:
        admit(self.capacity(), used_cpus, used_mib, cpus, memory_mib)

    def runtime(self, instance_id: str) -> RuntimePaths:
        return RuntimePaths(self.config.run_dir / instance_id)

    def path(self, relative: str) -> Path:
        """A path stored relative to the home (layers, snapshots)."""
        return self.config.home / relative

    # -- projects' control groups --------------------------------------------------------------
    async def limit_project(self, project_id: str, cores: float | None, memory: int | None) -> None:
        """Make the project's control group and set its CPU and memory limits."""
        await asyncio.to_thread(self.cgroups.ensure, project_id, cores, memory)

    def forget_project(self, project_id: str) -> None:
        self.cgroups.remove(project_id)

    def project_usage(self, project_id: str) -> ProjectUsage:
        measured = self.cgroups.usage(project_id)
        group = f"{self.cgroups.name}/{project_id}" if self.cgroups.available() else None
        if measured is None:
            return ProjectUsage(None, None, group)
        return ProjectUsage(measured.cpu_seconds, measured.memory_bytes, group)

    def tidy_projects(self) -> None:
        """Remove control groups no process uses any more."""
        self.cgroups.remove_idle()

    # -- capacity --------------------------------------------------------------------------------
    def capacity(self) -> HostCapacity:
        return measure(self.config.memory_reserve_mib, self.config.cpu_overcommit)

    # -- disks -----------------------------------------------------------------------------------
    async def create_disk(self, path: Path, backing: Path, size_bytes: int) -> None:
        """A new qcow2 layer on ``backing`` (thin: nothing is copied)."""
        await disks.create_overlay(backing, path, size_bytes)

    async def grow_disk_offline(self, path: Path, size_bytes: int) -> None:
        await disks.grow(path, size_bytes)

    async def flatten_disk(self, chain: tuple[Path, ...], dest: Path) -> None:
        await disks.flatten(chain, dest)

    async def check_image(self, path: Path, size_bytes: int, what: str) -> None:
        """Refuse (InvalidImage) a qcow2 handed in from outside unless it is standalone and of
        ``size_bytes``: nothing is created, and no file its header names is opened."""
        await disks.check_standalone(path, size_bytes=size_bytes, what=what)

    async def take_disk(self, src: Path, dest: Path, size_bytes: int, what: str) -> None:
        """A qcow2 handed in from outside as a standalone layer of gureum's own, after checking
        its header names no other file (``storage/qcow2.py``); InvalidImage if it does, and
        InsufficientCapacity if its data would eat into the host's reserve."""
        await disks.take_standalone(src, dest, size_bytes=size_bytes, what=what, room=self._room())

    async def import_image(
        self,
        body: AsyncIterator[bytes],
        folder: Path,
        *,
        max_bytes: int,
        idle_timeout: float,
        min_bytes: int,
    ) -> dict[str, Any]:
        """A disk image file from a request body, as an image folder's ``disk.qcow2``: received
        into scratch (bounded, leaving the host's reserve free), checked and rewritten as
        gureum's own qcow2 (``disks.take_image_file``). Returns its format, virtual size, the
        firmware that boots it and file facts; on any failure nothing of it is left."""
        scratch = self.new_scratch()
        upload = scratch / "upload"
        # A qcow2 file is a little larger than the disk it describes (its tables).
        limit = max_bytes + max_bytes // 8 + (64 << 20)
        keep_free = self.disk_reserve_bytes()
        try:
            await streams.consume_in_thread(
                body, lambda inp: _receive_file(inp, upload, limit, keep_free),
                name="image-import", idle_timeout=idle_timeout, min_bytes=min_bytes,
            )  # fmt: skip
            folder.mkdir(parents=True)
            dest = folder / "disk.qcow2"
            fmt, size, firmware = await disks.take_image_file(
                upload, dest, max_bytes=max_bytes, room=self._room()
            )
            digest = await asyncio.to_thread(sha256_file, dest)
            return {
                "format": fmt,
                "virtual_bytes": size,
                "firmware": firmware,
                "file": {"file": dest.name, "bytes": dest.stat().st_size, "sha256": digest},
            }
        except BaseException:
            await _drop_image_folder(folder)
            raise
        finally:
            self.remove_scratch(scratch)

    async def capture_image(
        self, chain: tuple[Path, ...], boot: tuple[Path, Path] | None, folder: Path
    ) -> dict[str, dict[str, object]]:
        # The flattened disk holds at most the data of every layer of the chain.
        need = sum(self.disk_bytes(p) for p in chain) + sum(p.stat().st_size for p in boot or ())
        if need > self._room():
            raise InsufficientCapacity(
                f"an image of this disk may take {need / 2**30:.2f} GiB and the host has "
                f"{max(0, self._room()) / 2**30:.2f} GiB free above its reserve"
            )
        folder.mkdir(parents=True)
        permissions.crossable(folder.parent, folder)  # the project's VMs open files by name
        try:
            files = {"disk": folder / "disk.qcow2"}
            await disks.flatten(chain, files["disk"])
            if boot is not None:
                files["kernel"], files["initrd"] = folder / "vmlinuz", folder / "initrd.img"
                for src, dest in zip(boot, (files["kernel"], files["initrd"]), strict=True):
                    await asyncio.to_thread(shutil.copyfile, src, dest)
            facts: dict[str, dict[str, object]] = {}
            for role, path in files.items():
                permissions.root_only(path)  # until a VM of the project is given read on it
                digest = await asyncio.to_thread(sha256_file, path)
                facts[role] = {"file": path.name, "bytes": path.stat().st_size, "sha256": digest}
            return facts
        except BaseException:
            await _drop_image_folder(folder)
            raise

    def remove_image(self, folder: Path) -> None:
        """An image version's folder (an import's, when its catalog entry could not be made)."""
        tops = {self.config.images_dir.resolve(), self.config.project_images_dir.resolve()}
        if folder.resolve().parent.parent in tops:
            _remove_image_folder(folder)

    # -- boot files ------------------------------------------------------------------------------
    def own_boot_files(self, instance_id: str) -> Path | None:
        own = self.config.instances_dir / instance_id
        return own if (own / "vmlinuz").exists() else None

    async def share_boot_files(self, source_id: str, instance_id: str) -> None:
        source = self.own_boot_files(source_id)
        if source is None:
            raise EngineError(f"instance {source_id} has no boot files of its own")
        own = self.config.instances_dir / instance_id
        own.mkdir(parents=True)
        for boot_file in BOOT_FILES:
            await asyncio.to_thread(os.link, source / boot_file, own / boot_file)

    async def take_boot_files(self, scratch: Path, instance_id: str) -> None:
        own = self.config.instances_dir / instance_id
        own.mkdir(parents=True)
        for boot_file in BOOT_FILES:
            await asyncio.to_thread(shutil.move, scratch / boot_file, own / boot_file)

    def new_scratch(self) -> Path:
        path = self.config.home / "scratch" / secrets.token_hex(8)
        path.mkdir(parents=True, mode=0o700)
        return path

    def remove_scratch(self, path: Path) -> None:
        if path.parent == self.config.home / "scratch":  # never anything else
            _remove(path)

    # -- backup archives -------------------------------------------------------------------------
    def write_archive(self, files: dict[str, Path], config: dict[str, Any]) -> AsyncIterator[bytes]:
        return streams.produce_in_thread(
            lambda out: archive.write(out, files, config), name="backup-export"
        )

    async def read_archive(
        self, body: AsyncIterator[bytes], dest: Path, *, idle_timeout: float, min_bytes: int
    ) -> dict[str, Any]:
        keep_free = self.disk_reserve_bytes()
        return await streams.consume_in_thread(
            body, lambda inp: archive.read(inp, dest, keep_free=keep_free),
            name="backup-import", idle_timeout=idle_timeout, min_bytes=min_bytes,
        )  # fmt: skip

    # -- memory images ---------------------------------------------------------------------------
    def _snapshot_folder(self, snapshot_id: str) -> Path:
        return self.config.snapshots_dir / snapshot_id

    async def take_memory(
        self, scratch: Path, snapshot_id: str, backends: list[tuple[str, int]]
    ) -> None:
        """RAM images handed in as qcow2 (``memory/ram-<backend>.qcow2``), checked like disks
        and written out raw, beside the device state."""
        folder = self._snapshot_folder(snapshot_id)
        folder.mkdir()
        await asyncio.to_thread(shutil.move, scratch / "memory" / "state", folder / "state")
        for backend, mib in backends:
            member = f"memory/ram-{backend}.qcow2"
            await disks.take_raw(scratch / member, folder / f"ram-{backend}",
                                 size_bytes=mib << 20, what=member, room=self._room())  # fmt: skip

    async def export_memory(
        self, snapshot_id: str, backends: list[tuple[str, int]], scratch: Path
    ) -> dict[str, Path]:
        folder = self._snapshot_folder(snapshot_id)
        await asyncio.to_thread(os.link, folder / "state", scratch / "state")
        files = {"memory/state": scratch / "state"}
        for backend, _mib in backends:
            # RAM files are mostly holes; qcow2 keeps only the written clusters.
            dest = scratch / f"ram-{backend}.qcow2"
            await disks.compress_raw(folder / f"ram-{backend}", dest)
            files[f"memory/ram-{backend}.qcow2"] = dest
        return files

    def snapshot_bytes(self, snapshot_id: str) -> int:
        folder = self._snapshot_folder(snapshot_id)
        return sum(f.lstat().st_blocks * 512 for f in folder.glob("*")) if folder.is_dir() else 0

    async def snapshot_container(self, instance_id: str, snapshot_id: str) -> str:
        folder = self._snapshot_folder(snapshot_id)
        folder.mkdir(mode=0o700)
        try:
            return await self.containers.copy_layer(instance_id, folder / LAYER_FILE)
        except BaseException:
            await self.remove_file(folder)
            raise

    async def restore_container(self, instance_id: str, snapshot_id: str) -> None:
        layer = self._snapshot_folder(snapshot_id) / LAYER_FILE
        if not layer.is_file():
            raise EngineError(f"snapshot {snapshot_id} has no copy of a container's layer")
        await self.containers.put_layer(instance_id, layer)

    async def limit_container(self, instance_id: str, cpus: int, memory_mib: int) -> None:
        await self.containers.set_limits(instance_id, cpus, memory_mib)

    async def remove_snapshot(self, snapshot_id: str) -> None:
        self.sealed_ram.forget(self._snapshot_folder(snapshot_id))
        await self.remove_file(self._snapshot_folder(snapshot_id))

    def names_backing_file(self, path: Path) -> bool:
        """Whether a layer's own header names a file under it (read once, for migration 6)."""
        return path.exists() and qcow2.names_backing(path)

    async def revoke_access(self, uid: int, paths: list[Path]) -> None:
        """A deleted VM's user loses the read grants it had on layers others still use."""
        await asyncio.to_thread(permissions.revoke, paths, uid)

    async def remove_file(self, path: Path) -> None:
        await asyncio.to_thread(_remove, path)

    def disk_bytes(self, path: Path) -> int:
        return disks.allocated_bytes(path) if path.exists() else 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def _open_taps(
        self, instance_id: str, hardware: Hardware, *, attach: bool = True, tag: str = ""
    ) -> tuple[tuple[int, int], ...]:
        """One TAP per NIC, in its network's namespace; the caller closes the fds once QEMU
        has them. ``attach=False``: left off the bridge (a helper QEMU that never runs)."""
        fds: list[tuple[int, int]] = []
        try:
            for slot, _mac, network_id in hardware.nics:
                name = tap.tap_name(instance_id, slot) if not tag else f"h{tag}{slot}"
                bridge = BRIDGE if attach else None
                namespace = self.network.namespace(network_id)
                fds.append((slot, await tap.open_tap(namespace, name, bridge)))
        except BaseException:
            _close_fds(fds)
            raise
        return tuple(fds)

    def _vm_config(
        self, spec: VMSpec, ram: RamFiles | None = None, *, named: bool = True
    ) -> VMConfig:
        return VMConfig(
            name=spec.name,
            hardware=spec.hardware,
            accel=self.accel.accel,
            kernel=spec.kernel,
            initrd=spec.initrd,
            disk_chain=spec.disk_chain,
            runtime=self.runtime(spec.instance_id),
            hostname=spec.name if named else "",
            qemu_binary=self.config.qemu_binary,
            ovmf=self.config.ovmf_firmware,
            tcg_tb_size_mib=self.config.tcg_tb_size_mib,
            ram=ram,
            incoming=ram is not None,
            uid=spec.uid,
        )

    async def start(
        self,
        spec: VMSpec,
        events: VMEvents,
        restore_from: str | None = None,
        keep_memory: bool = False,
    ) -> int:
        """Spawn the VM's QEMU: a cold boot, or with ``restore_from`` (a snapshot id) a resume
        of its saved memory, as a sealed copy (kept for the next ones with ``keep_memory``).
        Returns the pid; readiness: ``wait_ready``."""
        if spec.kind == "container":
            if restore_from is not None:
                raise InvalidInput("a container has no memory image to resume")
            return await self._start_container(spec, events)
        if spec.instance_id in self._vms and not self._vms[spec.instance_id].exited:
            raise InvalidState(f"{spec.name} already has a running QEMU")
        folder = self._snapshot_folder(restore_from) if restore_from else None
        return await self._start(spec, events, folder, keep_memory)

    async def _start(
        self, spec: VMSpec, events: VMEvents, restore_from: Path | None, keep: bool = False
    ) -> int:
        waiting = self._waiting.get(spec.instance_id)
        if waiting is not None and restore_from is not None and not waiting.exited:
            del self._waiting[spec.instance_id]
            return await self._take_waiting(waiting, spec, events, restore_from)
        if waiting is not None:
            # It died, or this start is not its restore (the first one failed; a cold start
            # after it): a QEMU of its own starts instead.
            self._waiting[spec.instance_id] = waiting
            await self.discard_waiting(spec.instance_id)
        ovmf = Path(self.config.ovmf_firmware)
        if spec.kernel is None and spec.hardware.firmware == UEFI and not ovmf.is_file():
            raise Unavailable(
                f"{spec.name} boots through UEFI and this host has no UEFI firmware at {ovmf} "
                "(install Debian's ovmf package, or set ovmf_firmware)"
            )
        await asyncio.to_thread(self._prepare_files, spec, restore_from)
        ram = None
        if restore_from is not None:
            ram_fds = await asyncio.to_thread(
                self.sealed_ram.take, restore_from, spec.instance_id, pin=keep
            )
            ram = RamFiles(restore_from, share=False, fds=tuple(ram_fds.items()))
        try:
            taps = await self._open_taps(spec.instance_id, spec.hardware)
        except BaseException:
            self.sealed_ram.drop(spec.instance_id)
            raise
        cfg = replace(self._vm_config(spec, ram), taps=taps)
        vm = QemuVM(cfg, events)
        self._vms[spec.instance_id] = vm
        try:
            await vm.start(restore_state=restore_from / "state" if restore_from else None)
        except BaseException:
            self._vms.pop(spec.instance_id, None)
            self.sealed_ram.drop(spec.instance_id)
            raise
        finally:
            _close_fds(taps)  # QEMU holds its own copies; each TAP lives as long as QEMU
        assert vm.pid is not None
        self._join_project(spec.project_id, vm.pid)
        return vm.pid

    async def _start_container(self, spec: VMSpec, events: VMEvents) -> int:
        """A system container (``host/containers.py``) from the image's files, in its own
        control group under its project's, its NICs on their networks' bridges."""
        if spec.uid is None:
            raise EngineError("a container needs a range of uids of its own")
        if spec.instance_id in self.containers.running:
            if not self.containers.running[spec.instance_id].exited:
                raise InvalidState(f"{spec.name} is already running")
            self.containers.forget(spec.instance_id)
        hw = spec.hardware
        want = ContainerStart(
            instance_id=spec.instance_id,
            hostname=spec.name,
            image_disk=spec.disk_chain[-1],
            uid_base=spec.uid,
            cpus=hw.cpus,
            memory_mib=hw.memory_mib,
            cgroup=f"/{self.cgroups.name}/{spec.project_id}/{spec.instance_id}",
            layer_bytes=spec.layer_bytes,
            nics=tuple(
                (slot, mac, self.network.namespace(network_id)) for slot, mac, network_id in hw.nics
            ),
        )
        return await self.containers.start(want, events)

    # -- QEMUs waiting for a VM (the pool) -------------------------------------------------------
    def _pool_namespace(self) -> str:
        # Not named like a network's namespace: the reconciler would take it for a lost one.
        return f"gureum-pool-{netns.home_tag(self.config.home)}"

    async def start_waiting(
        self, spec: VMSpec, restore_from: str, macs: list[tuple[str, str]], events: VMEvents
    ) -> int:
        """Start the QEMU of a VM to come, so that its launch skips QEMU's own start-up and the
        state's loading: ``spec`` is all of it but its name and networks (the NICs' network
        ids are not used). It waits paused, with snapshot ``restore_from``'s state loaded and
        its RAM mapped (the snapshot's sealed copy, pinned), its disk and runtime folder open,
        its TAPs down in the pool's namespace, on no network, and its guest warmed (``_warm``,
        which sets its NICs' ``macs``: the saved machine's, QEMU's). ``start`` with the same
        instance id takes it; ``discard_waiting`` ends it. Returns the pid."""
        folder = self._snapshot_folder(restore_from)
        vm: QemuVM | None = None
        fds: list[tuple[int, int]] = []
        try:
            await asyncio.to_thread(self._prepare_files, spec, folder)
            namespace = self._pool_namespace()
            await netns.create(namespace)
            ram_fds = await asyncio.to_thread(
                self.sealed_ram.take, folder, spec.instance_id, pin=True
            )
            ram = RamFiles(folder, share=False, fds=tuple(ram_fds.items()))
            for slot, _mac, _network in spec.hardware.nics:
                name = tap.tap_name(spec.instance_id, slot)
                fds.append((slot, await tap.open_tap(namespace, name, None)))
            cfg = replace(self._vm_config(spec, ram, named=False), taps=tuple(fds))
            vm = QemuVM(cfg, events)
            await vm.spawn()
            # Loaded now, not when taken; its TAPs are on no network (QEMU's post-load
            # announcements go nowhere).
            await vm.load(folder / "state")
            await self._warm(vm, macs)
        except BaseException:
            if vm is not None:
                await vm.kill()
            self.sealed_ram.drop(spec.instance_id)
            if spec.uid is not None:  # the grants _prepare_files made for it
                await self.revoke_access(spec.uid, list(spec.disk_chain[1:]))
            raise
        finally:
            _close_fds(fds)
        self._waiting[spec.instance_id] = vm
        assert vm.pid is not None
        return vm.pid

    async def _warm(self, vm: QemuVM, macs: list[tuple[str, str]]) -> None:
        """Run, once, what a launch will run in the guest, then pause it again: under TCG the
        first run of any guest code is translated first, and a QEMU's translations start empty,
        so the launch that takes this QEMU would pay for them on its way to ready. The guest
        gets its NICs' MACs (``macs``: old, new), with no DHCP, on no network, before any
        tenant has it; the launch then tells it everything anew."""
        await vm.run()
        await vm.wait_ready(WARM_TIMEOUT_S)
        await vm.agent.write_file("/dev/urandom", secrets.token_bytes(64))
        await _tell(vm, uuid.uuid4().hex, "", False, macs, False)
        await vm.pause()

    async def claim_waiting(self, spec: VMSpec, events: VMEvents) -> None:
        """The first half of taking the QEMU the pool started for ``spec``, done while the
        service readies the VM's networks: its engine events are the VM's now, its TAPs move
        into their networks' namespaces (down and on no bridge: nothing passes until ``start``
        attaches them, after the firewall knows them; a move costs tens of ms, in the kernel)
        and its process joins its project's control group. Nothing for a VM with no QEMU
        waiting, or one claimed already."""
        vm = self._waiting.get(spec.instance_id)
        if vm is None or vm.exited or spec.instance_id in self._claimed:
            return  # (one that exited: start gives the VM a QEMU of its own)
        events.on_boot_event("taken_from_pool", time.time())
        vm.events = events
        assert vm.pid is not None
        pool, pid = self._pool_namespace(), vm.pid
        await asyncio.gather(
            asyncio.to_thread(self._join_project, spec.project_id, pid),
            *(
                tap.move_tap(
                    pool, self.network.namespace(network), tap.tap_name(spec.instance_id, slot)
                )
                for slot, _mac, network in spec.hardware.nics
            ),
        )
        self._claimed.add(spec.instance_id)

    async def _take_waiting(
        self, vm: QemuVM, spec: VMSpec, events: VMEvents, restore_from: Path
    ) -> int:
        """A waiting QEMU becomes ``spec``'s (``claim_waiting``, if the caller did not), its
        TAPs join their bridges, and its guest runs: its state was loaded and it was warmed
        while it waited."""
        self._vms[spec.instance_id] = vm
        try:
            if vm.exited:
                raise EngineError(f"the QEMU waiting for {spec.name} has exited")
            self._waiting[spec.instance_id] = vm  # for claim_waiting
            await self.claim_waiting(spec, events)
            self._waiting.pop(spec.instance_id, None)
            for slot, _mac, network_id in spec.hardware.nics:
                await tap.attach(
                    self.network.namespace(network_id), tap.tap_name(spec.instance_id, slot), BRIDGE
                )
            await vm.run()
        except BaseException:
            self._waiting.pop(spec.instance_id, None)
            await vm.kill()
            self._vms.pop(spec.instance_id, None)
            self.sealed_ram.drop(spec.instance_id)
            raise
        finally:
            self._claimed.discard(spec.instance_id)
        assert vm.pid is not None
        return vm.pid

    async def discard_waiting(self, instance_id: str) -> None:
        """End a waiting QEMU nobody took, and its runtime folder (its disk is the caller's)."""
        vm = self._waiting.pop(instance_id, None)
        self._claimed.discard(instance_id)
        if vm is not None:
            await vm.kill()
            if vm.cfg.uid is not None:
                # Its user's read grants on the template's layers were made for it alone; left,
                # they would pile up on those files (ext4 holds a few hundred ACL entries).
                await self.revoke_access(vm.cfg.uid, list(vm.cfg.disk_chain[1:]))
        self.sealed_ram.drop(instance_id)
        await asyncio.to_thread(shutil.rmtree, self.runtime(instance_id).dir, True)

    async def close_pool(self) -> None:
        """Every waiting QEMU ended, and the pool's namespace removed (service stop)."""
        for instance_id in list(self._waiting):
            await self.discard_waiting(instance_id)
        await netns.delete(self._pool_namespace())

    def _prepare_files(self, spec: VMSpec, restore_from: Path | None) -> None:
        """Give the VM's user exactly what its QEMU must open (``host/permissions.py``)."""
        uid = spec.uid
        if uid is None:
            return
        cfg = self.config
        permissions.crossable(cfg.home, cfg.disks_dir, cfg.snapshots_dir, cfg.run_dir)
        rt = self.runtime(spec.instance_id).dir
        rt.mkdir(parents=True, exist_ok=True)
        permissions.own(rt, uid, 0o700)
        for entry in rt.iterdir():
            # The folder is the VM's: never follow a link a compromised QEMU left there.
            st = entry.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:  # not a second name of another
                os.chown(entry, uid, uid, follow_symlinks=False)
        permissions.own(spec.root_disk, uid)
        images = cfg.images_dir.resolve()
        for shared in (spec.kernel, spec.initrd, *spec.disk_chain[1:]):
            if shared is None:  # the firmware boots the disk
                continue
            if images in shared.resolve().parents:
                _publish(shared, images)  # the catalog's (its folders too: an import's are new)
            else:
                # A layer under the VM's top, an imported machine's own boot files, a project's
                # image: root's, read by the users of the VMs that use them alone.
                _grant_private(shared, uid, cfg.home)
        if restore_from is not None:
            # QEMU gets sealed copies of the RAM files (``host/sealed_ram.py``) and the state
            # as an fd: the saved files are root's alone.
            for ram in sorted(restore_from.glob("ram-*")):
                permissions.root_only(ram)

    def _join_project(self, project_id: str, pid: int) -> None:
        """The QEMU counts against its project's CPU and memory limits from now on."""
        try:
            self.cgroups.add(project_id, pid)
        except OSError as exc:
            log.warning("cannot put pid %s in project %s's control group: %s", pid, project_id, exc)

    async def wait_ready(self, instance_id: str, timeout: float) -> None:
        if self.containers.owns(instance_id):
            await self.containers.wait_ready(instance_id, timeout)
            return
        await self._vm(instance_id).wait_ready(timeout)

    def find_running(self, instance_id: str) -> int | None:
        """The pid of this VM's QEMU (or container's init) if one is alive (after a service
        restart, say)."""
        if self.containers.owns(instance_id):
            return self.containers.find_running(instance_id)
        rt = self.runtime(instance_id)
        pid = procs.read_pidfile(rt.pidfile)
        if pid is not None and process.owns(pid, str(rt.qmp)):
            return pid
        return None

    def died_cleanly(self, instance_id: str) -> bool:
        if self.containers.owns(instance_id):
            return False  # its init's end was not seen: it cannot be told from a crash
        return ended_with_power_down(self.runtime(instance_id).serial_log)

    async def adopt(self, spec: VMSpec, pid: int, events: VMEvents, *, booted: bool) -> Path:
        """Take over a live QEMU; returns the file its disk really writes to (the truth). A
        container is watched again; its "disk" is its image's."""
        if spec.kind == "container":
            await self.containers.adopt(spec.instance_id, pid, events, booted=booted)
            return spec.disk_chain[-1]
        vm = QemuVM(self._vm_config(spec), events)
        await vm.adopt(pid, booted=booted)
        self._vms[spec.instance_id] = vm
        self._join_project(spec.project_id, pid)
        # A snapshot may have been under way when the service went down: the VM must not stay
        # paused, nor its filesystems frozen.
        status = await vm.status()
        if status in ("paused", "postmigrate", "finish-migrate"):
            await vm.resume()
        elif status == "io-error":  # paused by QEMU while the service was down
            events.on_paused("disk I/O error while the service was down")
        if booted:
            await self.thaw_if_frozen(spec.instance_id)
        return Path((await vm.disk_top())[1])

    async def thaw_if_frozen(self, instance_id: str) -> None:
        """A freeze whose thaw never arrived (the service went down, or the guest was paused
        mid-snapshot by a full disk) must not leave the guest's filesystems frozen."""
        agent = self._vm(instance_id).agent
        with contextlib.suppress(GureumError):
            if await agent.call("guest-fsfreeze-status", timeout=2) == "frozen":
                await agent.call("guest-fsfreeze-thaw", timeout=10)

    async def stop(self, instance_id: str, timeout: float) -> str:
        if self.containers.owns(instance_id):
            return await self.containers.stop(instance_id, timeout)
        return await self._vm(instance_id).stop(timeout)

    async def kill(self, instance_id: str) -> None:
        if self.containers.owns(instance_id):
            await self.containers.kill(instance_id)
            return
        vm = self._vms.get(instance_id)
        if vm is not None:
            await vm.kill()
        else:
            pid = self.find_running(instance_id)
            if pid is not None:
                procs.kill(pid)

    def forget(self, instance_id: str) -> None:
        self.containers.forget(instance_id)
        self._vms.pop(instance_id, None)
        self._guest_seen.pop(instance_id, None)
        self.sealed_ram.drop(instance_id)

    async def destroy(self, instance_id: str) -> None:
        """Remove the VM's runtime folder. Its QEMU must be gone; its disk layers are the
        service's to collect (a clone may still build on them)."""
        if self.containers.owns(instance_id):
            await self.containers.destroy(instance_id)  # unmounted first, or it stays
        await self.kill(instance_id)
        self.forget(instance_id)
        await self.discard_waiting(instance_id)  # a pool's QEMU made for it and never run
        await asyncio.to_thread(shutil.rmtree, self.config.instances_dir / instance_id, True)

    async def check_alive(self) -> None:
        """Reconciler safety net: fire exit events that were somehow missed, and restart a
        network's dnsmasq that died."""
        for vm in list(self._vms.values()):
            vm.check_alive()
        await self.network.supervise()

    # -- snapshots -------------------------------------------------------------------------------
    async def freeze(self, instance_id: str) -> bool:
        """Quiesce the guest's filesystems through its agent; False when it cannot."""
        try:
            await self._vm(instance_id).agent.call("guest-fsfreeze-freeze", timeout=10)
        except GureumError as exc:
            log.info("no fsfreeze for %s: %s", instance_id, exc.message)
            return False
        return True

    async def thaw(self, instance_id: str) -> None:
        await self._vm(instance_id).agent.call("guest-fsfreeze-thaw", timeout=30)

    async def pause(self, instance_id: str) -> None:
        await self._vm(instance_id).pause()

    async def resume(self, instance_id: str) -> None:
        await self._vm(instance_id).resume()

    def free_disk_bytes(self) -> int:
        """Room left for disk layers (where VMs write)."""
        st = os.statvfs(self.config.disks_dir)
        return st.f_bavail * st.f_frsize

    def _room(self) -> int:
        """What an image taken in from outside may use: the free space above the reserve."""
        return self.free_disk_bytes() - self.disk_reserve_bytes()

    def disk_reserve_bytes(self) -> int:
        """What tenants' uploads and imports must leave free on the host's disk, so that they
        can never fill it for everyone (running VMs, the store): 5 %, at least 1 GiB."""
        st = os.statvfs(self.config.home)
        return max(1 << 30, st.f_blocks * st.f_frsize // 20)

    async def snapshot_disk_live(self, instance_id: str, new_top: Path) -> None:
        """Freeze the running VM's top layer under a new, empty one that is its own."""
        vm = self._vm(instance_id)
        # The top as the store gave it to QEMU, not as QEMU reports it (a compromised QEMU
        # could name any file for root to re-permission below).
        top_path = vm.cfg.disk_chain[0]
        await disks.create_on(top_path, new_top, disks.virtual_size(top_path))
        uid = vm.cfg.uid
        if uid is not None:
            await asyncio.to_thread(permissions.own, new_top, uid)
        await vm.snapshot_disk(new_top, f"layer-{new_top.stem}")
        vm.cfg = replace(vm.cfg, disk_chain=(new_top, *vm.cfg.disk_chain))
        if uid is not None:  # frozen now: the VM may read it, never write it again
            await asyncio.to_thread(permissions.root_only, top_path)
            await asyncio.to_thread(permissions.grant_read, [top_path], uid)

    async def save_memory(
        self, instance_id: str, frozen_chain: tuple[Path, ...], snapshot_id: str
    ) -> None:
        """Save the paused VM's memory and device state as a memory image (``ram-*`` files and
        ``state``) that restores without copying, written aside and renamed into place once
        whole. ``frozen_chain``: the disk as it was at that moment, top first (the helper QEMU
        opens it read-only)."""
        folder = self._snapshot_folder(snapshot_id)
        partial = folder.with_name(folder.name + ".partial")
        try:
            await self._save_memory(instance_id, frozen_chain, partial)
        except BaseException:
            await self.remove_file(partial)
            raise
        partial.rename(folder)

    async def _save_memory(
        self, instance_id: str, frozen_chain: tuple[Path, ...], folder: Path
    ) -> None:
        vm = self._vm(instance_id)
        folder.mkdir(parents=True, exist_ok=True)
        stream = folder / "stream.tmp"
        taps: tuple[tuple[int, int], ...] = ()
        try:
            await vm.save_state(stream)
            # The helper needs the same NICs (TAP backends), never attached to anything.
            taps = await self._open_taps(
                instance_id, vm.cfg.hardware, attach=False, tag=secrets.token_hex(3)
            )
            source = replace(vm.cfg, disk_chain=frozen_chain, taps=taps)
            await memimage.make(source, stream, folder)
            for made in folder.iterdir():  # the memory image is no VM's to change
                if made.is_file():
                    await asyncio.to_thread(permissions.root_only, made)
        finally:
            _close_fds(taps)
            stream.unlink(missing_ok=True)

    # -- resources -------------------------------------------------------------------------------
    async def hotplug_cpu(self, instance_id: str, core: int) -> None:
        await self._vm(instance_id).hotplug_cpu(core)

    async def online_cpus(self, instance_id: str, want: int) -> None:
        """The new vCPUs appear in the guest a moment after the ACPI event; tiny has no udev
        to online them, so the agent does."""
        agent = self._vm(instance_id).agent
        vcpus: list[dict[str, object]] = []
        for attempt in range(100):
            vcpus = await agent.call("guest-get-vcpus", timeout=30)
            offline = [v for v in vcpus if not v["online"]]
            if offline:
                online = [{"logical-id": v["logical-id"], "online": True} for v in offline]
                await agent.call("guest-set-vcpus", {"vcpus": online}, timeout=30)
            elif len(vcpus) >= want:
                return
            await asyncio.sleep(min(0.02 * (attempt + 1), 0.2))
        raise InvalidState(f"the guest did not bring its vCPUs online ({len(vcpus)} of {want})")

    async def hotplug_dimm(self, instance_id: str, index: int, mib: int) -> None:
        await self._vm(instance_id).hotplug_dimm(index, mib)

    async def guest_memory_kib(self, instance_id: str) -> int:
        out = await self.exec(instance_id, ["cat", "/proc/meminfo"], None, 30)
        for line in out.stdout.decode(errors="replace").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
        raise EngineError("the guest did not report its memory (no MemTotal in /proc/meminfo)")

    async def grow_guest_filesystem(self, instance_id: str) -> bool:
        try:
            out = await self.exec(instance_id, ["resize2fs", "/dev/vda"], None, 120)
        except GureumError:
            return False
        return out.exit_code == 0

    async def hotplug_nic(self, instance_id: str, slot: int, mac: str, network_id: str) -> None:
        namespace = self.network.namespace(network_id)
        fd = await tap.open_tap(namespace, tap.tap_name(instance_id, slot), BRIDGE)
        try:
            await self._vm(instance_id).hotplug_nic(slot, mac, fd)
        finally:
            os.close(fd)

    async def wait_for_nic(self, instance_id: str, mac: str, timeout: float) -> None:
        """The guest sees a hot-plugged NIC a moment after QEMU adds it (PCIe hot-plug)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while loop.time() < deadline:
            out = await self.exec(
                instance_id, ["sh", "-c", "cat /sys/class/net/*/address"], None, 10
            )
            if mac in out.stdout.decode(errors="replace"):
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        raise InvalidState(f"the guest did not show the new NIC {mac} within {timeout:.0f} s")

    async def unplug_nic(self, instance_id: str, slot: int) -> None:
        await self._vm(instance_id).unplug_nic(slot)

    async def resize_disk_live(self, instance_id: str, size_bytes: int) -> None:
        await self._vm(instance_id).resize_disk(size_bytes)

    def update_disk_chain(self, instance_id: str, chain: tuple[Path, ...]) -> None:
        """The store's chain for a re-adopted VM once its top layer was repaired."""
        vm = self._vms.get(instance_id)
        if vm is not None:
            vm.cfg = replace(vm.cfg, disk_chain=chain)

    def update_hardware(self, instance_id: str, hardware: Hardware) -> None:
        """Keep the engine's view in step after a hot-plug (a later memory save needs it)."""
        vm = self._vms.get(instance_id)
        if vm is not None:
            vm.cfg = replace(vm.cfg, hardware=hardware)

    # -- guest access ----------------------------------------------------------------------------
    async def exec(
        self, instance_id: str, argv: list[str], stdin: bytes | None, timeout: float
    ) -> ExecResult:
        if self.containers.owns(instance_id):
            return await self.containers.exec(instance_id, argv, stdin, timeout)
        return await self._vm(instance_id).exec(argv, stdin=stdin, timeout=timeout)

    async def refresh_identity(self, instance_id: str, identity: Identity) -> str:
        """Tell the guest it was restored or cloned; returns its new machine id.

        The guest has no vmgenid driver to notice by itself, so the agent does what such a
        driver's users would: new entropy mixed into the kernel's pool, the clock set, a new
        machine id, and for a clone a new hostname and MACs (``macs``: old, new), then new DHCP
        leases (``NEW_IDENTITY``). The entropy goes through the agent as a file write, never on
        a command line another guest process could read.
        """
        vm = self._vm(instance_id)
        machine_id = uuid.uuid4().hex
        await vm.agent.write_file("/dev/urandom", secrets.token_bytes(64))
        if identity.login is not None:
            user, keys = identity.login
            await vm.agent.write_file("/run/gureum-login", "\n".join([user, *keys]).encode())
        renew = bool(identity.macs)
        await _tell(
            vm, machine_id, identity.hostname or "", renew, identity.macs or [], identity.shared
        )
        return machine_id

    async def seal_template(self, instance_id: str) -> None:
        """Ready a booted guest to be saved as a template (``SEAL_TEMPLATE``)."""
        argv = ["/bin/sh", "-c", SEAL_TEMPLATE, "seal"]
        result = await self.exec(instance_id, argv, None, SEAL_TIMEOUT_S)
        if result.exit_code != 0:
            said = result.stderr.decode(errors="replace").strip()[:200]
            raise EngineError(f"the guest could not be made a template: {said!r}")

    async def renew_network(self, instance_id: str) -> None:
        """Start DHCP on NICs the guest has not configured yet (after a hot-plug)."""
        await self._dhcp(instance_id)

    async def _dhcp(self, instance_id: str) -> None:
        """Run ``DHCP`` in the guest; EngineError (with what it said) if it failed."""
        result = await self.exec(instance_id, ["/bin/sh", "-c", DHCP, "dhcp"], None, 30)
        if result.exit_code != 0:
            detail = result.stderr.decode(errors="replace").strip()[:200]
            raise EngineError(f"DHCP did not start in the guest: {detail!r}")

    def console(self, instance_id: str) -> Console:
        if self.containers.owns(instance_id):
            return self.containers.console(instance_id)
        return self._vm(instance_id).serial

    async def ssh_host_keys(self, instance_id: str) -> list[str]:
        """Read through the agent, as files (no guest process). What a guest says is hostile:
        each key is bounded and must parse as an OpenSSH public key, or it is left out."""
        keys = []
        for kind in SSH_HOST_KEY_TYPES:
            name = f"/etc/ssh/ssh_host_{kind}_key.pub"
            try:
                if self.containers.owns(instance_id):  # no agent: read by a command in it
                    said = await self.containers.exec(instance_id, ["cat", name], None, 10)
                    data = said.stdout[:16384] if said.exit_code == 0 else b""
                else:
                    data = await self._vm(instance_id).agent.read_file(name, limit=16384)
            except GureumError:
                continue  # no key of that type (or no such file): the others may do
            key = public_key(data.decode(errors="replace"))
            if key is not None:
                keys.append(key)
        return keys

    async def connect_guest(self, network_id: str, ip: str, port: int) -> socket.socket:
        try:
            return await forward.connect_in(self.network.namespace(network_id), ip, port)
        except TimeoutError:
            raise InvalidState(f"nothing answered on {ip}:{port} within 10 s") from None
        except OSError as exc:
            raise InvalidState(f"cannot connect to {ip}:{port}: {exc.strerror}") from None

    async def console_log(self, instance_id: str, tail_bytes: int) -> bytes:
        path = self.runtime(instance_id).serial_log
        if self.containers.owns(instance_id):
            path = self.containers.readable_log(instance_id)
        return await asyncio.to_thread(serial.read_log, path, tail_bytes)

    def rss_bytes(self, instance_id: str) -> int | None:
        if self.containers.owns(instance_id):
            return self.containers.memory_bytes(instance_id)
        vm = self._vms.get(instance_id)
        return vm.rss_bytes() if vm else None

    async def instance_stats(
        self, instances: list[tuple[str, Hardware]]
    ) -> dict[str, stats.InstanceStats]:
        # Each network's counters once (one `ip` call each), then every instance at once: a
        # guest slow to answer costs its own figures' wait (bounded), not everyone's.
        namespaces = sorted(
            {self.network.namespace(net) for _, hw in instances for _, _, net in hw.nics}
        )
        read = await asyncio.gather(*(stats.link_counters(ns) for ns in namespaces))
        counters = dict(zip(namespaces, read, strict=True))
        results = await asyncio.gather(
            *(self._instance_stats(i, hw, counters) for i, hw in instances),
            return_exceptions=True,  # one instance's failure is its own figures' loss
        )
        out = {}
        for (instance_id, _), result in zip(instances, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("cannot measure %s: %s", instance_id, result)
            elif result is not None:
                out[instance_id] = result
        return out

    async def _instance_stats(
        self,
        instance_id: str,
        hardware: Hardware,
        counters: dict[str, dict[str, tuple[int, int, int, int]]],
    ) -> stats.InstanceStats | None:
        nics = stats.nic_stats(
            instance_id,
            [(slot, mac, net, self.network.namespace(net)) for slot, mac, net in hardware.nics],
            counters,
        )
        running = self.containers.running.get(instance_id)
        if running is not None and not running.exited:
            try:
                cpu = stats.cgroup_cpu_seconds(cgroup_folders(running.pid))
            except OSError:
                return None
            return stats.InstanceStats(
                time.time(), cpu, self.containers.memory_bytes(instance_id), None, nics=nics
            )
        vm = self._vms.get(instance_id)
        if vm is None or vm.exited or vm.pid is None:
            return None
        at = time.time()
        cpu, rss, pss = stats.process(vm.pid)
        timeout = stats.GUEST_TIMEOUT_S
        answer = await stats.bounded(vm.monitor.execute("query-blockstats", timeout=timeout), [])
        total, available = await self._guest_memory(instance_id, vm)
        return stats.InstanceStats(
            at, cpu, rss, pss, total, available, stats.blockstats(answer), nics
        )

    async def _guest_memory(self, instance_id: str, vm: QemuVM) -> tuple[int | None, int | None]:
        """The guest's own view of its memory, asked at most every GUEST_EVERY_S (a question
        makes the guest work: under TCG, real host CPU), only of a guest that runs and whose
        agent nobody is using: it never queues behind (or holds up) a snapshot's freeze or a
        user's exec. Between questions, the last answer."""
        now = time.monotonic()
        asked, total, available = self._guest_seen.get(
            instance_id, (-stats.GUEST_EVERY_S, None, None)
        )
        if now - asked < stats.GUEST_EVERY_S:
            return total, available
        timeout = stats.GUEST_TIMEOUT_S
        status = await stats.bounded(vm.monitor.execute("query-status", timeout=timeout), {})
        text = b""
        if isinstance(status, dict) and status.get("running") and not vm.agent.busy:
            text = await stats.bounded(
                vm.agent.read_file("/proc/meminfo", stats.MEMINFO_LIMIT, timeout), b""
            )
        total, available = stats.meminfo(text)
        if total is not None:  # no answer (booting, busy): asked again next round
            self._guest_seen[instance_id] = (now, total, available)
        return total, available

    # -- networks --------------------------------------------------------------------------------
    def serve_metadata(self, lookup: Lookup) -> None:
        self.network.lookup = lookup

    def network_namespace(self, network_id: str) -> str:
        return self.network.namespace(network_id)

    async def ensure_network(self, net: Network) -> None:
        await self.network.ensure(net)

    async def remove_network(self, network_id: str) -> None:
        await self.network.remove(network_id)

    def networks_present(self) -> set[str]:
        present = set(self.network.present())
        if self.config.networks_dir.exists():
            present |= {p.name for p in self.config.networks_dir.iterdir()}
        return present

    async def sync_network(self, net: Network, plan: NetworkPlan) -> None:
        await self.network.sync(net, plan.hosts, plan.ports, plan.rules, plan.span)

    async def neighbour_mac(self, network_id: str, ip: str) -> str | None:
        return await self.network.neighbour_mac(network_id, ip)

    async def add_forward(self, fwd: Forward, network_id: str, ip: str) -> None:
        await self.network.add_forward(
            fwd.id, fwd.host_address, fwd.host_port, network_id, ip, fwd.guest_port
        )

    async def remove_forward(self, forward_id: str) -> None:
        await self.network.remove_forward(forward_id)

    async def close_networks(self) -> None:
        await self.network.close()

    def _vm(self, instance_id: str) -> QemuVM:
        vm = self._vms.get(instance_id)
        if vm is None or vm.exited:
            raise InvalidState("the VM is not running on this host")
        return vm

    # -- leftovers -------------------------------------------------------------------------------
    def memory_image_helpers(self) -> list[int]:
        marker = str(self.config.snapshots_dir) + "/"
        return [p for p in process.find_by_marker(marker) if _is_helper(procs.cmdline(p))]

    async def remove_leftovers(
        self, known_ids: set[str], known_layers: set[Path], known_snapshots: set[str]
    ) -> list[str]:
        """Kill QEMUs and remove folders and disk files that belong to nothing known."""
        known_files = known_layers | {self._snapshot_folder(s) for s in known_snapshots}
        removed = []
        # Memory-image helpers of a snapshot cut short (restored VMs also name the snapshots
        # folder, for their RAM files: only the helpers' own QMP socket tells them apart).
        for pid in self.memory_image_helpers():
            procs.kill(pid)
            removed.append(f"memory image helper {pid}")
        scratch = self.config.home / "scratch"
        if scratch.exists():  # exports and imports in flight when the service stopped
            for entry in scratch.iterdir():
                await asyncio.to_thread(_remove, entry)
                removed.append(str(entry))
        run_root = str(self.config.run_dir) + "/"
        for pid in process.find_by_marker(run_root):
            owner = next(
                (
                    a.split(run_root, 1)[1].split("/")[0]
                    for a in procs.cmdline(pid)
                    if run_root in a
                ),
                "",
            )
            if owner and owner not in known_ids:
                procs.kill(pid)
                removed.append(f"process {pid} of unknown VM {owner}")
        kept = set(known_ids)
        if self.config.instances_dir.exists():
            for folder in self.config.instances_dir.iterdir():
                if folder.name not in known_ids and self.containers.owns(folder.name):
                    try:  # killed and unmounted first: a mounted image is never walked
                        await self.containers.destroy(folder.name)
                    except GureumError as exc:  # still mounted: its folder stays, unwalked
                        log.warning("leftover container %s: %s", folder.name, exc.message)
                        kept.add(folder.name)
                        continue
                    removed.append(f"container {folder.name}")
        for parent in (self.config.run_dir, self.config.instances_dir):
            if parent.exists():
                for folder in parent.iterdir():
                    if folder.name not in kept:
                        await asyncio.to_thread(shutil.rmtree, folder, True)
                        removed.append(str(folder))
        for parent in (self.config.disks_dir, self.config.snapshots_dir):
            if parent.exists():
                for entry in parent.iterdir():
                    if entry not in known_files:
                        await asyncio.to_thread(_remove, entry)
                        removed.append(str(entry))
        return removed


BOOT_FILES = ("vmlinuz", "initrd.img")
# /run is emptied by every boot: a marker there says a service of that home started since.
BOOT_MARKERS = Path("/run/gureum")


async def _tell(
    vm: QemuVM,
    machine_id: str,
    hostname: str,
    renew: bool,
    macs: list[tuple[str, str]],
    must_reseed: bool,
) -> None:
    """Run ``NEW_IDENTITY`` in the guest; EngineError with what it said if it failed."""
    argv = [
        "/bin/sh", "-c", NEW_IDENTITY, "identity", str(int(time.time())), machine_id, hostname,
        "renew" if renew else "none", "must" if must_reseed else "try",
        *(f"{old}={new}" for old, new in macs),
    ]  # fmt: skip
    result = await vm.exec(argv, stdin=None, timeout=30)
    said = result.stderr.decode(errors="replace").strip()[:200]
    if result.exit_code != 0:
        what = {
            1: "cannot set the guest's hostname or machine id",
            2: "cannot set the guest's MAC addresses",
            4: "cannot make the guest's SSH host keys",
            5: "the guest was saved from a machine others resume too, and cannot be made to "
            "reseed its random generator (it would repeat theirs)",
        }.get(result.exit_code, f"the guest's identity step failed (exit {result.exit_code})")
        raise EngineError(f"{what}: {said!r}")
    if said:
        log.warning("the guest, told its new identity: %r", said)


def _close_fds(fds: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> None:
    for _slot, fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _is_helper(argv: list[str]) -> bool:
    return any(memimage.HELPER_QMP in a for a in argv)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
