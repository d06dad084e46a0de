"""A container's root: the image's files, shifted to its uid range, under a layer of its own.

In the container's folder::

    lower/   the image's root filesystem, idmapped (idmap.py): read-only, shared, never copied
    upper/   everything the container writes (owned by its root: ``uid_base``)
    work/    overlayfs's scratch
    root/    the overlay of upper on lower: what runc gets as the container's ``/``

Snapshots of a container are copies of ``upper`` (taken stopped or frozen); the image under it
is never written.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from gureum.engine.container.bundle import UID_RANGE
from gureum.engine.container.idmap import mount_shifted
from gureum.errors import EngineError
from gureum.sys.runner import run

LOWER, UPPER, WORK, ROOT = "lower", "upper", "work", "root"


def root_of(folder: Path) -> Path:
    return folder / ROOT


def is_mounted(path: Path) -> bool:
    """Is something mounted at ``path``? From the kernel's mount table: os.path.ismount cannot
    see a bind mount of a folder of the same filesystem (the idmapped ``lower``)."""
    wanted = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            # Field 5 is the mount point, with space, tab, newline and backslash as octal escapes.
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == wanted:
                return True
    return False


def mount(image_root: Path, folder: Path, uid_base: int) -> Path:
    """Assemble the container's root in ``folder`` (made if missing; an existing ``upper`` is
    kept: the container's own files); returns the path to give runc. Undone on failure."""
    if not (image_root / "sbin").exists() and not (image_root / "usr").exists():
        raise EngineError(f"{image_root} is not a root filesystem")
    if any(c in str(folder) for c in ",:\n"):  # overlayfs's option syntax would split it
        raise EngineError(f"a container's folder cannot have ',' or ':' in its path: {folder}")
    for name in (LOWER, UPPER, WORK, ROOT):
        (folder / name).mkdir(parents=True, exist_ok=True)
    # runc mounts the root from inside the container's user namespace, as its uid: every
    # folder above it must let it through (x for others, or for its group when the folder's
    # group is the container's root's), or the mount is refused (EACCES).
    for above in [folder, *folder.parents]:
        st = os.stat(above)
        if not (st.st_mode & 0o001 or (st.st_gid == uid_base and st.st_mode & 0o010)):
            raise EngineError(f"{above} must be searchable by others (mode o+x) for a container")
    os.chown(folder / UPPER, uid_base, uid_base)
    os.chown(folder / WORK, uid_base, uid_base)
    try:
        if not is_mounted(folder / LOWER):
            mount_shifted(image_root, folder / LOWER, uid_base, UID_RANGE)
        if not is_mounted(folder / ROOT):
            options = f"lowerdir={folder / LOWER},upperdir={folder / UPPER},workdir={folder / WORK}"
            run(
                ["mount", "-t", "overlay", "overlay", "-o", options, str(folder / ROOT)], timeout=30
            )
    except BaseException:
        unmount(folder)
        raise
    return folder / ROOT


def unmount(folder: Path) -> None:
    """Take the container's root apart (its ``upper`` stays); a no-op for what is not mounted."""
    for name in (ROOT, LOWER):
        path = folder / name
        if is_mounted(path):
            # Lazy: a process that still holds a file (an exec racing a stop) must not keep the
            # folder from going; the mount goes when it lets go.
            run(["umount", "--lazy", str(path)], timeout=30)
    with contextlib.suppress(OSError):
        (folder / ROOT).rmdir()
