"""The hostile-image and hostile-archive corpus (issue 9): what a tenant hands in is checked
before anything is created, and no header it wrote makes gureum open another host file.

Images are made with the real qemu-img; archives are imported through the real API (in process,
on a real store) as a project member. Nothing here boots: every case is refused before a VM
could exist, and the tests check that nothing was made and the named host file is untouched.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gureum.api.app import create_app
from gureum.config import load_config
from gureum.errors import InsufficientCapacity, InvalidImage
from gureum.model.hardware import Hardware
from gureum.model.tenancy import Role
from gureum.network import netns
from gureum.service.core import Services
from gureum.service.tenancy import SUPERUSER
from gureum.storage import archive, disks, qcow2

MIB = 1 << 20
SIZE = 4 * MIB


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def raw_data(image: Path) -> bytes:
    raw = image.with_suffix(".raw")
    qemu_img("convert", "-O", "raw", str(image), str(raw))
    return raw.read_bytes()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file a hostile header points at: root's, 0600, no ACL (like the TLS key)."""
    path = tmp_path / "host" / "tls.key"
    path.parent.mkdir()
    path.write_bytes(b"-----BEGIN PRIVATE KEY----- not for tenants\n" + b"\0" * (SIZE - 45))
    os.chmod(path, 0o600)
    return path


def untouched(path: Path) -> None:
    st = path.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o600)
    acl = subprocess.run(["getfacl", "-cp", str(path)], capture_output=True, text=True).stdout
    assert not [
        line for line in acl.splitlines() if line.startswith("user:") and line != "user::rw-"
    ]
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def hostile_images(tmp: Path, secret: Path) -> dict[str, Path]:
    """name -> a file posing as a standalone qcow2 of SIZE bytes."""
    made: dict[str, Path] = {}

    def new(name: str) -> Path:
        made[name] = tmp / f"{name}.qcow2"
        return made[name]

    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-u", "-b", str(secret),
             str(new("backing-host-file")), str(SIZE))  # fmt: skip
    # A chain loop: loop -> other -> loop (qemu-img will not write one directly).
    loop, other = new("backing-loop"), tmp / "other.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(other), str(SIZE))
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(other), str(loop))
    qemu_img("rebase", "-q", "-u", "-F", "qcow2", "-b", str(loop), str(other))
    data = new("data-file")
    # (qemu-img create writes the data file it names, so this one names a file of its own.)
    decoy = secret.parent / "data.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={decoy}", str(data), str(SIZE))
    # The same, with the external-data bit cleared but the data file's name left in a header
    # extension: refused for the extension alone.
    raw = bytearray(data.read_bytes())
    raw[72 + 7] &= ~qcow2.INCOMPAT_DATA_FILE & 0xFF
    new("data-file-name-only").write_bytes(bytes(raw))
    qemu_img("create", "-q", "-f", "raw", str(new("raw-posing-as-qcow2")), str(SIZE))
    new("raw-with-data").write_bytes(b"#!/bin/sh\nrm -rf /\n" + b"\0" * 4096)
    qemu_img("create", "-q", "-f", "vmdk", str(new("vmdk-posing-as-qcow2")), str(SIZE))
    qemu_img("create", "-q", "-f", "qcow2", str(new("huge-virtual-size")), str(1 << 50))
    # LUKS (crypt_method 2); made by hand, as qemu-img's key benchmark fails on a busy CPU.
    encrypted = new("encrypted")
    qemu_img("create", "-q", "-f", "qcow2", str(encrypted), str(SIZE))
    raw = bytearray(encrypted.read_bytes())
    raw[32:36] = (2).to_bytes(4, "big")
    encrypted.write_bytes(bytes(raw))
    truncated = new("truncated-header")
    qemu_img("create", "-q", "-f", "qcow2", str(truncated), str(SIZE))
    truncated.write_bytes(truncated.read_bytes()[:80])
    return made


def test_every_hostile_image_is_refused_without_opening_what_it_names(tmp_path, secret):
    for name, path in hostile_images(tmp_path, secret).items():
        with pytest.raises(InvalidImage):
            asyncio.run(disks.check_standalone(path, size_bytes=SIZE, what=name))
        with pytest.raises(InvalidImage):
            asyncio.run(disks.take_standalone(path, tmp_path / "out.qcow2", size_bytes=SIZE,
                                              what=name))  # fmt: skip
        assert not (tmp_path / "out.qcow2").exists(), name
    untouched(secret)


