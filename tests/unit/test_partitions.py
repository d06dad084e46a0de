"""Which firmware boots a disk, from its first sectors (``storage/partitions.py``): the bytes are
a tenant's, so every count and offset in them is hostile."""

from __future__ import annotations

import struct

import pytest

from gureum.storage.partitions import ESP_GUID, HEAD_SECTORS, SECTOR, NotBootable, firmware_of


def head(*, code: bytes = b"", mbr_types: tuple[int, ...] = (), gpt: bytes | None = None) -> bytes:
    buf = bytearray(HEAD_SECTORS * SECTOR)
    buf[: len(code)] = code
    for i, kind in enumerate(mbr_types):
        buf[446 + 16 * i + 4] = kind
    buf[510:512] = b"\x55\xaa"
    if gpt is not None:
        buf[SECTOR : SECTOR + len(gpt)] = gpt
    return bytes(buf)


def gpt_header(entries_lba: int = 2, count: int = 128, size: int = 128) -> bytes:
    return b"EFI PART" + bytes(64) + struct.pack("<QII", entries_lba, count, size)


def with_entry(disk: bytes, index: int, guid: bytes, entries_lba: int = 2) -> bytes:
    at = entries_lba * SECTOR + index * 128
    return disk[:at] + guid + disk[at + 16 :]


def test_boot_code_in_the_mbr_is_booted_by_bios_even_beside_an_esp() -> None:
    hybrid = with_entry(head(code=b"\xeb\x63", mbr_types=(0xEE,), gpt=gpt_header()), 0, ESP_GUID)
    assert firmware_of(hybrid) == "bios"


def test_an_esp_in_the_gpt_or_the_mbr_without_boot_code_is_booted_by_uefi() -> None:
    gpt = with_entry(head(mbr_types=(0xEE,), gpt=gpt_header()), 5, ESP_GUID)
    assert firmware_of(gpt) == "uefi"
    assert firmware_of(head(mbr_types=(0x83, 0xEF))) == "uefi"


@pytest.mark.parametrize(
    "disk",
    [
        head(),  # a signature and nothing else
        head(mbr_types=(0xEE,)),  # protective MBR, no GPT header behind it
        head(mbr_types=(0xEE,), gpt=gpt_header(count=2**32 - 1)),  # no ESP among them
        head(mbr_types=(0xEE,), gpt=gpt_header(entries_lba=2**63)),  # entries past the disk
        head(mbr_types=(0xEE,), gpt=gpt_header(size=7)),  # entries of a nonsense size
        head(mbr_types=(0xEE,), gpt=gpt_header(size=0)),
    ],
)
def test_a_disk_no_firmware_boots_is_refused_whatever_its_header_claims(disk: bytes) -> None:
    with pytest.raises(NotBootable, match="neither BIOS nor UEFI"):
        firmware_of(disk)


def test_an_esp_listed_beyond_what_was_read_is_not_looked_for() -> None:
    far = head(mbr_types=(0xEE,), gpt=gpt_header(entries_lba=40))
    assert len(far) < 40 * SECTOR
    with pytest.raises(NotBootable):
        firmware_of(far)


def test_no_boot_signature_or_too_few_bytes_is_not_a_boot_sector() -> None:
    with pytest.raises(NotBootable, match="not a boot sector"):
        firmware_of(bytes(HEAD_SECTORS * SECTOR))
    with pytest.raises(NotBootable, match="not a boot sector"):
        firmware_of(b"\x55\xaa")
