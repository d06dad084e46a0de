"""NICs of an instance: attach and detach, hot-plugged when the VM runs."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from gureum.errors import GureumError, InvalidState, NotFound
from gureum.model.instance import State, check_action
from gureum.model.network import Nic
from gureum.service.instances import InstanceService


class NicService:
    def __init__(self, instances: InstanceService) -> None:
        self.instances = instances
        self.networks = instances.networks
        self.host = instances.host

    def list(self, ref: str, project_id: str | None = None) -> list[dict[str, object]]:
        return self.networks.nics_view(self.instances.get(ref, project_id).id)

    async def add(
        self, ref: str, network_ref: str, project_id: str | None = None
    ) -> dict[str, object]:
        inst = self.instances.get(ref, project_id)
        net = self.networks.get(network_ref, inst.project_id)
        check_action("change NICs of", inst.state, name=inst.name)
        async with self.instances.lock(inst.id):
            async with self.instances.admission:  # addresses are handed out under this lock
                nic = self.networks.new_nic(inst.id, net, self.networks.free_slot(inst.id))
            try:
                await self.networks.sync(net)
                how = "next-boot"
                if inst.state == State.RUNNING:
                    await self.host.hotplug_nic(inst.id, nic.slot, nic.mac, net.id)
                    self._record(inst.id)
                    await self._wait_for_interface(inst.id, nic.mac)
                    await self.host.renew_network(inst.id)
                    how = "live"
            except GureumError:
                self.networks.store.remove_nic(nic.id)
                await self.networks.sync(net)
                raise
        return {**self._view(nic), "applied": how}

    async def remove(
        self, ref: str, nic_ref: str, project_id: str | None = None
    ) -> dict[str, object]:
        inst = self.instances.get(ref, project_id)
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
        async with self.instances.lock(inst.id):
            inst = self.instances.get(inst.id)
            how = "next-boot"
            if inst.state == State.RUNNING:
                await self.host.unplug_nic(inst.id, nic.slot)
                how = "live"
            first = min(self.networks.store.nics(instance_id=inst.id), key=lambda n: n.slot)
            if first.id == nic.id:  # forwards go to the first NIC: they go with it
                for fwd in self.instances.forwards.list(inst.id):
                    await self.instances.forwards.remove(inst.id, fwd.id)
            self.networks.store.remove_nic(nic.id)
            if how == "live":
                self._record(inst.id)
            net = self.networks.store.network(nic.network_id)
            if net is not None:
                await self.networks.sync(net)
        return {**self._view(nic), "applied": how}

    async def _wait_for_interface(self, instance_id: str, mac: str, timeout: float = 30) -> None:
        """The guest sees a hot-plugged NIC a moment after QEMU adds it (PCIe hot-plug)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while loop.time() < deadline:
            out = await self.host.exec(
                instance_id, ["sh", "-c", "cat /sys/class/net/*/address"], None, 10
            )
            if mac in out.stdout.decode():
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        raise InvalidState(f"the guest did not show the new NIC {mac} within {timeout:.0f} s")

    def _record(self, instance_id: str) -> None:
        """The running machine's NICs changed: keep its recorded hardware in step."""
        inst = self.instances.get(instance_id)
        assert inst.hardware is not None
        hw = replace(inst.hardware, nics=self.networks.hardware_nics(instance_id))
        self.instances.store.update(instance_id, hardware=hw)
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
