"""Networks and NICs: the rules. Addresses, MACs and slots are decided here and kept in the
store; the host makes the network match (``host/network.py``) after every change."""

from __future__ import annotations

import builtins
import ipaddress
import logging
import time

from gureum.errors import Conflict, GureumError, InvalidInput, InvalidState, found
from gureum.host.interface import NetworkPlan, Span
from gureum.ids import check_name, new_id
from gureum.model.hardware import MAX_NICS, new_mac
from gureum.model.instance import DEFAULT_PROJECT
from gureum.model.network import NAT_TRANSFER, Network, Nic, Rule
from gureum.network.firewall import Port
from gureum.network.metadata import Caller
from gureum.service.host_router import HostRouter
from gureum.service.quotas import QuotaService
from gureum.store.instances import InstanceStore
from gureum.store.networks import NetworkStore

log = logging.getLogger(__name__)

DEFAULT_NETWORK = "default"
NO_NETWORK = "none"  # launch --network none: a VM with no NIC at all
DEFAULT_SUBNET = "10.88.0.0/24"
DEFAULT_GROUP = "default"
# Address space a network may not use: what the host or every network already means.
RESERVED = [
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
]


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise InvalidInput(
            f"invalid subnet {text!r}: {exc} (use a CIDR like 10.80.1.0/24)"
        ) from exc
    if not 16 <= net.prefixlen <= 29:
        raise InvalidInput(f"subnet {text} must be between a /16 and a /29")
    for reserved in RESERVED:
        if net.overlaps(reserved):
            raise InvalidInput(f"subnet {text} overlaps reserved range {reserved}")
    return net


def machine_nics(nics: list[Nic]) -> tuple[tuple[int, str, str], ...]:
    """NICs as a machine has them: (slot, MAC, network id), by slot."""
    return tuple((n.slot, n.mac, n.network_id) for n in sorted(nics, key=lambda n: n.slot))


def nic_view(nic: Nic, network: str) -> dict[str, object]:
    """A NIC as the API shows it (``network``: its network's name)."""
    return {"id": nic.id, "network": network, "slot": nic.slot, "mac": nic.mac, "ip": nic.ip}


