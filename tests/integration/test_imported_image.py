"""Images gureum did not make (issue 12, part 3): imported from qcow2 files built by
debootstrap, one with SYSLINUX in its MBR (booted through SeaBIOS), one with GRUB on an EFI system
partition and no BIOS boot code (booted through OVMF); each booted by its own bootloader,
configured by its own stock cloud-init from gureum's metadata, logged in to with `gureum ssh`;
then exported. One VM at a time: the second kind boots after the first is gone.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import CACHE
from tests.integration.foreign_image import build
from tests.integration.test_debian import USER_DATA, _json, ssh_to
from tests.waiting import wait_for

VM = "w2"

# Building the image to import (debootstrap, once, cached) and its first boot fall on the first
# test: about 240 s here, near the suite's default of 300 s.
pytestmark = pytest.mark.timeout(900)


# firmware -> what its bootloader prints on the serial console
BOOTLOADER = {"bios": "SYSLINUX", "uefi": "GNU GRUB"}


@pytest.fixture(scope="module", params=["bios", "uefi"])
def imported(request, service, key, tmp_path_factory):
    qcow = build(CACHE)[request.param]
    made = _json(service, "image", "import", str(qcow), "--name", "mine", "--user", "debian")
    assert made["firmware"] == request.param  # told apart by the disk's first sectors
    user_data = tmp_path_factory.mktemp("ud") / "cloud.yaml"
    user_data.write_text(USER_DATA)
    service.cli("secgroup", "create", "ssh2")
    service.cli("launch", "mine", "--name", VM, "--cpus", "2", "--memory", "1G",
                "--secgroup", "ssh2", "--ssh-key", key.with_suffix(".pub").read_text().strip(),
                "--user-data", str(user_data), timeout=600)  # fmt: skip
    gateway = _json(service, "network", "show", "default")["gateway"]  # made by the launch
    service.cli("secgroup", "rule", "add", "ssh2", "--ingress", "tcp/22", "--from", f"{gateway}/32")
    wait_for(lambda: ssh(service, key, "true", check=False).returncode == 0, 300,
             interval=2, what="SSH into the imported image's VM")  # fmt: skip
    yield made
    service.cli("delete", VM, "--force")
    service.cli("secgroup", "delete", "ssh2")
    service.cli("image", "delete", "mine")


def ssh(service, key, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return ssh_to(service, VM, key, *command, check=check)


def test_the_import_is_recorded_as_a_disk_that_boots_itself(imported):
    assert imported["boot"] == "firmware"
    assert imported["origin"] == "imported qcow2"
    assert imported["default_user"] == "debian"
    assert set(imported["files"]) == {"disk"}


def test_it_boots_its_own_bootloader_and_cloud_init_configures_it(service, key, imported):
    inst = _json(service, "show", VM)
    qemu = (service.home / "run" / inst["id"] / "qemu.pid").read_text().split()[0]
    argv = Path(f"/proc/{qemu}/cmdline").read_bytes().split(b"\0")
    assert b"-kernel" not in argv  # the firmware and the disk's bootloader, not direct boot
    firmware = [argv[i + 1] for i, a in enumerate(argv) if a == b"-bios"]
    assert firmware == ([b"/usr/share/ovmf/OVMF.fd"] if imported["firmware"] == "uefi" else [])
    log = service.cli("console", VM, "--log", "--tail", "0").stdout
    assert BOOTLOADER[imported["firmware"]] in log
    status = ssh(service, key, "cloud-init", "status", "--wait", "--long").stdout
    assert "status: done" in status, status
    assert ssh(service, key, "hostname").stdout.strip() == VM
    assert ssh(service, key, "cloud-init", "query", "instance-id").stdout.strip() == inst["id"]
    assert ssh(service, key, "cat", "/etc/gureum-test").stdout == "written by user-data"
    assert ssh(service, key, "sudo", "-n", "true").returncode == 0


def test_export_gives_back_a_qcow2_that_boots_by_itself(service, imported, tmp_path):
    out = tmp_path / "mine.qcow2"
    service.cli("image", "export", "mine", str(out))
    shown = subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(out)],
                           check=True, capture_output=True)  # fmt: skip
    info = json.loads(shown.stdout)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert info["virtual-size"] == imported["disk_virtual_bytes"]
    raw = tmp_path / "first.raw"
    subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=1",
                    f"if={out}", f"of={raw}"], check=True)  # fmt: skip
    assert raw.read_bytes()[510:512] == b"\x55\xaa"
