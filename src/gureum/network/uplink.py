"""Egress NAT: a ``--nat`` network's way out, through an uplink.

A network's namespace is sealed; a NAT network gets one veth pair more: ``up0`` in its namespace
and ``gn<hash>`` in the uplink's (the host's own namespace, or a named one), with a /30 of the
shared address space 100.64.0.0/10 (RFC 6598) between them. Guests' connections are masqueraded
twice: to ``up0``'s address as they leave the network's namespace (so the uplink never sees a
guest's address), then to the uplink's own address as they leave it by its default route.

What it never lets through, in the uplink's table ``ip gureum_uplink``:
- a connection from one NAT network to another (they meet only in the uplink);
- a connection from a network to the uplink's own addresses (the host's services), replies
  aside: dropped before any DNAT the uplink does (priority -150), so a port the host publishes
  to a container or another VM (Docker's ``-p``, a NodePort) is not a way in either, and
  nothing a DNAT rule rewrites is forwarded from a network;
and in the network's own firewall (``firewall.render``), nothing from ``up0`` reaches a guest
unless one of its security groups lets that source in. Nothing routes to a guest subnet from
outside anyway: the uplink has a route only to each /30.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from gureum.errors import EngineError
from gureum.model.network import NAT_TRANSFER
from gureum.network import netns
from gureum.network.firewall import UPLINK
from gureum.sys.runner import arun

INSIDE = UPLINK  # the network namespace's end
SHARED = NAT_TRANSFER
PREFIX = "gn"  # the uplink's ends: gn + 8 hex digits
TABLE = "gureum_uplink"


def outside_name(namespace: str) -> str:
    return PREFIX + hashlib.sha256(namespace.encode()).hexdigest()[:8]


def transfer_net(namespace: str, attempt: int = 0) -> ipaddress.IPv4Network:
    """The /30 between a network and the uplink: from a hash of the namespace's name, moved on
    by ``attempt`` when another network already has it."""
    slots = SHARED.num_addresses // 4
    digest = hashlib.sha256(f"{namespace}/{attempt}".encode()).digest()
    index = int.from_bytes(digest[:4], "big") % slots
    return ipaddress.IPv4Network((int(SHARED.network_address) + 4 * index, 30))


def resolvers(configured: str | None, resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The DNS servers a NAT network forwards to: the configured ones, else the host's own
    that a namespace can reach (not loopback)."""
    if configured:
        found = [s.strip() for s in configured.split(",") if s.strip()]
    else:
        text = resolv_conf.read_text() if resolv_conf.exists() else ""
        found = [
            line.split()[1]
            for line in text.splitlines()
            if line.startswith("nameserver") and len(line.split()) > 1
        ]
    servers = []
    for server in found:
        try:
            addr = ipaddress.IPv4Address(server)
        except ValueError:
            continue  # IPv6 or junk: the networks are IPv4 only
        if not addr.is_loopback:
            servers.append(str(addr))
    return servers


def uplink_ruleset() -> str:
    """The uplink's table, the same for every NAT network: masquerade what comes from the
    shared space and leaves by another interface; nothing between networks; nothing to the
    uplink itself (nor through its DNAT rules) but replies."""
    return f"""table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    ip saddr {SHARED} oifname != "{PREFIX}*" masquerade
  }}
  chain prerouting {{
    type filter hook prerouting priority -150; policy accept;
    iifname "{PREFIX}*" fib daddr type local ct state != {{ established, related }} drop
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "{PREFIX}*" oifname "{PREFIX}*" drop
    iifname "{PREFIX}*" ct status dnat drop
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname "{PREFIX}*" ct state established,related accept
    iifname "{PREFIX}*" drop
  }}
}}
"""


async def _ip(uplink: str | None, *args: str, check: bool = True) -> str:
    argv = ["ip", *(["-n", uplink] if uplink else []), *args]
    return (await arun(argv, check=check)).stdout


async def connect(namespace: str, uplink: str | None) -> ipaddress.IPv4Network:
    """Give the network's namespace its way out (idempotent); returns the /30 it uses."""
    if uplink and not netns.exists(uplink):
        raise EngineError(f"the NAT uplink namespace {uplink!r} does not exist")
    outside = outside_name(namespace)
    have = await netns.ip(namespace, "-o", "-4", "addr", "show", "dev", INSIDE, check=False)
    if not have.strip():
        await _ip(uplink, "link", "del", outside, check=False)  # half-made before
        await _ip(uplink, "link", "add", outside, "type", "veth", "peer", "name", INSIDE,
                  "netns", namespace)  # fmt: skip
        net = await _free_net(namespace, uplink)
        hosts = list(net.hosts())
        await _ip(uplink, "addr", "add", f"{hosts[0]}/30", "dev", outside)
        await netns.ip(namespace, "addr", "add", f"{hosts[1]}/30", "dev", INSIDE)
    else:
        net = ipaddress.IPv4Interface(have.split()[3]).network
    hosts = list(net.hosts())
    await _ip(uplink, "link", "set", outside, "up")
    await netns.ip(namespace, "link", "set", INSIDE, "up")
    await netns.ip(namespace, "route", "replace", "default", "via", str(hosts[0]))
    await netns.sysctl(namespace, "net.ipv4.ip_forward", "1")
    sysctl = ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]
    await arun(["ip", "netns", "exec", uplink, *sysctl] if uplink else sysctl)
    nft = ["nft", "-f", "-"]
    await arun(["ip", "netns", "exec", uplink, *nft] if uplink else nft, input=uplink_ruleset())
    return net


async def _free_net(namespace: str, uplink: str | None) -> ipaddress.IPv4Network:
    taken = await _ip(uplink, "-o", "-4", "addr", "show")
    for attempt in range(64):
        net = transfer_net(namespace, attempt)
        if f" {next(net.hosts())}/30 " not in taken:
            return net
    raise EngineError("no free /30 left for a NAT network's uplink")


async def disconnect(uplink: str | None) -> None:
    """When no NAT network is left on this uplink: its table goes too (the veth pairs went
    with their namespaces)."""
    links = await _ip(uplink, "-o", "link", "show", check=False)
    if f": {PREFIX}" in links:
        return
    nft = ["nft", "delete", "table", "ip", TABLE]
    await arun(["ip", "netns", "exec", uplink, *nft] if uplink else nft, check=False)
