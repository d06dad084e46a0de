"""An image's root filesystem seen through a container's uid range, without copying it.

A container's root is uid ``uid_base`` on the host (bundle.py). The image's files are owned by
host root, and root inside would see them as owned by nobody it knows, so it could not write
``/etc`` even through its own layer. An idmapped mount (Linux 5.12 and later) shows one folder
with every owner shifted by the container's mapping: host uid 0 reads as ``uid_base``. The
image stays one read-only copy on disk for every container; each gets its own shifted view of
it as the lower layer of its overlay, under its own writable layer.

The mapping is a user namespace's: a short-lived child process makes one with the container's
mapping, its namespace file is handed to ``mount_setattr``, and the child exits. Python has no
binding for the new mount API (``open_tree``, ``mount_setattr``, ``move_mount``), so the calls
go through ctypes, by number (x86-64).
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

from gureum.errors import EngineError

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4
_MOUNT_ATTR_IDMAP = 0x100000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_CLONE_NEWUSER = 0x10000000

_libc = ctypes.CDLL(None, use_errno=True)


def _syscall(number: int, *args: int | bytes) -> int:
    """syscall(2) with every number passed as a full C long (a variadic call would pass a
    Python int as a 32-bit int, leaving the register's upper half undefined)."""
    return int(
        _libc.syscall(
            ctypes.c_long(number),
            *(a if isinstance(a, bytes) else ctypes.c_long(a) for a in args),
        )
    )


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise EngineError(f"{what} failed: {os.strerror(err)}")
    return ret


def _userns(uid_base: int, count: int) -> int:
    """A descriptor of a new user namespace mapping 0..count to uid_base.. (uids and gids)."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a namespace to hold, then wait to be let go
        try:
            os.close(ready_r)
            os.close(done_w)
            ok = _libc.unshare(_CLONE_NEWUSER) == 0
            os.write(ready_w, b"1" if ok else b"0")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise EngineError("cannot make a user namespace for the container's files")
        line = f"0 {uid_base} {count}\n"
        Path(f"/proc/{pid}/uid_map").write_text(line)
        Path(f"/proc/{pid}/gid_map").write_text(line)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


def mount_shifted(source: Path, target: Path, uid_base: int, count: int) -> None:
    """Mount ``source`` (recursively) at ``target``, read-only, owners shifted by ``uid_base``.

    ``target`` must exist; unmount it with ``umount`` (``storage.overlay.unmount``)."""
    userns = _userns(uid_base, count)
    tree = -1
    try:
        flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE
        tree = _check(_syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source), flags), "open_tree")
        # struct mount_attr { __u64 attr_set, attr_clr, propagation, userns_fd; }
        # Read-only, and neither its devices nor its setuid bits mean anything through it.
        flags = _MOUNT_ATTR_IDMAP | _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV
        attr = struct.pack("QQQQ", flags, 0, 0, userns)
        _check(
            _syscall(
                _SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH | _AT_RECURSIVE, attr, len(attr)
            ),
            "an idmapped mount (mount_setattr; Linux 5.12 and later)",
        )
        moved = _syscall(
            _SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH
        )
        _check(moved, "move_mount")
    finally:
        if tree >= 0:
            os.close(tree)
        os.close(userns)
