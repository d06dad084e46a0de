"""Rendering a VM's QEMU command line. Pure: same config in, same argv out, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gureum.model.hardware import MAX_DIMMS, MAX_NICS, UEFI, Hardware
from gureum.model.network import NOCLOUD_URL

AGENT_PORT_NAME = "org.qemu.guest_agent.0"
AGENT_PORT_ID = "agent-port"

# Where cloud-init finds its data: stock cloud-init's ds-identify reads the SMBIOS system serial
# and, seeing ``ds=nocloud-net``, fetches meta-data and user-data from that URL (the network's
# metadata service, which knows each VM by its address) once the network is up. Announced
# through SMBIOS, not the kernel command line, so that images booting their own bootloader
# find it too. Images without cloud-init ignore it.
NOCLOUD_SERIAL = f"ds=nocloud-net;s={NOCLOUD_URL}"

# QEMU's seccomp filter, with every optional deny turned on: a compromised QEMU cannot use
# obsolete syscalls, setuid, fork/exec or change its own resource limits.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class RuntimePaths:
    """One VM's runtime folder: everything its running QEMU needs or makes."""

    dir: Path

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def agent(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def serial(self) -> Path:
        return self.dir / "serial.sock"

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"


@dataclass(frozen=True)
class RamFiles:
    """Guest RAM backed by files (one per memory backend, named ``ram-<backend id>``).

    ``share=False`` maps them privately, copy-on-write: how a restore or clone starts from a
    memory snapshot without copying it. ``share=True`` writes through to the files: how a
    snapshot's memory image is made.
    """

    folder: Path
    share: bool
    # (backend, fd QEMU inherits) for RAM handed over as sealed copies (``host/sealed_ram.py``):
    # QEMU opens those as /proc/self/fd/N, never the saved file.
    fds: tuple[tuple[str, int], ...] = ()

    def path(self, backend: str) -> Path:
        fd = dict(self.fds).get(backend)
        return Path(f"/proc/self/fd/{fd}") if fd is not None else self.folder / f"ram-{backend}"


@dataclass(frozen=True)
class VMConfig:
    name: str
    hardware: Hardware
    accel: str  # kvm | tcg
    # None: no kernel of its own to boot directly; the firmware (SeaBIOS, or ``ovmf`` when the
    # hardware's firmware is UEFI) boots the disk's bootloader.
    kernel: Path | None
    initrd: Path | None
    # The disk's files, top first, each backed by the next, the last by nothing: given to QEMU
    # node by node, so it never opens a file because a qcow2 header names it.
    disk_chain: tuple[Path, ...]
    runtime: RuntimePaths
    hostname: str
    qemu_binary: str = "qemu-system-x86_64"
    ovmf: str = "/usr/share/ovmf/OVMF.fd"
    tcg_tb_size_mib: int = 128
    start_paused: bool = True
    ram: RamFiles | None = None  # None: anonymous memory
    incoming: bool = False  # wait for a migration stream (restore) instead of booting
    root_read_only: bool = False
    taps: tuple[tuple[int, int], ...] = ()  # (NIC slot, TAP file descriptor QEMU inherits)
    uid: int | None = None  # the unprivileged user QEMU runs as (None: the caller's)
    extra_cmdline: str = ""

    @property
    def root_disk(self) -> Path:
        """The top layer: the one file of the disk QEMU writes."""
        return self.disk_chain[0]

    @property
    def cpu_model(self) -> str:
        return "host" if self.accel == "kvm" else "max"

    @property
    def kernel_cmdline(self) -> str:
        parts = [
            "console=ttyS0",
            "root=/dev/vda",
            "rw",
            # None for a QEMU of the pool, whose VM has no name yet: a reboot takes the name
            # the guest was told (/etc/hostname).
            *([f"gureum.hostname={self.hostname}"] if self.hostname else []),
            # Hot-plugged memory comes online by itself (tiny has no udev to do it).
            "memhp_default_state=online",
            # Hot-pluggable memory above 4 GiB would make the kernel reserve 64 MiB of bounce
            # buffers; virtio needs none.
            "swiotlb=noforce",
        ]
        if self.extra_cmdline:
            parts.append(self.extra_cmdline)
        return " ".join(parts)


def opt(value: str | Path) -> str:
    """Escape a value inside QEMU's key=value,key=value syntax (a comma is written twice)."""
    return str(value).replace(",", ",,")


def memory_backend(cfg: VMConfig, backend: str, mib: int) -> str:
    if cfg.ram is None:
        return f"memory-backend-ram,id={backend},size={mib}M"
    share = "on" if cfg.ram.share else "off"
    return (
        f"memory-backend-file,id={backend},size={mib}M,"
        f"mem-path={opt(cfg.ram.path(backend))},share={share}"
    )


def render(cfg: VMConfig) -> list[str]:
    rt = cfg.runtime
    hw = cfg.hardware
    if cfg.accel == "kvm":
        accel = ["-accel", "kvm", "-cpu", cfg.cpu_model]
    else:
        accel = ["-accel", f"tcg,thread=multi,tb-size={cfg.tcg_tb_size_mib}", "-cpu", cfg.cpu_model]
    argv = [
        cfg.qemu_binary,
        "-name",
        f"guest={cfg.name},debug-threads=on",
        "-machine",
        "q35,memory-backend=mem0",
        *accel,
        "-smp",
        f"cpus={hw.cpus},maxcpus={hw.max_cpus}",
        "-m",
        f"{hw.memory_mib}M,slots={MAX_DIMMS},maxmem={hw.max_memory_mib}M",
        "-object",
        memory_backend(cfg, "mem0", hw.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-sandbox",
        SANDBOX,
        "-msg",
        "timestamp=on",
        "-smbios",
        f"type=1,serial={opt(NOCLOUD_SERIAL)}",
        *direct_boot(cfg),
        *disk_blockdevs(cfg.disk_chain, read_only=cfg.root_read_only),
        "-device",
        "virtio-blk-pci,drive=root,id=root-disk,bootindex=1",
        "-device",
        "virtio-rng-pci,id=rng0",
        "-device",
        f"vmgenid,guid={hw.generation_id},id=vmgenid0",
        "-device",
        "virtio-serial-pci,id=vser0",
        "-chardev",
        f"socket,id=agent0,path={opt(rt.agent)},server=on,wait=off",
        "-device",
        f"virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT_NAME},id={AGENT_PORT_ID}",
        "-chardev",
        f"socket,id=serial0,path={opt(rt.serial)},server=on,wait=off,"
        f"logfile={opt(rt.serial_log)},logappend=on",
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{opt(rt.qmp)},server=on,wait=off",
        "-pidfile",
        str(rt.pidfile),
    ]
    for slot in range(MAX_NICS):
        # PCIe root ports: on q35 only a device behind one can be hot-plugged.
        argv += ["-device", f"pcie-root-port,id=rp{slot},chassis={slot + 1},slot={slot + 1}"]
    fds = dict(cfg.taps)
    for slot, mac, _network in hw.nics:
        argv += ["-netdev", f"tap,id=net{slot},fd={fds[slot]}"]
        argv += ["-device", nic_device(slot, mac)]
    for i, mib in enumerate(hw.dimms):
        argv += ["-object", memory_backend(cfg, f"dimm{i}-mem", mib)]
        argv += ["-device", f"pc-dimm,id=dimm{i},memdev=dimm{i}-mem"]
    for core in hw.hot_cpus:
        argv += ["-device", hot_cpu_device(cfg.cpu_model, core)]
    if cfg.incoming:
        argv += ["-incoming", "defer"]
    if cfg.start_paused:
        # Started paused: the service attaches to the serial console and QMP before the first
        # guest instruction runs, so no boot output or event is missed; then `cont`. After an
        # incoming migration too: the VM runs only when told to.
        argv.append("-S")
    return argv


def direct_boot(cfg: VMConfig) -> list[str]:
    """QEMU boots the image's kernel itself, or (no kernel) the firmware boots the disk: SeaBIOS,
    or OVMF. OVMF is given whole as the machine's ROM (``-bios``), so its UEFI variables start
    afresh at each boot: the disk boots from the removable-media path ``EFI/BOOT/BOOTX64.EFI``,
    as cloud images are made to, and a VM keeps no firmware state outside its disk and memory."""
    if cfg.kernel is None or cfg.initrd is None:
        return ["-bios", cfg.ovmf] if cfg.hardware.firmware == UEFI else []
    return ["-kernel", str(cfg.kernel), "-initrd", str(cfg.initrd), "-append", cfg.kernel_cmdline]


def disk_blockdevs(chain: tuple[Path, ...], *, read_only: bool) -> list[str]:
    """-blockdev options for a disk chain (top first), bottom node first: each node names its
    backing node, the bottom ``null``. The top is node ``root`` (the disk device's drive); the
    layers under it are opened read-only, as QEMU would open backing files itself. JSON form:
    file names need no escaping there."""
    argv: list[str] = []
    below: str | None = None
    for depth in range(len(chain) - 1, -1, -1):
        top = depth == 0
        node = "root" if top else f"layer{depth}"
        ro = read_only or not top
        file = {"driver": "file", "filename": str(chain[depth]), "node-name": f"{node}-file"}
        fmt = {"driver": "qcow2", "file": f"{node}-file", "node-name": node, "backing": below}
        argv += [
            "-blockdev",
            json.dumps({**file, "read-only": ro}),
            "-blockdev",
            json.dumps({**fmt, "read-only": ro, "discard": "unmap"}),
        ]
        below = node
    return argv


def nic_device(slot: int, mac: str) -> str:
    return f"virtio-net-pci,id=nic{slot},netdev=net{slot},mac={mac},bus=rp{slot}"


def hot_cpu_device(cpu_model: str, core: int) -> str:
    """A hot-plugged vCPU (default topology: one socket, one thread per core)."""
    return f"{cpu_model}-x86_64-cpu,id=cpu{core},socket-id=0,core-id={core},thread-id=0"


def device_args(spec: str) -> dict[str, object]:
    """A -device string as QMP device_add arguments."""
    driver, *props = spec.split(",")
    args: dict[str, object] = {"driver": driver}
    for prop in props:
        key, _, value = prop.partition("=")
        args[key] = int(value) if value.isdigit() else value
    return args
