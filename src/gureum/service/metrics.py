"""Metrics: what every instance, project and the host use, sampled in rounds and kept an hour.

One task measures every active instance each ``interval_s`` through the host
(``HostAgent.instance_stats``), with each project's allocation against its quotas and the host's
capacity, and keeps:

- the last round, from which ``/metrics`` is written in the Prometheus text format (a scrape
  reads memory only: it never makes the host ask a QEMU or a guest anything, however often a
  tenant scrapes);
- a history of each instance (``HISTORY_S``, an hour), from which the console draws its graphs
  without a Prometheus server: CPU %, memory, disk and network rates between rounds.

Who sees what is decided by the caller (``Visibility``): a user sees the instances and projects
they have a role in; only the administrator sees the host and the service's own figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gureum.host.stats import InstanceStats
from gureum.model.instance import ACTIVE, Instance
from gureum.model.tenancy import QUOTAS, Project
from gureum.service.admission import Admission
from gureum.service.host_router import HostRouter
from gureum.service.quotas import QuotaService
from gureum.store.instances import InstanceStore
from gureum.store.tenancy import TenancyStore

log = logging.getLogger(__name__)

HISTORY_S = 3600.0  # what the console's graphs can show: the last hour
MIB = 1 << 20


@dataclass(frozen=True)
class Point:
    """One instance in one round: its counters' sums (all disks, all NICs) and memory."""

    t: float
    cpu_seconds: float | None
    memory_bytes: int | None  # RSS (a container: its control group's)
    guest_total: int | None
    guest_available: int | None
    read_bytes: int
    write_bytes: int
    rx_bytes: int
    tx_bytes: int

    @classmethod
    def of(cls, stats: InstanceStats) -> Point:
        return cls(
            stats.at,
            stats.cpu_seconds,
            stats.rss_bytes,
            stats.guest_memory_total_bytes,
            stats.guest_memory_available_bytes,
            sum(d.read_bytes for d in stats.disks),
            sum(d.write_bytes for d in stats.disks),
            sum(n.rx_bytes for n in stats.nics),
            sum(n.tx_bytes for n in stats.nics),
        )


def rate(new: float | None, old: float | None, seconds: float) -> float | None:
    """Per second between two readings of a counter; None across a restart (it went down)."""
    if new is None or old is None or seconds <= 0 or new < old:
        return None
    return (new - old) / seconds


def graph_point(old: Point, new: Point) -> dict[str, float | int | None]:
    """What the console draws for the interval ending at ``new``."""
    dt = new.t - old.t
    cpu = rate(new.cpu_seconds, old.cpu_seconds, dt)
    guest_used = (
        new.guest_total - new.guest_available
        if new.guest_total is not None and new.guest_available is not None
        else None
    )
    return {
        "t": round(new.t, 3),
        "cpu_percent": round(cpu * 100, 2) if cpu is not None else None,
        "memory_bytes": new.memory_bytes,
        "guest_memory_used_bytes": guest_used,
        "guest_memory_total_bytes": new.guest_total,
        "disk_read_bps": rate(new.read_bytes, old.read_bytes, dt),
        "disk_write_bps": rate(new.write_bytes, old.write_bytes, dt),
        "net_rx_bps": rate(new.rx_bytes, old.rx_bytes, dt),
        "net_tx_bps": rate(new.tx_bytes, old.tx_bytes, dt),
    }


@dataclass(frozen=True)
class Round:
    """Everything one round measured."""

    t: float
    took_s: float
    instances: dict[str, tuple[Instance, InstanceStats | None]]  # every instance, measured or not
    projects: dict[str, tuple[Project, dict[str, int], float | None, int | None]]
    host: dict[str, float]


EMPTY = Round(0.0, 0.0, {}, {}, {})


@dataclass(frozen=True)
class Visibility:
    """What a caller of /metrics may see: instances and projects of ``projects`` (None: all),
    and the host's and the service's own figures (the administrator)."""

    projects: set[str] | None
    host: bool


