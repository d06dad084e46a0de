"""The images gureum can build, by name, and the builder each one takes."""

from __future__ import annotations

from pathlib import Path

from gureum.errors import NotFound
from gureum.images.build import TINY, Builder, ProgressFn, StepBuilder
from gureum.images.system import DEBIAN, SystemBuilder

DESCRIPTIONS = {TINY.name: TINY.description, DEBIAN.name: DEBIAN.description}


def check(name: str) -> None:
    if name not in DESCRIPTIONS:
        known = ", ".join(sorted(DESCRIPTIONS))
        raise NotFound(f"no image recipe named {name!r} (known: {known})")


def builder(name: str, images_dir: Path, cache_dir: Path, progress: ProgressFn) -> StepBuilder:
    check(name)
    if name == DEBIAN.name:
        return SystemBuilder(DEBIAN, images_dir, cache_dir, progress)
    return Builder(TINY, images_dir, cache_dir, progress)


def default_user(image: str) -> str:
    """Whom ``gureum ssh`` logs in as on an image's VMs: its cloud-init default user."""
    return DEBIAN.default_user if image == DEBIAN.name else "root"
