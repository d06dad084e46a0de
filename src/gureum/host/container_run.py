"""One running container as the host watches it: its console (the init's output, followed in
its log file), the end of its init (a pidfd), and its readiness.

A container has no serial port or agent: runc points its init's stdout and stderr at the
console log, and ``ContainerConsole`` follows that file for viewers and for the same marker
lines a VM's console shows (tiny's init prints them in a container too). The log is in the
container's own layer (host/containers.py): the container holds a descriptor to it, with which
it could grow it without end (or ``fallocate`` room past its end, which no size check sees),
so it must be on a filesystem whose size is the container's own disk. It is rotated at the same
bound as a VM's log. A console has no input: a container has no terminal of its own (its init
would block on a full one while nobody reads it), and ``exec`` runs commands in it.

Its init is not the service's child (runc starts it and exits), so its end is seen through a
pidfd, which becomes readable when the process ends whoever its parent is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from gureum.engine.qemu.serial import (
    INIT_READY,
    INIT_STARTED,
    LOG_CAP,
    NETWORK_UP,
    Fanout,
    rotate_log,
)
from gureum.engine.qemu.vm import VMEvents
from gureum.errors import InvalidState
from gureum.sys.nofollow import open_nofollow

log = logging.getLogger(__name__)

# How often the log is looked at: often while the init comes up (readiness is seen here), then
# only as often as a person watching needs, and rarely when nobody does (only to rotate it).
POLL_BOOTING_S, POLL_VIEWED_S, POLL_IDLE_S = 0.01, 0.1, 1.0
READ_CHUNK = 65536
READ_PER_LOOK = 1 << 20
ROTATE_EVERY_S = 1.0
# The same marker lines as a VM's console (tiny's init prints them in a container too); its
# ready line is the container's readiness, as the agent's answer is a VM's.
CONTAINER_MARKERS = (
    (INIT_STARTED, "init_started"),
    (INIT_READY, "agent_ready"),
    (NETWORK_UP, "network_up"),
)


class ContainerConsole:
    """Implements the service's ``Console`` over the container's log file."""

    def __init__(self, log_path: Path, on_marker: Callable[[str, float], None]) -> None:
        self.log_path = log_path
        self._out = Fanout(CONTAINER_MARKERS, on_marker, log_path.parents[2].name)
        self._task: asyncio.Task[None] | None = None
        self.booting = True
        self._offset = 0

    def start(self, from_end: bool) -> None:
        """Follow the log: from its end (an adopted container: its boot was seen before), or
        from its size now (a fresh start: what it prints from here on)."""
        try:
            self._offset = self.log_path.stat().st_size
        except FileNotFoundError:
            self._offset = 0
        if from_end:
            self.booting = False
        self._task = asyncio.create_task(self._pump(), name=f"console-{self.log_path.parent}")

    async def _pump(self) -> None:
        rotated = 0.0
        while True:
            # In the loop itself (its viewers' queues are the loop's): one look reads at most
            # READ_PER_LOOK bytes, whatever the container prints meanwhile.
            self._read()
            if self._offset > LOG_CAP and time.monotonic() - rotated >= ROTATE_EVERY_S:
                # Copying the log's last LOG_CAP bytes aside is a thread's work, and done at
                # most once a second: a flood costs the container its own disk, not the loop.
                rotated = time.monotonic()
                if await asyncio.to_thread(rotate_log, self.log_path):
                    self._offset = 0
            interval = (
                POLL_BOOTING_S
                if self.booting
                else POLL_VIEWED_S
                if self._out.watched
                else POLL_IDLE_S
            )
            await asyncio.sleep(interval)

    def _read(self) -> None:
        try:
            with open_nofollow(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size < self._offset:  # rotated: the new log is read from its start
                    self._offset = 0
                # What a flood printed beyond one look's bytes is skipped (the log keeps it).
                self._offset = max(self._offset, size - READ_PER_LOOK)
                f.seek(self._offset)
                left = READ_PER_LOOK
                while left > 0 and (chunk := f.read(min(READ_CHUNK, left))):
                    left -= len(chunk)
                    self._offset += len(chunk)
                    self._out.publish(chunk, time.time())
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s: %s", self.log_path, exc)

    def attach(self) -> asyncio.Queue[bytes | None]:
        return self._out.attach()

    def detach(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._out.detach(queue)

    async def write(self, data: bytes) -> None:
        """Input is dropped: the container has no terminal to take it (the CLI says so)."""

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._out.end()


class RunningContainer:
    """A container's init as the host watches it: its events go to the service."""

    def __init__(self, instance_id: str, pid: int, init: str, events: VMEvents, log_path: Path):
        self.instance_id = instance_id
        self.pid = pid
        self.init = init
        self.events = events
        self.stopping = False  # the host asked it to end: its end is a stop, not a crash
        self.exited = False
        self.ready = asyncio.Event()
        self.ended = asyncio.Event()
        self.console = ContainerConsole(log_path, self._marker)
        self._pidfd: int | None = None

    def _marker(self, event: str, at: float) -> None:
        if event == "agent_ready":  # its ready line: reported once, by mark_ready
            self.mark_ready(at)
        else:
            self.events.on_boot_event(event, at)

    def mark_ready(self, at: float) -> None:
        if not self.ready.is_set():
            self.events.on_boot_event("agent_ready", at)
            self.console.booting = False
            self.ready.set()

    def watch(self, *, booted: bool) -> None:
        """Follow its console and its end from now on (``booted``: it was ready before)."""
        if booted:
            self.ready.set()
        self.console.start(from_end=booted)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            asyncio.get_running_loop().call_soon(self._exited)
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._exited)

    def _exited(self) -> None:
        if self.exited:
            return
        self.exited = True
        self._close_pidfd()
        self.console.booting = False
        self.ended.set()
        if self.stopping:
            self.events.on_exit("stopped", "the container's init ended as asked")
        else:
            self.events.on_exit("crashed", f"the container's init (pid {self.pid}) ended")

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None

    async def wait_ready(self, timeout: float) -> None:
        """Until it is ready (ready: the init said so, or the host saw it); InvalidState if
        its init ends first or past ``timeout``."""
        ready = asyncio.ensure_future(self.ready.wait())
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({ready, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            ended.cancel()
        if self.ready.is_set():
            return
        if self.exited:
            said = self.last_words()
            raise InvalidState(f"the container's init ended before it was ready: {said}")
        raise InvalidState(f"the container was not ready within {timeout:g} s")

    def last_words(self) -> str:
        try:
            with open_nofollow(self.console.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 300))
                return f.read().decode(errors="replace").strip()[-300:] or "it printed nothing"
        except OSError:
            return "it printed nothing"

    def close(self) -> None:
        self._close_pidfd()
        self.console.close()
