"""A container's root: the image's files, shifted to its uid range, under a layer of its own.

In the container's folder::

    lower/        the image's root filesystem, idmapped (idmap.py): read-only, shared, never
                  copied
    layer.ext4    the container's own disk: a sparse file of its disk size holding an ext4
                  filesystem, mounted (loop) at layer/; everything the container writes is in it,
                  so its disk size bounds what it can take of the host's disk
    layer/upper/  everything the container writes (owned by its root: ``uid_base``)
    layer/work/   overlayfs's scratch
    root/         the overlay of upper on lower: what runc gets as the container's ``/``

Snapshots of a container are copies of ``layer.ext4`` (taken stopped, or frozen); the image
under it is never written.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from pathlib import Path

from gureum.engine.container.bundle import UID_RANGE
from gureum.engine.container.idmap import mount_shifted
from gureum.errors import EngineError, InvalidState
from gureum.sys.runner import run

LOWER, LAYER, ROOT = "lower", "layer", "root"
UPPER, WORK = f"{LAYER}/upper", f"{LAYER}/work"
LAYER_FILE = "layer.ext4"
ROOT_MODE = 0o755
# The layer's journal: small (the filesystem is one container's writes), so that a new
# container's layer takes about 4 MiB of the host's disk, not ext4's default 16 or more.
JOURNAL_MIB = 4


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


def make_layer(path: Path, size_bytes: int, uid_base: int) -> None:
    """A new, empty layer: a sparse file of ``size_bytes`` with an ext4 filesystem whose root
    the container's root owns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size_bytes)
    finally:
        os.close(fd)
    try:
        run(["mkfs.ext4", "-q", "-F", "-J", f"size={JOURNAL_MIB}",
             "-E", f"root_owner={uid_base}:{uid_base}", str(path)], timeout=60)  # fmt: skip
    except BaseException:
        path.unlink()
        raise


def grow_layer(path: Path, size_bytes: int) -> bool:
    """Grow the (unmounted) layer's file and filesystem to ``size_bytes``; False when it is
    that size or larger already (a disk never shrinks). Offline only: growing a mounted ext4
    needs CAP_SYS_RESOURCE, which a service in a container (as on the machines gureum is
    tested on) may not have, so a container's layer grows at its next start."""
    if path.stat().st_size >= size_bytes:
        return False
    os.truncate(path, size_bytes)
    run(["e2fsck", "-f", "-p", str(path)], timeout=300)
    run(["resize2fs", str(path)], timeout=300)
    return True


def mount(image_root: Path, folder: Path, uid_base: int, layer_bytes: int) -> Path:
    """Assemble the container's root in ``folder`` (made if missing; an existing layer is
    kept, grown to ``layer_bytes`` if it is smaller: the container's own files); returns the
    path to give runc. Undone on failure."""
    if not (image_root / "sbin").exists() and not (image_root / "usr").exists():
        raise EngineError(f"{image_root} is not a root filesystem")
    if any(c in str(folder) for c in ",:\n"):  # overlayfs's option syntax would split it
        raise EngineError(f"a container's folder cannot have ',' or ':' in its path: {folder}")
    for name in (LOWER, LAYER, ROOT):
        (folder / name).mkdir(parents=True, exist_ok=True)
    layer = folder / LAYER_FILE
    if not layer.exists():
        make_layer(layer, layer_bytes, uid_base)
    elif not is_mounted(folder / LAYER):
        grow_layer(layer, layer_bytes)
    # runc mounts the root from inside the container's user namespace, as its uid: every
    # folder above it must let it through (x for others, or for its group when the folder's
    # group is the container's root's), or the mount is refused (EACCES).
    for above in [folder, *folder.parents]:
        st = os.stat(above)
        if not (st.st_mode & 0o001 or (st.st_gid == uid_base and st.st_mode & 0o010)):
            raise EngineError(f"{above} must be searchable by others (mode o+x) for a container")
    try:
        if not is_mounted(folder / LAYER):
            # nodev, nosuid: nothing in it is a device or gains privilege on the host's side.
            run(["mount", "-t", "ext4", "-o", "loop,nodev,nosuid", str(layer),
                 str(folder / LAYER)], timeout=30)  # fmt: skip
        for name in (UPPER, WORK):
            (folder / name).mkdir(exist_ok=True)
            os.chown(folder / name, uid_base, uid_base)
        # ``upper`` is the container's "/" as its users see it: 0755, as every root is (not the
        # service's umask, nor the unpacked image's folder, which is 0700 to the host's users):
        # a 0700 "/" locks every user but root out of every file.
        os.chmod(folder / UPPER, ROOT_MODE)
        if not is_mounted(folder / LOWER):
            mount_shifted(image_root, folder / LOWER, uid_base, UID_RANGE)
        if not is_mounted(folder / ROOT):
            options = (
                f"nodev,nosuid,lowerdir={folder / LOWER},upperdir={folder / UPPER},"
                f"workdir={folder / WORK}"
            )
            run(
                ["mount", "-t", "overlay", "overlay", "-o", options, str(folder / ROOT)], timeout=30
            )
    except BaseException:
        unmount(folder)
        raise
    return folder / ROOT


def check_mount_points(folder: Path, points: tuple[str, ...]) -> None:
    """Refuse a start when the container's own layer holds a link, or anything but a folder,
    where runc is about to mount (``/proc``, ``/dev``...): the container wrote its layer on its
    last run, and runc before its 2025 fixes can be led to mount through such a link onto the
    host (the "malicious image" case of CVE-2025-31133 and CVE-2025-52881). A name the image
    has and the layer does not touch is the image's; a whiteout (a deleted one) is let be."""
    upper = folder / UPPER
    for point in points:
        try:
            st = os.lstat(upper / point.lstrip("/"))
        except FileNotFoundError:
            continue
        whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        if not (stat.S_ISDIR(st.st_mode) or whiteout):
            raise InvalidState(
                f"the container's own files put a {'link' if stat.S_ISLNK(st.st_mode) else 'file'}"
                f" at {point}, where its runtime mounts {point}: it is not started (restore a "
                "snapshot from before, or delete it)"
            )


def unmount(folder: Path) -> None:
    """Take the container's root apart (its layer stays); a no-op for what is not mounted."""
    for name in (ROOT, LOWER):
        path = folder / name
        if is_mounted(path):
            # Lazy: a process that still holds a file (an exec racing a stop) must not keep the
            # folder from going; the mount goes when it lets go.
            run(["umount", "--lazy", str(path)], timeout=30)
    # The layer is not unmounted lazily: a later start would mount the same file again beside
    # a mount still alive (two filesystems writing one disk). It waits a little for the
    # overlay above to let go; past that it stays mounted, and says so.
    layer = folder / LAYER
    for attempt in range(50):
        if not is_mounted(layer):
            break
        try:
            run(["umount", str(layer)], timeout=30)
        except EngineError:
            if attempt == 49:
                raise
            time.sleep(0.1)
    with contextlib.suppress(OSError):
        (folder / ROOT).rmdir()
