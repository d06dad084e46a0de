"""File ownership for VMs whose QEMU runs as a user of its own.

Each VM's QEMU runs as an unprivileged uid no other VM ever gets. It may write only its own
top disk layer and runtime folder; it may read the layers under its top (its own frozen ones
and shared ones a clone builds on: owned by root, granted per VM with a POSIX ACL) and the
image's boot files and base disk (public, like any image). Everything else under the home is
root's alone (0600/0700), so a compromised QEMU cannot read another VM's disk, memory image or
runtime files. Folders along the way are 0711: crossable, not listable.
"""

from __future__ import annotations

import os
from pathlib import Path

from gureum.sys.runner import run


def crossable(*folders: Path) -> None:
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o711)


def own(path: Path, uid: int, mode: int = 0o600) -> None:
    """The VM's own file (or folder): only its user may use it."""
    os.chown(path, uid, uid)
    os.chmod(path, mode)


def root_only(path: Path) -> None:
    os.chown(path, 0, 0)
    os.chmod(path, 0o600)


def grant_read(paths: list[Path], uid: int, perms: str = "r") -> None:
    """Let one VM's user read (``perms``) these root-owned files, and no one else."""
    if not paths:
        return
    # Setting the mask too keeps a later chmod from silently voiding the grant.
    run(["setfacl", "-m", f"u:{uid}:{perms},m::{perms}", *[str(p) for p in paths]], timeout=30)


def public(path: Path) -> None:
    """Image files: the same for every VM, readable by all (folders listable)."""
    os.chmod(path, 0o755 if path.is_dir() else 0o644)


def revoke(paths: list[Path], uid: int) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        run(["setfacl", "-x", f"u:{uid}", *existing], check=False, timeout=30)
