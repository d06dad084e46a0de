"""qcow2 disks through qemu-img: thin overlays on an image's base disk.

A disk is a chain of qcow2 files, and each file's header names the one below it. gureum never
lets qemu-img follow those names: every command that reads through a chain is given the chain
the store recorded, explicitly, as a ``json:`` image with ``"backing": null`` at the bottom
(``chain_options``), so a header that names some other host file is never opened. Commands
that must not read the chain at all (``create -u``, ``resize``) open one file with no backing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gureum.errors import GureumError, InsufficientCapacity, InvalidImage, InvalidInput
from gureum.storage import partitions, qcow2
from gureum.sys.runner import arun, run

# Data copies of a large disk take a while on 2 cores; header work is instant.
COPY_TIMEOUT = 3600


def chain_options(chain: Sequence[Path], *, read_only: bool = True) -> dict[str, Any]:
    """QEMU block options for a qcow2 chain given top first: each layer backed by the next,
    the last by nothing. ``read_only`` applies to the top (the layers under it always are)."""
    if not chain:
        raise ValueError("a disk chain has at least one layer")
    options: dict[str, Any] | None = None
    for depth, path in enumerate(reversed(chain)):
        top = depth == len(chain) - 1
        options = {
            "driver": "qcow2",
            "read-only": read_only or not top,
            "file": {"driver": "file", "filename": str(path.absolute())},
            "backing": options,
        }
    assert options is not None
    return options


def image_name(chain: Sequence[Path], *, read_only: bool = True) -> str:
    """A qemu-img file name for the chain: ``json:{...}`` with every backing given. Each file's
    header is checked first (``qcow2.inspect``): qemu-img runs as root, and a header could
    still name an external data file, which ``backing: null`` does not cover."""
    for path in chain:
        qcow2.inspect(path, what=f"disk layer {path.name}", standalone=False)
    return "json:" + json.dumps(chain_options(chain, read_only=read_only))


def info(path: Path) -> dict[str, object]:
    """qemu-img's view of one file. It opens no backing file (info never does without
    --backing-chain); -U reads even while a running QEMU holds the image's write lock."""
    out = run(["qemu-img", "info", "-U", "--output=json", image_name([path])], timeout=60).stdout
    return json.loads(out)


def virtual_size(path: Path) -> int:
    # qemu-img info's JSON gives virtual-size as an int.
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
    tmp = overlay.with_suffix(".tmp")
    await create_on(base, tmp, size_bytes)
    tmp.rename(overlay)  # a crash never leaves a half-made overlay under the real name


async def create_on(backing: Path, path: Path, size_bytes: int) -> None:
    """An empty qcow2 of ``size_bytes`` whose header names ``backing`` (for tools that read
    headers; gureum itself passes chains explicitly). -u: the backing file is not opened."""
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
    """Grow an image that no QEMU has open (a stopped VM's top layer). Growing reads nothing
    below, so the file is opened alone; its header keeps naming its backing file."""
    name = image_name([path], read_only=False)
    await arun(["qemu-img", "resize", "-q", name, str(size_bytes)])


async def flatten(chain: Sequence[Path], dest: Path) -> None:
    """One standalone qcow2 with the data of ``chain`` (top first, as the store records it):
    portable, no backing file."""
    tmp = dest.with_suffix(".tmp")
    argv = ["qemu-img", "convert", "-U", "-O", "qcow2", image_name(chain), str(tmp)]
    await arun(argv, timeout=COPY_TIMEOUT)
    tmp.rename(dest)


async def take_standalone(
    src: Path, dest: Path, *, size_bytes: int, what: str, room: int | None = None
) -> None:
    """Check a qcow2 that came from outside and rewrite it as a fresh qcow2 of gureum's own.

    Refused (InvalidImage) unless ``src`` is a standalone qcow2 (``qcow2.inspect``) of exactly
    ``size_bytes``, and qemu-img, opening it alone, agrees and finds it consistent; refused
    (InsufficientCapacity) if its data would take more than ``room`` bytes once written out (a
    small file can describe a large disk). The copy has a header gureum wrote.
    """
    await check_standalone(src, size_bytes=size_bytes, what=what, room=room)
    tmp = dest.with_suffix(".tmp")
    try:
        await arun(["qemu-img", "convert", "-O", "qcow2", image_name([src]), str(tmp)],
                   timeout=COPY_TIMEOUT)  # fmt: skip
        tmp.rename(dest)
    finally:
        tmp.unlink(missing_ok=True)


async def take_raw(
    src: Path, dest: Path, *, size_bytes: int, what: str, room: int | None = None
) -> None:
    """Like ``take_standalone``, the result a raw file (a RAM image restores from one)."""
    await check_standalone(src, size_bytes=size_bytes, what=what, room=room)
    argv = ["qemu-img", "convert", "-O", "raw", image_name([src]), str(dest)]
    await arun(argv, timeout=COPY_TIMEOUT)


async def compress_raw(src: Path, dest: Path) -> None:
    """A raw file (mostly holes: a RAM image) as a qcow2 that keeps only written clusters."""
    await arun(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(dest)],
               timeout=COPY_TIMEOUT)  # fmt: skip


