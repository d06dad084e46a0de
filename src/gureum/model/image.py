"""Images: a base root disk, with a kernel and an initramfs when built by gureum, and what they
were built (or imported) from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Image:
    name: str
    version: str  # changes whenever the inputs (packages, guest files) change
    kernel_version: str
    path: str  # folder holding the files
    # role -> {"file": name in folder, "bytes": size, "sha256": digest}; roles: kernel, initrd, disk
    files: dict[str, dict[str, object]] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)  # Debian package -> version
    disk_virtual_bytes: int = 0
    built_at: float = 0.0
    # Imported images: who logs in (their cloud-init default user), and what was handed in.
    default_user: str | None = None
    origin: str = "built"  # "built", or "imported qcow2" / "imported raw"
    # Imported images: what boots their disk's own bootloader, "bios" (SeaBIOS) or "uefi" (OVMF).
    firmware: str | None = None
    # Images a project made from its instances are its own (seen and launched by its members
    # only); None: the host's catalog, which every user sees.
    project_id: str | None = None
    description: str = ""

    @property
    def boot(self) -> str:
        """``kernel``: QEMU boots the image's kernel directly (built images); ``firmware``:
        the firmware boots the disk's own bootloader (imported images, which have only a disk)."""
        return "kernel" if "kernel" in self.files else "firmware"

    def file(self, role: str) -> Path:
        return Path(self.path) / str(self.files[role]["file"])

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "kernel_version": self.kernel_version,
            "path": self.path,
            "files": self.files,
            "packages": self.packages,
            "disk_virtual_bytes": self.disk_virtual_bytes,
            "disk_gib": round(self.disk_virtual_bytes / 1024**3, 3),
            # Each file's bytes is an int; the catalog's JSON types the entries as object.
            "size_bytes": sum(int(f["bytes"]) for f in self.files.values()),  # type: ignore[call-overload]
            "built_at": self.built_at,
            "boot": self.boot,
            "default_user": self.default_user,
            "origin": self.origin,
            "firmware": self.firmware,
            "project_id": self.project_id,
            "description": self.description,
        }
