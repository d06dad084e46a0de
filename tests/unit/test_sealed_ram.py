"""Saved RAM reaches a resuming QEMU as a sealed copy (``host/sealed_ram.py``): the QEMU, run as
its VM's own user, maps it privately and writes its own pages, but can never change what the
next VM resumes into (the snapshot, or a template every tenant's clones share)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gureum.host.sealed_ram import SealedRam, sealed_copy

MIB = 1 << 20

# What a compromised QEMU would try, as an unprivileged user, on the fd it inherited.
ATTEMPTS = r"""
import mmap, os, sys
fd = os.open(f"/proc/self/fd/{sys.argv[1]}", os.O_RDWR)  # as QEMU 7.2 opens a RAM file
ram = mmap.mmap(fd, 4 << 20, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
ram[:4] = b"MINE"  # its own copy-on-write page: allowed
tries = {
    "write": lambda: os.pwrite(fd, b"EVIL", 0),
    "shared map": lambda: mmap.mmap(fd, 4 << 20, flags=mmap.MAP_SHARED),
    "truncate": lambda: os.ftruncate(fd, 0),
    "grow": lambda: os.posix_fallocate(fd, 0, 8 << 20),
}
for name, attempt in tries.items():
    try:
        attempt()
        print(name, "ALLOWED")
    except OSError:
        print(name, "refused")
print("private", bytes(ram[:4]).decode())
"""


def identity(fd: int) -> tuple[int, int] | None:
    """The file an fd number names now, or None once closed. The number alone can be
    reused at once by another thread's open (a closed fd once 'survived' that way)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def saved(tmp_path: Path) -> Path:
    """A 4 MiB RAM file as QEMU saves one: mostly holes."""
    path = tmp_path / "ram-mem0"
    with open(path, "wb") as f:
        f.truncate(4 * MIB)
        f.write(b"template")
        f.seek(3 * MIB)
        f.write(b"kernel")
    return path


def test_a_sealed_copy_holds_the_files_bytes_and_not_its_holes(tmp_path: Path) -> None:
    fd = sealed_copy(saved(tmp_path))
    try:
        assert os.pread(fd, 8, 0) == b"template" and os.pread(fd, 6, 3 * MIB) == b"kernel"
        assert os.fstat(fd).st_size == 4 * MIB
        assert os.fstat(fd).st_blocks * 512 < MIB  # the holes were not filled with zeros
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the attempts as another user")
def test_a_qemu_as_its_own_user_cannot_change_the_saved_ram(tmp_path: Path) -> None:
    fd = sealed_copy(saved(tmp_path))
    try:
        out = subprocess.run(
            ["/usr/bin/python3", "-c", ATTEMPTS, str(fd)], pass_fds=(fd,), user=65534,
            group=65534, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "ALLOWED" not in out, out
        assert "private MINE" in out
        assert os.pread(fd, 8, 0) == b"template"
    finally:
        os.close(fd)


def test_one_copy_serves_every_vm_resumed_from_a_snapshot_while_any_runs(tmp_path: Path) -> None:
    saved(tmp_path)
    ram = SealedRam()
    first = ram.take(tmp_path, "i-a")
    assert ram.take(tmp_path, "i-b") == first  # the same pages for the clone started next
    copy = identity(first["mem0"])
    ram.drop("i-a")
    assert identity(first["mem0"]) == copy  # i-b still runs from it
    ram.drop("i-b")
    assert identity(first["mem0"]) != copy


def test_a_templates_copy_stays_without_users_until_its_snapshot_goes(tmp_path: Path) -> None:
    saved(tmp_path)
    ram = SealedRam()
    kept = ram.take(tmp_path, "i-a", pin=True)
    ram.drop("i-a")
    assert ram.take(tmp_path, "i-b") == kept
    copy = identity(kept["mem0"])
    ram.forget(tmp_path)
    assert identity(kept["mem0"]) != copy
