"""A minimal writer for the cpio "newc" format the Linux kernel unpacks as an initramfs.

Written here rather than piping ``find | cpio`` through a shell: the result is deterministic
(sorted entries, fixed times and owners), so the same inputs give the same image checksum.
"""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path
from typing import BinaryIO


def _header(ino: int, mode: int, size: int, nlink: int, name: bytes) -> bytes:
    fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,  # ino mode uid gid nlink mtime filesize
        0,
        0,
        0,
        0,  # devmajor devminor rdevmajor rdevminor
        len(name) + 1,
        0,  # namesize check
    ]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad(out: BinaryIO, written: int) -> None:
    out.write(b"\0" * ((4 - written % 4) % 4))


def _entry(out: BinaryIO, ino: int, mode: int, name: str, data: bytes, nlink: int = 1) -> None:
    raw = name.encode()
    head = _header(ino, mode, len(data), nlink, raw) + raw + b"\0"
    out.write(head)
    _pad(out, len(head))
    out.write(data)
    _pad(out, len(data))


def write_newc(root: Path, out: BinaryIO) -> None:
    """Archive every file, folder and symlink under ``root`` (paths relative to it)."""
    ino = 1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                _entry(out, ino, stat.S_IFLNK | 0o777, rel, os.readlink(path).encode())
            elif stat.S_ISDIR(st.st_mode):
                _entry(out, ino, stat.S_IFDIR | perm, rel, b"", nlink=2)
            elif stat.S_ISREG(st.st_mode):
                _entry(out, ino, stat.S_IFREG | perm, rel, path.read_bytes())
            ino += 1
    _entry(out, 0, 0, "TRAILER!!!", b"")


def build_initramfs(root: Path, dest: Path) -> None:
    tmp = dest.with_suffix(".tmp")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz,
    ):
        write_newc(root, gz)  # type: ignore[arg-type]  # GzipFile is a binary file
    tmp.rename(dest)
