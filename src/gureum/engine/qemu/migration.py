"""Saving and loading a VM's state through QEMU's migration stream, to and from files.

QEMU 7.2 has no file: migration URI and the sandbox forbids exec:, so the file is opened here
and handed over as a file descriptor. Completion is a MIGRATION event, not a poll.

``ignore_shared`` is QEMU's x-ignore-shared capability: RAM blocks backed by a shared file are
left out of the stream (the file *is* the memory image), which makes a saved state a few hundred
KiB and a restore independent of memory size.
"""

from __future__ import annotations

import os
from pathlib import Path

from gureum.engine.qemu.qmp import Monitor
from gureum.errors import EngineError

DONE = ("completed", "failed", "cancelled")


async def _capabilities(monitor: Monitor, ignore_shared: bool) -> None:
    caps = [
        {"capability": "events", "state": True},
        {"capability": "x-ignore-shared", "state": ignore_shared},
    ]
    await monitor.execute("migrate-set-capabilities", {"capabilities": caps})


async def _finish(monitor: Monitor, future, what: str, timeout: float) -> None:
    data = await monitor.wait(future, what, timeout)
    if data["status"] != "completed":
        info = await monitor.execute("query-migrate")
        raise EngineError(f"{what} {data['status']}: {info.get('error-desc', 'no detail')}")


async def save(monitor: Monitor, dest: Path, *, ignore_shared: bool, timeout: float = 600) -> None:
    """Write the (paused) VM's state to ``dest``."""
    await _capabilities(monitor, ignore_shared)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        await monitor.pass_fd(fd, "gureum-save")
    finally:
        os.close(fd)
    done = monitor.expect("MIGRATION", lambda d: d.get("status") in DONE)
    await monitor.execute("migrate", {"uri": "fd:gureum-save"})
    await _finish(monitor, done, "saving the VM state", timeout)


async def load(monitor: Monitor, src: Path, *, ignore_shared: bool, timeout: float = 600) -> None:
    """Load state into a QEMU started with ``-incoming defer``."""
    await _capabilities(monitor, ignore_shared)
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await monitor.pass_fd(fd, "gureum-load")
    finally:
        os.close(fd)
    done = monitor.expect("MIGRATION", lambda d: d.get("status") in DONE)
    await monitor.execute("migrate-incoming", {"uri": "fd:gureum-load"})
    await _finish(monitor, done, "loading the VM state", timeout)
