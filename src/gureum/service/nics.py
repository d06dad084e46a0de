"""NICs of an instance: attach and detach, hot-plugged when the VM runs."""

from __future__ import annotations

import logging
from dataclasses import replace

from gureum.errors import GureumError, NotFound
from gureum.host.interface import HostAgent
from gureum.model.instance import State, check_action
from gureum.model.network import Nic
from gureum.service.admission import Admission
from gureum.service.forwards import ForwardService
from gureum.service.instances import InstanceService
from gureum.service.lifecycle import Lifecycle
from gureum.service.networks import NetworkService

log = logging.getLogger(__name__)

# How long the guest has to show a hot-plugged NIC (PCIe hot-plug, then its driver).
NIC_APPEARS_S = 30.0


class NicService:
    def __init__(
        self,
        instances: InstanceService,
        lifecycle: Lifecycle,
        admission: Admission,
        networks: NetworkService,
        forwards: ForwardService,
        host: HostAgent,
    ) -> None:
        self.instances = instances
        self.lifecycle = lifecycle
        self.admission = admission
        self.networks = networks
        self.forwards = forwards
        self.host = host

    def list(self, ref: str, project_id: str | None = None) -> list[dict[str, object]]:
        return self.networks.nics_view(self.instances.get(ref, project_id).id)

    async def add(
        self, ref: str, network_ref: str, project_id: str | None = None
    ) -> dict[str, object]:
        inst = self.instances.get(ref, project_id)
        net = self.networks.get(network_ref, inst.project_id)
        check_action("change NICs of", inst.state, name=inst.name)
        inst.needs_vm("adding a NIC")
        async with self.lifecycle.lock(inst.id):
            async with self.admission:  # addresses are handed out under this lock
                nic = self.networks.new_nic(inst.id, net, self.networks.free_slot(inst.id))
            try:
                await self.networks.sync(net)
                how = "next-boot"
                if inst.state == State.RUNNING:
                    await self.host.hotplug_nic(inst.id, nic.slot, nic.mac, net.id)
                    how = "live"
            except GureumError:
                self.networks.store.remove_nic(nic.id)
                await self.networks.sync(net)
                raise
            note = None
            if how == "live":
                # The device is in the machine from here on, so its row stays: the row is what
                # its TAP's anti-spoofing rules are made from. What the guest makes of the NIC
                # is the guest's affair: a guest that stalls or hides it is told, not obeyed.
                self._record(inst.id)
                try:
                    await self.host.wait_for_nic(inst.id, nic.mac, NIC_APPEARS_S)
                    await self.host.renew_network(inst.id)
                except GureumError as exc:
                    note = f"plugged, but the guest did not take it up: {exc.message}"
                    log.warning("%s: NIC %s: %r", inst.name, nic.mac, exc.message)
        return {**self._view(nic), "applied": how, "note": note}

    async def remove(
        self, ref: str, nic_ref: str, project_id: str | None = None
    ) -> dict[str, object]:
        inst = self.instances.get(ref, project_id)
        inst.needs_vm("removing a NIC")
        nets = {n.id: n.name for n in self.networks.list()}
        nic = next(
            (
                n
                for n in self.networks.store.nics(instance_id=inst.id)
                if nic_ref in (n.id, n.mac, n.ip, nets.get(n.network_id))
            ),
            None,
        )
        if nic is None:
            raise NotFound(f"{inst.name} has no NIC {nic_ref!r}")
        async with self.lifecycle.lock(inst.id):
            inst = self.instances.get(inst.id)
            how = "next-boot"
            if inst.state == State.RUNNING:
                await self.host.unplug_nic(inst.id, nic.slot)
                how = "live"
            first = min(self.networks.store.nics(instance_id=inst.id), key=lambda n: n.slot)
            if first.id == nic.id:  # forwards go to the first NIC: they go with it
                for fwd in self.forwards.list(inst.id):
                    await self.forwards.remove(inst.id, fwd.id)
            self.networks.store.remove_nic(nic.id)
            if how == "live":
                self._record(inst.id)
            net = self.networks.store.network(nic.network_id)
            if net is not None:
                await self.networks.sync(net)
        return {**self._view(nic), "applied": how}

    def _record(self, instance_id: str) -> None:
        """The running machine's NICs changed: keep its recorded hardware in step."""
        inst = self.instances.get(instance_id)
        assert inst.hardware is not None
        hw = replace(inst.hardware, nics=self.networks.hardware_nics(instance_id))
        self.instances.update(instance_id, hardware=hw)
        self.host.update_hardware(instance_id, hw)

    def _view(self, nic: Nic) -> dict[str, object]:
        net = self.networks.store.network(nic.network_id)
        return {
            "id": nic.id,
            "network": net.name if net else nic.network_id,
            "slot": nic.slot,
            "mac": nic.mac,
            "ip": nic.ip,
        }