def test_a_standalone_image_is_taken_into_a_fresh_file(tmp_path):
    src = tmp_path / "good.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(src), str(SIZE))
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(src)], check=True,
                   capture_output=True)  # fmt: skip
    dest = tmp_path / "taken.qcow2"
    asyncio.run(disks.take_standalone(src, dest, size_bytes=SIZE, what="disk.qcow2"))
    assert qcow2.inspect(dest).virtual_size == SIZE
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(dest)],
                                     capture_output=True, check=True).stdout)  # fmt: skip
    assert "backing-filename" not in info
    taken = raw_data(dest)
    assert taken[:65536] == b"\x5a" * 65536 and len(taken) == SIZE
    with pytest.raises(InvalidImage, match="not the 1048576 declared"):
        asyncio.run(disks.check_standalone(src, size_bytes=MIB, what="disk.qcow2"))


def test_tools_never_follow_a_header_chain(tmp_path, secret):
    """A layer whose header was changed to name a host file: flatten and grow read only the
    chain they are given."""
    layer = tmp_path / "layer.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-u", "-b", str(secret), str(layer),
             str(SIZE))  # fmt: skip
    out = tmp_path / "flat.qcow2"
    asyncio.run(disks.flatten((layer,), out))
    assert b"PRIVATE KEY" not in raw_data(out)
    asyncio.run(disks.grow(layer, 2 * SIZE))
    assert disks.virtual_size(layer) == 2 * SIZE
    untouched(secret)


# -- archives through the API, as a member --------------------------------------------------------


@pytest.fixture
def api(tmp_path):
    home = tmp_path / "home"
    svc = Services.build(load_config(home, env={"GUREUM_RATE_LIMIT": "0"}))
    svc.tenancy.ensure_default()
    team = svc.tenancy.create_project("team-a", {})
    mark = svc.tenancy.create_user("mark")
    svc.tenancy.store.set_role(team.id, mark.id, Role.MEMBER)
    token = svc.tenancy.create_token(SUPERUSER, "mark", "test")[1]
    with TestClient(create_app(svc, "tcp")) as client:
        client.headers.update({"Authorization": f"Bearer {token}", "X-Gureum-Project": "team-a"})
        yield client, home, svc
    svc.close()
    # A defect that let an import through made the default network: leave none behind.
    for name in netns.ours(home):
        asyncio.run(netns.delete(name))


def make_archive(
    tmp: Path, disk: Path, extra: dict[str, Path] | None = None, **config: object
) -> bytes:
    hw = Hardware.for_boot(1, 256)
    cfg = {"name": "src", "image": "tiny", "image_version": "v1", "cpus": 1, "memory_mib": 256,
           "disk_bytes": SIZE, "memory": False, "consistency": "offline",
           "hardware": hw.to_json(), **config}  # fmt: skip
    (tmp / "vmlinuz").write_bytes(b"kernel")
    (tmp / "initrd.img").write_bytes(b"initrd")
    files = {"disk.qcow2": disk, "vmlinuz": tmp / "vmlinuz", "initrd.img": tmp / "initrd.img"}
    files.update(extra or {})
    out = io.BytesIO()
    archive.write(out, files, cfg)
    return out.getvalue()


def nothing_made(client, home: Path, svc) -> None:
    assert client.get("/v1/instances").json() == []
    assert svc.instances.disks.store.all() == {}
    for folder in ("disks", "instances", "snapshots", "images"):
        assert not list((home / folder).glob("*")) if (home / folder).exists() else True, folder
    assert not list((home / "scratch").glob("*"))


