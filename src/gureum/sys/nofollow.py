"""Opening files in folders someone else may write to (a VM's runtime folder is its QEMU's).

The service runs as root. A folder owned by a VM's unprivileged user is the VM's to fill: had
its QEMU been taken over, a name there could be a symbolic link to a root file, a hard link to
one, or a FIFO that blocks whoever opens it. ``open_nofollow`` opens only a plain file that is
really there: no link followed (O_NOFOLLOW), no blocking on a FIFO (O_NONBLOCK while opening),
and, for writing, not a second name of another file (one link only). ``socket_path`` does the
same for the unix sockets the service connects to there (QMP, guest agent, serial console).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_FLAGS = {
    "rb": os.O_RDONLY,
    "r+b": os.O_RDWR,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
}


def open_nofollow(path: Path, mode: str = "rb", perms: int = 0o600) -> BinaryIO:
    """``open(path, mode)`` for a plain file only; OSError (ELOOP, EINVAL, EMLINK) otherwise."""
    flags = _FLAGS[mode] | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    if mode in ("wb",):
        flags &= ~os.O_TRUNC  # truncate only once we know what it is
    fd = os.open(path, flags, perms)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if mode != "rb" and st.st_nlink != 1:
            raise OSError(errno.EMLINK, "a file with more than one name", str(path))
        if mode == "wb":
            os.ftruncate(fd, 0)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, mode)  # type: ignore[return-value]  # binary modes only: a BinaryIO
    except BaseException:
        os.close(fd)
        raise


def read_small(path: Path, limit: int = 64) -> bytes:
    """At most ``limit`` bytes of a plain file (a pid file): never a link, FIFO or device."""
    with open_nofollow(path, "rb") as f:
        return f.read(limit)


@contextlib.contextmanager
def socket_path(path: Path, owner: int | None) -> Iterator[str]:
    """A name to connect to the unix socket at ``path``, only if it is one (not a link to
    another VM's) and belongs to ``owner`` (the VM's user; None: anyone). The name is
    ``/proc/self/fd/N`` of a descriptor opened without following links, valid inside the block:
    connecting through it reaches exactly the socket that was checked."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.ENOTSOCK, "not a socket", str(path))
        if owner is not None and st.st_uid != owner:
            raise OSError(errno.EPERM, f"a socket of uid {st.st_uid}, not {owner}", str(path))
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
