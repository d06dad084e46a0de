"""Reading a qcow2 header that came from outside, before any qemu-img or QEMU sees the file.

A qcow2 header can name other files: a backing file (read where the image has no data), an
external data file (where all its data lives), and encryption keys. A file a tenant hands in
(a backup's disk, its RAM images, later an imported image) could so make gureum read, or grant
a VM access to, any host file. ``inspect`` parses the header itself, in Python, without opening
anything the header names, and refuses every such reference, every feature gureum does not
produce, and anything that is not qcow2 at all. Only a file that passes is handed to qemu-img,
and then always with ``backing: null`` (``storage/disks.py``), so even a check missed here
cannot make QEMU follow a chain.

Layout (all big-endian), from QEMU's docs/interop/qcow2.txt:

     0 magic 'QFI\\xfb'        4 version (2 or 3)       8 backing_file_offset (u64)
    16 backing_file_size      20 cluster_bits          24 size: the virtual size (u64)
    32 crypt_method           36 l1_size               40 l1_table_offset (u64)
    48 refcount_table_offset  56 refcount_table_clusters 60 nb_snapshots  64 snapshots_offset
    version 3 only:
    72 incompatible_features (u64)  80 compatible_features  88 autoclear_features
    96 refcount_order         100 header_length        104 compression_type (u8, optional)

then header extensions (type u32, length u32, data padded to 8 bytes) up to type 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from gureum.errors import InvalidImage

MAGIC = b"QFI\xfb"
V2_HEADER = 72
V3_HEADER = 104

# Incompatible feature bits. Only these two are understood and harmless; everything else
# (dirty, corrupt, external data file, and any bit a later QEMU defines) is refused.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
ALLOWED_INCOMPAT = INCOMPAT_COMPRESSION | INCOMPAT_EXTENDED_L2

# Header extensions that refer to something outside the file, or that only make sense for one.
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_ENCRYPTION = 0x0537BE77
EXT_DATA_FILE = 0x44415441
REFUSED_EXTENSIONS = {
    EXT_BACKING_FORMAT: "a backing file format",
    EXT_ENCRYPTION: "an encryption header",
    EXT_DATA_FILE: "an external data file",
}


@dataclass(frozen=True)
class Header:
    version: int
    virtual_size: int
    cluster_size: int


def inspect(path: Path, *, what: str = "the image", standalone: bool = True) -> Header:
    """The header of a standalone qcow2 at ``path``; InvalidImage if it is anything else.
    ``standalone=False``: one of gureum's own layers, whose header may name the layer under it
    (never followed: chains are passed explicitly) but nothing else. A layer is written by its
    VM's QEMU, so a compromised one could have put a data file there for a root tool to open.

    Opens only ``path`` itself, never a name found inside it.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(V3_HEADER)
            if len(head) < V2_HEADER or head[:4] != MAGIC:
                raise InvalidImage(f"{what} is not a qcow2 image")
            (version, backing_offset, backing_size, cluster_bits, size, crypt) = struct.unpack(
                ">IQIIQI", head[4:36]
            )
            if version not in (2, 3):
                raise InvalidImage(f"{what} is qcow2 version {version}, not 2 or 3")
            if standalone and (backing_offset or backing_size):
                raise InvalidImage(f"{what} names a backing file: only standalone images are taken")
            if crypt:
                raise InvalidImage(f"{what} is encrypted")
            if not 9 <= cluster_bits <= 21:
                raise InvalidImage(f"{what} has an invalid cluster size (2^{cluster_bits})")
            extensions_at = V2_HEADER
            if version == 3:
                if len(head) < V3_HEADER:
                    raise InvalidImage(f"{what} has a truncated qcow2 header")
                incompat, _compat, _autoclear, _order, header_length = struct.unpack(
                    ">QQQII", head[72:104]
                )
                _check_features(incompat, what)
                if not V3_HEADER <= header_length < 1 << cluster_bits:
                    raise InvalidImage(f"{what} has an invalid header length")
                extensions_at = header_length
            f.seek(extensions_at)
            area = f.read((1 << cluster_bits) - extensions_at)
            _check_extensions(area, what, allow_backing=not standalone)
    except OSError as exc:
        raise InvalidImage(f"{what} cannot be read: {exc.strerror}") from exc
    return Header(version, size, 1 << cluster_bits)


def _check_features(incompat: int, what: str) -> None:
    if incompat & INCOMPAT_DATA_FILE:
        raise InvalidImage(f"{what} keeps its data in an external file")
    if incompat & INCOMPAT_CORRUPT:
        raise InvalidImage(f"{what} is marked corrupt")
    if incompat & INCOMPAT_DIRTY:
        raise InvalidImage(f"{what} was not closed cleanly (dirty): repair it first")
    if incompat & ~ALLOWED_INCOMPAT:
        raise InvalidImage(f"{what} uses qcow2 features gureum does not take ({incompat:#x})")


def _check_extensions(area: bytes, what: str, *, allow_backing: bool) -> None:
    at = 0
    while True:
        if at + 8 > len(area):
            raise InvalidImage(f"{what} has header extensions past its first cluster")
        kind, length = struct.unpack(">II", area[at : at + 8])
        if kind == EXT_END:
            return
        if kind in REFUSED_EXTENSIONS and not (allow_backing and kind == EXT_BACKING_FORMAT):
            raise InvalidImage(f"{what} names {REFUSED_EXTENSIONS[kind]}")
        at += 8 + (length + 7) // 8 * 8


def names_backing(path: Path) -> bool:
    """Whether a qcow2 header names a backing file (the name itself is not read)."""
    with open(path, "rb") as f:
        head = f.read(20)
    return len(head) == 20 and head[:4] == MAGIC and any(head[8:20])