class MetricsService:
    def __init__(
        self,
        store: InstanceStore,
        tenancy: TenancyStore,
        quotas: QuotaService,
        admission: Admission,
        host: HostRouter,
        interval_s: float,
    ) -> None:
        self.store, self.tenancy, self.quotas = store, tenancy, quotas
        self.admission, self.host = admission, host
        self.interval_s = max(0.5, interval_s)
        self.last = EMPTY
        self.history: dict[str, deque[Point]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def points_kept(self) -> int:
        return int(HISTORY_S / self.interval_s) + 2  # an hour of intervals, both ends

    # -- sampling ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sample()
            except Exception:  # a round that fails is logged; the next one tries again
                log.exception("metrics round failed")
            await asyncio.sleep(max(0.1, self.interval_s - (time.monotonic() - started)))

    async def sample(self) -> Round:
        """One round: measure, keep, and return it."""
        began = time.monotonic()
        instances = self.store.list()
        # This host's (a joined host's are not measured from here yet).
        active = [
            (i.id, i.hardware)
            for i in instances
            if i.state in ACTIVE and i.hardware and self.host.is_local(i.host)
        ]
        measured = await self.host.instance_stats(active)
        now = time.time()
        for instance_id, stats in measured.items():
            kept = self.history.get(instance_id)
            if kept is None:
                kept = self.history[instance_id] = deque(maxlen=self.points_kept)
            kept.append(Point.of(stats))
        present = {i.id for i in instances}
        for gone in [k for k in self.history if k not in present]:
            del self.history[gone]  # deleted instances' history goes with them
        projects = {}
        for project in self.tenancy.projects():
            usage = self.host.project_usage(project.id)
            projects[project.id] = (
                project,
                self.quotas.allocated(project.id),
                usage.cpu_seconds,
                usage.memory_bytes,
            )
        capacity = self.host.capacity()
        cpus, memory_mib = self.admission.committed()
        host: dict[str, float] = {
            "cpus": capacity.cpus,
            "memory_bytes": capacity.memory_mib * MIB,
            "memory_limit_bytes": capacity.memory_limit_mib * MIB,
            "vcpu_limit": capacity.vcpu_limit,
            "committed_vcpus": cpus,
            "committed_memory_bytes": memory_mib * MIB,
            "free_disk_bytes": self.host.free_disk_bytes(),
        }
        self.last = Round(
            now,
            time.monotonic() - began,
            {i.id: (i, measured.get(i.id)) for i in instances},
            projects,
            host,
        )
        return self.last

    def graph(self, instance_id: str, since: float = 0.0) -> list[dict[str, float | int | None]]:
        """The instance's history as the console draws it: one point per interval."""
        points = list(self.history.get(instance_id, ()))
        # Compared as shown (to the millisecond): a client passes back the last t it got.
        return [graph_point(a, b) for a, b in itertools.pairwise(points) if round(b.t, 3) > since]

    def now(self, instance_id: str) -> dict[str, float | int | None] | None:
        """Its last interval's figures (CPU %, memory...), None until two rounds saw it."""
        kept = self.history.get(instance_id)
        if not kept or len(kept) < 2 or kept[-1].t < self.last.t - 1:
            return None  # not yet two rounds, or the last round did not see it (stopped)
        return graph_point(kept[-2], kept[-1])

    # -- the Prometheus view -------------------------------------------------------------------
    def collect(self, seen: Visibility) -> Iterator[Metric]:
        """The last round's families, as ``seen`` may see them."""
        last = self.last

        def visible(project_id: str) -> bool:
            return seen.projects is None or project_id in seen.projects

        names = {pid: p.name for pid, (p, *_rest) in last.projects.items()}
        yield from _instance_families(
            [(i, s) for i, s in last.instances.values() if visible(i.project_id)], names
        )
        yield from _project_families([v for k, v in last.projects.items() if visible(k)])
        if seen.host:
            yield from _host_families(last)


def _instance_families(
    rows: list[tuple[Instance, InstanceStats | None]], project_names: dict[str, str]
) -> Iterator[Metric]:
    labels = ["instance_id", "name", "project"]

    def gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"gureum_instance_{name}", doc, labels=labels + (extra or []))

    def counter(name: str, doc: str, extra: list[str] | None = None) -> CounterMetricFamily:
        return CounterMetricFamily(f"gureum_instance_{name}", doc, labels=labels + (extra or []))

    info = gauge("info", "One per instance: its type and state.", ["type", "state"])
    vcpus = gauge("vcpus", "vCPUs the instance has.")
    memory_limit = gauge("memory_limit_bytes", "Guest memory the instance has.")
    cpu = counter("cpu_seconds", "CPU time its QEMU (a container: its group) has used.")
    rss = gauge("memory_rss_bytes", "Resident memory of its QEMU (a container: its group).")
    pss = gauge("memory_pss_bytes", "Proportional set size of its QEMU (shared pages split).")
    guest_total = gauge("guest_memory_total_bytes", "MemTotal, as the guest reports it.")
    guest_avail = gauge("guest_memory_available_bytes", "MemAvailable, as the guest reports it.")
    disk = ["device"]
    read_bytes = counter("disk_read_bytes", "Bytes read from a disk (QEMU's blockstats).", disk)
    write_bytes = counter("disk_written_bytes", "Bytes written to a disk.", disk)
    read_ops = counter("disk_reads", "Read operations on a disk.", disk)
    write_ops = counter("disk_writes", "Write operations on a disk.", disk)
    nic = ["nic", "mac", "network_id"]
    rx = counter("network_receive_bytes", "Bytes the guest received on a NIC.", nic)
    tx = counter("network_transmit_bytes", "Bytes the guest sent on a NIC.", nic)
    rx_packets = counter("network_receive_packets", "Packets the guest received on a NIC.", nic)
    tx_packets = counter("network_transmit_packets", "Packets the guest sent on a NIC.", nic)
    for inst, stats in rows:
        key = [inst.id, inst.name, project_names.get(inst.project_id, inst.project_id)]
        info.add_metric([*key, inst.kind, str(inst.state)], 1)
        vcpus.add_metric(key, inst.spec.cpus)
        memory_limit.add_metric(key, inst.spec.memory_mib * MIB)
        if stats is None:
            continue
        for family, value in (
            (cpu, stats.cpu_seconds),
            (rss, stats.rss_bytes),
            (pss, stats.pss_bytes),
            (guest_total, stats.guest_memory_total_bytes),
            (guest_avail, stats.guest_memory_available_bytes),
        ):
            if value is not None:
                family.add_metric(key, value)
        for d in stats.disks:
            read_bytes.add_metric([*key, d.device], d.read_bytes)
            write_bytes.add_metric([*key, d.device], d.write_bytes)
            read_ops.add_metric([*key, d.device], d.read_ops)
            write_ops.add_metric([*key, d.device], d.write_ops)
        for n in stats.nics:
            where = [*key, f"nic{n.slot}", n.mac, n.network_id]
            rx.add_metric(where, n.rx_bytes)
            tx.add_metric(where, n.tx_bytes)
            rx_packets.add_metric(where, n.rx_packets)
            tx_packets.add_metric(where, n.tx_packets)
    yield from (info, vcpus, memory_limit, cpu, rss, pss, guest_total, guest_avail)
    yield from (read_bytes, write_bytes, read_ops, write_ops, rx, tx, rx_packets, tx_packets)


