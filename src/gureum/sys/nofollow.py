"""Opening files in folders someone else may write to (a VM's runtime folder is its QEMU's).

The service runs as root. A folder owned by a VM's unprivileged user is the VM's to fill: had
its QEMU been taken over, a name there could be a symbolic link to a root file, a hard link to
one, or a FIFO that blocks whoever opens it. ``open_nofollow`` opens only a plain file that is
really there: no link followed (O_NOFOLLOW), no blocking on a FIFO (O_NONBLOCK while opening),
and, for writing, not a second name of another file (one link only).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
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
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise
