"""The one door from the service to a host: ``HostAgent``, and the values that pass through it.

The service decides (who may run what, where, with which resources); a host does (QEMU, disk
files, TAPs, namespaces, control groups). Every method here is named for what the service
wants done, takes and returns plain typed values, and raises ``GureumError``s. Nothing here
knows users, projects' rules or the API, and nothing above it knows QEMU, qcow2 files, guest
shell commands or the host's folders.

``LocalHostAgent`` (``host/agent.py``) implements it in-process for this machine; a remote
agent for a cluster would implement the same methods over the network; ``FakeHost`` in the
unit tests implements it in memory, with failures injected at any step.

Paths: disk layers and image files are named by the path the store recorded, relative to the
home (``path`` turns one into the host's absolute path, and nothing else is ever opened).
Snapshots' memory images and scratch folders are named by id.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gureum.engine.qemu.accel import AccelChoice
from gureum.engine.qemu.agent import ExecResult
from gureum.engine.qemu.vm import VMEvents
from gureum.host.capacity import HostCapacity
from gureum.host.stats import InstanceStats
from gureum.model.hardware import Hardware
from gureum.model.network import Forward, Network, Nic, Rule
from gureum.network.firewall import Port
from gureum.network.metadata import Lookup

__all__ = [
    "AccelChoice",
    "Console",
    "ExecResult",
    "HostAgent",
    "HostCapacity",
    "Identity",
    "NetworkPlan",
    "ProjectUsage",
    "Span",
    "VMEvents",
    "VMSpec",
]


class Console(Protocol):
    """A VM's serial console as the service sees it (the engine's SerialConsole is one)."""

    def attach(self) -> asyncio.Queue[bytes | None]: ...

    def detach(self, queue: asyncio.Queue[bytes | None]) -> None: ...

    async def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class VMSpec:
    """What a host needs to run one VM."""

    instance_id: str
    name: str  # also the guest's hostname
    hardware: Hardware
    project_id: str
    uid: int | None  # the unprivileged user its QEMU runs as
    kernel: Path | None  # None (both): the firmware boots the disk's own bootloader
    initrd: Path | None
    # Its disk's files, top first, down to the image disk (if any): what the store recorded.
    # QEMU is given exactly these, and the VM's user is granted read on exactly these.
    # A container's is its image's disk alone: its files are unpacked from it.
    disk_chain: tuple[Path, ...]
    # "vm" (QEMU), or "container" (runc; ``uid`` is then the first of its range of uids, and
    # the host unpacks the image's files and runs its own init under a layer of its own).
    kind: str = "vm"
    layer_bytes: int = 0  # a container's own layer's size (its disk size)

    @property
    def root_disk(self) -> Path:
        return self.disk_chain[0]


@dataclass(frozen=True)
class Identity:
    """What a restored or cloned guest is told besides new entropy and a new machine id: its
    new hostname and, for a memory image of another machine, its NICs' MACs (old, new)."""

    hostname: str | None = None
    macs: list[tuple[str, str]] | None = None
    # A clone of a template sealed for cloud-init: the image's default user and the instance's
    # SSH keys, installed at once so that SSH answers before cloud-init's first stage is done.
    login: tuple[str, tuple[str, ...]] | None = None
    # Its memory was saved from a machine others resume too (a template, another instance's
    # snapshot): a guest whose random generator cannot be reseeded is refused, not warned of.
    shared: bool = False

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.hostname is not None:
            out["hostname"] = self.hostname
        if self.macs is not None:
            out["macs"] = self.macs
        return out


@dataclass(frozen=True)
class Span:
    """How one host joins a network that spans hosts (``network/overlay.py``)."""

    vni: int  # the network's VXLAN id
    local: str  # this host's cluster address (IPv4), where its VXLAN socket is
    peers: list[str]  # the cluster addresses of the other hosts that have the network


@dataclass(frozen=True)
class NetworkPlan:
    """What a network must serve, as the store has it: its NICs with their instances' names
    (DHCP and DNS), their ports with security groups, and the groups' rules (the firewall);
    ``span``: how this host joins the network's other hosts (None: it is on this host alone)."""

    hosts: list[tuple[Nic, str]]
    ports: list[Port]
    rules: dict[str, list[Rule]]
    span: Span | None = None


@dataclass(frozen=True)
class ProjectUsage:
    """What a project's VMs use now, as the host measures it (None: cannot be measured)."""

    cpu_seconds: float | None
    memory_bytes: int | None
    group: str | None  # the control group that holds them


