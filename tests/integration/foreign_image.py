"""Cloud images gureum did not make: Debian from Debian packages, installed by debootstrap (not
gureum's mmdebstrap builder), as qcow2 files. What a user who brings their own image hands in.

One root filesystem, two disks, each with the bootloader of its kind of firmware:

- ``bios``: an MBR disk with SYSLINUX in its MBR and its partition's boot sector (SeaBIOS);
- ``uefi``: a GPT disk with an EFI system partition holding GRUB (Debian's ``grub-efi-amd64-bin``)
  at the removable-media path ``EFI/BOOT/BOOTX64.EFI``, and no BIOS boot code (OVMF).

Built once per cache into the repository's cache folder (root needed: a loop device and a
mount, for extlinux to install its boot sector into the partition).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PACKAGES = (
    "linux-image-cloud-amd64,initramfs-tools,systemd-sysv,udev,cloud-init,qemu-guest-agent,"
    # debootstrap does not resolve virtual packages: cryptography's cffi backend by name.
    "python3-cffi-backend,openssh-server,sudo,ifupdown,isc-dhcp-client,locales,netbase,"
    "grub-efi-amd64-bin"
)
DISK_MIB = 3072
ESP_MIB = 32
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
KINDS = ("bios", "uefi")


def run(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def mirror() -> str:
    """The host's Debian archive (from its apt sources), as debootstrap wants it: one URL."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.suffix not in (".list", ".sources", ""):
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) > 1 and words[0] in ("deb", "URIs:") and "security" not in words[1]:
                return words[1]
    return "http://deb.debian.org/debian"


def build(cache: Path) -> dict[str, Path]:
    """{"bios": ``cache/foreign/my-cloud.qcow2``, "uefi": ``cache/foreign/my-uefi.qcow2``},
    built if missing."""
    folder = cache / "foreign"
    outs = {"bios": folder / "my-cloud.qcow2", "uefi": folder / "my-uefi.qcow2"}
    if all(out.exists() for out in outs.values()):
        return outs
    work = folder / "work"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    kver = _install(root, cache / "debootstrap")
    cmdline = "root=LABEL=root rw console=ttyS0"
    (root / "boot/extlinux").mkdir()
    (root / "boot/extlinux/extlinux.conf").write_text(
        "SERIAL 0 115200\nDEFAULT debian\nTIMEOUT 1\nLABEL debian\n"
        f"  LINUX /boot/vmlinuz-{kver}\n  INITRD /boot/initrd.img-{kver}\n  APPEND {cmdline}\n"
    )
    (root / "boot/grub").mkdir(exist_ok=True)
    (root / "boot/grub/grub.cfg").write_text(
        "serial --unit=0 --speed=115200\nterminal_input serial console\n"
        "terminal_output serial console\nset timeout=1\n"
        f"menuentry 'Debian GNU/Linux' {{\n  linux /boot/vmlinuz-{kver} {cmdline}\n"
        f"  initrd /boot/initrd.img-{kver}\n}}\n"
    )
    # GRUB's EFI program, made inside the image's own root from its own GRUB package; its
    # built-in configuration finds the root filesystem by label and reads /boot/grub/grub.cfg.
    (root / "tmp/early.cfg").write_text(
        "search --no-floppy --label root --set=root\nset prefix=($root)/boot/grub\n"
        "configfile $prefix/grub.cfg\n"
    )
    run("chroot", str(root), "grub-mkstandalone", "-O", "x86_64-efi", "-o", "/tmp/BOOTX64.EFI",
        "--modules=part_gpt ext2 search_label linux normal configfile serial terminal",
        "boot/grub/grub.cfg=/tmp/early.cfg")  # fmt: skip
    efi = work / "BOOTX64.EFI"
    shutil.move(root / "tmp/BOOTX64.EFI", efi)
    (root / "tmp/early.cfg").unlink()
    _bios_disk(root, work, outs["bios"])
    _uefi_disk(root, work, efi, outs["uefi"])
    shutil.rmtree(work, ignore_errors=True)
    return outs


def _install(root: Path, debs: Path) -> str:
    """Debian into ``root``; returns its kernel's version."""
    debs.mkdir(parents=True, exist_ok=True)
    run("debootstrap", "--variant=minbase", f"--cache-dir={debs}", f"--include={PACKAGES}",
        "bookworm", str(root), mirror(), timeout=1800)  # fmt: skip
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # each VM makes its own
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("foreign\n")
    (root / "etc/fstab").write_text("LABEL=root / ext4 rw,errors=remount-ro 0 1\n")
    (root / "etc/locale.gen").write_text("en_US.UTF-8 UTF-8\n")
    run("chroot", str(root), "locale-gen")
    (root / "etc/default/locale").write_text("LANG=en_US.UTF-8\n")
    return next((root / "lib/modules").iterdir()).name


def _root_fs(root: Path, part: Path, mib: int) -> None:
    # extlinux reads ext4 only without the 64bit feature.
    run("mkfs.ext4", "-q", "-F", "-O", "^64bit", "-L", "root", "-d", str(root), str(part),
        f"{mib}M")  # fmt: skip


def _place(part: Path, disk: Path, start_mib: int) -> None:
    run("dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={start_mib}", "conv=notrunc,sparse",
        "status=none")  # fmt: skip
    part.unlink()


def _blank(disk: Path, table: str) -> None:
    with open(disk, "wb") as f:
        f.truncate(DISK_MIB << 20)
    run("sfdisk", "-q", str(disk), input=table)


def _to_qcow2(disk: Path, out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(tmp), timeout=600)
    tmp.rename(out)
    disk.unlink()


def _bios_disk(root: Path, work: Path, out: Path) -> None:
    start = 1
    disk, part = work / "bios.raw", work / "part.raw"
    _blank(disk, f"label: dos\nstart={start << 11}, type=83, bootable\n")
    _root_fs(root, part, DISK_MIB - start)
    _place(part, disk, start)
    loop = run("losetup", "-o", str(start << 20), "-f", "--show", str(disk)).stdout.strip()
    mnt = work / "mnt"
    mnt.mkdir()
    try:
        run("mount", loop, str(mnt))
        try:
            run("extlinux", "--install", str(mnt / "boot/extlinux"))
        finally:
            run("umount", str(mnt))
    finally:
        run("losetup", "-d", loop)
    run("dd", "if=/usr/lib/EXTLINUX/mbr.bin", f"of={disk}", "bs=440", "count=1",
        "conv=notrunc", "status=none")  # fmt: skip
    _to_qcow2(disk, out)


def _uefi_disk(root: Path, work: Path, efi: Path, out: Path) -> None:
    esp_start, root_start = 1, 1 + ESP_MIB
    disk, esp, part = work / "uefi.raw", work / "esp.raw", work / "part.raw"
    # sfdisk's GPT: a protective MBR with no boot code, so only UEFI firmware can boot it.
    _blank(disk, f"label: gpt\nstart={esp_start << 11}, size={ESP_MIB << 11}, type={ESP_TYPE}\n"
                 f"start={root_start << 11}, type={LINUX_TYPE}\n")  # fmt: skip
    run("mkfs.vfat", "-C", "-n", "ESP", str(esp), str(ESP_MIB << 10))
    run("mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT")
    run("mcopy", "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI")
    _place(esp, disk, esp_start)
    # The GPT's backup header takes the disk's last 33 sectors: the filesystem stops 1 MiB short.
    _root_fs(root, part, DISK_MIB - root_start - 1)
    _place(part, disk, root_start)
    _to_qcow2(disk, out)
