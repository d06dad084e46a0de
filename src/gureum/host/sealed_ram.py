"""Saved guest RAM handed to a resuming QEMU as a sealed in-memory copy, never as the file.

QEMU 7.2 opens a RAM file for writing even to map it privately (copy-on-write), so a QEMU given
a snapshot's file could write into it: one compromised QEMU would rewrite the memory every later
restore or clone of that snapshot resumes into, another VM's or another tenant's (a template).
Instead the host copies the file into a memfd, seals it against every write, resize and further
seal (``F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``), and QEMU inherits the fd and
opens ``/proc/self/fd/N``: it can still map it privately and write its own copy-on-write pages,
but ``write``, a shared writable mapping and ``ftruncate`` fail (EPERM). The saved files stay
root's alone.

A copy kept (``keep=True``, a template's) serves every VM that resumes from the same snapshot:
their unwritten pages are the same host pages. It is charged to the service, not to whichever
project touched a page first, and goes when its snapshot does.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
CHUNK = 64 << 20


def sealed_copy(path: Path) -> int:
    """A sealed memfd holding ``path``'s bytes (its holes stay holes: unread pages cost
    nothing); close-on-exec, for ``pass_fds`` to hand on."""
    fd = os.memfd_create(f"gureum-{path.name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            size = os.fstat(src).st_size
            os.ftruncate(fd, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(src, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole from here to the end
                        break
                    raise
                end = os.lseek(src, start, os.SEEK_HOLE)
                while start < end:
                    os.lseek(fd, start, os.SEEK_SET)
                    sent = os.sendfile(fd, src, start, min(CHUNK, end - start))
                    if sent == 0:
                        raise OSError(errno.EIO, f"{path} ended early")
                    start += sent
                offset = end
        finally:
            os.close(src)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


class SealedRam:
    """Sealed copies of saved RAM files, one per snapshot folder, shared by every VM resumed
    from it while any runs (a template's for as long as the template exists)."""

    def __init__(self) -> None:
        self._fds: dict[Path, dict[str, int]] = {}  # folder -> {backend: fd}
        self._users: dict[Path, set[str]] = {}  # folder -> the VMs resumed from it
        self._pinned: set[Path] = set()

    def take(self, folder: Path, user: str, *, pin: bool = False) -> dict[str, int]:
        """{backend: fd} for the ``ram-<backend>`` files of a snapshot folder, for the VM
        ``user`` (until ``drop``); ``pin``: kept after the last user too, until ``forget``."""
        fds = self._fds.get(folder)
        if fds is None:
            fds = {}
            try:
                for path in sorted(folder.glob("ram-*")):
                    fds[path.name.removeprefix("ram-")] = sealed_copy(path)
            except BaseException:
                _close(fds)
                raise
            self._fds[folder] = fds
        self._users.setdefault(folder, set()).add(user)
        if pin:
            self._pinned.add(folder)
        return fds

    def drop(self, user: str) -> None:
        """The VM is gone (or never started): copies no one else uses and no template keeps
        are closed (a running QEMU keeps the pages it maps)."""
        for folder, users in list(self._users.items()):
            users.discard(user)
            if not users and folder not in self._pinned:
                self._close(folder)

    def forget(self, folder: Path) -> None:
        """The snapshot is going."""
        self._pinned.discard(folder)
        self._close(folder)

    def _close(self, folder: Path) -> None:
        _close(self._fds.pop(folder, {}))
        self._users.pop(folder, None)


def _close(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