class HostAgent(Protocol):
    """Everything the service asks of a host, and nothing more."""

    @property
    def accel(self) -> AccelChoice:
        """The accelerator this host gives VMs (kvm or tcg) and why."""

    # -- the host --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Make the host's folders with their modes (before the first VM)."""

    def capacity(self) -> HostCapacity: ...

    def admit(self, used_cpus: int, used_mib: int, cpus: int, memory_mib: int) -> None:
        """Refuse (InsufficientCapacity) what would not fit beside what is committed."""

    def path(self, relative: str) -> Path:
        """A file the store recorded (relative to the home) as this host's path."""

    def free_disk_bytes(self) -> int: ...

    def disk_reserve_bytes(self) -> int:
        """What tenants' uploads and imports must leave free on the host's disk."""

    def first_start_since_boot(self) -> bool:
        """Whether the service starts for the first time since this host booted (asked once:
        the answer is remembered in a file under /run, which a reboot clears)."""

    async def check_alive(self) -> None:
        """Fire exit events that were missed; restart a network service that died."""

    async def remove_leftovers(
        self, known_ids: set[str], known_layers: set[Path], known_snapshots: set[str]
    ) -> list[str]:
        """Kill QEMUs and remove folders and files that belong to no instance, layer or
        snapshot the store knows."""

    # -- projects --------------------------------------------------------------------------------
    async def limit_project(self, project_id: str, cores: float | None, memory: int | None) -> None:
        """Make the project's control group and set its CPU and memory limits."""

    def forget_project(self, project_id: str) -> None: ...

    def project_usage(self, project_id: str) -> ProjectUsage: ...

    def tidy_projects(self) -> None:
        """Remove control groups no process uses any more."""

    # -- disks -----------------------------------------------------------------------------------
    async def create_disk(self, path: Path, backing: Path, size_bytes: int) -> None:
        """A new, empty qcow2 layer on ``backing`` (thin: nothing is copied)."""

    async def grow_disk_offline(self, path: Path, size_bytes: int) -> None: ...

    async def flatten_disk(self, chain: tuple[Path, ...], dest: Path) -> None:
        """One standalone qcow2 of a chain (top first), for an export."""

    async def check_image(self, path: Path, size_bytes: int, what: str) -> None:
        """Refuse (InvalidImage) an image handed in unless it is standalone and of that size."""

    async def take_disk(self, src: Path, dest: Path, size_bytes: int, what: str) -> None:
        """An image handed in, checked, as a standalone layer of gureum's own."""

    def names_backing_file(self, path: Path) -> bool: ...

    def disk_bytes(self, path: Path) -> int:
        """Bytes a layer takes on the host's disk (0 when it is gone)."""

    async def revoke_access(self, uid: int, paths: list[Path]) -> None: ...

    async def remove_file(self, path: Path) -> None: ...

    # -- images users bring -----------------------------------------------------------------------
    async def import_image(
        self,
        body: AsyncIterator[bytes],
        folder: Path,
        *,
        max_bytes: int,
        idle_timeout: float,
        min_bytes: int,
    ) -> dict[str, Any]:
        """A disk image file from a request body, checked and made ``folder/disk.qcow2``:
        ``{format, virtual_bytes, firmware, file: {file, bytes, sha256}}`` (firmware: ``bios`` or
        ``uefi``, what its first sectors show). InvalidImage when it is not a
        bootable qcow2 or raw disk of at most ``max_bytes``; nothing is left on failure."""

    async def capture_image(
        self, chain: tuple[Path, ...], boot: tuple[Path, Path] | None, folder: Path
    ) -> dict[str, dict[str, object]]:
        """A new image version's ``folder`` from an instance's disk: the chain (top first, as
        the store records it) flattened into a standalone ``disk.qcow2``, and the kernel and
        initramfs it boots copied beside it when it boots them directly. Returns the files by
        role (``disk``, ``kernel``, ``initrd``) as ``{file, bytes, sha256}``.
        InsufficientCapacity when the copy could eat into the host's reserve; nothing is left
        on failure."""

    def remove_image(self, folder: Path) -> None: ...

    # -- boot files ------------------------------------------------------------------------------
    def own_boot_files(self, instance_id: str) -> Path | None:
        """The folder of a VM's own kernel and initramfs (an imported machine's), if it has one."""

    async def share_boot_files(self, source_id: str, instance_id: str) -> None:
        """A clone of an imported machine keeps its source's boot files (linked, not copied)."""

    async def take_boot_files(self, scratch: Path, instance_id: str) -> None:
        """An imported machine's kernel and initramfs, moved from its upload into its own."""

    # -- scratch space (uploads and exports) -------------------------------------------------------
    def new_scratch(self) -> Path:
        """A fresh, private folder for one transfer."""

    def remove_scratch(self, path: Path) -> None:
        """A transfer's folder and all in it; synchronous (it also runs from finalizers)."""

    # -- backup archives (``storage/archive.py``) --------------------------------------------------
    def write_archive(self, files: dict[str, Path], config: dict[str, Any]) -> AsyncIterator[bytes]:
        """The archive of ``files`` (member name -> file) and ``config``, written on a thread
        of its own and yielded as it is produced."""

    async def read_archive(
        self, body: AsyncIterator[bytes], dest: Path, *, idle_timeout: float, min_bytes: int
    ) -> dict[str, Any]:
        """Read an uploaded archive into ``dest`` on a thread of its own, checking it whole
        (InvalidArchive at the first fault, the rest of the body unread; Stalled when it brings
        less than ``min_bytes`` in ``idle_timeout`` s); its manifest."""

    # -- memory images -----------------------------------------------------------------------------
    async def save_memory(
        self, instance_id: str, frozen_chain: tuple[Path, ...], snapshot_id: str
    ) -> None:
        """The paused VM's memory and device state as snapshot ``snapshot_id``'s memory image
        (all of it or nothing: a save cut short leaves no folder)."""

    async def take_memory(
        self, scratch: Path, snapshot_id: str, backends: list[tuple[str, int]]
    ) -> None:
        """An imported memory image (``memory/`` of an upload), checked, as a snapshot's."""

    async def export_memory(
        self, snapshot_id: str, backends: list[tuple[str, int]], scratch: Path
    ) -> dict[str, Path]:
        """A memory image packed for an archive: archive member name -> file in ``scratch``."""

    def snapshot_bytes(self, snapshot_id: str) -> int:
        """Bytes a snapshot's memory image takes on the host's disk (0 without one)."""

    async def remove_snapshot(self, snapshot_id: str) -> None: ...

    # -- containers' own layers ------------------------------------------------------------------
    async def snapshot_container(self, instance_id: str, snapshot_id: str) -> str:
        """A copy of the container's layer as snapshot ``snapshot_id``'s: "offline" (stopped)
        or "frozen" (running: its processes and its layer's filesystem frozen meanwhile)."""

    async def restore_container(self, instance_id: str, snapshot_id: str) -> None:
        """The stopped container's layer becomes a copy of the snapshot's."""

    async def limit_container(self, instance_id: str, cpus: int, memory_mib: int) -> None:
        """A running container's CPU and memory limits, changed now (a stopped one gets them
        at its next start, as it gets its disk size: its layer grows then)."""

    # -- a VM's life -----------------------------------------------------------------------------
    async def start(
        self,
        spec: VMSpec,
        events: VMEvents,
        restore_from: str | None = None,
        keep_memory: bool = False,
    ) -> int:
        """Start the VM (cold, or resumed from snapshot ``restore_from``'s memory); its pid.
        ``keep_memory``: keep the snapshot's RAM loaded for the next VM that resumes from it
        (a template's: its clones share those pages)."""

    async def wait_ready(self, instance_id: str, timeout: float) -> None: ...

    async def start_waiting(
        self, spec: VMSpec, restore_from: str, macs: list[tuple[str, str]], events: VMEvents
    ) -> int:
        """Start the QEMU of a VM to come (the pool): all of ``spec`` but its name and
        networks, paused with snapshot ``restore_from``'s state and its guest's NICs given
        ``spec``'s MACs (``macs``: the saved machine's, ``spec``'s); ``events`` hears of its
        exit until ``start`` of the same instance id (with that snapshot) takes it. Returns the
        pid."""

    async def seal_template(self, instance_id: str) -> None:
        """Ready the booted guest to be saved as a template: a guest provisioned by cloud-init
        finishes, forgets its instance (a clone provisions itself again as its own) and keeps
        no SSH host key; others have nothing to do."""

    async def claim_waiting(self, spec: VMSpec, events: VMEvents) -> None:
        """Ready the QEMU waiting for ``spec`` (if one is) while the service readies its
        networks: its events are the VM's, its NICs go to their networks' namespaces (on no
        bridge yet) and it joins its project. ``start`` finishes taking it."""

    async def discard_waiting(self, instance_id: str) -> None:
        """End a waiting QEMU that was not taken (its disk layer is the caller's)."""

    async def close_pool(self) -> None:
        """End every waiting QEMU (the service stops)."""

    def find_running(self, instance_id: str) -> int | None: ...

    def died_cleanly(self, instance_id: str) -> bool:
        """For a VM whose QEMU died unwatched: did its guest power itself off?"""

    async def adopt(self, spec: VMSpec, pid: int, events: VMEvents, *, booted: bool) -> Path:
        """Take over a live QEMU; returns the file its disk really writes to."""

    async def stop(self, instance_id: str, timeout: float) -> str:
        """Power off (ACPI, then quit, then kill); how it went."""

    async def kill(self, instance_id: str) -> None: ...

    def forget(self, instance_id: str) -> None: ...

    async def destroy(self, instance_id: str) -> None:
        """Remove everything of the VM but its disk layers (the service collects those)."""

    async def pause(self, instance_id: str) -> None: ...

    async def resume(self, instance_id: str) -> None: ...

    async def freeze(self, instance_id: str) -> bool:
        """Quiesce the guest's filesystems; False when it cannot."""

    async def thaw(self, instance_id: str) -> None: ...

    async def thaw_if_frozen(self, instance_id: str) -> None: ...

    async def snapshot_disk_live(self, instance_id: str, new_top: Path) -> None:
        """Freeze the running VM's top layer under a new, empty one that is its own."""

    def update_disk_chain(self, instance_id: str, chain: tuple[Path, ...]) -> None: ...

    def update_hardware(self, instance_id: str, hardware: Hardware) -> None: ...

    # -- resources -------------------------------------------------------------------------------
    async def hotplug_cpu(self, instance_id: str, core: int) -> None: ...

    async def online_cpus(self, instance_id: str, want: int) -> None:
        """Bring the guest's hot-plugged vCPUs online; InvalidState if fewer than ``want``."""

    async def hotplug_dimm(self, instance_id: str, index: int, mib: int) -> None: ...

    async def guest_memory_kib(self, instance_id: str) -> int:
        """The memory the guest's kernel sees (MemTotal)."""

    async def resize_disk_live(self, instance_id: str, size_bytes: int) -> None: ...

    async def grow_guest_filesystem(self, instance_id: str) -> bool:
        """Grow the guest's root filesystem to its disk; False when the guest could not."""

    async def hotplug_nic(self, instance_id: str, slot: int, mac: str, network_id: str) -> None: ...

    async def wait_for_nic(self, instance_id: str, mac: str, timeout: float) -> None:
        """Wait until the guest shows a NIC with this MAC; InvalidState past ``timeout``."""

    async def renew_network(self, instance_id: str) -> None:
        """Have the guest configure NICs it has not yet (after a hot-plug), with its own DHCP
        client; a GureumError says why it could not."""

    async def unplug_nic(self, instance_id: str, slot: int) -> None: ...

    # -- guest access ----------------------------------------------------------------------------
    async def exec(
        self, instance_id: str, argv: list[str], stdin: bytes | None, timeout: float
    ) -> ExecResult: ...

    async def refresh_identity(self, instance_id: str, identity: Identity) -> str:
        """Tell the guest it was restored or cloned; its new machine id."""

    def console(self, instance_id: str) -> Console: ...

    async def ssh_host_keys(self, instance_id: str) -> list[str]:
        """The guest's SSH host public keys (``TYPE BASE64``), read through its agent; empty
        when it has none yet."""

    async def connect_guest(self, network_id: str, ip: str, port: int) -> socket.socket:
        """A TCP connection to ``ip:port`` on the network, made inside it (the host has no
        address there); non-blocking. ``InvalidState`` when nothing answers."""

    async def console_log(self, instance_id: str, tail_bytes: int) -> bytes: ...

    def rss_bytes(self, instance_id: str) -> int | None: ...

    async def instance_stats(
        self, instances: list[tuple[str, Hardware]]
    ) -> dict[str, InstanceStats]:
        """What each running instance uses now (``host/stats.py``); those not running on this
        host are left out. Each instance's NICs as its hardware records them."""

    # -- networks --------------------------------------------------------------------------------
    def serve_metadata(self, lookup: Lookup) -> None:
        """Who answers the metadata server's question "which VM is this address?"."""

    def network_namespace(self, network_id: str) -> str: ...

    async def ensure_network(self, net: Network) -> None: ...

    async def remove_network(self, network_id: str) -> None: ...

    def networks_present(self) -> set[str]:
        """Ids of the networks this host has (namespaces or their folders)."""

    async def sync_network(self, net: Network, plan: NetworkPlan) -> None:
        """Make the network's DHCP, DNS and firewall match the store."""

    async def neighbour_mac(self, network_id: str, ip: str) -> str | None: ...

    async def add_forward(self, fwd: Forward, network_id: str, ip: str) -> None:
        """Listen on the forward's host address and port; pass to ``ip`` on the network."""

    async def remove_forward(self, forward_id: str) -> None: ...

    async def close_networks(self) -> None:
        """Stop serving (forwards, metadata) without touching the networks themselves."""
