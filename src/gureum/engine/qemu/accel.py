"""Choosing the accelerator by a real probe.

/dev/kvm existing is not enough: on some hosts (nested sandboxes, software KVM back ends) it
opens and even runs a toy guest, but a Linux guest crawls. KVM is used only where the CPU
advertises hardware virtualisation (vmx or svm) *and* /dev/kvm opens read-write.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from gureum.errors import InvalidInput


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def cpu_has_virtualisation(cpuinfo: str) -> bool:
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and re.search(r"\b(vmx|svm)\b", line):
            return True
    return False


def kvm_opens(path: str = "/dev/kvm") -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def choose(
    wanted: str = "auto", *, cpuinfo: str | None = None, kvm_ok: bool | None = None
) -> AccelChoice:
    if cpuinfo is None:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    if kvm_ok is None:
        kvm_ok = kvm_opens()
    has_virt = cpu_has_virtualisation(cpuinfo)
    if wanted == "tcg":
        return AccelChoice("tcg", "configured: tcg")
    if wanted == "kvm":
        if not kvm_ok:
            raise InvalidInput("accel=kvm is configured but /dev/kvm cannot be opened")
        return AccelChoice("kvm", "configured: kvm")
    if wanted != "auto":
        raise InvalidInput(f"accel must be auto, kvm or tcg, not {wanted!r}")
    if has_virt and kvm_ok:
        return AccelChoice("kvm", "CPU has vmx/svm and /dev/kvm opens")
    if not has_virt:
        return AccelChoice("tcg", "CPU advertises neither vmx nor svm: software emulation")
    return AccelChoice("tcg", "/dev/kvm cannot be opened: software emulation")
