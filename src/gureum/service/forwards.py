"""Port forwards from a host loopback port to a port of an instance (its first NIC)."""

from __future__ import annotations

import ipaddress
import logging
import time

from gureum.errors import GureumError, InvalidInput, InvalidState, NotFound
from gureum.ids import new_id
from gureum.model.network import Forward, Nic
from gureum.service.networks import NetworkService

log = logging.getLogger(__name__)


def parse_mapping(text: str) -> tuple[str, int, int]:
    """``8080:80`` or ``127.0.0.2:8080:80`` -> (host address, host port, guest port)."""
    parts = text.split(":")
    if len(parts) == 2:
        parts.insert(0, "127.0.0.1")
    if len(parts) != 3:
        raise InvalidInput(
            f"a forward is HOSTPORT:GUESTPORT or ADDRESS:HOSTPORT:GUESTPORT, not {text!r}"
        )
    address, host_port, guest_port = parts
    try:
        if not ipaddress.IPv4Address(address).is_loopback:
            raise InvalidInput(f"forwards listen on the host's loopback only, not {address}")
        ports = int(host_port), int(guest_port)
    except ValueError as exc:
        raise InvalidInput(f"invalid forward {text!r}") from exc
    if not all(1 <= p <= 65535 for p in ports):
        raise InvalidInput("ports must be 1 to 65535")
    return address, ports[0], ports[1]


class ForwardService:
    def __init__(
        self,
        networks: NetworkService,
        *,
        min_host_port: int = 1024,
    ) -> None:
        # A forward goes to an instance's first NIC: it is a thing of that NIC's network.
        self.host = networks.host
        self.store = networks.store
        self.instances = networks.instances
        self.quotas = networks.quotas
        self.min_host_port = min_host_port  # the administrator's: forward_min_host_port

    def _first_nic(self, instance_id: str) -> Nic | None:
        """Forwards go to the NIC in the lowest slot."""
        return min(self.store.nics(instance_id=instance_id), key=lambda n: n.slot, default=None)

    def target(self, instance_id: str) -> tuple[str, str]:
        nic = self._first_nic(instance_id)
        if nic is None:
            raise InvalidState("the instance has no NIC (launched with --network none)")
        return nic.network_id, nic.ip

    def list(self, instance_id: str | None = None) -> list[Forward]:
        return self.store.forwards(instance_id)

    def view(
        self, fwd: Forward, *, name: str | None = None, ip: str | None = None
    ) -> dict[str, object]:
        """``name`` and ``ip`` (its instance's, its first NIC's) when the caller has them
        already: a list of many instances reads them once, not once per forward."""
        if name is None:
            inst = self.instances.get(fwd.instance_id)
            name = inst.name if inst else fwd.instance_id
        if ip is None:
            nic = self._first_nic(fwd.instance_id)
            ip = nic.ip if nic else None
        return {
            "id": fwd.id,
            "instance": name,
            "host": f"{fwd.host_address}:{fwd.host_port}",
            "guest": f"{ip or '-'}:{fwd.guest_port}",
            "host_address": fwd.host_address,
            "host_port": fwd.host_port,
            "guest_port": fwd.guest_port,
            "created_at": fwd.created_at,
        }

    async def add(self, instance_id: str, mapping: str) -> Forward:
        address, host_port, guest_port = parse_mapping(mapping)
        if host_port < self.min_host_port:
            # The host's own services live below 1024 (on loopback too: a local ssh, a web
            # server behind a proxy); a tenant taking one would receive what was meant for them.
            raise InvalidInput(
                f"host ports below {self.min_host_port} are not for forwards (the host's "
                f"administrator sets forward_min_host_port); use {self.min_host_port} or above"
            )
        inst = self.instances.get(instance_id)
        if inst is not None and not self.host.is_local(inst.host):
            raise InvalidState(
                f"{inst.name} is on joined host {inst.host}, where forwards are not supported yet"
            )
        if inst is not None:
            # No await from this check to the insert: concurrent adds cannot both pass it.
            self.quotas.check(inst.project_id, forwards=1)
        network_id, ip = self.target(instance_id)
        fwd = Forward(new_id("f-"), instance_id, address, host_port, guest_port, time.time())
        self.store.add_forward(fwd)  # the unique (address, port) refuses a duplicate first
        try:
            await self.host.add_forward(fwd, network_id, ip)
        except GureumError:
            self.store.remove_forward(fwd.id)
            raise
        return fwd

    async def remove(self, instance_id: str, ref: str) -> Forward:
        fwd = next(
            (
                f
                for f in self.list(instance_id)
                if ref in (f.id, str(f.host_port), f"{f.host_address}:{f.host_port}")
            ),
            None,
        )
        if fwd is None:
            raise NotFound(f"no port forward {ref!r} on this instance")
        await self.host.remove_forward(fwd.id)
        self.store.remove_forward(fwd.id)
        return fwd

    async def drop_instance(self, instance_id: str) -> None:
        for fwd in self.list(instance_id):
            await self.host.remove_forward(fwd.id)

    async def start_all(self) -> None:
        for fwd in self.list():
            try:
                network_id, ip = self.target(fwd.instance_id)
                await self.host.add_forward(fwd, network_id, ip)
            except GureumError as exc:
                log.error("port forward %s:%s: %s", fwd.host_address, fwd.host_port, exc.message)
