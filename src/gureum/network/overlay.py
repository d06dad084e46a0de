"""A network that spans hosts: its bridge on each host joined by VXLAN over the cluster network.

Each gureum network is a namespace with a bridge on every host that has one of its instances
(``network/netns.py``). To make them one layer-2 segment, each gets a VXLAN port ``vx0`` on its
bridge, with the network's own VNI, whose UDP socket lives in the host's namespace (where its
cluster address is): the device is made there and then moved into the network's namespace,
and the kernel keeps its socket where it was made. Broadcasts (ARP, and so the first packet to
any address) are sent to each other host of the network in turn (one all-zeros forwarding
entry per peer: head-end replication, no multicast needed on the cluster network); the bridge
and the VXLAN device then learn where each guest's MAC lives.

Each host keeps its own gateway: the same address and the same MAC (``bridge_mac``) on every
host's bridge, answering DHCP, DNS and the metadata service for the instances on that host. So
ARP for the gateway or the metadata address, and DHCP, never cross ``vx0``
(``firewall.render``'s overlay rules): an instance always reaches its own host's.

VXLAN carries no authentication: whoever can send UDP to a host's cluster address on port 4789
can put frames on its networks. The cluster network must be one only the hosts reach (as for
Proxmox's and Incus's VXLAN), which ``docs/hosts.md`` says.
"""

from __future__ import annotations

import ipaddress

from gureum.errors import InvalidInput
from gureum.network import netns
from gureum.network.firewall import VXLAN
from gureum.sys.runner import arun

VXLAN_PORT = 4789  # IANA's
OVERHEAD = 50  # outer Ethernet, IPv4, UDP and VXLAN headers
MAX_VNI = (1 << 24) - 1
FLOOD = "00:00:00:00:00:00"


def _check(vni: int, local: str, peers: list[str]) -> None:
    if not 1 <= vni <= MAX_VNI:
        raise InvalidInput(f"a VNI is from 1 to {MAX_VNI}, not {vni}")
    for address in (local, *peers):
        ipaddress.IPv4Address(address)  # ValueError for anything else: never an ip argument


def _underlay(underlay_ns: str | None) -> list[str]:
    return ["ip"] if underlay_ns is None else ["ip", "-n", underlay_ns]


async def join(
    ns: str,
    vni: int,
    local: str,
    peers: list[str],
    *,
    bridge: str,
    underlay_ns: str | None = None,
) -> int:
    """Give the network in namespace ``ns`` its VXLAN port (idempotent), sending from
    ``local`` (this host's cluster address) to ``peers`` (the other hosts that have the
    network), in place of whatever peers it had. ``underlay_ns``: the namespace the cluster
    address lives in (None: this process's, as an agent runs). Returns the port's MTU."""
    _check(vni, local, peers)
    links = await netns.ip(ns, "-o", "link", "show")
    if f": {VXLAN}@" not in links:
        # Made in the host's namespace under a name of its own there, then moved and renamed.
        made = f"gx{vni:06x}{ns[-5:]}"[:15]
        await arun([*_underlay(underlay_ns), "link", "del", made], check=False)  # a half-made one
        await arun([
            *_underlay(underlay_ns), "link", "add", made, "type", "vxlan", "id", str(vni),
            "local", local, "dstport", str(VXLAN_PORT),
        ])  # fmt: skip
        await arun([*_underlay(underlay_ns), "link", "set", made, "netns", ns])
        await netns.ip(ns, "link", "set", made, "name", VXLAN)
        mtu = await _underlay_mtu(local, underlay_ns)
        await netns.ip(ns, "link", "set", VXLAN, "mtu", str(mtu - OVERHEAD))
        await netns.ip(ns, "link", "set", VXLAN, "master", bridge, "up")
        links = await netns.ip(ns, "-o", "link", "show", VXLAN)
    have = await flood_list(ns)
    for peer in sorted(set(peers) - have):
        await arun(["bridge", "-n", ns, "fdb", "append", FLOOD, "dev", VXLAN, "dst", peer])
    for peer in sorted(have - set(peers)):
        await arun(["bridge", "-n", ns, "fdb", "del", FLOOD, "dev", VXLAN, "dst", peer])
    shown = links.split(f": {VXLAN}", 1)[-1].split()
    return int(shown[shown.index("mtu") + 1]) if "mtu" in shown else 1500 - OVERHEAD


async def flood_list(ns: str) -> set[str]:
    """The peers broadcasts are sent to."""
    out = (await arun(["bridge", "-n", ns, "fdb", "show", "dev", VXLAN], check=False)).stdout
    peers = set()
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == [FLOOD] and "dst" in parts:
            peers.add(parts[parts.index("dst") + 1])
    return peers


async def leave(ns: str) -> None:
    """The network no longer spans hosts from here."""
    await netns.ip(ns, "link", "del", VXLAN, check=False)


async def _underlay_mtu(local: str, underlay_ns: str | None) -> int:
    """The MTU of the device that holds the cluster address (1500 if it cannot be told)."""
    out = (await arun([*_underlay(underlay_ns), "-o", "addr", "show", "to", local])).stdout
    parts = out.split()
    if len(parts) < 2:
        raise InvalidInput(f"{local} is not an address of this host")
    shown = (await arun([*_underlay(underlay_ns), "-o", "link", "show", parts[1]])).stdout.split()
    return int(shown[shown.index("mtu") + 1]) if "mtu" in shown else 1500
