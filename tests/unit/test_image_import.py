"""Images users bring (issue 12, part 3): a disk image file is checked with the real qemu-img
before anything is kept, its format decided by gureum (never probed), and it must be a bootable
disk; through the API, a refusal leaves no file and no catalog entry, and a VM of an imported
image boots from its own bootloader (no -kernel)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gureum.errors import InvalidImage
from gureum.model.image import Image
from gureum.service.core import Services
from gureum.storage import disks
from gureum.units import MIB
from tests.unit.fakehost import FakeHost
from tests.unit.fakeworld import fake_api

SIZE = 4 * MIB


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def bootable_raw(path: Path, size: int = SIZE) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"\xeb\x63\x90")  # boot code: a BIOS bootloader's first jump
        f.seek(510)
        f.write(b"\x55\xaa")  # an MBR's boot signature
    return path


def uefi_raw(path: Path, size: int = SIZE) -> Path:
    """A GPT disk as sfdisk writes it: a protective MBR with no boot code, an EFI system
    partition and a Linux one."""
    with open(path, "wb") as f:
        f.truncate(size)
    table = "label: gpt\nsize=1MiB, type=uefi\ntype=linux\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=table, text=True, check=True)
    return path


def take(src: Path, tmp_path: Path, max_bytes: int = 1 << 30) -> tuple[str, int, str]:
    dest = tmp_path / "out" / "disk.qcow2"
    dest.parent.mkdir(exist_ok=True)
    return asyncio.run(disks.take_image_file(src, dest, max_bytes=max_bytes))


def test_a_bootable_raw_and_qcow2_are_taken_as_qcow2_of_their_size(tmp_path: Path) -> None:
    raw = bootable_raw(tmp_path / "disk.raw")
    assert take(raw, tmp_path) == ("raw", SIZE, "bios")
    qcow = tmp_path / "disk.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow))
    (tmp_path / "out" / "disk.qcow2").unlink()
    assert take(qcow, tmp_path) == ("qcow2", SIZE, "bios")
    out = tmp_path / "out" / "disk.qcow2"
    assert out.read_bytes()[:4] == b"QFI\xfb"


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda d: (d.write_text("#cloud-config\nnot a disk\n"), d)[1], "512-byte sectors"),
        (lambda d: (d.write_bytes(b"\0" * SIZE), d)[1], "not a boot sector"),
        (lambda d: (d.write_bytes(b"\0" * 4096), d)[1], "too small"),
    ],
)
def test_what_is_not_a_bootable_disk_is_refused(tmp_path: Path, make, said: str) -> None:
    src = make(tmp_path / "file")
    with pytest.raises(InvalidImage, match=said):
        take(src, tmp_path)
    assert not (tmp_path / "out" / "disk.qcow2").exists()
    assert not list((tmp_path / "out").iterdir())


def test_a_qcow2_with_a_persistent_bitmap_is_taken(tmp_path: Path) -> None:
    """An autoclear feature (a dirty bitmap, as a backup tool leaves) is no reason to refuse."""
    qcow = tmp_path / "bitmap.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2",
             str(bootable_raw(tmp_path / "d.raw")), str(qcow))  # fmt: skip
    qemu_img("bitmap", "--add", str(qcow), "bm0")
    assert take(qcow, tmp_path) == ("qcow2", SIZE, "bios")


def test_a_gpt_disk_with_an_efi_system_partition_and_no_boot_code_is_booted_by_uefi(
    tmp_path: Path,
) -> None:
    assert take(uefi_raw(tmp_path / "uefi.raw"), tmp_path)[2] == "uefi"


def test_a_disk_with_neither_boot_code_nor_an_efi_system_partition_is_refused(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "data.raw"
    with open(disk, "wb") as f:
        f.truncate(SIZE)
    subprocess.run(["sfdisk", "-q", str(disk)], input="label: gpt\ntype=linux\n", text=True,
                   check=True)  # fmt: skip
    with pytest.raises(InvalidImage, match="neither BIOS nor UEFI"):
        take(disk, tmp_path)
    assert not list((tmp_path / "out").iterdir())


def test_a_qcow2_that_names_another_host_file_is_refused(tmp_path: Path) -> None:
    secret = bootable_raw(tmp_path / "host-secret.raw")
    backed = tmp_path / "backed.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(backed))
    with pytest.raises(InvalidImage, match="backing file"):
        take(backed, tmp_path)
    data = tmp_path / "datafile.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={secret}", str(data), str(SIZE))
    with pytest.raises(InvalidImage, match="external file"):
        take(data, tmp_path)


def test_a_qcow2_cut_short_or_over_the_limit_is_refused(tmp_path: Path) -> None:
    full = tmp_path / "full.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2",
             str(bootable_raw(tmp_path / "d.raw")), str(full))  # fmt: skip
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(full.read_bytes()[:300])
    with pytest.raises(InvalidImage):
        take(cut, tmp_path)
    with pytest.raises(InvalidImage, match="over the 2 MiB"):
        take(full, tmp_path, max_bytes=2 * MIB)


# -- through the API ------------------------------------------------------------------------------
@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, Services, FakeHost]]:
    with fake_api(tmp_path) as world:
        yield world


def test_an_import_is_in_the_catalog_and_its_vms_boot_their_own_bootloader(world) -> None:
    root, svc, _ = world
    made = root.post("/v1/images/mine/import", params={"default_user": "debian"},
                     content=b"BOOT" + b"\0" * 60)  # fmt: skip
    assert made.status_code == 201, made.text
    image = made.json()
    assert (image["boot"], image["origin"], image["default_user"]) == (
        "firmware", "imported raw", "debian")  # fmt: skip
    resp = root.post("/v1/instances", json={"name": "w2", "image": "mine"})
    assert resp.status_code == 202, resp.text
    inst = svc.instances.get("w2")
    spec = svc.instances.lifecycle.vm_spec(inst, inst.hardware)
    assert spec.kernel is None and spec.initrd is None
    assert svc.images.default_user(inst) == "debian"
    assert (image["firmware"], spec.hardware.firmware) == ("bios", "bios")


def test_an_image_imported_for_uefi_gives_its_vms_uefi_firmware(world) -> None:
    root, svc, _ = world
    made = root.post("/v1/images/mine/import", params={"firmware": "uefi"},
                     content=b"BOOT" + b"\0" * 60)  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["firmware"] == "uefi"
    assert svc.images.get("mine").firmware == "uefi"  # as the catalog keeps it
    assert root.post("/v1/instances", json={"name": "w3", "image": "mine"}).status_code == 202
    inst = svc.instances.get("w3")
    assert inst.hardware is not None and inst.hardware.firmware == "uefi"


@pytest.mark.parametrize(
    ("name", "params", "body", "status", "said"),
    [
        ("debian", {}, b"BOOT", 400, "gureum builds"),
        ("mine", {"default_user": "root;rm"}, b"BOOT", 400, "not a Linux user name"),
        ("mine", {}, b"not a disk", 400, "not a boot sector"),
        ("mine", {"firmware": "coreboot"}, b"BOOT", 400, "bios"),
        ("../x", {}, b"BOOT", 404, ""),
    ],
)
def test_a_refused_import_leaves_nothing(world, name, params, body, status, said) -> None:
    root, svc, host = world
    resp = root.post(f"/v1/images/{name}/import", params=params, content=body)
    assert resp.status_code == status, resp.text
    assert said in resp.text
    assert svc.images.list() == [] and host.files == set()


def test_an_image_name_that_exists_is_refused_before_the_body_is_read(world) -> None:
    root, svc, host = world
    svc.images.store.put(Image("mine", "v1", "", "/nowhere"))
    resp = root.post("/v1/images/mine/import", content=b"BOOT" * 1000)
    assert resp.status_code == 409, resp.text
    assert "already exists" in resp.json()["error"]["message"]
    assert "import_image" not in host.calls


def test_a_built_image_is_not_exported_as_a_bootable_disk(world) -> None:
    root, svc, _ = world
    svc.images.store.put(Image("tiny", "v1", "6.1", "/nowhere", files={"kernel": {}}))
    resp = root.get("/v1/images/tiny/disk")
    assert resp.status_code == 409, resp.text
    assert "backup export" in resp.json()["error"]["message"]
