"""qcow2 disks through qemu-img: thin overlays on an image's base disk."""

from __future__ import annotations

import json
from pathlib import Path

from gureum.errors import InvalidInput
from gureum.sys.runner import arun, run


def info(path: Path) -> dict[str, object]:
    # -U: read even while a running QEMU holds the image's write lock.
    out = run(["qemu-img", "info", "-U", "--output=json", str(path)]).stdout
    return json.loads(out)


def virtual_size(path: Path) -> int:
    return int(info(path)["virtual-size"])  # type: ignore[call-overload]


async def create_overlay(base: Path, overlay: Path, size_bytes: int) -> None:
    """A qcow2 overlay of ``size_bytes`` backed by ``base``: no data copied, only new writes.

    The backing format is always given (-F): QEMU refuses to probe it since 6.1, and probing
    would be unsafe anyway.
    """
    base_size = virtual_size(base)
    if size_bytes < base_size:
        raise InvalidInput(
            f"disk must be at least the image's size ({base_size / 1024**3:.2f} GiB),"
            f" not {size_bytes / 1024**3:.2f} GiB"
        )
    overlay.parent.mkdir(parents=True, exist_ok=True)
    tmp = overlay.with_suffix(".tmp")
    await arun(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(base.absolute()),
            str(tmp),
            str(size_bytes),
        ]
    )
    tmp.rename(overlay)  # a crash never leaves a half-made overlay under the real name


async def create_on(backing: Path, path: Path, size_bytes: int) -> None:
    """An empty qcow2 over a file a running QEMU holds (its backing is not opened: -u)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    await arun(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-u",
            "-b",
            str(backing.absolute()),
            str(path),
            str(size_bytes),
        ]
    )


def allocated_bytes(path: Path) -> int:
    """Bytes the overlay really uses on the host (its own clusters, not the backing file's)."""
    return path.stat().st_blocks * 512


async def grow(path: Path, size_bytes: int) -> None:
    """Grow an image that no QEMU has open (a stopped VM's top layer)."""
    await arun(["qemu-img", "resize", "-q", str(path), str(size_bytes)])


async def flatten(top: Path, dest: Path) -> None:
    """One standalone qcow2 with the whole chain's data: portable, no backing file."""
    tmp = dest.with_suffix(".tmp")
    await arun(["qemu-img", "convert", "-U", "-O", "qcow2", str(top), str(tmp)], timeout=3600)
    tmp.rename(dest)
