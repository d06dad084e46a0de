"""Project quotas: allocation limits checked before anything is made, and usage reports.

Checks run under the service's admission lock, together with the claim they guard, so
concurrent launches can never overshoot a limit. What counts: every instance of the project
(whatever its state: a stopped VM still holds its disk and its place), its snapshots, networks,
and what is being made but not in the store yet (``hold``: a snapshot being taken, a backup
being imported), so that those cannot overshoot either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gureum.errors import QuotaExceeded, found
from gureum.host.interface import HostAgent
from gureum.model.instance import Instance
from gureum.model.tenancy import QUOTAS, Project
from gureum.service.holds import Holds
from gureum.store.images import ImageStore
from gureum.store.instances import InstanceStore
from gureum.store.layers import LayerStore, SnapshotStore
from gureum.store.networks import NetworkStore
from gureum.store.tenancy import TenancyStore
from gureum.units import MIB

log = logging.getLogger(__name__)

# What an allocation asks (cpus=2) -> the quota that limits it.
_WHAT = {q.counts: (q.field, q.label, q.unit) for q in QUOTAS if q.counts}


class QuotaService:
    def __init__(
        self,
        tenancy: TenancyStore,
        instances: InstanceStore,
        snapshots: SnapshotStore,
        networks: NetworkStore,
        layers: LayerStore,
        images: ImageStore,
        host: HostAgent,
    ) -> None:
        self.tenancy = tenancy
        self.instances = instances
        self.snapshots = snapshots
        self.networks = networks
        self.layers = layers
        self.images = images
        self.host = host
        self._names: dict[str, str] = {}
        self.held = Holds()  # by project id

    def project(self, ref: str) -> Project:
        return found(self.tenancy.project(ref), f"project named {ref!r}")

    def project_name(self, project_id: str) -> str:
        if project_id not in self._names:
            project = self.tenancy.project(project_id)
            self._names[project_id] = project.name if project else project_id
        return self._names[project_id]

    def allocated(self, project_id: str) -> dict[str, int]:
        counts = self.instances.allocated(project_id)
        # An image the project made is a saved disk, as a snapshot is.
        counts["snapshots"] = self.snapshots.count(project_id) + self.images.count(project_id)
        counts["networks"] = len(self.networks.networks(project_id))
        counts["forwards"] = self.networks.forward_count(project_id)
        return counts

    def hold(self, project_id: str, **amounts: int) -> Callable[[], None]:
        """Count an allocation that is being made (not in the store yet) against the project's
        quotas until the returned release is called. Take it under the admission lock, right
        after the check it follows."""
        return self.held.hold(project_id, **amounts)

    def check(self, project_id: str, *, replacing: Instance | None = None, **wanted: int) -> None:
        """Refuse (QuotaExceeded) if adding ``wanted`` (instances=1, cpus=2...) to what the
        project holds would pass one of its limits. ``replacing``: an instance whose own
        allocation is being replaced (a resize), not added to."""
        project = self.project(project_id)
        held = self.allocated(project_id)
        for key, amount in self.held.of(project_id).items():
            held[key] += amount
        if replacing is not None:
            held["cpus"] -= replacing.spec.cpus
            held["memory_mib"] -= replacing.spec.memory_mib
            held["disk_bytes"] -= replacing.spec.disk_bytes
        self._within(project, held, wanted)

    def recheck(self, project_id: str, **wanted: int) -> Callable[[], None] | None:
        """The check again, for the store's transaction that writes a new instance, under
        the project's lock (``InstanceStore.create``): what the project's instances hold in
        the store then, and ``wanted`` on top. ``check`` ran before, with this process's own
        creations under way (its holds); this one counts another control plane's, written
        meanwhile. None when no quota limits what is wanted."""
        project = self.project(project_id)
        if all(getattr(project, _WHAT[key][0]) is None for key in wanted):
            return None

        def within() -> None:
            held = self.instances.allocated(project_id)
            self._within(project, held, {k: v for k, v in wanted.items() if k in held})

        return within

    @staticmethod
    def _within(project: Project, held: dict[str, int], wanted: dict[str, int]) -> None:
        for key, more in wanted.items():
            field, label, unit = _WHAT[key]
            limit = getattr(project, field)
            if limit is None or more <= 0:
                continue
            if held[key] + more > limit:
                raise QuotaExceeded(
                    f"project {project.name}: {_fmt(held[key], unit)} of {_fmt(limit, unit)} "
                    f"{label} in use; {_fmt(more, unit)} more would pass its quota"
                )

    # -- real use ---------------------------------------------------------------------------------
    @staticmethod
    def limits(project: Project) -> tuple[float | None, int | None]:
        """(CPU cores, memory bytes) for the project's control group. CPU follows cpu_limit,
        else max_cpus; memory follows memory_limit_mib only (QEMU's own overhead per VM is
        not the guest's memory, so max_memory_mib alone would starve the VMs)."""
        cores = project.cpu_limit if project.cpu_limit is not None else project.max_cpus
        memory = project.memory_limit_mib * MIB if project.memory_limit_mib is not None else None
        return (float(cores) if cores is not None else None), memory

    async def apply_limits(self, project: Project) -> None:
        cores, memory = self.limits(project)
        try:
            await self.host.limit_project(project.id, cores, memory)
        except OSError as exc:
            log.warning("control group of project %s: %s", project.name, exc)

    def host_cpus(self) -> int:
        """The host's CPUs: the ceiling of a project's CPU limit when nothing lower is set."""
        return self.host.capacity().cpus

    def forget_limits(self, project_id: str) -> None:
        """A deleted project's control group goes."""
        self.host.forget_project(project_id)

    async def apply_all(self) -> None:
        for project in self.tenancy.projects():
            await self.apply_limits(project)

    def usage(self, project: Project) -> dict[str, object]:
        instances = self.instances.list(project.id)
        ids = {i.id for i in instances}
        rss = sum(self.host.rss_bytes(i.id) or 0 for i in instances)
        disk = sum(
            self.host.disk_bytes(self.host.path(layer.path))
            for layer in self.layers.all().values()
            if layer.instance_id in ids and layer.host is None  # measured on this host only
        )
        disk += sum(
            self.host.snapshot_bytes(s.id) for s in self.snapshots.list() if s.instance_id in ids
        )
        measured = self.host.project_usage(project.id)
        cpu_seconds, memory_bytes, group = (
            measured.cpu_seconds,
            measured.memory_bytes,
            measured.group,
        )
        cores, memory = self.limits(project)
        return {
            "project": project.name,
            "quotas": project.quotas(),
            "allocated": self.allocated(project.id),
            "used": {
                "cpu_seconds": round(cpu_seconds, 3) if cpu_seconds is not None else None,
                "memory_bytes": memory_bytes,
                "resident_bytes": rss,
                "disk_bytes": disk,
            },
            "limits": {
                "cpu_cores": cores,
                "memory_bytes": memory,
                "cgroup": group,
            },
        }


def _fmt(value: int, unit: int) -> str:
    return f"{value / unit:g}" if unit != 1 else str(value)
