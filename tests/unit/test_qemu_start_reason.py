"""A QEMU that fails to start says why (issue 11, item 8): QEMU makes its monitor socket before
it sets up the accelerator, so a refused KVM shows first as a monitor that never answers; the
error must carry QEMU's own words, not "cannot connect to QMP"."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from gureum.engine.qemu.argv import RuntimePaths, VMConfig
from gureum.engine.qemu.vm import QemuVM
from gureum.errors import GureumError
from gureum.model.hardware import Hardware

# Binds the monitor socket and never listens (a connect is refused), then fails as QEMU does
# when /dev/kvm is not its to open.
FAKE_QEMU = """#!{python}
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind({qmp!r})
sys.stderr.write("qemu-system-x86_64: Could not access KVM kernel module: Permission denied\\n")
sys.stderr.write("qemu-system-x86_64: failed to initialize kvm: Permission denied\\n")
sys.stderr.flush()
time.sleep(0.2)
sys.exit(1)
"""


class Events:
    def on_boot_event(self, event: str, at: float) -> None:
        pass

    def on_paused(self, reason: str) -> None:
        pass

    def on_resumed(self) -> None:
        pass

    def on_exit(self, how: str, detail: str) -> None:
        pass


def test_a_qemu_that_exits_after_making_its_socket_says_why(tmp_path: Path) -> None:
    runtime = RuntimePaths(tmp_path / "run")
    fake = tmp_path / "qemu"
    fake.write_text(FAKE_QEMU.format(python=sys.executable, qmp=str(runtime.qmp)))
    fake.chmod(0o755)
    hw = Hardware(1, 1, 256, 256, "11111111-2222-3333-4444-555555555555")
    cfg = VMConfig(
        "web1", hw, "kvm", tmp_path / "vmlinuz", tmp_path / "initrd", (tmp_path / "root",),
        runtime, "web1", qemu_binary=str(fake),
    )  # fmt: skip
    vm = QemuVM(cfg, Events())
    # A monitor timeout far longer than any slow start of the fake: the error must come from
    # QEMU's exit, not from the monitor giving up (a busy CI host once took 10 s to the old one).
    vm.monitor_timeout_s = 120.0
    began = time.monotonic()
    with pytest.raises(GureumError) as caught:
        asyncio.run(vm.start())
    assert "failed to initialize kvm: Permission denied" in caught.value.message
    assert "QMP" not in caught.value.message
    assert time.monotonic() - began < 60  # not the monitor's whole connect timeout
