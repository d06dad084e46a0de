"""QEMU processes: spawning them detached, watching them die, finding them again.

A VM's QEMU runs in its own session (``setsid``), so it outlives the service: stopping or
killing the service never stops a VM, as with libvirt. While the service that spawned a QEMU
lives it reaps it; after a restart the service re-finds each QEMU by its pid file and checks the
command line before trusting it (pids are reused).

Exit is noticed through a pidfd, which becomes readable the moment the process dies (child or
not): crash detection is an event, not a poll.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import select
import subprocess
from collections.abc import Callable
from pathlib import Path

from gureum.errors import EngineError
from gureum.sys.nofollow import open_nofollow
from gureum.sys.procs import cmdline, is_alive, reap

log = logging.getLogger(__name__)


def spawn(
    argv: list[str], log_path: Path, pass_fds: tuple[int, ...] = (), uid: int | None = None
) -> subprocess.Popen[bytes]:
    """Start QEMU in a new session with stdout/stderr to its log; returns at once.
    ``pass_fds`` (TAP devices) are inherited under the same numbers."""
    with open_nofollow(log_path, "ab") as out:  # in a folder the VM's user owns
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
                pass_fds=pass_fds,
                # A user of its own, no supplementary groups but kvm's (for /dev/kvm).
                user=uid,
                group=uid,
                extra_groups=_kvm_group() if uid is not None else None,
            )
        except FileNotFoundError as exc:
            raise EngineError(f"{argv[0]} is not installed (run `make setup`)") from exc


def _kvm_group() -> list[int]:
    try:
        return [grp.getgrnam("kvm").gr_gid]
    except KeyError:
        return []


def owns(pid: int, marker: str) -> bool:
    """Is ``pid`` a live QEMU whose command line mentions ``marker`` (its runtime folder)?"""
    if not is_alive(pid):
        return False
    argv = cmdline(pid)
    return bool(argv) and "qemu-system" in argv[0] and any(marker in a for a in argv)


def find_by_marker(marker: str) -> list[int]:
    """Every live QEMU whose command line mentions ``marker`` (used to find leftovers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and owns(int(entry.name), marker):
            found.append(int(entry.name))
    return found


class ExitWatch:
    """Calls ``on_exit`` once, from the event loop, when the process ``pid`` dies."""

    def __init__(self, pid: int, on_exit: Callable[[], None]) -> None:
        self.pid = pid
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self.exited = asyncio.Event()
        self._fd: int | None = None
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._loop.call_soon(self._fire)
            return
        self._loop.add_reader(self._fd, self._fire)

    def _fire(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self.exited.is_set():
            return
        self.exited.set()
        self._on_exit()  # first: the owner may collect the exit status itself (Popen.poll)
        reap(self.pid)

    def check(self) -> None:
        """Safety net for the reconciler: fire if the process is gone but no event came.

        The pidfd says so when it can: /proc shows a many-threaded process's leader as a
        zombie while its other threads are still dying (QEMU's, for a moment after SIGKILL),
        and firing then would miss the exit status, which cannot be collected before they go.
        """
        if self.exited.is_set():
            return
        if self._fd is not None:
            readable, _, _ = select.select([self._fd], [], [], 0)
            if readable:
                self._fire()
            return
        if not is_alive(self.pid):
            self._fire()

    async def wait(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self.exited.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
