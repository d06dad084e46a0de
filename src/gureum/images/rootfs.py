"""An image's root filesystem as a folder, for containers (issue 14).

A container runs the same image a VM boots: its files come from the image's disk. They are
unpacked once per image version, next to the disk (``rootfs/``), and every container of that
version sees that one folder, read-only and shifted to its own uids (engine/container/rootfs.py).

The disk is never mounted: qemu-img converts it to a raw file in scratch space, and debugfs
copies the files out of the ext4 filesystem (owners, modes and links kept). Only disks that are
one ext4 filesystem, as gureum builds them (``tiny``, ``debian``), can be unpacked; an imported
disk with a partition table is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from gureum.errors import InvalidState
from gureum.sys.runner import run

FOLDER = "rootfs"
_EXT_MAGIC_OFFSET = 1024 + 56
_EXT_MAGIC = b"\x53\xef"


def folder_of(image_dir: Path) -> Path:
    return image_dir / FOLDER


def is_ext_filesystem(raw: Path) -> bool:
    """Does the raw disk start with an ext2/3/4 superblock (no partition table)?"""
    with open(raw, "rb") as f:
        f.seek(_EXT_MAGIC_OFFSET)
        return f.read(2) == _EXT_MAGIC


def unpack(disk: Path, dest: Path, scratch: Path) -> Path:
    """The image's root filesystem in ``dest`` (unpacked now unless it is there already).

    Only for images gureum built: the service never passes an imported disk. Even so, the
    filesystem is checked first (``e2fsck -fn``: a name with a ``/`` in it, or two entries of
    one name, would make debugfs write outside ``dest``, as root), and refused on any error.
    One unpack per image version at a time (a lock beside ``dest``); each works in a scratch
    file and a folder of its own, and the folder is renamed into place whole. ``dest`` is
    0700: the idmapped mounts reach it as root, no host user need ever see the image's files
    (its setuid programs)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(f".{dest.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the file closes
        if dest.is_dir():
            return dest
        fd, name = tempfile.mkstemp(prefix="rootfs-", suffix=".raw", dir=scratch)
        os.close(fd)
        raw = Path(name)
        partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))  # 0700
        try:
            run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], timeout=600)
            if not is_ext_filesystem(raw):
                raise InvalidState(
                    "this image's disk is not one ext4 filesystem (an imported disk with "
                    "partitions?): containers can run only images gureum built (tiny, debian)"
                )
            checked = run(["e2fsck", "-fn", str(raw)], check=False, timeout=600)
            if checked.returncode != 0:
                raise InvalidState(
                    "the image's filesystem has errors (e2fsck -fn); it is not unpacked"
                )
            # debugfs reports trouble on stderr and still exits 0: a root without /sbin or
            # /usr (checked below) is how a failed copy shows.
            run(["debugfs", "-R", f"rdump / {partial}", str(raw)], timeout=600)
            if not ((partial / "sbin").exists() or (partial / "usr").exists()):
                raise InvalidState(
                    "the image's disk holds no root filesystem to run as a container"
                )
            os.chmod(partial, 0o700)  # rdump may have given it the image root's mode
            partial.rename(dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                raw.unlink()
            shutil.rmtree(partial, ignore_errors=True)
    return dest
