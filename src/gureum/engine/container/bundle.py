"""The OCI runtime configuration of one system container (``config.json`` for runc).

A system container runs its image's own init as PID 1, as a VM does: busybox init for ``tiny``,
systemd for ``debian``. What keeps it apart from the host and from other containers:

- its own user namespace, mapping its root to a range of host uids no other container or VM
  gets (``uid_base``, ``UID_RANGE`` of them): root inside is no one outside;
- its own pid, network, ipc, uts, mount and cgroup namespaces;
- no new privileges (setuid binaries gain nothing), a bounded capability set (no module loading,
  no raw I/O, no clock, no MAC policy), and a seccomp filter returning EPERM for the calls below;
- ``/proc/sys`` and ``/sys`` read-only, and the usual ``/proc`` files masked; ``/sys/fs/cgroup``
  read-only too, but for an init that manages control groups (systemd), which gets its own
  group's folder and nothing above it or in its limits;
- its own control group (CPU quota, memory and pids limits) under its project's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gureum.model.limits import PERIOD_US, cpu_quota_us

# Host uids a container's user namespace maps: root inside is uid_base outside.
UID_RANGE = 65536
PIDS_LIMIT = 1024
# Every process runc starts in a container, its init or a command: container= is how systemd
# and other inits know they run in a container.
ENV = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "container=gureum")

# Granted inside the container's own user namespace, where they reach only what that namespace
# owns (its network, its mounts, its files). Left out: CAP_SYS_MODULE, CAP_SYS_RAWIO,
# CAP_SYS_TIME, CAP_SYS_NICE, CAP_MAC_ADMIN, CAP_MAC_OVERRIDE, CAP_SYSLOG, CAP_WAKE_ALARM,
# CAP_BLOCK_SUSPEND, CAP_AUDIT_CONTROL, CAP_AUDIT_READ, CAP_LEASE, CAP_IPC_LOCK, CAP_BPF,
# CAP_PERFMON, CAP_CHECKPOINT_RESTORE, CAP_LINUX_IMMUTABLE, CAP_SYS_PACCT, CAP_SYS_TTY_CONFIG.
CAPABILITIES = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",  # mounts and namespaces of its own (systemd needs them)
    "CAP_SYS_BOOT",  # reboot(2) in a pid namespace ends the container's init, nothing else
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",  # its own processes only: other containers are in other pid namespaces
    "CAP_SYS_RESOURCE",
)

# System calls that reach the host kernel's shared state (modules, kexec, the clock, swap, the
# kernel log, keyrings, BPF, perf, handles that walk around mount namespaces) and that no system
# container needs: answered with EPERM. The rest are allowed (a deny list, as LXC's default
# is), so the image's own init and tools run unchanged; the user namespace bounds the rest.
DENIED_SYSCALLS = (
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",  # io_uring: a large kernel surface with a history of escapes
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "query_module",
    "quotactl",
    "request_key",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
)
EPERM = 1

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class ContainerSpec:
    """What one container runs as; everything here was checked by the service already."""

    container_id: str  # runc's name for it: the instance id
    hostname: str
    rootfs: Path  # the container's root, already mounted (image read-only, its own layer on top)
    uid_base: int  # host uid of its root; UID_RANGE uids from here are its own
    cpus: int
    memory_mib: int
    cgroup: str  # cgroupsPath: its own group, under its project's
    netns: Path | None = None  # a network namespace to join; None: a new one with only lo
    args: tuple[str, ...] = ("/sbin/init",)
    env: tuple[str, ...] = field(default_factory=tuple)
    # systemd as init manages control groups under its own: /sys/fs/cgroup is mounted writable
    # and the host gives it its group's folder (host/containers.py, never the limit files).
    delegate_cgroups: bool = False


def seccomp() -> dict[str, object]:
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}
        ],
    }


def _mounts(cgroups_writable: bool) -> list[dict[str, object]]:
    nodev = ["nosuid", "noexec", "nodev"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": nodev},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": [*nodev, "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": nodev},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*nodev, "ro"]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": [*nodev, "relatime", "rw" if cgroups_writable else "ro"],
        },
        {
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755"],
        },
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
    ]


# The top folders of the container's root that runc mounts over at each start. Everything under
# them is a fresh mount of runc's; these names themselves are in the container's own layer,
# which it wrote on its last run (rootfs.check_mount_points).
MOUNT_POINTS = tuple(sorted({"/" + str(m["destination"]).split("/")[1] for m in _mounts(False)}))


def resources(cpus: int, memory_mib: int) -> dict[str, object]:
    """Its limits: CPU time of ``cpus`` CPUs, memory with no swap beyond it, and pids (the
    same shape ``runc update`` takes, for a live resize)."""
    return {
        "memory": {"limit": memory_mib * 2**20, "swap": memory_mib * 2**20},
        "cpu": {"quota": cpu_quota_us(cpus), "period": PERIOD_US},
        "pids": {"limit": PIDS_LIMIT},
    }


def oci_config(spec: ContainerSpec) -> dict[str, object]:
    """The whole ``config.json``."""
    caps = list(CAPABILITIES)
    network: dict[str, str] = {"type": "network"}
    if spec.netns is not None:
        network["path"] = str(spec.netns)
    mapping = [{"containerID": 0, "hostID": spec.uid_base, "size": UID_RANGE}]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(spec.args),
            "env": [*ENV, *spec.env],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(spec.rootfs), "readonly": False},
        "hostname": spec.hostname,
        "mounts": _mounts(spec.delegate_cgroups),
        "linux": {
            "uidMappings": mapping,
            "gidMappings": mapping,
            "namespaces": [
                {"type": "pid"},
                network,
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "user"},
                {"type": "cgroup"},
            ],
            "cgroupsPath": spec.cgroup,
            "resources": resources(spec.cpus, spec.memory_mib),
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": seccomp(),
        },
    }
