"""Building images from Debian packages only: the steps every build shares, and ``tiny``.

The image is three files:

- ``vmlinuz``: Debian's cloud kernel, unpacked from its .deb (never installed into the host);
- ``initrd.img``: busybox and the virtio modules, enough to find and mount the root disk;
- ``disk.qcow2``: an ext4 root (``mkfs.ext4 -d``, no loop mounts) with busybox, qemu-guest-agent
  and resize2fs with their libraries, the kernel's modules and our small init.

Each step leaves a stamp in the build folder, so a failed build resumes where it stopped; the
finished files move into place in one rename and the catalog entry is written last, so a
half-built image is never listed. The image version is a hash of every input (package versions
and our guest files), so rebuilding with the same inputs is a no-op.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gureum.errors import EngineError, ImageBuildError
from gureum.images import debian
from gureum.images.cpio import build_initramfs
from gureum.model.image import Image
from gureum.storage.disks import virtual_size
from gureum.sys.runner import run

log = logging.getLogger(__name__)
T = TypeVar("T")

BUILDER_VERSION = "1"
ProgressFn = Callable[[str, float | None], None]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    kernel_meta: str  # a Debian meta package that depends on the current kernel
    library_roots: tuple[str, ...]  # packages whose binaries we ship, with their libraries
    static_packages: tuple[str, ...]
    disk_mib: int
    initrd_modules: tuple[str, ...]  # loaded in this order by the initramfs
    rootfs_module_paths: tuple[str, ...]  # under lib/modules/VERSION/, files or folders
    guest_files: dict[str, tuple[str, int]]  # path in rootfs -> (file in images/tiny, mode)
    # path in rootfs -> a C file in images/tiny, built with no libc (CC_ARGV) into a static binary
    compiled: dict[str, str]


TINY = Recipe(
    name="tiny",
    description="Debian cloud kernel + busybox + qemu-guest-agent; boots in seconds on TCG",
    kernel_meta="linux-image-cloud-amd64",
    library_roots=("qemu-guest-agent", "e2fsprogs"),
    static_packages=("busybox-static",),
    disk_mib=512,
    initrd_modules=(
        "virtio_ring",
        "virtio",
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "virtio_blk",
    ),
    rootfs_module_paths=(
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
        "kernel/drivers/virtio/virtio_balloon.ko",
        "kernel/drivers/virtio/virtio_mem.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/drivers/char/virtio_console.ko",
        "kernel/drivers/char/hw_random/virtio-rng.ko",
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/net/net_failover.ko",
        "kernel/net/core/failover.ko",
        "kernel/drivers/acpi/button.ko",
        "kernel/drivers/input/evdev.ko",
        "kernel/net/vmw_vsock/vsock.ko",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    ),
    guest_files={
        "etc/inittab": ("inittab", 0o644),
        "etc/gureum/rc.init": ("rc.init", 0o755),
        "etc/gureum/agent": ("agent", 0o755),
        "etc/gureum/rc.shutdown": ("rc.shutdown", 0o755),
        "etc/acpi/PWRF/00000080": ("acpi-power", 0o755),
        "etc/gureum/udhcpc": ("udhcpc", 0o755),
        "etc/gureum/network": ("network", 0o755),
    },
    # What a restored or cloned guest runs to reseed its random generator (``NEW_IDENTITY``).
    compiled={"usr/lib/gureum/reseed": "reseed.c"},
)

# A program of a few system calls: static, no libc, no start files, stripped.
CC_ARGV = (
    "cc", "-static", "-nostdlib", "-fno-pie", "-no-pie", "-Os", "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none", "-s",
)  # fmt: skip

# Parts of the unpacked packages a guest never reads.
_PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/lib/x86_64-linux-gnu/gconv",
)


def guest_file(name: str) -> bytes:
    return importlib.resources.files("gureum.images.tiny").joinpath(name).read_bytes()


class StepBuilder:
    """What every image build shares: a version from its inputs, steps that leave stamps (a
    rerun resumes after the last finished one), ``out/`` moved into the catalog in one rename,
    and the checksums. A recipe's builder says how to resolve its inputs and make ``out/``."""

    def __init__(self, name: str, images_dir: Path, cache_dir: Path, progress: ProgressFn):
        self.name = name
        self.images_dir = images_dir
        self.cache = cache_dir / "debs"
        self.progress = progress

    def resolve(self) -> tuple[str, dict[str, str]]:
        """(version, {package: version}) of what would be built now."""
        raise NotImplementedError

    def make(self, work: Path) -> tuple[str, dict[str, str]]:
        """Make ``work/out/`` (vmlinuz, initrd.img, disk.qcow2); returns the kernel version and
        the packages really in the image."""
        raise NotImplementedError

    def build(self, existing: Image | None) -> tuple[Image, bool]:
        """Returns the image and whether anything was built (False: already up to date)."""
        self.progress("resolving Debian packages", None)
        version, _ = self.resolve()
        final = self.images_dir / self.name / version
        if existing and existing.version == version and self._intact(existing):
            self.progress(f"image {self.name} {version} is up to date", 1.0)
            return existing, False
        work = self.images_dir / ".build" / f"{self.name}-{version}"
        for stale in work.parent.glob(f"{self.name}-*"):
            if stale != work:  # an unfinished build of inputs that have changed since
                shutil.rmtree(stale, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        kernel_version, packages = self.make(work)
        files = self._step(work, "checksums", lambda: self._checksums(work))
        self.progress("installing into the catalog", 0.98)
        out = work / "out"
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        out.rename(final)
        image = Image(
            name=self.name,
            version=version,
            kernel_version=kernel_version,
            path=str(final),
            files=files,
            packages=packages,
            disk_virtual_bytes=virtual_size(final / "disk.qcow2"),
            built_at=time.time(),
        )
        shutil.rmtree(work, ignore_errors=True)
        return image, True

    def _step(self, work: Path, name: str, fn: Callable[[], T]) -> T:
        """Run a step once: its result is kept as JSON beside a stamp, so a rerun skips it."""
        stamp = work / f".done-{name}.json"
        if stamp.exists():
            self.progress(f"{name}: done in an earlier run, reused", None)
            return json.loads(stamp.read_text())  # fn's own JSON
        try:
            result = fn()
        except EngineError as exc:
            raise ImageBuildError(f"image build step {name!r} failed: {exc.message}") from exc
        stamp.write_text(json.dumps(result))
        return result

    def _disk(self, work: Path, root: Path, mib: int) -> None:
        """``out/disk.qcow2``: an ext4 filesystem labelled ``root`` made from ``root`` (no loop
        mounts), the whole disk (no partition table: built images boot their kernel directly)."""
        self.progress(f"making the {mib} MiB ext4 root disk", 0.88)
        raw = work / "disk.raw"
        raw.unlink(missing_ok=True)
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(raw), f"{mib}M"],
            timeout=600)  # fmt: skip
        self.progress("converting the root disk to qcow2", 0.94)
        (work / "out").mkdir(exist_ok=True)
        run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "out/disk.qcow2")],
            timeout=600)  # fmt: skip
        raw.unlink()

    def _checksums(self, work: Path) -> dict[str, dict[str, object]]:
        self.progress("computing checksums", 0.96)
        files = {}
        for role, name in (("kernel", "vmlinuz"), ("initrd", "initrd.img"), ("disk", "disk.qcow2")):
            path = work / "out" / name
            files[role] = {
                "file": name,
                "bytes": path.stat().st_size,
                "sha256": debian.sha256_file(path),
            }
        return files

    @staticmethod
    def _intact(image: Image) -> bool:
        for role, meta in image.files.items():
            path = image.file(role)
            if not path.exists() or path.stat().st_size != meta["bytes"]:
                return False
        return True