def refused(client, body: bytes, code: str = "invalid-archive") -> str:
    resp = client.post("/v1/backups/import", params={"name": "copy"}, content=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == code
    return resp.json()["error"]["message"]


def test_hostile_images_in_an_archive_are_refused_and_nothing_is_made(api, tmp_path, secret):
    client, home, svc = api
    for name, path in hostile_images(tmp_path, secret).items():
        message = refused(client, make_archive(tmp_path, path))
        assert "disk.qcow2" in message, (name, message)
        nothing_made(client, home, svc)
    untouched(secret)


def test_a_manifest_smaller_than_its_machine_state_is_refused(api, tmp_path):
    """Quotas count what will run: a 1 vCPU / 128 MiB manifest over a 2 vCPU / 1024 MiB saved
    machine is refused."""
    client, home, svc = api
    disk = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), str(SIZE))
    big = Hardware.for_boot(2, 1024)
    ram = tmp_path / "ram.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(ram), str(1024 * MIB))
    (tmp_path / "state").write_bytes(b"QEVM")
    extra = {"memory/state": tmp_path / "state", "memory/ram-mem0.qcow2": ram}
    body = make_archive(tmp_path, disk, cpus=1, memory_mib=128, memory=True,
                        consistency="paused", hardware=big.to_json(), extra=extra)  # fmt: skip
    assert "memory state is of a 2 vCPU, 1024 MiB machine" in refused(client, body)
    nothing_made(client, home, svc)


GUID = "6f1c2b8e-3c1d-4e8a-9a55-2f0e6d7c1b2a"
# A MAC that would add an option to QEMU's -device, and a CPU ceiling far past any machine.
MAC_INJECTION = json.dumps(
    {"cpus": 1, "max_cpus": 8, "memory_mib": 256, "max_memory_mib": 4096, "generation_id": GUID,
     "nics": [[0, "52:54:00:00:00:01,romfile=/etc/shadow", "n-x"]]}
)  # fmt: skip
HUGE_MAX_CPUS = json.dumps(
    {
        "cpus": 1,
        "max_cpus": 100000,
        "memory_mib": 256,
        "max_memory_mib": 4096,
        "generation_id": GUID,
    }
)


BASE_HW = {"cpus": 1, "max_cpus": 8, "memory_mib": 256, "max_memory_mib": 4096,
           "generation_id": GUID}  # fmt: skip


@pytest.mark.parametrize(
    "field, value",
    [
        ("hardware", MAC_INJECTION),
        ("hardware", HUGE_MAX_CPUS),
        ("hardware", json.dumps({**BASE_HW, "nics": [[]]})),
        ("hardware", json.dumps({**BASE_HW, "generation_id": "x,romfile=/etc/shadow"})),
        ("hardware", "[" * 100_000 + "]" * 100_000),
        ("disk_bytes", 1 << 60),
        ("disk_bytes", True),
        ("cpus", True),
        ("memory", "yes"),
        ("image", "tiny\n"),
        ("image_version", "../../etc"),
        ("consistency", "whatever"),
    ],
)
def test_hostile_manifest_fields_are_refused(api, tmp_path, field, value):
    client, home, svc = api
    disk = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), str(SIZE))
    refused(client, make_archive(tmp_path, disk, **{field: value}))
    nothing_made(client, home, svc)


