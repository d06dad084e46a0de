"""One running QEMU: its process, monitor, guest agent and serial console, as one object.

This is the engine's whole view of a VM. It knows nothing of users, names in a database or
HTTP; it reports what happens (boot events, exit) to whoever owns it through ``VMEvents``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from gureum.engine.qemu import migration, process
from gureum.engine.qemu.agent import ExecResult, GuestAgent
from gureum.engine.qemu.argv import (
    AGENT_PORT_ID,
    VMConfig,
    device_args,
    hot_cpu_device,
    nic_device,
    render,
)
from gureum.engine.qemu.qmp import Monitor
from gureum.engine.qemu.serial import SerialConsole
from gureum.errors import EngineError, GureumError, Timeout
from gureum.sys import procs
from gureum.sys.nofollow import open_nofollow

log = logging.getLogger(__name__)

# What the kernel prints last when the guest powers itself off.
POWER_DOWN_LINE = b"reboot: Power down"


class VMEvents(Protocol):
    def on_boot_event(self, event: str, at: float) -> None: ...

    def on_paused(self, reason: str) -> None:
        """QEMU stopped the guest by itself (a disk write failed: ``werror=enospc``)."""

    def on_resumed(self) -> None:
        """The guest runs again (after any pause, ours included)."""

    def on_exit(self, how: str, detail: str) -> None:
        """``how`` is "stopped" (asked for: by the host or by the guest) or "crashed"."""


def ended_with_power_down(serial_log: Path) -> bool:
    """For a QEMU that died while nobody watched: did the guest power itself off?"""
    try:
        with open_nofollow(serial_log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            return POWER_DOWN_LINE in f.read()
    except FileNotFoundError:
        return False


def log_tail(path: Path, lines: int = 5, since: int = 0) -> str:
    """The last lines QEMU wrote to its log (from byte ``since``: this run's, not earlier)."""
    try:
        with open_nofollow(path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " / ".join(text[-lines:])


class QemuVM:
    # How long a refused monitor socket is retried at start (QEMU binds it a moment before it
    # listens); a QEMU that exits meanwhile cuts the wait short.
    monitor_timeout_s = 10.0

    def __init__(self, cfg: VMConfig, events: VMEvents) -> None:
        self.cfg = cfg
        self.events = events
        rt = cfg.runtime
        self.monitor = Monitor(cfg.name, self._on_qmp_event)
        # Sockets in the VM's folder are its QEMU's user's (root's when it runs as root).
        owner = cfg.uid if cfg.uid is not None else os.geteuid()
        self.agent = GuestAgent(rt.agent, owner)
        self.serial = SerialConsole(rt.serial, self._on_marker, rt.serial_log, owner)
        self._owner = owner
        self.pid: int | None = None
        self._proc: Any = None
        self._watch: process.ExitWatch | None = None
        self._agent_port_open = asyncio.Event()
        self._stop_requested = False
        self._guest_shutdown = False
        self.exit_how: str | None = None
        self._log_from = 0  # where this run's lines start in the (appended) QEMU log

    # -- start / adopt ---------------------------------------------------------------------------
    async def start(self, restore_state: Path | None = None) -> None:
        """Spawn QEMU paused, attach monitor and console, then let the guest run.

        With ``restore_state`` (a saved VM state; the config maps the matching RAM files) the
        guest does not boot: it resumes exactly where the state was saved.
        """
        await self.spawn()
        await self.run(restore_state)

    async def spawn(self) -> None:
        """Start QEMU paused and attach monitor and console; nothing of the guest runs yet.
        A config with ``incoming`` waits here for ``run(restore_state)``, as long as need be
        (a QEMU waiting in the host's pool)."""
        rt = self.cfg.runtime
        rt.dir.mkdir(parents=True, exist_ok=True)
        for stale in (rt.qmp, rt.agent, rt.serial, rt.pidfile):
            stale.unlink(missing_ok=True)
        argv = render(self.cfg)
        self._log_from = rt.qemu_log.stat().st_size if rt.qemu_log.exists() else 0
        started = time.time()
        inherited = [fd for _, fd in self.cfg.taps]
        if self.cfg.ram is not None:
            inherited += [fd for _, fd in self.cfg.ram.fds]
        self._proc = process.spawn(argv, rt.qemu_log, tuple(inherited), uid=self.cfg.uid)
        self.pid = self._proc.pid
        self.events.on_boot_event("process_started", started)
        self._watch = process.ExitWatch(self.pid, self._on_process_exit)
        async with self._failing_start():
            await self._wait_for_socket(rt.qmp, timeout=30)
            await self._connect_monitor()
            # A restored guest booted long ago: no boot markers will come.
            self.serial.expect_output(self.cfg.incoming)
            await self.serial.connect()

    async def load(self, restore_state: Path) -> None:
        """Load a saved state into the spawned (``incoming``) QEMU; the guest stays paused."""
        async with self._failing_start():
            await migration.load(self.monitor, restore_state, ignore_shared=True)
        self.events.on_boot_event("memory_restored", time.time())
        # The guest's agent had its port open when the state was saved.
        self._agent_port_open.set()

    async def run(self, restore_state: Path | None = None) -> None:
        """Let the spawned QEMU's guest run: booting, or resumed from ``restore_state`` (none:
        already ``load``-ed, or a cold boot)."""
        if restore_state is not None:
            await self.load(restore_state)
        async with self._failing_start():
            await self.monitor.execute("cont")
        self.events.on_boot_event("running", time.time())

    @contextlib.asynccontextmanager
    async def _failing_start(self) -> AsyncIterator[None]:
        try:
            yield
        except GureumError as exc:
            # QEMU makes its sockets before it sets up the accelerator: one that died (KVM
            # refused, a bad argument) shows first as a monitor or console that fails; its
            # own words are in its log.
            assert self._watch is not None
            died = self._watch.exited.is_set() or await self._watch.wait(1.0)
            await self.kill()
            if died:
                raise self._exited_at_start() from exc
            raise

    async def _connect_monitor(self) -> None:
        """QMP, cut short when QEMU exits meanwhile (its socket stays, refusing, until the
        monitor's own timeout)."""
        assert self._watch is not None
        connect = asyncio.ensure_future(
            self.monitor.connect(
                self.cfg.runtime.qmp, timeout=self.monitor_timeout_s, owner=self._owner
            )
        )
        watch = self._watch
        died = asyncio.ensure_future(watch.exited.wait())

        async def look() -> None:
            # The exit's own event (pidfd) has once not come on a busy host: look at /proc too.
            while not watch.exited.is_set():
                await asyncio.sleep(0.5)
                watch.check()

        looking = asyncio.ensure_future(look())
        try:
            await asyncio.wait({connect, died}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            died.cancel()
            looking.cancel()
        if not connect.done():
            connect.cancel()
            with contextlib.suppress(asyncio.CancelledError, GureumError):
                await connect
            raise self._exited_at_start()
        connect.result()

    def _exited_at_start(self) -> EngineError:
        said = log_tail(self.cfg.runtime.qemu_log, since=self._log_from)
        return EngineError(f"QEMU exited at start: {said or 'no output'}")

    async def adopt(self, pid: int, *, booted: bool) -> None:
        """Take over a QEMU left running by an earlier service process."""
        self.pid = pid
        self._watch = process.ExitWatch(pid, self._on_process_exit)
        await self.monitor.connect(self.cfg.runtime.qmp, owner=self._owner)
        self.serial.expect_output(booted)
        await self.serial.connect()
        # The agent port was opened before we listened: no event will say so again.
        self._agent_port_open.set()

    async def _wait_for_socket(self, path: Path, timeout: float) -> None:
        # QEMU creates its sockets within milliseconds of starting; the loop ends as soon as it
        # does, or as soon as QEMU exits (bad argument, missing file) with its own message.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not path.exists():
            assert self._watch is not None
            if self._watch.exited.is_set() or not procs.is_alive(self.pid or 0):
                raise self._exited_at_start()
            if loop.time() > deadline:
                raise Timeout(f"QEMU did not create {path.name} within {timeout} s")
            await asyncio.sleep(0.005)

    # -- readiness -------------------------------------------------------------------------------
    async def wait_ready(self, timeout: float) -> None:
        """Return once the guest agent answers; event-driven: the agent opening its port shows
        up as a QMP VSERPORT_CHANGE event, and only then is it pinged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        assert self._watch is not None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Timeout(f"guest did not become ready within {timeout:.0f} s")
            port = asyncio.ensure_future(self._agent_port_open.wait())
            died = asyncio.ensure_future(self._watch.exited.wait())
            done, pending = await asyncio.wait(
                {port, died}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if died in done:
                raise EngineError(
                    "QEMU exited while the guest was booting: "
                    f"{log_tail(self.cfg.runtime.qemu_log, since=self._log_from) or 'no message'}"
                )
            if port not in done:
                continue
            try:
                await self.agent.ping(timeout=min(5.0, max(0.5, deadline - loop.time())))
            except GureumError:
                # Port opened but the agent is not answering yet (or it restarted): wait for
                # the next open event.
                self._agent_port_open.clear()
                continue
            self.events.on_boot_event("agent_ready", time.time())
            return

    def _on_marker(self, event: str, at: float) -> None:
        if event in ("kernel_started", "init_started", "network_up"):
            self.events.on_boot_event(event, at)

    def _on_qmp_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "VSERPORT_CHANGE" and data.get("id") == AGENT_PORT_ID:
            if data.get("open"):
                self._agent_port_open.set()
            else:
                self._agent_port_open.clear()
        elif name == "SHUTDOWN" and data.get("guest"):
            self._guest_shutdown = True
        elif name == "BLOCK_IO_ERROR" and data.get("action") == "stop":
            # The disk's default error policy stops the guest on ENOSPC rather than letting it
            # see an I/O error; the guest is frozen until someone makes room and resumes it.
            why = "no space left on the host's disk" if data.get("nospace") else "disk I/O error"
            detail = data.get("reason") or data.get("operation") or ""
            self.events.on_paused(f"{why} ({detail})" if detail else why)
        elif name == "RESUME":
            self.events.on_resumed()

    # -- stop ------------------------------------------------------------------------------------
    async def stop(self, timeout: float) -> str:
        """ACPI power button, then QMP quit, then SIGKILL. Returns which one ended it."""
        assert self._watch is not None
        self._stop_requested = True
        with contextlib.suppress(GureumError):
            await self.monitor.execute("system_powerdown", timeout=5)
            if await self._watch.wait(timeout):
                return "powerdown"
        with contextlib.suppress(GureumError):
            await self.monitor.execute("quit", timeout=5)
        if await self._watch.wait(5):
            return "quit"
        await self.kill()
        return "killed"

    async def kill(self) -> None:
        self._stop_requested = True
        if self.pid is not None:
            procs.kill(self.pid)
        if self._watch is not None:
            await self._watch.wait(10)

    def _on_process_exit(self) -> None:
        status = ""
        if self._proc is not None:
            with contextlib.suppress(Exception):
                rc = self._proc.wait(timeout=0)
                status = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        if self._stop_requested or self._guest_shutdown:
            how, detail = "stopped", "guest powered off" if self._guest_shutdown else "stopped"
        else:
            how = "crashed"
            said = log_tail(self.cfg.runtime.qemu_log, 2, since=self._log_from)
            detail = "QEMU exited unexpectedly" + "".join(f" ({x})" for x in (status, said) if x)
        self.exit_how = how
        asyncio.get_running_loop().create_task(self._close_channels())
        self.events.on_exit(how, detail)

    async def _close_channels(self) -> None:
        await self.monitor.close()
        await self.serial.close()
        await self.agent.close()

    def check_alive(self) -> None:
        if self._watch is not None:
            self._watch.check()

    @property
    def exited(self) -> bool:
        return self._watch is not None and self._watch.exited.is_set()

    # -- snapshots and resources -----------------------------------------------------------------
    async def pause(self) -> None:
        await self.monitor.execute("stop")

    async def resume(self) -> None:
        await self.monitor.execute("cont")

    async def status(self) -> str:
        return str((await self.monitor.execute("query-status"))["status"])

    async def disk_top(self) -> tuple[str, str]:
        """(node name, file) of the root disk's current top layer."""
        for dev in await self.monitor.execute("query-block"):
            if "root-disk" in str(dev.get("qdev", "")) and dev.get("inserted"):
                inserted = dev["inserted"]
                return inserted["node-name"], inserted["file"]
        raise EngineError("the root disk is not attached")

    async def snapshot_disk(self, new_top: Path, node_name: str) -> None:
        """Freeze the current top layer: writes go to ``new_top`` (an empty qcow2 made by the
        caller, backed by the current top) from now on. QEMU opens the file; it never creates
        one (it may not write to the folder)."""
        node, _ = await self.disk_top()
        await self.monitor.execute(
            "blockdev-add",
            {
                "driver": "qcow2",
                "node-name": node_name,
                "backing": None,
                "discard": "unmap",
                "file": {"driver": "file", "filename": str(new_top)},
            },
        )
        try:
            await self.monitor.execute("blockdev-snapshot", {"node": node, "overlay": node_name})
        except GureumError:
            await self.monitor.execute("blockdev-del", {"node-name": node_name})
            raise

    async def save_state(self, dest: Path) -> None:
        """The whole state, RAM included, to a file (the VM should be paused)."""
        await migration.save(self.monitor, dest, ignore_shared=False)

    async def hotplug_cpu(self, core: int) -> None:
        await self.monitor.execute(
            "device_add", device_args(hot_cpu_device(self.cfg.cpu_model, core))
        )

    async def hotplug_dimm(self, index: int, mib: int) -> None:
        backend = f"dimm{index}-mem"
        await self.monitor.execute(
            "object-add", {"qom-type": "memory-backend-ram", "id": backend, "size": mib << 20}
        )
        await self.monitor.execute(
            "device_add", {"driver": "pc-dimm", "id": f"dimm{index}", "memdev": backend}
        )

    async def hotplug_nic(self, slot: int, mac: str, tap_fd: int) -> None:
        await self.monitor.pass_fd(tap_fd, f"tap{slot}")
        await self.monitor.execute(
            "netdev_add", {"type": "tap", "id": f"net{slot}", "fd": f"tap{slot}"}
        )
        try:
            await self.monitor.execute("device_add", device_args(nic_device(slot, mac)))
        except GureumError:
            await self.monitor.execute("netdev_del", {"id": f"net{slot}"})
            raise

    async def unplug_nic(self, slot: int, timeout: float = 30) -> None:
        """Ask the guest to release the NIC (PCIe hot-unplug), then drop its backend."""
        gone = self.monitor.expect("DEVICE_DELETED", lambda d: d.get("device") == f"nic{slot}")
        await self.monitor.execute("device_del", {"id": f"nic{slot}"})
        await self.monitor.wait(gone, "unplugging the NIC", timeout)
        await self.monitor.execute("netdev_del", {"id": f"net{slot}"})

    async def resize_disk(self, size_bytes: int) -> None:
        node, _ = await self.disk_top()
        await self.monitor.execute("block_resize", {"node-name": node, "size": size_bytes})

    # -- guest -----------------------------------------------------------------------------------
    async def exec(self, argv: list[str], *, stdin: bytes | None, timeout: float) -> ExecResult:
        return await self.agent.exec(argv, stdin=stdin, timeout=timeout)

    def rss_bytes(self) -> int | None:
        if self.pid is None:
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except FileNotFoundError:
            return None
        return None
