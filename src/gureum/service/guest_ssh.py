"""SSH into a guest: who logs in, where, which host keys to expect, and the way in.

The way in is a tunnel through the service (``WS /v1/instances/{ref}/ssh``) to port 22 of the
VM's first NIC, connected from inside the network's namespace: the host gets no address on the
network and nothing is routed to it, as for port forwards. The client is the system's own
OpenSSH, given the tunnel as its ProxyCommand and the host keys the guest reported through its
agent (recorded the first time they are asked for, and never replaced) as its only known hosts.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from gureum.errors import InvalidState
from gureum.host.interface import HostAgent
from gureum.model.instance import Instance, check_action
from gureum.service.forwards import ForwardService
from gureum.service.instances import InstanceService
from gureum.service.transfers import Slots

SSH_PORT = 22
# Tunnels open at once: each holds two descriptors in the service for as long as the client and
# the guest keep it open (a guest that never closes would hold them for ever).
MAX_TUNNELS = 256
MAX_TUNNELS_PER_PROJECT = 32


class GuestSsh:
    def __init__(
        self, instances: InstanceService, forwards: ForwardService, host: HostAgent
    ) -> None:
        self.instances = instances
        self.forwards = forwards
        self.host = host
        self.tunnels = Slots("SSH tunnels", MAX_TUNNELS, MAX_TUNNELS_PER_PROJECT)

    def _running(self, ref: str, project_id: str | None) -> Instance:
        inst = self.instances.get(ref, project_id)
        check_action("ssh", inst.state, name=inst.name)
        if not self.forwards.host.is_local(inst.host):  # its network's gateway is there
            raise InvalidState(
                f"{inst.name} is on joined host {inst.host}, where SSH is not supported yet "
                "(use `gureum exec`)"
            )
        return inst

    async def access(self, ref: str, project_id: str | None = None) -> dict[str, object]:
        """What ``gureum ssh`` needs: the login user, the address, the host keys."""
        inst = self._running(ref, project_id)
        if not inst.ssh_keys:
            raise InvalidState(
                f"{inst.name} was launched without an SSH key (launch --ssh-key or --keypair): "
                "no key can log in; use `gureum console` or `gureum exec` instead"
            )
        _, ip = self.forwards.target(inst.id)
        keys = inst.host_keys
        if not keys:
            keys = tuple(await self.host.ssh_host_keys(inst.id))
            if not keys:
                raise InvalidState(
                    f"{inst.name} has no SSH host keys yet: its image has no SSH server, or "
                    "the guest is still making them at its first boot (try again shortly)"
                )
            self.instances.store.update(inst.id, host_keys=keys)
        return {
            "instance": inst.name,
            "id": inst.id,
            "user": self.instances.images.default_user(inst),
            "address": ip,
            "port": SSH_PORT,
            "host_keys": list(keys),
        }

    async def connect(
        self, ref: str, project_id: str | None = None
    ) -> tuple[socket.socket, Callable[[], None]]:
        """A connection to the guest's SSH port for the tunnel, and the release of its slot
        (call it when the tunnel ends)."""
        inst = self._running(ref, project_id)
        network_id, ip = self.forwards.target(inst.id)
        release = self.tunnels.take(inst.project_id)
        try:
            return await self._connect(inst, network_id, ip), release
        except BaseException:
            release()
            raise

    async def _connect(self, inst: Instance, network_id: str, ip: str) -> socket.socket:
        try:
            return await self.host.connect_guest(network_id, ip, SSH_PORT)
        except InvalidState as exc:
            net = self.forwards.store.network(network_id)
            gateway = net.gateway if net else "its network's gateway"
            raise InvalidState(
                f"{exc.message}. SSH comes from the network's gateway {gateway}: one of "
                f"{inst.name}'s security groups must let it in (for example `gureum secgroup "
                f"rule add default --ingress tcp/22 --from {gateway}/32`), and its image must "
                "run an SSH server"
            ) from exc
