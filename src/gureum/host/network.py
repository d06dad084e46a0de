"""The host side of networks: namespaces, bridges, TAPs, DHCP/DNS, firewall, metadata, forwards.

One namespace per network (``network/netns.py`` says why). Nothing here knows users or the
API; the service hands in the desired state (NICs, security groups) and this makes it so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import socket
from pathlib import Path

from gureum.config import Config
from gureum.errors import GureumError
from gureum.host.interface import Span
from gureum.model.network import Network, Nic, Rule
from gureum.network import firewall, netns, overlay, tap, uplink
from gureum.network.dhcp import Dhcp
from gureum.network.forward import Forward
from gureum.network.metadata import Lookup, MetadataServer, Tokens
from gureum.sys import procs

log = logging.getLogger(__name__)

BRIDGE = firewall.BRIDGE


def bridge_mac(network_id: str) -> str:
    """Stable, locally administered (02:...), different for every network."""
    digest = hashlib.sha256(network_id.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


class NetworkHost:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.tokens = Tokens()
        self._metadata: dict[str, MetadataServer] = {}
        self._forwards: dict[str, Forward] = {}
        self._dhcp: dict[str, Dhcp] = {}
        self.lookup: Lookup | None = None  # set by the service: who owns an address
        self.tokens_required: dict[str, bool] = {}
        self._syncing: dict[str, asyncio.Lock] = {}

    def namespace(self, network_id: str) -> str:
        return netns.name_for(self.config.home, network_id)

    def folder(self, network_id: str) -> Path:
        return self.config.networks_dir / network_id

    def dhcp(self, net: Network) -> Dhcp:
        if net.id not in self._dhcp:
            servers = uplink.resolvers(self.config.nat_dns) if net.nat else []
            self._dhcp[net.id] = Dhcp(self.folder(net.id), self.namespace(net.id), net, servers)
        return self._dhcp[net.id]

    # -- networks --------------------------------------------------------------------------------
    async def ensure(self, net: Network) -> None:
        """Make the network exist on this host (idempotent: also how a restart recovers it)."""
        ns = self.namespace(net.id)
        await netns.create(ns)
        links = await netns.ip(ns, "-o", "link", "show")
        if f": {BRIDGE}:" not in links:
            # A fixed MAC: left alone, a bridge takes the lowest MAC of its ports, which changes
            # as VMs come and go, and the guests' ARP caches would point at a MAC gone stale.
            await netns.ip(
                ns, "link", "add", BRIDGE, "address", bridge_mac(net.id), "type", "bridge"
            )
        prefix = net.net.prefixlen
        addrs = await netns.ip(ns, "-o", "addr", "show", "dev", BRIDGE)
        for addr in (f"{net.gateway}/{prefix}", f"{firewall.METADATA_IP}/32"):
            if f" {addr} " not in addrs:
                await netns.ip(ns, "addr", "add", addr, "dev", BRIDGE)
        await netns.ip(ns, "link", "set", BRIDGE, "up")
        # Bridged IPv4 through the inet hooks: security groups get connection tracking.
        await netns.sysctl(ns, "net.bridge.bridge-nf-call-iptables", "1")
        if net.nat:  # a way out, and forwarding to it (network/uplink.py)
            await uplink.connect(ns, self.config.nat_uplink_netns)
        else:
            await netns.sysctl(ns, "net.ipv4.ip_forward", "0")
        dhcp = self.dhcp(net)
        if dhcp.pid() is None:
            # A dnsmasq we do not recognise (left by an older layout) would hold the ports.
            for pid in await netns.pids(ns):
                if procs.cmdline(pid)[:1] == ["dnsmasq"]:
                    procs.kill(pid)
        await asyncio.to_thread(dhcp.start)
        self.tokens_required[net.id] = net.imds_tokens_required
        await self._start_metadata(net)

    async def remove(self, network_id: str) -> None:
        await self._stop_metadata(network_id)
        dhcp = self._dhcp.pop(network_id, None)
        if dhcp is not None:
            await asyncio.to_thread(dhcp.stop)
        await netns.delete(self.namespace(network_id))  # its up0, and so its veth pair, too
        await asyncio.to_thread(shutil.rmtree, self.folder(network_id), True)
        await uplink.disconnect(self.config.nat_uplink_netns)

    async def sync(
        self,
        net: Network,
        nics: list[tuple[Nic, str]],
        ports: list[firewall.Port],
        rules: dict[str, list[Rule]],
        span: Span | None = None,
    ) -> None:
        """Make DHCP, DNS and the firewall match the network's NICs and security groups, and
        its VXLAN port its other hosts (``span``; None: it is on this host alone)."""
        # One sync of a network at a time: two at once would both make its VXLAN port.
        async with self._syncing.setdefault(net.id, asyncio.Lock()):
            await self._sync(net, nics, ports, rules, span)

    async def _sync(
        self,
        net: Network,
        nics: list[tuple[Nic, str]],
        ports: list[firewall.Port],
        rules: dict[str, list[Rule]],
        span: Span | None,
    ) -> None:
        server = self._metadata.get(net.id)
        if server is not None:
            server.forget_callers()
        ns = self.namespace(net.id)
        mtu = None
        if span is not None:
            mtu = await overlay.join(ns, span.vni, span.local, span.peers, bridge=BRIDGE)
        else:
            await overlay.leave(ns)
        dhcp = self.dhcp(net)
        # Guests are told the VXLAN port's MTU, so that a full-sized frame is never dropped
        # on its way to another host (a bridge cannot fragment).
        await asyncio.to_thread(dhcp.write_hosts, nics, mtu)
        await asyncio.to_thread(dhcp.reload, nics)
        script = firewall.render(net.gateway, ports, rules, nat=net.nat, overlay=span is not None)
        await firewall.apply(ns, script)

    async def supervise(self) -> list[str]:
        """Restart the DHCP/DNS server of any network whose dnsmasq died (killed from outside,
        or crashed): without it a VM that starts gets no address. Returns what it restarted."""
        restarted = []
        for network_id, dhcp in list(self._dhcp.items()):
            if dhcp.pid() is None and netns.exists(self.namespace(network_id)):
                log.warning("dnsmasq of network %s is gone: restarting it", network_id)
                try:
                    await asyncio.to_thread(dhcp.start)
                except GureumError as exc:
                    log.error("cannot restart dnsmasq of network %s: %s", network_id, exc.message)
                    continue
                restarted.append(network_id)
        return restarted

    def present(self) -> list[str]:
        """Network ids whose namespace exists on this host."""
        prefix = f"gureum-{netns.home_tag(self.config.home)}-"
        return [name[len(prefix) :] for name in netns.ours(self.config.home)]

    # -- NICs ------------------------------------------------------------------------------------
    async def open_tap(self, nic: Nic) -> int:
        return await tap.open_tap(self.namespace(nic.network_id), nic.tap, BRIDGE)

    async def neighbour_mac(self, network_id: str, ip: str) -> str | None:
        out = await netns.ip(self.namespace(network_id), "neigh", "show", ip, check=False)
        parts = out.split()
        return parts[parts.index("lladdr") + 1] if "lladdr" in parts else None

    # -- metadata --------------------------------------------------------------------------------
    async def _start_metadata(self, net: Network) -> None:
        if net.id in self._metadata or self.lookup is None:
            return

        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((firewall.METADATA_IP, 80))
            sock.listen(64)
            sock.setblocking(False)
            return sock

        sock = await netns.arun_in(self.namespace(net.id), listen)
        server = MetadataServer(
            net.id, self.lookup, self.tokens, lambda: self.tokens_required.get(net.id, False)
        )
        await server.start(sock)
        self._metadata[net.id] = server

    async def _stop_metadata(self, network_id: str) -> None:
        server = self._metadata.pop(network_id, None)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.stop(), 5)

    # -- port forwards ---------------------------------------------------------------------------
    async def add_forward(
        self, forward_id: str, host: str, port: int, network_id: str, ip: str, guest_port: int
    ) -> None:
        fwd = Forward(host, port, self.namespace(network_id), ip, guest_port)
        await fwd.start()
        self._forwards[forward_id] = fwd

    async def remove_forward(self, forward_id: str) -> None:
        fwd = self._forwards.pop(forward_id, None)
        if fwd is not None:
            await fwd.stop()

    # -- shutdown --------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop what lives in the service process (metadata, forwards); the rest stays."""
        for fid in list(self._forwards):
            await self.remove_forward(fid)
        for nid in list(self._metadata):
            await self._stop_metadata(nid)
