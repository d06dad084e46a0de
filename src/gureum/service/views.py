"""What the API shows of an instance: one place that reads its related rows and the host."""

from __future__ import annotations

import time

from gureum.host.interface import HostAgent
from gureum.model.instance import ACTIVE, UNKNOWN, Instance
from gureum.model.snapshot import Layer
from gureum.service.forwards import ForwardService
from gureum.service.hosts import HostService
from gureum.service.networks import nic_view
from gureum.service.quotas import QuotaService
from gureum.store.layers import LayerStore, SnapshotStore
from gureum.store.networks import NetworkStore
from gureum.units import GIB

Rows = dict[str, list[dict[str, object]]]


class InstanceViews:
    def __init__(
        self,
        layers: LayerStore,
        snapshots: SnapshotStore,
        networks: NetworkStore,
        forwards: ForwardService,
        quotas: QuotaService,
        host: HostAgent,
        hosts: HostService,
    ) -> None:
        self.layers = layers
        self.snapshots = snapshots
        self.networks = networks
        self.forwards = forwards
        self.quotas = quotas
        self.host = host
        self.hosts = hosts

    def view(self, inst: Instance) -> dict[str, object]:
        return self.views([inst])[0]

    def views(self, insts: list[Instance]) -> list[dict[str, object]]:
        """Related rows (layers, NICs, groups, snapshots) are read once for the whole list,
        not once per instance: a list of 100 is a handful of queries, which matters most on a
        networked store (PostgreSQL)."""
        if not insts:
            return []
        one = insts[0].id if len(insts) == 1 else None
        if one is not None:
            root = insts[0].root_layer
            layer = self.layers.get(root) if root else None
            layers = {root: layer} if root and layer else {}
        else:
            layers = self.layers.all()
        snapshots: dict[str, int] = {}
        for snap in self.snapshots.list(one):
            snapshots[snap.instance_id] = snapshots.get(snap.instance_id, 0) + 1
        nics: Rows = {}
        first_ip: dict[str, tuple[int, str | None]] = {}  # forwards go to the lowest slot
        for nic, network in self.networks.nics_with_network(one):
            nics.setdefault(nic.instance_id, []).append(nic_view(nic, network))
            if nic.slot < first_ip.get(nic.instance_id, (nic.slot + 1, None))[0]:
                first_ip[nic.instance_id] = (nic.slot, nic.ip)
        groups = self.networks.group_names_of(one)
        forwards: Rows = {}
        names = {i.id: i.spec.name for i in insts}
        for fwd in self.forwards.list(one):
            if fwd.instance_id not in names:  # another project's
                continue
            ip = first_ip.get(fwd.instance_id, (0, None))[1]
            view = self.forwards.view(fwd, name=names[fwd.instance_id], ip=ip)
            forwards.setdefault(fwd.instance_id, []).append(view)
        lost = self.hosts.unreachable()
        out = [self._view(i, layers, snapshots, nics, groups, forwards) for i in insts]
        for inst, view in zip(insts, out, strict=True):
            if inst.host in lost and inst.state in ACTIVE:
                _unknown(view, inst.host, lost[inst.host])
        return out

    def _view(
        self,
        inst: Instance,
        layers: dict[str, Layer],
        snapshots: dict[str, int],
        nics: Rows,
        groups: dict[str, list[str]],
        forwards: Rows,
    ) -> dict[str, object]:
        spec = inst.spec
        hw = inst.hardware
        running = inst.state in ACTIVE
        here = inst.host in (None, self.hosts.name)
        # An active VM shows what its guest has now; a resize that waits for the next boot
        # is shown beside it, not in its place.
        cpus, memory_mib = inst.running_now or (spec.cpus, spec.memory_mib)
        pending = {}
        if cpus != spec.cpus:
            pending["cpus"] = spec.cpus
        if memory_mib != spec.memory_mib:
            pending["memory_mib"] = spec.memory_mib
        layer = layers.get(inst.root_layer) if inst.root_layer else None
        top = self.host.path(layer.path) if layer else None  # None once deleted
        return {
            "id": inst.id,
            "name": spec.name,
            "type": inst.kind,
            "project": self.quotas.project_name(inst.project_id),
            "state": inst.state.value,
            "state_reason": inst.state_reason,
            "image": spec.image,
            "image_version": inst.image_version,
            "cpus": cpus,
            "memory_mib": memory_mib,
            "disk_gib": round(spec.disk_bytes / GIB, 3),
            "disk_bytes": spec.disk_bytes,
            "accel": inst.accel,
            "pid": inst.pid if running else None,
            "mac": hw.mac if hw else None,
            "nics": nics.get(inst.id, []),
            "secgroups": groups.get(inst.id, []),
            "forwards": forwards.get(inst.id, []),
            "generation_id": hw.generation_id if hw else None,
            # Changes that take effect at the next boot (resize where hot-plug could not).
            "pending_next_boot": pending,
            "snapshots": snapshots.get(inst.id, 0),
            "autostart": inst.autostart,
            "template_id": inst.template_id,
            "placement": {"host": inst.host, "spread_group": inst.spread_group},
            "created_at": inst.created_at,
            "updated_at": inst.updated_at,
            "boot": inst.boot.to_dict(),
            # Read from this host's files: another host's instances have none here.
            "host": {
                "rss_bytes": self.host.rss_bytes(inst.id) if running and here else None,
                "disk_allocated_bytes": self.host.disk_bytes(top) if top and here else None,
            },
        }


def _unknown(view: dict[str, object], host: str, heard_at: float) -> None:
    """An active instance on a host that stopped reporting: what runs there is not known, so it
    is not shown running (its last known state is kept beside it)."""
    ago = f"{time.time() - heard_at:.0f} s ago" if heard_at else "never"
    view["last_state"] = view["state"]
    view["state"] = UNKNOWN
    view["state_reason"] = (
        f"its host {host} is unreachable (last heard from {ago}); it was {view['last_state']}"
    )
    view["pid"] = None
