"""Building a full Debian system image (``debian``) with mmdebstrap.

Unlike ``tiny``, this is an ordinary Debian installation, made by Debian's own tools from the
host's configured archive: systemd, cloud-init, OpenSSH and the guest agent, configured the way
Debian's cloud images are (cloud-init's stock configuration, a default user ``debian``). What is
changed after mmdebstrap is only what must differ per VM or what a VM never needs:

- no SSH host keys, no machine id and no hostname are baked in (each VM makes its own at first
  boot; cloud-init writes the keys and sets the hostname from the metadata);
- no downloaded packages or apt lists (they are fetched again on demand);
- timers and units that only cost a cloud VM boot time are masked (``MASKED``).

The image is three files as for ``tiny`` (``vmlinuz``, ``initrd.img`` from the image's own
``/boot``, and ``disk.qcow2``, an ext4 whole-disk root): built images boot their kernel directly.
Downloads are kept in ``$GUREUM_CACHE_DIR/debs/mmdebstrap`` (a rebuild does not fetch them
again), and the root filesystem is a step with a stamp, so a build that failed later resumes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from gureum.errors import ImageBuildError
from gureum.images import debian
from gureum.images.build import BUILDER_VERSION, ProgressFn, StepBuilder
from gureum.sys.runner import run


@dataclass(frozen=True)
class SystemRecipe:
    name: str
    description: str
    suite: str
    include: tuple[str, ...]  # packages installed on top of Debian's minbase variant
    masked: tuple[str, ...]  # systemd units a cloud VM never needs at boot
    disk_mib: int
    default_user: str  # cloud-init's default user in Debian's stock configuration
    # Generated in the image and made the default, as in Debian's cloud images: cloud-init's
    # locale module asks for it and fails (status: error) when it is not there.
    locale: str


DEBIAN = SystemRecipe(
    name="debian",
    description="Debian 12 with systemd, cloud-init, OpenSSH and the guest agent",
    suite="bookworm",
    include=(
        "linux-image-cloud-amd64",
        "initramfs-tools",
        "systemd-sysv",
        "udev",
        "cloud-init",
        "qemu-guest-agent",
        "openssh-server",
        "sudo",
        "ifupdown",
        "isc-dhcp-client",
        "e2fsprogs",
        "locales",
        "netbase",
        "ca-certificates",
    ),
    masked=(
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
        "e2scrub_reap.service",
        "systemd-pstore.service",
        "getty@tty1.service",  # no display: the login prompt is on the serial console
        "getty-static.service",  # gettys on tty2-6 when logind is missing: no display either
    ),
    disk_mib=2048,
    default_user="debian",
    locale="en_US.UTF-8",
)

FSTAB = "LABEL=root / ext4 rw,discard,errors=remount-ro 0 1\n"


def apt_sources() -> list[str]:
    """The host's configured archive, as files mmdebstrap reads like sources.list."""
    found = [Path("/etc/apt/sources.list")] if Path("/etc/apt/sources.list").is_file() else []
    folder = Path("/etc/apt/sources.list.d")
    if folder.is_dir():
        found += sorted(p for p in folder.iterdir() if p.suffix in (".list", ".sources"))
    sources = [str(p) for p in found if p.read_text().strip()]
    if not sources:
        raise ImageBuildError("no apt sources are configured on this host (/etc/apt/sources.list)")
    return sources