class NetworkService:
    def __init__(
        self,
        host: HostRouter,
        store: NetworkStore,
        instances: InstanceStore,
        quotas: QuotaService,
    ) -> None:
        self.host = host
        self.store = store
        self.instances = instances
        self.quotas = quotas
        host.serve_metadata(self.lookup)

    # -- networks --------------------------------------------------------------------------------
    def list(self, project_id: str | None = None) -> list[Network]:
        return self.store.networks(project_id)

    def get(self, ref: str, project_id: str | None = None) -> Network:
        """By id, or by name within a project; another project's network is "not found"."""
        return found(self.store.network(ref, project_id), f"network named {ref!r}")

    def view(self, net: Network) -> dict[str, object]:
        names = self._names()
        nics = self.store.nics(network_id=net.id)
        return {
            **net.to_dict(),
            "namespace": self.host.network_namespace(net.id),
            "instances": [
                {"name": names.get(n.instance_id, n.instance_id), "ip": n.ip, "mac": n.mac}
                for n in nics
            ],
        }

    async def create(
        self,
        name: str,
        subnet: str,
        *,
        imds_tokens_required: bool = False,
        nat: bool = False,
        project_id: str = DEFAULT_PROJECT,
    ) -> Network:
        check_name(name, what="network name")
        if name == NO_NETWORK:
            raise InvalidInput(f"{NO_NETWORK!r} is reserved: it means no network at launch")
        parsed = parse_subnet(subnet)
        if nat and parsed.overlaps(NAT_TRANSFER):
            raise InvalidInput(
                f"a --nat network's subnet may not overlap {NAT_TRANSFER}: its uplinks use it"
            )
        net = Network(
            new_id("n-"), project_id, name, str(parsed), nat, imds_tokens_required, time.time()
        )
        self.quotas.check(project_id, networks=1)
        net = self.store.add_network(net)  # with its VXLAN id
        try:
            await self.host.ensure_network(net)
            await self.sync(net)
        except BaseException:
            await self.host.remove_network(net.id)
            self.store.remove_network(net.id)
            raise
        return net

    async def default(self, project_id: str = DEFAULT_PROJECT) -> Network:
        """The project's default network, made on first use (every project has its own)."""
        net = self.store.network(DEFAULT_NETWORK, project_id)
        if net is None:
            try:
                net = await self.create(DEFAULT_NETWORK, DEFAULT_SUBNET, project_id=project_id)
            except Conflict:  # made meanwhile by a concurrent launch
                net = self.get(DEFAULT_NETWORK, project_id)
        return net

    async def delete(self, ref: str, project_id: str | None = None) -> Network:
        net = self.get(ref, project_id)
        nics = self.store.nics(network_id=net.id)
        if nics:
            names = self._names()
            users = sorted({names.get(n.instance_id, n.instance_id) for n in nics})
            raise Conflict(
                f"network {net.name} is in use by {', '.join(users)}; detach or delete them first"
            )
        await self.host.remove_network(net.id)
        self.store.remove_network(net.id)
        return net

    async def ensure_all(self) -> None:
        """Start-up: every network's namespace, DHCP, firewall and metadata; strays removed."""
        known = set()
        for net in self.list():
            known.add(net.id)
            try:
                await self.host.ensure_network(net)
                await self.sync(net)
            except GureumError as exc:
                log.error("network %s: %s", net.name, exc.message)
        for stray in self.host.networks_present() - known:
            log.warning("removing leftovers of network %s", stray)
            await self.host.remove_network(stray)

    async def teardown_if_idle(self, active: bool) -> bool:
        """At service stop: remove the namespaces when no VM needs them (else keep them)."""
        if active:
            return False
        for network_id in sorted(self.host.networks_present()):
            await self.host.remove_network(network_id)
        return True

    # -- NICs ------------------------------------------------------------------------------------
    def plan_nics(
        self,
        instance_id: str,
        wanted: builtins.list[tuple[int, Network]],
        macs: dict[int, str] | None = None,
    ) -> builtins.list[Nic]:
        """NICs (slot, network) for an instance, each with a free address and a new MAC (or the
        one ``macs`` gives its slot), not yet in the store (the caller holds the admission
        lock until they are)."""
        taken: dict[str, set[str]] = {}
        planned = []
        for slot, net in wanted:
            if net.id not in taken:
                taken[net.id] = {n.ip for n in self.store.nics(network_id=net.id)}
            free = next((a for a in net.host_addresses() if a not in taken[net.id]), None)
            if free is None:
                raise Conflict(f"network {net.name} has no free address left ({net.subnet})")
            taken[net.id].add(free)
            mac = (macs or {}).get(slot) or new_mac()
            planned.append(Nic(new_id("nic-"), instance_id, net.id, slot, mac, free, time.time()))
        return planned

    def new_nic(self, instance_id: str, net: Network, slot: int) -> Nic:
        """A NIC record with a free address on ``net`` (the caller holds the admission lock)."""
        nic = self.plan_nics(instance_id, [(slot, net)])[0]
        self.store.add_nic(nic)
        return nic

    def free_slot(self, instance_id: str) -> int:
        used = {n.slot for n in self.store.nics(instance_id=instance_id)}
        slot = next((s for s in range(MAX_NICS) if s not in used), None)
        if slot is None:
            raise Conflict(f"an instance has at most {MAX_NICS} NICs")
        return slot

    def hardware_nics(self, instance_id: str) -> tuple[tuple[int, str, str], ...]:
        return machine_nics(self.store.nics(instance_id=instance_id))

    def nics_view(self, instance_id: str) -> builtins.list[dict[str, object]]:
        return [nic_view(n, network) for n, network in self.store.nics_with_network(instance_id)]

    def _names(self) -> dict[str, str]:
        """Instance id -> name, read once for a whole network's NICs."""
        return {i.id: i.name for i in self.instances.list()}

    # -- keeping the host in step ----------------------------------------------------------------
    async def sync(self, net: Network, left: str | None = None) -> None:
        """Bring the network's DHCP, DNS and firewall in step with the store on this host and
        on each joined host one of its instances is on (made there first if need be); ``left``:
        a joined host an instance of it has just left, which loses it if no other remains."""
        nics = self.store.nics(network_id=net.id)
        groups = self.store.instance_groups()
        instances = {i.id: i for i in self.instances.list()}
        names = {i.id: i.name for i in instances.values()}
        hosts = [(n, names.get(n.instance_id, n.instance_id)) for n in nics]
        ports = [Port(n.tap, n.mac, n.ip, tuple(groups.get(n.instance_id, []))) for n in nics]
        rules: dict[str, list[Rule]] = {g.id: g.rules for g in self.store.groups()}
        placed = {instances[n.instance_id].host for n in nics if n.instance_id in instances}
        on = {None if self.host.is_local(h) else h for h in placed}  # None: this host
        spans = self._spans(net, on)
        if net.id not in self.host.networks_present():
            # Made by another control plane since this one started: every network is on each
            # control plane's own host, as ``ensure_all`` makes them at start.
            await self.host.ensure_network(net)
        await self.host.sync_network(net, NetworkPlan(hosts, ports, rules, spans.get(None)))
        joined = sorted(str(h) for h in on if h is not None)
        for name in joined:
            # One host away does not hold up the others: its instances' own commands will
            # say it cannot be reached, and the next sync brings it in step.
            try:
                plan = NetworkPlan(hosts, ports, rules, spans.get(name))
                await self.host.remote(name).bring_network(net, plan)
            except GureumError as exc:
                log.warning("network %s on %s not brought in step: %s", net.name, name,
                            exc.message)  # fmt: skip
        if left is not None and not self.host.is_local(left) and left not in joined:
            try:
                await self.host.remote(left).remove_network(net.id)
            except GureumError as exc:
                log.warning("network %s not removed from %s: %s", net.name, left, exc.message)

    def _spans(self, net: Network, on: set[str | None]) -> dict[str | None, Span]:
        """How each host (None: this one) joins the others that have one of the network's
        instances: none when it is on one host, or when a host has no cluster address."""
        if len(on) < 2 or net.vni is None:
            return {}
        addresses = {h: self.host.cluster_address(h) for h in on}
        lacking = sorted(h or self.host.name for h, a in addresses.items() if a is None)
        if lacking:
            log.warning("network %s is on hosts %s without a cluster address: not joined",
                        net.name, ", ".join(lacking))  # fmt: skip
            return {}
        return {
            h: Span(net.vni, str(a), sorted(str(b) for k, b in addresses.items() if k != h))
            for h, a in addresses.items()
        }

    async def sync_instance(self, instance_id: str) -> None:
        for network_id in {n.network_id for n in self.store.nics(instance_id=instance_id)}:
            net = self.store.network(network_id)
            if net is not None:
                await self.sync(net)

    async def sync_all(self) -> None:
        for net in self.list():
            await self.sync(net)

    # -- metadata --------------------------------------------------------------------------------
    async def lookup(self, network_id: str, ip: str) -> Caller | None:
        """Who is asking: the VM whose NIC has this address on this network, if the address
        really resolves to that NIC's MAC there."""
        nic = self._nic_at(network_id, ip)
        if nic is None:
            return None
        seen = await self.host.neighbour_mac(network_id, ip)
        return None if seen is None else self._caller(nic, seen, None)

    def caller_on(self, host: str | None, network_id: str, ip: str, seen: str) -> Caller | None:
        """Who is asking the metadata service of ``host`` (None: this control plane's own):
        the VM with a NIC of this address on this network, if ``seen`` (the MAC the address
        resolves to in the network's namespace there) is that NIC's and the VM is placed on
        that very host. A joined host's agent asks this for its VMs (the cluster port), and
        so one host can never learn a VM's data on another's."""
        nic = self._nic_at(network_id, ip)
        return None if nic is None else self._caller(nic, seen, host)

    def _caller(self, nic: Nic, seen: str, host: str | None) -> Caller | None:
        if seen.lower() != nic.mac.lower():
            return None
        inst = self.instances.get(nic.instance_id)
        if inst is None:
            return None
        if not (self.host.is_local(inst.host) if host is None else inst.host == host):
            return None  # a VM elsewhere: its address's packets never come from this host
        return Caller(inst.id, inst.name, nic.ip, nic.mac, inst.ssh_keys, inst.user_data)

    def _nic_at(self, network_id: str, ip: str) -> Nic | None:
        return next(iter(self.store.nics(network_id=network_id, ip=ip)), None)

    def check_slots_match(
        self, instance_id: str, snapshot_nics: tuple[tuple[int, str, str], ...]
    ) -> None:
        current = {(s, n) for s, _m, n in self.hardware_nics(instance_id)}
        wanted = {(s, n) for s, _m, n in snapshot_nics}
        if current != wanted:
            raise InvalidState(
                "the VM's NICs changed since this memory snapshot; restore needs the same NICs"
            )

    def with_current_macs(self, instance_id: str, nics: tuple[tuple[int, str, str], ...]) -> tuple:
        macs = {s: m for s, m, _n in self.hardware_nics(instance_id)}
        return tuple((s, macs.get(s, m), n) for s, m, n in nics)

    def mac_changes(
        self, before: tuple, after: tuple, *, keep_same: bool = False
    ) -> builtins.list[tuple[str, str]]:
        """(old, new) MAC of each NIC in both; ``keep_same``: those unchanged too."""
        old = {s: m for s, m, _ in before}
        return [(old[s], m) for s, m, _ in after if s in old and (keep_same or old[s] != m)]
