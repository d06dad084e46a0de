"""Turning a VM's saved state into a memory image that restores without copying.

A running VM's state is first saved whole (RAM included) to a stream file. A helper QEMU, never
started, loads that stream into RAM backed by *shared* files, which writes the RAM into them;
then saves its own state with x-ignore-shared, which leaves the RAM out. The result is one file
per RAM block plus a small state file: a restore maps the RAM files privately (copy-on-write)
and loads the small state, so its cost does not grow with memory size, and every clone of one
snapshot shares the unchanged pages in the host's page cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from dataclasses import replace
from pathlib import Path

from gureum.engine.qemu import migration, process
from gureum.engine.qemu.argv import RamFiles, RuntimePaths, VMConfig, render
from gureum.engine.qemu.qmp import Monitor
from gureum.engine.qemu.vm import log_tail
from gureum.errors import EngineError, GureumError

HELPER_DIR = "memimage-helper"
HELPER_QMP = f"/{HELPER_DIR}/qmp.sock"  # how a helper QEMU is recognised among others


async def make(cfg: VMConfig, stream: Path, folder: Path) -> None:
    """Write ``folder``/ram-<block> files and ``folder``/state from a full-state ``stream``.

    ``cfg`` is the source VM's configuration; its root disk should be the frozen layer the
    state was taken with (the helper opens it read-only and never runs).
    """
    runtime = RuntimePaths(folder / HELPER_DIR)
    runtime.dir.mkdir(parents=True, exist_ok=True)
    if cfg.uid is not None:
        # The helper runs as the VM's user: it writes the RAM files and its own sockets. It
        # may cross the folder (0711), not list it.
        os.chmod(folder, 0o711)
        os.chown(runtime.dir, cfg.uid, cfg.uid)
        for backend, mib in cfg.hardware.memory_backends():
            ram = RamFiles(folder, share=True).path(backend)
            with open(ram, "wb") as f:
                f.truncate(mib << 20)
            os.chown(ram, cfg.uid, cfg.uid)
    helper = replace(
        cfg,
        name=f"{cfg.name}-memimage",
        runtime=runtime,
        ram=RamFiles(folder, share=True),
        incoming=True,
        start_paused=True,
        root_read_only=True,
    )
    proc = process.spawn(
        render(helper), runtime.qemu_log, tuple(fd for _, fd in helper.taps), uid=helper.uid
    )
    monitor = Monitor(helper.name)
    try:
        for _ in range(6000):
            if runtime.qmp.exists() or proc.poll() is not None:
                break
            await asyncio.sleep(0.005)
        if proc.poll() is not None:
            raise EngineError(f"memory image helper exited: {log_tail(runtime.qemu_log)}")
        await monitor.connect(
            runtime.qmp, owner=helper.uid if helper.uid is not None else os.geteuid()
        )
        await migration.load(monitor, stream, ignore_shared=False)
        await migration.save(monitor, folder / "state", ignore_shared=True)
        with contextlib.suppress(GureumError):
            await monitor.execute("quit", timeout=10)
    finally:
        await monitor.close()
        if proc.poll() is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(runtime.dir, ignore_errors=True)
