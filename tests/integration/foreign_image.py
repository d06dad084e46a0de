"""A cloud image gureum did not make: Debian from Debian packages, installed by debootstrap (not
gureum's mmdebstrap builder), on a partitioned disk with SYSLINUX in its MBR and its partition's
boot sector, as a qcow2 file. What a user who brings their own image hands in.

Built once per test run into the repository's cache folder (root needed: a loop device and a
mount, for extlinux to install its boot sector into the partition).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PACKAGES = (
    "linux-image-cloud-amd64,initramfs-tools,systemd-sysv,udev,cloud-init,qemu-guest-agent,"
    # debootstrap does not resolve virtual packages: cryptography's cffi backend by name.
    "python3-cffi-backend,openssh-server,sudo,ifupdown,isc-dhcp-client,locales,netbase"
)
DISK_MIB = 3072
PART_START_MIB = 1


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


def build(cache: Path) -> Path:
    """``cache/foreign/my-cloud.qcow2``, built if missing."""
    out = cache / "foreign" / "my-cloud.qcow2"
    if out.exists():
        return out
    work = out.parent / "work"
    shutil.rmtree(work, ignore_errors=True)
    root, debs = work / "root", cache / "debootstrap"
    debs.mkdir(parents=True, exist_ok=True)
    run("debootstrap", "--variant=minbase", f"--cache-dir={debs}", f"--include={PACKAGES}",
        "bookworm", str(root), mirror(), timeout=1800)  # fmt: skip
    kver = next((root / "lib/modules").iterdir()).name
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # each VM makes its own
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("foreign\n")
    (root / "etc/fstab").write_text("LABEL=root / ext4 rw,errors=remount-ro 0 1\n")
    (root / "etc/locale.gen").write_text("en_US.UTF-8 UTF-8\n")
    run("chroot", str(root), "locale-gen")
    (root / "etc/default/locale").write_text("LANG=en_US.UTF-8\n")
    (root / "boot/extlinux").mkdir()
    (root / "boot/extlinux/extlinux.conf").write_text(
        "SERIAL 0 115200\nDEFAULT debian\nTIMEOUT 1\nLABEL debian\n"
        f"  LINUX /boot/vmlinuz-{kver}\n  INITRD /boot/initrd.img-{kver}\n"
        "  APPEND root=LABEL=root rw console=ttyS0\n"
    )
    disk, part = work / "disk.raw", work / "part.raw"
    with open(disk, "wb") as f:
        f.truncate(DISK_MIB << 20)
    run("sfdisk", "-q", str(disk), input=f"label: dos\nstart={PART_START_MIB << 11}, type=83, "
                                          "bootable\n")  # fmt: skip
    # extlinux reads ext4 only without the 64bit feature.
    run("mkfs.ext4", "-q", "-F", "-O", "^64bit", "-L", "root", "-d", str(root), str(part),
        f"{DISK_MIB - PART_START_MIB}M")  # fmt: skip
    run("dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={PART_START_MIB}",
        "conv=notrunc,sparse", "status=none")  # fmt: skip
    part.unlink()
    loop = run("losetup", "-o", str(PART_START_MIB << 20), "-f", "--show", str(disk)).stdout.strip()
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
    tmp = out.with_suffix(".tmp")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(tmp), timeout=600)
    tmp.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return out