class Builder(StepBuilder):
    """``tiny``: packages unpacked with dpkg-deb, busybox as init, our own initramfs."""

    def __init__(self, recipe: Recipe, images_dir: Path, cache_dir: Path, progress: ProgressFn):
        super().__init__(recipe.name, images_dir, cache_dir, progress)
        self.recipe = recipe
        self._inputs: tuple[debian.Package, list[debian.Package]] | None = None

    # -- inputs ----------------------------------------------------------------------------------
    def _resolve_packages(self) -> tuple[debian.Package, list[debian.Package]]:
        if self._inputs is None:
            r = self.recipe
            meta = debian.show(r.kernel_meta)
            kernel_pkgs = [d for d in meta.depends if d.startswith("linux-image-")]
            if not kernel_pkgs:
                raise ImageBuildError(f"{r.kernel_meta} does not name a kernel package")
            kernel = debian.show(kernel_pkgs[0])
            packages = debian.library_closure(r.library_roots) + [
                debian.show(p) for p in r.static_packages
            ]
            self._inputs = (kernel, packages)
        return self._inputs

    def resolve(self) -> tuple[str, dict[str, str]]:
        kernel, packages = self._resolve_packages()
        return self.version_of(kernel, packages), {p.name: p.version for p in [kernel, *packages]}

    def version_of(self, kernel: debian.Package, packages: list[debian.Package]) -> str:
        digest = hashlib.sha256(BUILDER_VERSION.encode())
        for pkg in [kernel, *packages]:
            digest.update(f"{pkg.name}={pkg.version}\n".encode())
        for path, (src, mode) in sorted(self.recipe.guest_files.items()):
            digest.update(f"{path}:{mode}:".encode() + guest_file(src))
        for path, src in sorted(self.recipe.compiled.items()):
            digest.update(f"{path}:{' '.join(CC_ARGV)}:".encode() + guest_file(src))
        digest.update(guest_file("initramfs-init"))
        digest.update(repr(self.recipe).encode())
        return digest.hexdigest()[:12]

    # -- the build -------------------------------------------------------------------------------
    def make(self, work: Path) -> tuple[str, dict[str, str]]:
        kernel, packages = self._resolve_packages()
        debs = self._step(work, "download", lambda: self._download([kernel, *packages]))
        kernel_version = self._step(work, "kernel", lambda: self._unpack_kernel(work, debs[0]))
        self._step(work, "rootfs", lambda: self._rootfs(work, debs[1:], kernel_version))
        self._step(work, "initramfs", lambda: self._initramfs(work, kernel_version))
        self._step(work, "disk", lambda: self._disk(work, work / "rootfs", self.recipe.disk_mib))
        return kernel_version, {p.name: p.version for p in [kernel, *packages]}

    def _download(self, packages: list[debian.Package]) -> list[str]:
        paths = []
        total = sum(p.size for p in packages) or 1
        done = 0
        for pkg in packages:
            self.progress(f"download {pkg.name} {pkg.version}", 0.05 + 0.55 * done / total)
            paths.append(str(debian.download(pkg, self.cache)))
            done += pkg.size
        return paths

    def _unpack_kernel(self, work: Path, deb: str) -> str:
        self.progress("unpacking the kernel", 0.62)
        kdir = work / "kernel"
        shutil.rmtree(kdir, ignore_errors=True)
        debian.unpack(Path(deb), kdir)
        versions = sorted(p.name for p in (kdir / "lib/modules").iterdir())
        if len(versions) != 1:
            raise ImageBuildError(f"expected one kernel in {deb}, found {versions}")
        return versions[0]

    def _rootfs(self, work: Path, debs: list[str], kver: str) -> None:
        self.progress("assembling the root filesystem", 0.68)
        root = work / "rootfs"
        shutil.rmtree(root, ignore_errors=True)
        for deb in debs:
            debian.unpack(Path(deb), root)
        for prune in _PRUNE:
            shutil.rmtree(root / prune, ignore_errors=True)
        for folder in (
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "root",
            "var/log",
            "usr/bin",
            "usr/sbin",
            "bin",
            "sbin",
            "etc/gureum",
            "mnt",
        ):
            (root / folder).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "tmp", 0o1777)
        self._busybox_links(root)
        (root / "sbin/init").unlink(missing_ok=True)
        (root / "sbin/init").symlink_to("/bin/busybox")
        for path, (src, mode) in self.recipe.guest_files.items():
            dest = root / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(guest_file(src))
            dest.chmod(mode)
        for path, src in self.recipe.compiled.items():
            dest = root / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            source = work / src
            source.write_bytes(guest_file(src))
            run([*CC_ARGV, "-o", str(dest), str(source)], timeout=120)
            dest.chmod(0o755)
        (root / "etc/hostname").write_text(f"{self.recipe.name}\n")
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")
        # Static busybox resolves names through glibc's NSS modules (libc6 is in the image).
        (root / "etc/nsswitch.conf").write_text("hosts: files dns\nnetworks: files\n")
        (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
        (root / "etc/profile").write_text(
            "export PATH=/sbin:/usr/sbin:/bin:/usr/bin\nexport PS1='\\h:\\w\\$ '\n"
        )
        self._modules(work / "kernel", root, kver)
        run(["ldconfig", "-r", str(root)])
        # Prove the shipped binaries find every library they link, before any VM boots.
        for binary, arg in (("/usr/sbin/qemu-ga", "-V"), ("/sbin/resize2fs", "-V")):
            out = run(["chroot", str(root), binary, arg], check=False)
            if out.returncode != 0 and "resize2fs" not in out.stderr:
                raise ImageBuildError(f"{binary} does not run in the image: {out.stderr.strip()}")

    def _busybox_links(self, root: Path) -> None:
        applets = run(["chroot", str(root), "/bin/busybox", "--list-full"]).stdout.split()
        for applet in applets:
            link = root / applet
            if not link.exists() and not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")

    def _modules(self, kdir: Path, root: Path, kver: str) -> None:
        src = kdir / "lib/modules" / kver
        dest = root / "lib/modules" / kver
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for rel in self.recipe.rootfs_module_paths:
            path = src / rel
            if path.is_dir():
                shutil.copytree(path, dest / rel)
            elif path.exists():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest / rel)
            else:
                raise ImageBuildError(f"kernel {kver} has no {rel}")
        for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            if (src / meta).exists():
                shutil.copy2(src / meta, dest / meta)
        run(["depmod", "-b", str(root), kver])
        # Debian's package ships no real System.map, so depmod cannot check symbols; check
        # instead that every module another one names as a dependency is shipped or built in.
        builtin = (
            (dest / "modules.builtin").read_text() if (dest / "modules.builtin").exists() else ""
        )
        have = {p.stem.replace("-", "_") for p in dest.rglob("*.ko")}
        have |= {Path(line).stem.replace("-", "_") for line in builtin.split()}
        for module in sorted(dest.rglob("*.ko")):
            needs = run(["modinfo", "-F", "depends", str(module)]).stdout.strip()
            missing = [n for n in needs.split(",") if n and n.replace("-", "_") not in have]
            if missing:
                raise ImageBuildError(f"{module.name} needs modules not in the image: {missing}")

    def _initramfs(self, work: Path, kver: str) -> None:
        self.progress("building the initramfs", 0.8)
        tree = work / "initramfs"
        shutil.rmtree(tree, ignore_errors=True)
        for folder in ("bin", "lib/modules", "proc", "sys", "dev", "newroot"):
            (tree / folder).mkdir(parents=True)
        shutil.copy2(work / "rootfs/bin/busybox", tree / "bin/busybox")
        modules = work / "kernel/lib/modules" / kver
        for name in self.recipe.initrd_modules:
            found = list(modules.rglob(f"{name}.ko"))
            if len(found) != 1:
                raise ImageBuildError(f"kernel {kver}: module {name} found {len(found)} times")
            shutil.copy2(found[0], tree / "lib/modules" / f"{name}.ko")
        init = tree / "init"
        init.write_bytes(guest_file("initramfs-init"))
        init.chmod(0o755)
        out = work / "out"
        out.mkdir(exist_ok=True)
        build_initramfs(tree, out / "initrd.img")
        shutil.copy2(work / "kernel/boot" / f"vmlinuz-{kver}", out / "vmlinuz")


def remove(image: Image) -> None:
    """An image's folder (its version's files) once the store has forgotten it."""
    shutil.rmtree(Path(image.path).parent, ignore_errors=True)


def verify(image: Image) -> list[str]:
    """Checksum every file of an image; returns the problems found (empty when intact)."""
    problems = []
    for role, meta in image.files.items():
        path = image.file(role)
        if not path.exists():
            problems.append(f"{role}: {path} is missing")
        elif debian.sha256_file(path) != meta["sha256"]:
            problems.append(f"{role}: {path} does not match its recorded checksum")
    return problems
