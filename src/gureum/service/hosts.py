"""The hosts instances are placed on: their list, cordoning, and the scheduler's view of them.

On one machine the list holds this host alone, reporting at each service start; each new
instance is placed through ``service/placement.py`` all the same, so that cordoning, pinning
(``--host``) and spread groups mean on one host what they will mean on many.
"""

from __future__ import annotations

import builtins
import socket
import time

from gureum.config import Config
from gureum.errors import InvalidInput, NotFound
from gureum.host.capacity import HostCapacity
from gureum.host.interface import HostAgent
from gureum.ids import check_name
from gureum.model.instance import Instance, committed
from gureum.service.admission import Admission
from gureum.service.placement import CORDONED, READY, UNREACHABLE, HostView, Want, place
from gureum.store.hosts import HostRecord, HostStore
from gureum.store.instances import InstanceStore

HEARTBEAT_EVERY_S = 10.0


def local_host_name(config: Config) -> str:
    """This host's name in the cluster: ``host_name``, else the machine's short hostname."""
    name = config.host_name or socket.gethostname().split(".")[0]
    check_name(name, what="host name (host_name, or the machine's hostname)")
    return name


class HostService:
    def __init__(
        self,
        config: Config,
        store: HostStore,
        instances: InstanceStore,
        admission: Admission,
        host: HostAgent,
    ) -> None:
        self.store, self.instances, self.admission, self.host = store, instances, admission, host
        admission.capacity_of = self.capacity_of
        self.strategy = config.placement
        self.unreachable_after_s = config.host_unreachable_after_s
        self._beat = 0.0  # when this host last reported (monotonic)
        self.name = local_host_name(config)
        # Where agents report to this control plane (None: it has no cluster port).
        self.cluster_port = config.cluster_listen or None

    def heartbeat(self) -> None:
        """At each reconciler pass: report, at most every HEARTBEAT_EVERY_S."""
        if time.monotonic() - self._beat >= HEARTBEAT_EVERY_S:
            self.report()

    def report(self) -> None:
        """This host is alive, with what it has now (at each start, then as a heartbeat)."""
        self._beat = time.monotonic()
        cap = self.host.capacity()
        self.store.report(
            self.name, time.time(), adopt=True, accel=self.host.accel.accel, cpus=cap.cpus,
            memory_mib=cap.memory_mib, memory_reserve_mib=cap.memory_reserve_mib,
            cpu_overcommit=cap.cpu_overcommit, cluster_port=self.cluster_port,
        )  # fmt: skip

    def _record(self, name: str) -> HostRecord:
        found = self.store.get(name)
        if found is None:
            raise NotFound(f"no host named {name!r}")
        return found

    def state_of(self, rec: HostRecord, now: float) -> str:
        """Its recorded state, or unreachable when its heartbeat is too old (another host's:
        this one is answering, since it asks)."""
        if rec.name != self.name and now - rec.heartbeat_at > self.unreachable_after_s:
            return UNREACHABLE
        return rec.state

    def unreachable(self) -> dict[str, float]:
        """The hosts not heard from within ``host_unreachable_after_s``, each with its last
        heartbeat's time: what their instances are shown against (``unknown``)."""
        now = time.time()
        records = self.store.list()
        return {r.name: r.heartbeat_at for r in records if self.state_of(r, now) == UNREACHABLE}

    def control_planes(self) -> builtins.list[str]:
        """The cluster ports of the control planes heard from lately: told to each agent at
        its heartbeat, so that it reports to another when the one it reports to is gone."""
        return self.store.control_planes(time.time() - self.unreachable_after_s)

    def _view(self, rec: HostRecord, others: builtins.list[Instance], now: float) -> HostView:
        if rec.name == self.name:
            # This host's capacity as it is now, and what it has committed as admission counts
            # it (growing VMs and the pool's waiting QEMUs included): the rule a start or a
            # resize is admitted by.
            capacity = self.host.capacity()
            cpus, mib = self.admission.committed()
        else:  # another's: as it last reported, its active instances in the store, and
            # this control plane's launches to it under way
            capacity = self.capacity_of(rec.name)
            cpus, mib = committed([i for i in others if i.host == rec.name])
            held_cpus, held_mib = self.admission.held_on(rec.name)
            cpus, mib = cpus + held_cpus, mib + held_mib
        return HostView(rec.name, self.state_of(rec, now), capacity, cpus, mib,
                        rec.accel, self.store.spread_groups(rec.name),
                        driven=rec.name == self.name or rec.address is not None,
                        local=rec.name == self.name)  # fmt: skip

    def _views(self) -> builtins.list[tuple[HostRecord, HostView]]:
        """Every host with the scheduler's view of it; the store read once for all of them
        (on one host: its hosts row, and no instance list)."""
        records = self.store.list()
        if self.name not in {r.name for r in records}:
            self.report()  # a service used before its start (tools, tests) is a host too
            records = self.store.list()
        others = (
            [i for i in self.instances.list() if i.host != self.name] if len(records) > 1 else []
        )
        now = time.time()
        return [(r, self._view(r, others, now)) for r in records]

    def capacity_of(self, name: str) -> HostCapacity:
        """A joined host's capacity as it last reported."""
        rec = self._record(name)
        return HostCapacity(rec.cpus, rec.memory_mib, rec.memory_reserve_mib, rec.cpu_overcommit)

    def joined(self) -> builtins.list[str]:
        """The joined hosts whose agents report and can be asked (cordoned ones too): those
        whose instances the control plane keeps in step with what runs there."""
        now = time.time()
        return [
            r.name
            for r in self.store.list()
            if r.name != self.name
            and r.address is not None
            and self.state_of(r, now) != UNREACHABLE
        ]

    def place(self, want: Want) -> str:
        """The host a new instance goes to (call it under the admission lock, and record the
        instance before letting it go, as every claim is)."""
        return place(want, [view for _, view in self._views()], self.strategy).name

    def list(self) -> list[dict[str, object]]:
        out = []
        for rec, view in self._views():
            out.append({
                "name": rec.name,
                "state": view.state,
                "local": rec.name == self.name,
                "accel": rec.accel,
                "capacity": view.capacity.to_dict(),
                "committed": {"cpus": view.committed_cpus, "memory_mib": view.committed_mib},
                "instances": self.instances.count_on_host(rec.name),
                "heartbeat_at": rec.heartbeat_at,
                "address": rec.address,
            })  # fmt: skip
        return out

    def set_state(self, name: str, state: str) -> dict[str, object]:
        """Cordon (no new instance is placed on it; those on it carry on) or uncordon."""
        if state not in (READY, CORDONED):
            raise InvalidInput(f"a host is cordoned or ready, not {state!r}")
        self._record(name)
        self.store.set_state(name, state)
        return next(h for h in self.list() if h["name"] == name)