async def check_standalone(
    src: Path, *, size_bytes: int, what: str, room: int | None = None
) -> qcow2.Header:
    header = qcow2.inspect(src, what=what)
    if header.virtual_size != size_bytes:
        raise InvalidImage(
            f"{what} is {header.virtual_size} bytes in its header, not the {size_bytes} declared"
        )
    # A second opinion from qemu-img itself, opening the file alone (backing: null).
    argv = ["qemu-img", "info", "--output=json", image_name([src])]
    try:
        seen = json.loads((await arun(argv, timeout=60)).stdout)
    except (ValueError, GureumError) as exc:
        raise InvalidImage(f"{what} is not a readable qcow2 image") from exc
    specific = (seen.get("format-specific") or {}).get("data") or {}
    if (
        seen.get("format") != "qcow2"
        or seen.get("virtual-size") != size_bytes
        or "backing-filename" in seen
        or "data-file" in specific
        or specific.get("corrupt")
    ):
        raise InvalidImage(f"{what} is not a standalone qcow2 image of {size_bytes} bytes")
    # Its tables must be consistent: clusters shared between places (one data cluster
    # referenced by every table entry) would expand a small file into a whole disk.
    checked = await arun(["qemu-img", "check", "--output=json", image_name([src])],
                         check=False, timeout=600)  # fmt: skip
    try:
        report = json.loads(checked.stdout)
    except ValueError as exc:
        raise InvalidImage(f"{what} cannot be checked: {checked.stderr.strip()[:200]}") from exc
    if report.get("corruptions") or report.get("check-errors") or checked.returncode not in (0, 3):
        raise InvalidImage(f"{what} is inconsistent (qemu-img check found errors)")
    if room is not None:
        measured = await arun(["qemu-img", "measure", "--output=json", "-O", "qcow2",
                               image_name([src])], timeout=600)  # fmt: skip
        needed = int(json.loads(measured.stdout)["required"])
        if needed > room:
            raise InsufficientCapacity(
                f"{what} holds {needed >> 20} MiB of data: more than the host has room for"
            )
    return header


# -- disk image files users bring ----------------------------------------------------------------
SECTOR = partitions.SECTOR
MIN_IMPORT_BYTES = 1 << 20  # smaller than any disk with a bootloader and a filesystem


async def take_image_file(
    src: Path, dest: Path, *, max_bytes: int, room: int | None = None
) -> tuple[str, int, str]:
    """A disk image file a user handed in (qcow2 or raw), checked, then written out as a fresh
    qcow2 of gureum's own at ``dest``; returns (its format, its virtual size, the firmware that
    boots it: ``partitions.firmware_of``).

    The format is decided here from the first bytes, never by qemu-img probing: a file that
    starts like a qcow2 is one, checked as any qcow2 from outside (no backing file, no external
    data file, consistent tables: ``check_standalone``), and anything else is raw. Either must
    be at most ``max_bytes`` as a disk and be one some firmware boots from its own bootloader
    (BIOS boot code in its MBR, or an EFI system partition): a file that is not a bootable disk
    is refused, and nothing it was written to is kept.
    """
    with open(src, "rb") as f:
        magic = f.read(4)
    if magic == qcow2.MAGIC:
        header = qcow2.inspect(src, what="the image file")
        fmt, size = "qcow2", header.virtual_size
        source = image_name([src])
    else:
        fmt, size = "raw", src.stat().st_size
        if size % SECTOR:
            raise InvalidImage(
                f"the image file is {size} bytes, not whole 512-byte sectors: neither a qcow2 "
                "nor a raw disk image (or it is cut short)"
            )
        source = json.dumps({"driver": "raw", "file": {"driver": "file", "filename": str(src)}})
        source = "json:" + source
    if size < MIN_IMPORT_BYTES:
        raise InvalidImage(f"the image is a disk of {size} bytes: too small to boot anything")
    if size > max_bytes:
        raise InvalidImage(
            f"the image is a disk of {size >> 20} MiB, over the {max_bytes >> 20} MiB "
            "this service takes (image_import_max_bytes)"
        )
    if fmt == "qcow2":
        await check_standalone(src, size_bytes=size, what="the image file", room=room)
    elif room is not None and src.stat().st_blocks * 512 > room:
        raise InsufficientCapacity("the image file holds more data than the host has room for")
    tmp = dest.with_suffix(".tmp")
    try:
        await arun(["qemu-img", "convert", "-O", "qcow2", source, str(tmp)],
                   timeout=COPY_TIMEOUT)  # fmt: skip
        first = tmp.with_suffix(".sector")
        # The copy is gureum's own (written by qemu-img just now, no backing): read as it is.
        await arun(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"bs={SECTOR}",
                    f"count={partitions.HEAD_SECTORS}", f"if={tmp}", f"of={first}"],
                   timeout=60)  # fmt: skip
        head = first.read_bytes()
        first.unlink()
        try:
            firmware = partitions.firmware_of(head)
        except partitions.NotBootable as exc:
            raise InvalidImage(str(exc)) from None
        tmp.rename(dest)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".sector").unlink(missing_ok=True)
    return fmt, size, firmware
