"""The backup archive format: a plain tar stream, self-describing, checked before use.

Layout, in stream order:

    gureum-backup.json   {"format": "gureum-backup", "version": 1}: says what this is, first
    <data files>         disk.qcow2, vmlinuz, initrd.img, memory/state, memory/ram-*.qcow2
    manifest.json        the VM's configuration, and every data file's size and SHA-256

The manifest comes last so an archive can be written in one pass, as a stream, with checksums
computed on the way. A reader extracts into a scratch folder, checking names and sizes as it
goes, and trusts nothing until the manifest matches every file: a truncated or tampered
archive is refused before anything is created from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from gureum.errors import InsufficientCapacity, InvalidArchive

FORMAT = "gureum-backup"
VERSION = 1
HEADER = "gureum-backup.json"
MANIFEST = "manifest.json"
# Data files an archive may hold; anything else is refused (no path tricks).
DATA_NAME = re.compile(r"disk\.qcow2|vmlinuz|initrd\.img|memory/state|memory/ram-[a-z0-9-]+\.qcow2")
CHUNK = 1 << 20
# The most a member may hold. The disk and RAM images have no fixed bound here (their declared
# sizes are checked later against the manifest and quotas); what bounds them while they arrive
# is the host's free space (``keep_free``).
MAX_BYTES = {"vmlinuz": 256 << 20, "initrd.img": 1 << 30, "memory/state": 256 << 20}
# How often, in bytes written (across all members), the free space is looked at.
CHECK_EVERY = 16 << 20
MAX_RAM_MEMBERS = 9  # one per memory backend: mem0 and at most 8 DIMMs


# An archive that is not whole or not what it says (``errors.InvalidArchive``).
ArchiveError = InvalidArchive


class _Hashing:
    """A file reader that hashes what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        return data


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def write(out: BinaryIO, files: dict[str, Path], config: dict[str, Any]) -> dict[str, Any]:
    """Write an archive of ``files`` (archive name -> path) to ``out``; returns the manifest."""
    manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "config": config, "files": {}}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, HEADER, json.dumps({"format": FORMAT, "version": VERSION}).encode())
        for name, path in files.items():
            if not DATA_NAME.fullmatch(name):
                raise ValueError(f"not an archive data name: {name}")
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o600
            with open(path, "rb") as f:
                hashing = _Hashing(f)
                tar.addfile(info, hashing)
            manifest["files"][name] = {"bytes": info.size, "sha256": hashing.digest.hexdigest()}
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def read(
    inp: BinaryIO,
    dest: Path,
    *,
    progress: Callable[[str], None] | None = None,
    keep_free: int = 0,
) -> dict[str, Any]:
    """Extract an archive into ``dest`` and check it whole; returns the manifest.

    Raises ArchiveError (code ``invalid-archive``) on anything amiss, and InsufficientCapacity
    when writing it would leave less than ``keep_free`` bytes free where ``dest`` is.
    """
    digests: dict[str, tuple[int, str]] = {}
    manifest: dict[str, Any] | None = None
    room = Room(dest, keep_free)
    try:
        with tarfile.open(fileobj=inp, mode="r|") as tar:
            first = True
            for member in tar:
                if first:
                    _check_header(tar, member)
                    first = False
                    continue
                if manifest is not None:
                    raise ArchiveError(f"unexpected {member.name!r} after the manifest")
                if member.name == MANIFEST and member.isfile():
                    manifest = _json(tar, member)
                    continue
                if not member.isfile() or not DATA_NAME.fullmatch(member.name):
                    raise ArchiveError(f"unexpected entry {member.name!r} in the archive")
                if member.issparse():
                    # Its holes would be written out as real zeros: a few KiB of upload could
                    # fill the host's disk. gureum never writes one.
                    raise ArchiveError(f"{member.name} is a sparse tar member")
                limit = MAX_BYTES.get(member.name)
                if limit is not None and member.size > limit:
                    raise ArchiveError(f"{member.name} is larger than {limit >> 20} MiB")
                rams = sum(name.startswith("memory/ram-") for name in digests)
                if member.name.startswith("memory/ram-") and rams >= MAX_RAM_MEMBERS:
                    raise ArchiveError(f"more than {MAX_RAM_MEMBERS} RAM images in the archive")
                room.check(member.size)
                if member.name in digests:
                    raise ArchiveError(f"{member.name!r} appears twice in the archive")
                if progress:
                    progress(f"receiving {member.name} ({member.size / 2**20:.1f} MiB)")
                digests[member.name] = _extract(tar, member, dest / member.name, room)
            if first:
                raise ArchiveError("the archive is empty")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if "unexpected end" in str(exc) or isinstance(exc, EOFError):
            raise ArchiveError(f"the archive is truncated ({exc})") from exc
        raise ArchiveError(f"not a complete gureum backup archive: {exc}") from exc
    if manifest is None:
        raise ArchiveError("the archive ends before its manifest: it is truncated")
    listed = manifest.get("files") or {}
    if set(listed) != set(digests):
        missing = sorted(set(listed) - set(digests))
        extra = sorted(set(digests) - set(listed))
        raise ArchiveError(
            f"archive contents do not match its manifest (missing {missing}, extra {extra})"
        )
    for name, (size, digest) in digests.items():
        if listed[name].get("bytes") != size or listed[name].get("sha256") != digest:
            raise ArchiveError(f"{name} does not match its checksum: the archive was altered")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ArchiveError("the manifest is not a gureum backup manifest of a known version")
    return manifest


class Room:
    """Keeps what is written from outside (an archive's members, an uploaded image) from taking
    the host's reserve: ``check`` before writing what is coming, and ``wrote`` looks at the free
    space again every CHECK_EVERY bytes (``keep_free`` 0: no check)."""

    def __init__(self, dest: Path, keep_free: int, what: str = "this archive") -> None:
        self.dest, self.keep_free, self.what, self._since = dest, keep_free, what, 0

    def check(self, coming: int = 0) -> None:
        if not self.keep_free:
            return
        self.dest.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(self.dest)
        if st.f_bavail * st.f_frsize - coming < self.keep_free:
            raise InsufficientCapacity(
                f"the host has no room for {self.what}: it would leave less than"
                f" {self.keep_free >> 20} MiB free"
            )

    def wrote(self, n: int) -> None:
        self._since += n
        if self._since >= CHECK_EVERY:
            self._since = 0
            self.check()


def _check_header(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    if member.name != HEADER or not member.isfile() or member.size > 4096:
        raise ArchiveError("not a gureum backup archive (no gureum-backup.json header)")
    header = _json(tar, member)
    if header.get("format") != FORMAT:
        raise ArchiveError("not a gureum backup archive")
    if header.get("version") != VERSION:
        raise ArchiveError(f"backup format version {header.get('version')} is not supported")


def _json(tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, Any]:
    if member.size > 1 << 20:
        raise ArchiveError(f"{member.name} is implausibly large")
    f = tar.extractfile(member)
    assert f is not None
    try:
        value = json.loads(f.read())
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past Python's stack
        raise ArchiveError(f"{member.name} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise ArchiveError(f"{member.name} is not a JSON object")
    return value


def _extract(
    tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, room: Room
) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(member)
    assert src is not None
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
            room.wrote(len(chunk))
    if size != member.size:
        raise ArchiveError(f"{member.name} is cut short: the archive is truncated")
    return size, digest.hexdigest()
