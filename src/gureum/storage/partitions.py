"""Which firmware boots a disk, read from its first sectors: its MBR's boot code (BIOS) or an EFI
system partition (UEFI). The bytes come from a disk a user handed in: every offset and count in
them is checked against the buffer before it is used, and nothing they name is opened.
"""

from __future__ import annotations

import struct
import uuid

from gureum.model.hardware import BIOS, UEFI

SECTOR = 512
# What is read: the MBR, the GPT header and 32 sectors of its partition entries (128 of 128 bytes,
# where every partitioning tool puts them).
HEAD_SECTORS = 34

BOOT_CODE = slice(0, 440)  # the MBR's boot code; zero in a protective MBR written for UEFI only
MBR_ENTRIES = 446
MBR_GPT_PROTECTIVE = 0xEE
MBR_ESP = 0xEF
GPT_SIGNATURE = b"EFI PART"
ESP_GUID = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").bytes_le


class NotBootable(ValueError):
    """The first sectors are not those of a disk any firmware boots (the message says why)."""


def firmware_of(head: bytes) -> str:
    """``bios`` when the MBR carries boot code (a BIOS bootloader, perhaps beside an EFI system
    partition: SeaBIOS is the faster start); else ``uefi`` when an EFI system partition is listed,
    in the GPT or the MBR; else NotBootable."""
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        raise NotBootable(
            "the image's first sector is not a boot sector (no 0x55AA signature): it is not a "
            "bootable disk image (gureum boots imported images from their own bootloader)"
        )
    if any(head[BOOT_CODE]):
        return BIOS
    types = [head[MBR_ENTRIES + 16 * i + 4] for i in range(4)]
    if MBR_ESP in types or (MBR_GPT_PROTECTIVE in types and _gpt_has_esp(head)):
        return UEFI
    raise NotBootable(
        "the image has no boot code in its MBR and no EFI system partition: neither BIOS nor "
        "UEFI firmware can boot it"
    )


def _gpt_has_esp(head: bytes) -> bool:
    header = head[SECTOR : 2 * SECTOR]
    if len(header) < 92 or header[:8] != GPT_SIGNATURE:
        return False
    entries_lba, count, size = struct.unpack_from("<QII", header, 72)
    if size < 128 or size % 8:
        return False
    start = entries_lba * SECTOR
    for i in range(count):
        at = start + i * size
        if at + 16 > len(head):  # only what was read: entries beyond are not looked for
            break
        if head[at : at + 16] == ESP_GUID:
            return True
    return False
