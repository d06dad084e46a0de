"""What a failed integration test leaves to read: each VM's QEMU and serial logs and the
service's own, copied out of the test's homes before teardown (or the test itself) deletes them.

The harness (``conftest.py``) tells the keeper which homes are in use and, before a VM or a home
goes away, has its logs stashed; when a test fails, ``keep`` copies what is still there and what
was stashed during that test into one folder, named in the test's report.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path

VM_LOGS = ("serial.log", "serial.log.1", "qemu.log")  # in run/<instance-id>/ of a home
SERVICE_LOGS = ("service.log", "serve.out")


def copy_logs(home: Path, dest: Path, instance_ids: list[str] | None = None) -> list[Path]:
    """Copy the logs of one home into ``dest``, at their paths relative to the home: the
    service's and every VM's, or (``instance_ids`` given) only those VMs'. What was copied."""
    if instance_ids is None:
        sources = [home / name for name in SERVICE_LOGS]
        folders = sorted((home / "run").glob("*")) if (home / "run").is_dir() else []
    else:
        sources, folders = [], [home / "run" / i for i in instance_ids]
    sources += [folder / name for folder in folders for name in VM_LOGS]
    copied = []
    for source in sources:
        if source.is_symlink() or not source.is_file():
            continue
        target = dest / source.relative_to(home)
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # gone meanwhile: a VM deleted as we copy
            shutil.copyfile(source, target)
            copied.append(target)
    return copied


def folder_name(nodeid: str) -> str:
    """A test's node id as one folder name: tests/integration/test_x.py::test_y[a/b] gives
    test_x.py-test_y_a_b_."""
    path, _, name = nodeid.partition("::")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{Path(path).name}-{name.replace('::', '-')}")


class Keeper:
    """The homes in use, and the logs of what went away during the current test."""

    def __init__(self) -> None:
        self.homes: set[Path] = set()
        self._stash: Path | None = None
        self._kept: set[Path] = set()  # folders filled in this run (a later phase adds to them)

    @property
    def stash(self) -> Path:
        if self._stash is None:
            self._stash = Path(tempfile.mkdtemp(prefix="gureum-stash-", dir="/tmp"))
        return self._stash

    def begin(self) -> None:
        """A test starts: what earlier tests stashed is no longer needed."""
        if self._stash is not None:
            shutil.rmtree(self._stash, ignore_errors=True)
            self._stash.mkdir()

    def going(self, home: Path, instance_ids: list[str] | None = None) -> None:
        """Stash the logs of these VMs of ``home`` (or of the whole home) before they go."""
        copy_logs(home, self.stash / home.name, instance_ids)

    def keep(self, dest: Path) -> list[Path]:
        """Copy the logs of every home in use, and what was stashed, into ``dest``."""
        if dest not in self._kept:
            shutil.rmtree(dest, ignore_errors=True)  # a folder from an earlier run
            self._kept.add(dest)
        copied = [p for home in sorted(self.homes) for p in copy_logs(home, dest / home.name)]
        if self._stash is not None:
            for source in sorted(p for p in self._stash.rglob("*") if p.is_file()):
                target = dest / source.relative_to(self._stash)
                if target in copied:
                    continue  # still there: the newer copy is the one to read
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                copied.append(target)
        return sorted(copied)

    def close(self) -> None:
        if self._stash is not None:
            shutil.rmtree(self._stash, ignore_errors=True)
            self._stash = None