class SystemBuilder(StepBuilder):
    def __init__(
        self, recipe: SystemRecipe, images_dir: Path, cache_dir: Path, progress: ProgressFn
    ):
        super().__init__(recipe.name, images_dir, cache_dir, progress)
        self.recipe = recipe
        self.apt_cache = cache_dir / "debs" / "mmdebstrap"

    def resolve(self) -> tuple[str, dict[str, str]]:
        """The version: the recipe and the candidate versions of what it includes (a new
        kernel, cloud-init or OpenSSH in the archive makes a new image)."""
        top = {name: debian.show(name).version for name in self.recipe.include}
        digest = hashlib.sha256(f"{BUILDER_VERSION}\n{self.recipe!r}\n".encode())
        digest.update(_mmdebstrap_version().encode())
        for name, version in sorted(top.items()):
            digest.update(f"{name}={version}\n".encode())
        return digest.hexdigest()[:12], top

    def make(self, work: Path) -> tuple[str, dict[str, str]]:
        root = work / "rootfs"
        self._step(work, "rootfs", lambda: self._rootfs(root))
        packages: dict[str, str] = self._step(work, "configure", lambda: self._configure(root))
        kernel_version: str = self._step(work, "kernel", lambda: self._kernel(work, root))
        self._step(work, "disk", lambda: self._disk(work, root, self.recipe.disk_mib))
        return kernel_version, packages

    def _rootfs(self, root: Path) -> None:
        r = self.recipe
        self.progress(f"installing Debian {r.suite} with mmdebstrap (a minute or more)", 0.05)
        shutil.rmtree(root, ignore_errors=True)
        self.apt_cache.mkdir(parents=True, exist_ok=True)
        archives = "/var/cache/apt/archives/"
        argv = [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            "--quiet",
            f"--include={','.join(r.include)}",
            # Downloads are kept in our cache (synced in before, out after), so a rebuild does
            # not fetch them again; the image itself keeps none.
            "--skip=download/empty",
            "--skip=essential/unlink",
            f'--setup-hook=mkdir -p "$1"{archives}',
            f"--setup-hook=sync-in {self.apt_cache}/ {archives}",
            f"--customize-hook=sync-out {archives} {self.apt_cache}/",
            r.suite,
            str(root),
            *apt_sources(),
        ]
        run(argv, timeout=3600)

    def _configure(self, root: Path) -> dict[str, str]:
        """What must not be shared by every VM, or is never needed; returns the package list."""
        self.progress("removing per-VM state (host keys, machine id) and masking units", 0.6)
        for path in (root / "etc/ssh").glob("ssh_host_*"):
            path.unlink()
        for cache in (root / "var/cache/apt/archives").glob("*.deb"):
            cache.unlink()
        lists = root / "var/lib/apt/lists"
        for entry in lists.iterdir() if lists.is_dir() else ():
            if entry.is_file():
                entry.unlink()
        (root / "etc/machine-id").write_text("")  # empty: systemd makes one at first boot
        (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
        (root / "etc/resolv.conf").unlink(missing_ok=True)  # the host's: DHCP writes the VM's
        (root / "etc/hostname").write_text(f"{self.recipe.name}\n")
        (root / "etc/fstab").write_text(FSTAB)
        (root / "etc/locale.gen").write_text(f"{self.recipe.locale} UTF-8\n")
        run(["chroot", str(root), "locale-gen"], timeout=300)
        (root / "etc/default/locale").write_text(f"LANG={self.recipe.locale}\n")
        units = root / "etc/systemd/system"
        for unit in self.recipe.masked:
            link = units / unit
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to("/dev/null")
            for wants in units.glob(f"*.wants/{unit}"):
                wants.unlink()
        query = run(
            ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Package} ${Version}\\n"]
        ).stdout
        packages = dict(line.split(" ", 1) for line in query.splitlines() if " " in line)
        missing = [p for p in self.recipe.include if p not in packages]
        if missing:
            raise ImageBuildError(f"the image lacks packages the recipe asked for: {missing}")
        return packages

    def _kernel(self, work: Path, root: Path) -> str:
        self.progress("taking the kernel and initramfs from the image's /boot", 0.8)
        versions = sorted(p.name for p in (root / "lib/modules").iterdir())
        if len(versions) != 1:
            raise ImageBuildError(f"expected one kernel in the image, found {versions}")
        kver = versions[0]
        out = work / "out"
        out.mkdir(exist_ok=True)
        for src, dest in ((f"vmlinuz-{kver}", "vmlinuz"), (f"initrd.img-{kver}", "initrd.img")):
            path = root / "boot" / src
            if not path.is_file():
                raise ImageBuildError(f"the image has no /boot/{src}")
            shutil.copyfile(path, out / dest)
            os.chmod(out / dest, 0o644)
        return kver


def _mmdebstrap_version() -> str:
    return run(["mmdebstrap", "--version"]).stdout.strip()
