"""Debian packages as image inputs: resolve versions and dependencies, download, verify, unpack.

Downloads come from the host's configured Debian archive through ``apt-get download`` (the only
network the build needs) and are kept in a cache keyed by package and version, each checked
against the SHA-256 in the archive's index before use. A build interrupted halfway therefore
resumes without downloading again.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gureum.errors import EngineError, ImageBuildError
from gureum.sys.runner import run


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str
    size: int
    depends: tuple[str, ...]  # first alternative of each Depends / Pre-Depends entry


def _field(stanza: str, name: str) -> str:
    match = re.search(rf"^{name}: (.*(?:\n .*)*)", stanza, re.MULTILINE)
    return match.group(1).replace("\n", " ").strip() if match else ""


def parse_depends(text: str) -> tuple[str, ...]:
    """``libc6 (>= 2.34), libfoo | libbar:any`` -> (``libc6``, ``libfoo``)."""
    names = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        first = entry.split("|")[0].strip()
        name = re.split(r"[\s(:]", first, maxsplit=1)[0]
        names.append(name)
    return tuple(names)


def show(name: str) -> Package:
    """The candidate version of a package, from the host's apt lists."""
    try:
        out = run(["apt-cache", "show", "--no-all-versions", name], timeout=60).stdout
    except EngineError as exc:
        raise ImageBuildError(
            f"Debian package {name!r} is not in the apt lists ({exc.message}); "
            "run `apt-get update` (make setup does)"
        ) from exc
    stanza = out.strip().split("\n\n")[0]
    if not stanza:
        raise ImageBuildError(f"Debian package {name!r} not found; run `apt-get update`")
    depends = _field(stanza, "Pre-Depends") + "," + _field(stanza, "Depends")
    return Package(
        name=_field(stanza, "Package"),
        version=_field(stanza, "Version"),
        sha256=_field(stanza, "SHA256"),
        size=int(_field(stanza, "Size") or 0),
        depends=parse_depends(depends),
    )


def library_closure(roots: Iterable[str], lookup: Callable[[str], Package] = show) -> list[Package]:
    """The roots plus every shared-library package they need, recursively.

    Only ``lib*`` dependencies are followed: a tiny guest needs the libraries a binary links,
    not the maintainer-script machinery (dpkg, perl, init-system-helpers) they also declare.
    """
    seen: dict[str, Package] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        pkg = lookup(name)
        seen[name] = pkg
        todo.extend(d for d in pkg.depends if d.startswith("lib") and d not in seen)
    return sorted(seen.values(), key=lambda p: p.name)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(pkg: Package, cache: Path) -> Path:
    """The package's .deb from the cache, fetching it first if missing or corrupt."""
    folder = cache / pkg.name / pkg.version.replace(":", "%3a")
    existing = sorted(folder.glob("*.deb")) if folder.exists() else []
    if existing and (not pkg.sha256 or sha256_file(existing[0]) == pkg.sha256):
        return existing[0]
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # APT::Sandbox::User=root: the cache folder is root's; the _apt user could not write it.
    argv = [
        "apt-get",
        "download",
        "-q",
        "-o",
        "APT::Sandbox::User=root",
        f"{pkg.name}={pkg.version}",
    ]
    try:
        run(argv, timeout=600, cwd=str(tmp))
    except EngineError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImageBuildError(f"cannot download {pkg.name} {pkg.version}: {exc.message}") from exc
    debs = sorted(tmp.glob("*.deb"))
    if len(debs) != 1:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImageBuildError(f"apt-get download of {pkg.name} produced {len(debs)} files")
    if pkg.sha256 and sha256_file(debs[0]) != pkg.sha256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImageBuildError(
            f"{pkg.name} {pkg.version}: checksum does not match the archive index"
        )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder / debs[0].name


def unpack(deb: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb), str(into)], timeout=300)
