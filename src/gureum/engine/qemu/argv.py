"""Rendering a VM's QEMU command line. Pure: same config in, same argv out, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

AGENT_PORT_NAME = "org.qemu.guest_agent.0"
AGENT_PORT_ID = "agent-port"

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
class VMConfig:
    name: str
    cpus: int
    memory_mib: int
    accel: str  # kvm | tcg
    kernel: Path
    initrd: Path
    root_disk: Path
    runtime: RuntimePaths
    hostname: str
    qemu_binary: str = "qemu-system-x86_64"
    tcg_tb_size_mib: int = 128
    start_paused: bool = True
    extra_cmdline: str = ""

    @property
    def kernel_cmdline(self) -> str:
        parts = ["console=ttyS0", "root=/dev/vda", "rw", f"gureum.hostname={self.hostname}"]
        if self.extra_cmdline:
            parts.append(self.extra_cmdline)
        return " ".join(parts)


def opt(value: str | Path) -> str:
    """Escape a value inside QEMU's key=value,key=value syntax (a comma is written twice)."""
    return str(value).replace(",", ",,")


def render(cfg: VMConfig) -> list[str]:
    rt = cfg.runtime
    if cfg.accel == "kvm":
        accel = ["-accel", "kvm", "-cpu", "host"]
    else:
        accel = ["-accel", f"tcg,thread=multi,tb-size={cfg.tcg_tb_size_mib}", "-cpu", "max"]
    # -blockdev in JSON form: file names need no escaping there.
    root_file = {"driver": "file", "filename": str(cfg.root_disk), "node-name": "root-file"}
    root = {"driver": "qcow2", "file": "root-file", "node-name": "root", "discard": "unmap"}
    argv = [
        cfg.qemu_binary,
        "-name",
        f"guest={cfg.name},debug-threads=on",
        "-machine",
        "q35",
        *accel,
        "-smp",
        str(cfg.cpus),
        "-m",
        f"{cfg.memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-sandbox",
        SANDBOX,
        "-msg",
        "timestamp=on",
        "-kernel",
        str(cfg.kernel),
        "-initrd",
        str(cfg.initrd),
        "-append",
        cfg.kernel_cmdline,
        "-blockdev",
        json.dumps(root_file),
        "-blockdev",
        json.dumps(root),
        "-device",
        "virtio-blk-pci,drive=root,id=root-disk,bootindex=1",
        "-device",
        "virtio-rng-pci,id=rng0",
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
    if cfg.start_paused:
        # Started paused: the service attaches to the serial console and QMP before the first
        # guest instruction runs, so no boot output or event is missed; then `cont`.
        argv.append("-S")
    return argv
