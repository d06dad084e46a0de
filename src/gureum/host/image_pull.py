"""A joined host's copy of an image from the catalog, fetched from its control plane.

An instance's disk starts as a layer over its image's disk, on the host it runs on, so each
host needs the image's files. The control plane tells the agent what the catalog recorded for
an image version (each file's name, size and SHA-256); the agent fetches what it lacks from the
cluster port (``{"op": "image-file"}``, answered with the file), checks size and digest while it
writes, and only then puts the file in place, under ``images/NAME/VERSION/`` as a host that built
the image has it. A transfer cut short or a file that is not what the catalog recorded leaves
nothing behind. One pull of a version at a time; a file already in place is not fetched again
when it is of the recorded size and was checked to have the recorded digest (when it arrived, or
once when first found: a file this host built itself, ``.verified.json``). None of
``images/``, ``images/NAME`` and ``images/NAME/VERSION`` may be a link.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from functools import partial
from pathlib import Path
from typing import Any

from gureum.errors import InvalidInput, Unavailable
from gureum.host import enrolment
from gureum.ids import check_name
from gureum.images.debian import sha256_file
from gureum.model.cluster import CONTROL_PLANE
from gureum.sys import jsonline

ROLES = ("disk", "kernel", "initrd")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")  # a version or a file name: no "/" or ".."
MAX_FILE_BYTES = 1 << 40

_locks: dict[tuple[str, str], asyncio.Lock] = {}


def check_files(files: object) -> dict[str, tuple[str, int, str]]:
    """What the control plane says an image version holds: role -> (file, bytes, sha256)."""
    if not isinstance(files, dict) or not files or not set(files) <= set(ROLES):
        raise InvalidInput(f"an image's files are some of {', '.join(ROLES)}")
    out = {}
    for role, entry in files.items():
        if not isinstance(entry, dict):
            raise InvalidInput(f"image file {role}: not an object")
        name, size, sha = entry.get("file"), entry.get("bytes"), entry.get("sha256")
        if not isinstance(name, str) or not _PART.fullmatch(name):
            raise InvalidInput(f"image file {role}: a bad file name")
        if type(size) is not int or not 0 <= size <= MAX_FILE_BYTES:
            raise InvalidInput(f"image file {role}: a bad size")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise InvalidInput(f"image file {role}: a bad SHA-256")
        out[role] = (name, size, sha)
    return out


async def pull(
    folder: Path, images_dir: Path, name: object, version: object, files: object
) -> dict[str, Any]:
    """Make ``images_dir/name/version/`` hold the files the control plane listed (each checked
    here: they become paths); what was fetched (roles) and what was there already."""
    if not isinstance(name, str):
        raise InvalidInput("a bad image name")
    check_name(name, what="image name")
    if not isinstance(version, str) or not _PART.fullmatch(version):
        raise InvalidInput("a bad image version")
    wanted = check_files(files)
    if enrolment.joined(folder) is None:
        raise InvalidInput("this agent has not joined a cluster")
    ctx = enrolment.own_context(folder)
    lock = _locks.setdefault((name, version), asyncio.Lock())
    async with lock:
        dest = images_dir / name / version
        await asyncio.to_thread(_folders, (images_dir, images_dir / name, dest))
        verified = _verified(dest)
        fetched, present = [], []
        for role, (file, size, sha) in sorted(wanted.items()):
            target = dest / file
            if await asyncio.to_thread(_holds, target, size, sha, verified):
                present.append(role)
                continue
            part = dest / f".{file}.{secrets.token_hex(4)}.part"
            request = {"op": "image-file", "image": name, "version": version, "role": role}
            got = await enrolment.to_control_plane(
                folder, partial(jsonline.fetch, request=request, ctx=ctx,
                                server_name=CONTROL_PLANE, dest=part, max_bytes=size),
            )  # fmt: skip
            if (got["received_bytes"], got["received_sha256"]) != (size, sha):
                part.unlink(missing_ok=True)
                raise Unavailable(
                    f"image {name} {version}: the {role} that arrived is not the one the "
                    "catalog recorded (size or SHA-256); nothing was kept"
                )
            os.chmod(part, 0o644)  # the catalog's files are every VM's to read
            os.replace(part, target)
            verified[file] = sha
            _record(dest, verified)
            fetched.append(role)
    return {"image": name, "version": version, "fetched": fetched, "present": present}


def _folders(levels: tuple[Path, ...]) -> None:
    """Make each folder in turn, none of them followed if it is a link (a link where a folder
    of the images should be would send the files elsewhere)."""
    for level in levels:
        if not level.is_symlink() and not level.exists():
            level.mkdir(0o755)
        if level.is_symlink() or not level.is_dir():
            raise InvalidInput(f"{level} is not a folder of this host's images")


VERIFIED = ".verified.json"  # file -> the SHA-256 it was checked to have, when it arrived


def _verified(dest: Path) -> dict[str, str]:
    try:
        seen = json.loads((dest / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in seen.items()} if isinstance(seen, dict) else {}


def _record(dest: Path, verified: dict[str, str]) -> None:
    part = dest / f"{VERIFIED}.{secrets.token_hex(4)}"
    part.write_text(json.dumps(verified))
    os.replace(part, dest / VERIFIED)


def _holds(target: Path, size: int, sha: str, verified: dict[str, str]) -> bool:
    """Whether ``target`` is already the file the catalog recorded: of its size, and checked to
    have its digest (when it arrived, or now: a file this host built itself is hashed once)."""
    if target.is_symlink() or not target.is_file() or target.stat().st_size != size:
        return False
    if verified.get(target.name) == sha:
        return True
    if sha256_file(target) != sha:
        return False
    verified[target.name] = sha
    _record(target.parent, verified)
    return True
