"""Control groups: each project's VMs together in one group, with CPU and memory limits.

One small interface over both layouts: cgroup v1 (separate ``cpu``, ``cpuacct`` and ``memory``
hierarchies, as on this project's development machines) and cgroup v2 (one unified hierarchy,
as on a current Debian host). A project's group is ``gureum-<home>/<project id>`` in each.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from gureum.model.limits import PERIOD_US, cpu_quota_us

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")


def version() -> int | None:
    if (ROOT / "cgroup.controllers").exists():
        return 2
    if (ROOT / "cpu").is_dir() and (ROOT / "memory").is_dir():
        return 1
    return None


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    memory_bytes: int


class ProjectGroups:
    def __init__(self, name: str) -> None:
        self.name = name  # the parent group of all of one home's projects
        self.version = version()

    def _dirs(self, project_id: str) -> dict[str, Path]:
        if self.version == 2:
            path = ROOT / self.name / project_id
            return {"cpu": path, "cpuacct": path, "memory": path}
        return {c: ROOT / c / self.name / project_id for c in ("cpu", "cpuacct", "memory")}

    def available(self) -> bool:
        return self.version is not None

    def ensure(self, project_id: str, cpu_cores: float | None, memory_bytes: int | None) -> None:
        """Create the project's group and set its limits (None: unlimited)."""
        if not self.available():
            return
        if self.version == 2:
            parent = ROOT / self.name
            parent.mkdir(exist_ok=True)
            # Controllers must be enabled in every parent for a child to get them.
            for folder in (ROOT, parent):
                with contextlib.suppress(OSError):
                    (folder / "cgroup.subtree_control").write_text("+cpu +memory")
        dirs = self._dirs(project_id)
        for path in set(dirs.values()):
            path.mkdir(parents=True, exist_ok=True)
        if self.version == 2:
            quota = "max" if cpu_cores is None else str(cpu_quota_us(cpu_cores))
            (dirs["cpu"] / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            (dirs["memory"] / "memory.max").write_text(
                "max" if memory_bytes is None else str(memory_bytes)
            )
        else:
            (dirs["cpu"] / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            quota_us = -1 if cpu_cores is None else cpu_quota_us(cpu_cores)
            (dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota_us))
            limit = -1 if memory_bytes is None else memory_bytes
            (dirs["memory"] / "memory.limit_in_bytes").write_text(str(limit))

    def add(self, project_id: str, pid: int) -> None:
        """Move a process (a VM's QEMU and all its threads) into the project's group."""
        if not self.available():
            return
        for path in set(self._dirs(project_id).values()):
            (path / "cgroup.procs").write_text(str(pid))

    def usage(self, project_id: str) -> Usage | None:
        if not self.available():
            return None
        dirs = self._dirs(project_id)
        try:
            if self.version == 2:
                stat = dict(
                    line.split() for line in (dirs["cpu"] / "cpu.stat").read_text().splitlines()
                )
                cpu = int(stat["usage_usec"]) / 1e6
                memory = int((dirs["memory"] / "memory.current").read_text())
            else:
                cpu = int((dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
                memory = int((dirs["memory"] / "memory.usage_in_bytes").read_text())
        except (FileNotFoundError, KeyError, ValueError):
            return None
        return Usage(cpu, memory)

    def _parents(self) -> list[Path]:
        """This home's group in every hierarchy it may be in: cgroup v1 has one per controller,
        and runc makes a container's group in each (pids, freezer, devices...), not only in
        the three whose limits a project has."""
        if self.version == 2:
            return [ROOT / self.name]
        return [h / self.name for h in sorted(ROOT.iterdir()) if (h / self.name).is_dir()]

    def remove(self, project_id: str) -> None:
        for path in {*self._dirs(project_id).values(), *(p / project_id for p in self._parents())}:
            with contextlib.suppress(OSError):
                path.rmdir()

    def remove_idle(self) -> None:
        """Remove every group of this home that no process is in any more (a group with a
        running VM stays: the VM outlives the service and is re-adopted into it)."""
        if not self.available():
            return
        for parent in self._parents():
            if not parent.is_dir():
                continue
            for group in parent.iterdir():
                if group.is_dir():
                    with contextlib.suppress(OSError):  # EBUSY: processes still in it
                        group.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()