def test_a_member_name_with_a_trailing_newline_is_refused(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for name, data in ((archive.HEADER, b'{"format": "gureum-backup", "version": 1}'),
                           ("disk.qcow2\n", b"x")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    with pytest.raises(archive.ArchiveError, match="unexpected entry"):
        archive.read(out, tmp_path / "in")


def cluster_bomb(path: Path, size: int) -> None:
    """A qcow2 whose every L1 entry points at one L2 table and every L2 entry at one data
    cluster: a few hundred KiB that qemu-img would write out as ``size`` bytes of data."""
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", str(path), str(size))
    subprocess.run(["qemu-io", "-c", "write -P 0x41 0 64k", str(path)], check=True,
                   capture_output=True)  # fmt: skip
    raw = bytearray(path.read_bytes())
    l1_size, l1_at = struct.unpack(">IQ", raw[36:48])
    l1_entry = raw[l1_at : l1_at + 8]
    l2_at = struct.unpack(">Q", l1_entry)[0] & 0x00FFFFFFFFFFFE00
    l2_entry = raw[l2_at : l2_at + 8]
    raw[l1_at : l1_at + 8 * l1_size] = l1_entry * l1_size
    raw[l2_at : l2_at + 65536] = l2_entry * 8192
    path.write_bytes(bytes(raw))


def test_images_that_expand_far_beyond_their_file_are_refused(tmp_path):
    bomb = tmp_path / "bomb.qcow2"
    cluster_bomb(bomb, 1 << 30)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(InvalidImage, match="inconsistent"):
        asyncio.run(disks.check_standalone(bomb, size_bytes=1 << 30, what="disk.qcow2"))
    # Consistent, but its data needs more room than the host has to give.
    dense = tmp_path / "dense.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(dense), str(64 * MIB))
    subprocess.run(["qemu-io", "-c", "write -P 0x41 0 32M", str(dense)], check=True,
                   capture_output=True)  # fmt: skip
    with pytest.raises(InsufficientCapacity):
        asyncio.run(disks.take_standalone(dense, tmp_path / "out.qcow2", size_bytes=64 * MIB,
                                          what="disk.qcow2", room=16 * MIB))  # fmt: skip
    assert not (tmp_path / "out.qcow2").exists()


def test_a_layer_whose_header_gained_a_data_file_is_not_opened_as_root(tmp_path, secret):
    """A VM's QEMU owns its top layer and could rewrite its header to name a data file: root
    tools refuse the layer instead of opening the file."""
    layer = tmp_path / "layer.qcow2"
    decoy = tmp_path / "decoy.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={decoy}", str(layer), str(SIZE))
    with pytest.raises(InvalidImage, match="external file"):
        asyncio.run(disks.flatten((layer,), tmp_path / "flat.qcow2"))
    with pytest.raises(InvalidImage):
        asyncio.run(disks.grow(layer, 2 * SIZE))
    untouched(secret)


def tar_of(members: list[tuple[str, bytes]], **kw: object) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", **kw) as tar:  # type: ignore[call-overload]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


HEADER_MEMBER = (archive.HEADER, b'{"format": "gureum-backup", "version": 1}')


def test_a_sparse_member_is_refused_before_its_holes_are_written(tmp_path):
    """GNU tar's sparse members (a 1 GiB hole in a 10 KiB archive) would be written out whole."""
    src = tmp_path / "src"
    src.mkdir()
    (src / archive.HEADER).write_bytes(HEADER_MEMBER[1])
    with open(src / "disk.qcow2", "wb") as f:
        f.truncate(1 << 30)
    sparse = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=gnu", "-C", str(src), "-cf", str(sparse),
                    archive.HEADER, "disk.qcow2"], check=True)  # fmt: skip
    assert sparse.stat().st_size < 1 << 20
    with open(sparse, "rb") as f, pytest.raises(archive.ArchiveError, match="sparse"):
        archive.read(f, tmp_path / "in")
    assert not (tmp_path / "in" / "disk.qcow2").exists()


def test_oversized_members_and_a_full_host_are_refused(tmp_path):
    # A member header announcing 1 GiB of state is refused before a byte of it is read.
    first = tar_of([HEADER_MEMBER]).getvalue()[:1024]  # the header member: header + one block
    info = tarfile.TarInfo("memory/state")
    info.size = 1 << 30
    with pytest.raises(archive.ArchiveError, match="larger than"):
        archive.read(io.BytesIO(first + info.tobuf(tarfile.GNU_FORMAT)), tmp_path / "in")
    body = tar_of([HEADER_MEMBER, ("disk.qcow2", b"\0" * (archive.CHECK_EVERY + 1))])
    with pytest.raises(InsufficientCapacity):
        archive.read(body, tmp_path / "in2", keep_free=1 << 62)


def test_json_nested_past_the_stack_is_refused_not_a_crash(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000  # under the 1 MiB manifest cap
    body = tar_of([HEADER_MEMBER, ("manifest.json", deep)])
    with pytest.raises(archive.ArchiveError, match="not valid JSON"):
        archive.read(body, tmp_path / "in")


def test_the_reserve_holds_across_members_and_ram_images_are_counted(tmp_path):
    """Each member's announced size is weighed against the reserve before it is written (the
    check once restarted with every member), and there are no more RAM images than backends."""
    body = tar_of([HEADER_MEMBER, ("memory/ram-x0.qcow2", b"\0" * 1024)])
    with pytest.raises(InsufficientCapacity):
        archive.read(body, tmp_path / "in", keep_free=1 << 62)
    assert not (tmp_path / "in" / "memory").exists()
    many = [(f"memory/ram-x{i}.qcow2", b"") for i in range(archive.MAX_RAM_MEMBERS + 1)]
    with pytest.raises(archive.ArchiveError, match="RAM images"):
        archive.read(tar_of([HEADER_MEMBER, *many]), tmp_path / "in2")