def _project_families(
    rows: list[tuple[Project, dict[str, int], float | None, int | None]],
) -> Iterator[Metric]:
    labels = ["project", "resource"]
    allocated = GaugeMetricFamily(
        "gureum_project_allocated", "What a project's instances hold, per quota.", labels=labels
    )
    quota = GaugeMetricFamily(
        "gureum_project_quota", "A project's quota (absent: unlimited).", labels=labels
    )
    cpu = CounterMetricFamily(
        "gureum_project_cpu_seconds", "CPU time of the project's control group.", labels=["project"]
    )
    memory = GaugeMetricFamily(
        "gureum_project_memory_bytes", "Memory of the project's control group.", labels=["project"]
    )
    for project, held, cpu_seconds, memory_bytes in rows:
        limits = project.quotas()
        for q in QUOTAS:
            allocated.add_metric([project.name, q.counts or q.field], held.get(q.counts or "", 0))
            if limits.get(q.field) is not None:
                quota.add_metric([project.name, q.counts or q.field], limits[q.field] or 0)
        if cpu_seconds is not None:
            cpu.add_metric([project.name], cpu_seconds)
        if memory_bytes is not None:
            memory.add_metric([project.name], memory_bytes)
    yield from (allocated, quota, cpu, memory)


def _host_families(last: Round) -> Iterator[Metric]:
    for key, value in last.host.items():
        yield GaugeMetricFamily(f"gureum_host_{key}", f"The host's {key.replace('_', ' ')}.", value)
    states: dict[str, int] = {}
    for inst, _ in last.instances.values():
        states[str(inst.state)] = states.get(str(inst.state), 0) + 1
    by_state = GaugeMetricFamily("gureum_host_instances", "Instances by state.", labels=["state"])
    for state, count in sorted(states.items()):
        by_state.add_metric([state], count)
    yield by_state
    yield GaugeMetricFamily(
        "gureum_metrics_round_seconds", "How long the last metrics round took.", last.took_s
    )
    yield GaugeMetricFamily(
        "gureum_metrics_round_timestamp_seconds", "When the last round measured.", last.t
    )
